#!/usr/bin/env python3
"""run.py - a tiny runner for penstock's integration tests (standard library only).

Discovers test_*.py in this folder and runs their test_* functions in file order. A test
asks for fixtures by parameter name:
  stack  the module's shared Stack (built by the module's make_stack(), else a default
         one), checked after each test: a crash or a sanitizer report fails that test
  env    a per-test Env: env.stack(**kw) starts a fresh Stack that is stopped (and checked
         for sanitizer reports and a clean exit) when the test ends
Each test runs under a timeout (harness.timeout(s) to change it), so nothing hangs.

stdout: one line per test, "PASS name" / "FAIL name: reason" (XFAIL for a test marked
harness.known_bug that failed as expected), then "N passed, M failed" alone on the last
line. Details of failures go to stderr. Exit code 1 if any test failed.

usage: run.py [-k SUBSTRING] [--build DIR] [--timeout SECONDS]
  --build DIR  the meson build dir with policy/penstock and tools/mockllm; relative to
               the repository root (default $PENSTOCK_BUILD, else "build")
"""
import argparse
import importlib
import inspect
import os
import signal
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


class TestTimeout(BaseException):
    """Raised in the main thread by SIGALRM; BaseException so tests can't swallow it."""


def on_alarm(signum, frame):
    raise TestTimeout()


def arm(seconds):
    signal.setitimer(signal.ITIMER_REAL, seconds)


def disarm():
    signal.setitimer(signal.ITIMER_REAL, 0)


def one_line(e):
    if isinstance(e, TestTimeout):
        return "timed out"
    text = str(e).strip() or "%s at %s" % (type(e).__name__, where(e))
    first = text.splitlines()[0]
    name = type(e).__name__
    return first if name in ("AssertionError", "HarnessError") else "%s: %s" % (name, first)


def where(e):
    """file:line and source of the innermost frame of e: a bare assert says which one (CI
    keeps only stdout, where the FAIL line goes)."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "?"
    f = frames[-1]
    return "%s:%d: %s" % (os.path.basename(f.filename), f.lineno, (f.line or "").strip())


class Env:
    """Per-test resources, released in reverse order when the test ends."""

    def __init__(self, harness):
        self.h = harness
        self.cleanups = []

    def stack(self, **kw):
        s = self.h.Stack(**kw)
        self.cleanups.append(lambda: s.stop(check=True))
        return s

    def defer(self, fn):
        self.cleanups.append(fn)

    def close(self):
        """Run cleanups, last first; returns the first error (or None)."""
        first = None
        while self.cleanups:
            fn = self.cleanups.pop()
            try:
                fn()
            except BaseException as e:
                first = first or e
        return first


class Module:
    def __init__(self, harness, mod):
        self.h = harness
        self.mod = mod
        self.shared = None

    def shared_stack(self):
        if self.shared is None:
            make = getattr(self.mod, "make_stack", None)
            self.shared = make() if make else self.h.Stack()
        return self.shared

    def drop_shared(self, check):
        s, self.shared = self.shared, None
        if s is not None:
            s.stop(check=check)


def discover(selector):
    tests = []
    for path in sorted(HERE.glob("test_*.py")):
        mod = importlib.import_module(path.stem)
        fns = [(name, fn) for name, fn in vars(mod).items()
               if name.startswith("test_") and inspect.isfunction(fn)
               and fn.__module__ == mod.__name__]
        fns.sort(key=lambda t: t[1].__code__.co_firstlineno)
        for name, fn in fns:
            full = "%s.%s" % (path.stem, name)
            if selector is None or selector in full:
                tests.append((mod, full, fn))
    return tests


def run_test(harness, module, full, fn, default_timeout):
    """Returns None on success, else (reason, details)."""
    params = list(inspect.signature(fn).parameters)
    env = Env(harness)
    kwargs = {}
    err = None
    tb = ""
    limit = getattr(fn, "_timeout", default_timeout)
    try:
        arm(limit)
        try:
            for p in params:
                if p == "stack":
                    kwargs[p] = module.shared_stack()
                elif p == "env":
                    kwargs[p] = env
                else:
                    raise TypeError("unknown fixture %r" % p)
            fn(**kwargs)
            if "stack" in kwargs:
                module.shared.check_alive()
        finally:
            disarm()
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        err = e
        tb = traceback.format_exc()
        if isinstance(e, TestTimeout):
            err_line = "timed out after %ss" % limit
            err = AssertionError(err_line)
    # Clean up outside the timeout: every stop is bounded by SIGKILL anyway.
    cerr = env.close()
    if cerr is not None and err is None:
        err = cerr
        tb = "".join(traceback.format_exception(type(cerr), cerr, cerr.__traceback__))
    if err is not None and "stack" in kwargs and module.shared is not None:
        # A failed test may leave the shared stack in any state: start a fresh one, but
        # first see whether the processes reported something (that's the likely cause).
        try:
            module.drop_shared(check=True)
        except BaseException as e:
            tb += "\nshared stack at teardown: %s\n" % e
    if err is None:
        return None
    return one_line(err), tb


def main():
    ap = argparse.ArgumentParser(description="penstock integration tests")
    ap.add_argument("-k", dest="select", help="run tests whose name contains this")
    ap.add_argument("--build", help="build directory (default $PENSTOCK_BUILD or build)")
    ap.add_argument("--timeout", type=float, default=60, help="default per-test timeout")
    args = ap.parse_args()
    if args.build:
        os.environ["PENSTOCK_BUILD"] = args.build
    sys.path.insert(0, str(HERE))
    signal.signal(signal.SIGALRM, on_alarm)
    import harness

    for b in (harness.penstock_bin(), harness.mockllm_bin()):
        if not b.exists():
            print("missing %s (build first, or pass --build DIR)" % b, file=sys.stderr)
            print("0 passed, 1 failed")
            return 1

    tests = discover(args.select)
    modules = {}
    passed = failed = xfailed = 0
    t0 = time.monotonic()

    def report(ok, name, reason=None, details=None, known=None):
        nonlocal passed, failed, xfailed
        if known is not None and not ok:
            xfailed += 1
            print("XFAIL %s: known bug: %s (%s)" % (name, known, reason), flush=True)
            return
        if known is not None and ok:
            ok, reason = False, "passed but is marked known_bug (%s): remove the mark" % known
        if ok:
            passed += 1
            print("PASS %s" % name, flush=True)
        else:
            failed += 1
            print("FAIL %s: %s" % (name, reason), flush=True)
            if details:
                sys.stderr.write("---- %s\n%s\n" % (name, details.rstrip()))
                sys.stderr.flush()

    def finish_module(m):
        try:
            m.drop_shared(check=True)
        except BaseException as e:
            report(False, "%s.<shared stack teardown>" % m.mod.__name__, one_line(e),
                   traceback.format_exc())

    current = None
    for mod, full, fn in tests:
        m = modules.setdefault(mod.__name__, Module(harness, mod))
        if current is not None and current is not m:
            finish_module(current)
        current = m
        res = run_test(harness, m, full, fn, args.timeout)
        known = getattr(fn, "_known_bug", None)
        if res is None:
            report(True, full, known=known)
        else:
            report(False, full, res[0], res[1], known=known)
    if current is not None:
        finish_module(current)

    sys.stderr.write("ran %d tests in %.1fs (%d known bugs)\n"
                     % (len(tests), time.monotonic() - t0, xfailed))
    if xfailed:
        print("%d expected failures (known bugs)" % xfailed)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
