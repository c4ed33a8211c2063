"""harness.py - processes, configs and a raw HTTP/1.1 client for penstock's integration tests.

Starts mockllm and penstock on loopback ports with a generated YAML config in a temp dir,
waits until they listen, stops them (SIGTERM, then SIGKILL after a bound) and keeps their
stderr for failure messages and for sanitizer reports. The HTTP client works on raw
sockets so tests can send arbitrary bytes, pipeline, and time the arrival of each chunk.

Every wait here is bounded: sockets carry timeouts and polling loops have deadlines.
Standard library only.
"""
import atexit
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CLIENT_KEY = "sk-client-test-0123456789"
PROVIDER_KEY = "sk-provider-test-9876543210"
UPSTREAM_MODEL = "mock-upstream-model"
ANTHROPIC_UPSTREAM_MODEL = "mock-claude-upstream"

SANITIZER_PATTERNS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",  # UndefinedBehaviorSanitizer
    "UndefinedBehaviorSanitizer",
    "ThreadSanitizer",
)


class HarnessError(AssertionError):
    """A problem with the processes under test (crash, sanitizer report, no start)."""


def build_dir():
    d = Path(os.environ.get("PENSTOCK_BUILD", "build"))
    return d if d.is_absolute() else ROOT / d


def penstock_bin():
    return build_dir() / "policy" / "penstock"


def mockllm_bin():
    return build_dir() / "tools" / "mockllm"


def is_sanitized_build():
    """True when the gateway binary carries ASan (RSS margins are wider then)."""
    try:
        return b"__asan_init" in penstock_bin().read_bytes()
    except OSError:
        return False


def child_env(extra=None):
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    if extra:
        env.update(extra)
    return env


def free_port():
    """A port nothing listens on now (bound by the kernel, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, interval=0.02, what="condition"):
    """Poll pred() until it returns a true value (returned); AssertionError at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def sanitizer_report(text):
    for pat in SANITIZER_PATTERNS:
        i = text.find(pat)
        if i >= 0:
            start = text.rfind("\n", 0, max(0, i - 200)) + 1
            return text[start:start + 3000]
    return None


# ---------------------------------------------------------------- processes

_live = set()  # Procs not yet reaped: killed at exit whatever happened
_dirs = set()  # temp dirs of Stacks not stopped


def _kill_leftovers():
    for proc in list(_live):
        if proc.p.poll() is None:
            proc.p.kill()
            proc.p.wait()
    for d in list(_dirs):
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_kill_leftovers)


def _die_with_parent():
    """In the child: SIGKILL when the test process dies (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Proc:
    """A child process with its stderr in a file."""

    def __init__(self, name, argv, workdir, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.stderr_path = Path(workdir) / ("%s.%d.stderr" % (name, time.monotonic_ns()))
        self._err = open(self.stderr_path, "wb")
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._err,
                                  stderr=self._err, env=child_env(env), start_new_session=True,
                                  preexec_fn=_die_with_parent)
        self.pid = self.p.pid
        _live.add(self)
        self.returncode = None

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stderr_tail(self, n=2500):
        t = self.stderr()
        return t[-n:]

    def alive(self):
        return self.p.poll() is None

    def wait_log(self, pattern, timeout=10):
        """Wait for a regex in stderr; returns the match. Fails if the process exits."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.stderr())
            if m:
                return m
            if not self.alive():
                raise HarnessError("%s exited (rc %s) before logging %r:\n%s" % (
                    self.name, self.p.returncode, pattern, self.stderr_tail()))
            if time.monotonic() >= deadline:
                raise HarnessError("%s did not log %r within %ss:\n%s" % (
                    self.name, pattern, timeout, self.stderr_tail()))
            time.sleep(0.01)

    def signal(self, sig):
        if self.alive():
            self.p.send_signal(sig)

    def wait(self, timeout):
        """Wait for exit; returns the exit code or None on timeout."""
        try:
            self.returncode = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, grace=10):
        """SIGTERM, then SIGKILL after grace seconds. Returns (returncode, killed)."""
        killed = False
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            if self.wait(grace) is None:
                self.p.kill()
                self.wait(5)
                killed = True
        self.returncode = self.p.poll()
        self._err.close()
        _live.discard(self)
        return self.returncode, killed

    def check_sanitizers(self):
        rep = sanitizer_report(self.stderr())
        if rep:
            raise HarnessError("%s: sanitizer report in stderr:\n%s" % (self.name, rep))

    # leak-check helpers (Linux /proc)
    def fd_count(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def rss_kb(self, field="VmRSS"):
        """Resident KiB; field="RssAnon" leaves out file pages (LMDB's map grows with
        every record written, and its pages count in VmRSS)."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise HarnessError("no %s for pid %d" % (field, self.pid))


def wait_accepting(port, proc, timeout=10):
    """Wait until a TCP connect to port succeeds while proc is alive."""
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise HarnessError("%s exited (rc %s) before accepting:\n%s" % (
                proc.name, proc.p.returncode, proc.stderr_tail()))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise HarnessError("%s not accepting on %d after %ss:\n%s" % (
                proc.name, port, timeout, proc.stderr_tail()))
        time.sleep(0.01)


class Mock:
    """mockllm on 127.0.0.1 (a kernel-chosen port unless given one)."""

    def __init__(self, workdir, expect_key=PROVIDER_KEY, port=0, args=()):
        self.workdir = workdir
        self.expect_key = expect_key
        self.args = list(args)
        self.port = port
        self.proc = None
        self.start()

    def start(self):
        """Start on self.port (0 the first time: the kernel picks, and we read it back)."""
        argv = [mockllm_bin(), "--listen", "127.0.0.1:%d" % self.port, "--workers", "1"]
        argv += self.args
        if self.expect_key:
            argv += ["--expect-key", self.expect_key]
        self.proc = Proc("mockllm", argv, self.workdir)
        m = self.proc.wait_log(r"listening on 127\.0\.0\.1:(\d+) ")
        self.port = int(m.group(1))
        wait_accepting(self.port, self.proc)

    def stop(self, grace=10):
        rc, killed = self.proc.stop(grace)
        self.proc.check_sanitizers()
        if killed:
            raise HarnessError("mockllm did not exit on SIGTERM:\n" + self.proc.stderr_tail())
        return rc

    def restart(self):
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def stats(self):
        r = request(self.port, "GET", "/mock/stats", key=None)
        if r.status != 200:
            raise HarnessError("mock stats: %d %r" % (r.status, r.body))
        return r.json()


# ---------------------------------------------------------------- config

def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))  # a double-quoted YAML scalar


def to_yaml(obj, indent=0):
    """Block-style YAML for dicts, lists and scalars (enough for penstock's config)."""
    pad = " " * indent
    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append("%s%s:" % (pad, k))
                lines.append(to_yaml(v, indent + 2))
            elif isinstance(v, list):
                lines.append("%s%s: []" % (pad, k))
            else:
                lines.append("%s%s: %s" % (pad, k, _yaml_scalar(v)))
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, (dict, list)):
                body = to_yaml(item, indent + 2).split("\n")
                body[0] = pad + "- " + body[0][indent + 2:]
                lines.extend(body)
            else:
                lines.append("%s- %s" % (pad, _yaml_scalar(item)))
    else:
        lines.append(pad + _yaml_scalar(obj))
    return "\n".join(lines)


def gateway_config(port, providers, workdir, workers=2, timeouts=None, limits=None,
                   forward_headers=("x-mock-*",), log_level="info", settings=None):
    """providers: {name: port}. Each gets a model "gpt-NAME" (the provider "mock" also
    "gpt-test") routed to the upstream name UPSTREAM_MODEL, so the body is spliced; the
    model "same-name" keeps its name upstream (the body goes through untouched), and
    "claude-test" reaches the mock "mock" as an Anthropic provider."""
    cfg = {
        "listen": "127.0.0.1:%d" % port,
        "workers": workers,
        "data_dir": str(workdir),
        "log_level": log_level,
        "providers": [],
        "models": [],
        "keys": [{"name": "tester", "key_env": "PENSTOCK_TEST_CLIENT_KEY"}],
        # Tests inject faults per request (x-mock-status...) on a stack they share: a
        # breaker opened by one test would fail the next. Breaker tests set their own.
        "breaker": {"failures": 0, "error_rate": 0},
    }
    for name, pport in providers.items():
        cfg["providers"].append({
            "name": name, "kind": "openai-compatible",
            "base_url": "http://127.0.0.1:%d" % pport,
            "api_key_env": "PENSTOCK_TEST_PROVIDER_KEY"})
        models = ["gpt-" + name] + (["gpt-test"] if name == "mock" else [])
        for m in models:
            cfg["models"].append({"name": m, "targets": [
                {"provider": name, "model": UPSTREAM_MODEL}]})
    if "mock" in providers:
        cfg["models"].append({"name": "same-name", "targets": [
            {"provider": "mock", "model": "same-name"}]})
        # The same mockllm speaks the Anthropic dialect at /v1/messages: "claude-test"
        # reaches it as an Anthropic provider (x-api-key, anthropic-version).
        cfg["providers"].append({
            "name": "mock-anthropic", "kind": "anthropic",
            "base_url": "http://127.0.0.1:%d" % providers["mock"],
            "api_key_env": "PENSTOCK_TEST_PROVIDER_KEY"})
        cfg["models"].append({"name": "claude-test", "max_tokens": 1024, "targets": [
            {"provider": "mock-anthropic", "model": ANTHROPIC_UPSTREAM_MODEL}]})
    if forward_headers:
        cfg["forward_headers"] = list(forward_headers)  # mockllm's fault-injection headers
    if timeouts:
        cfg["timeouts"] = dict(timeouts)
    if limits:
        cfg["limits"] = dict(limits)
    cfg.update(settings or {})  # other top-level keys, as they are
    return cfg


class Gateway:
    """penstock with a generated config. Retries on a port lost to a race."""

    def __init__(self, workdir, config_fn, provider_key=PROVIDER_KEY, env=None):
        self.workdir = Path(workdir)
        self.config_fn = config_fn  # port -> config dict
        self.env = {"PENSTOCK_TEST_PROVIDER_KEY": provider_key,
                    "PENSTOCK_TEST_CLIENT_KEY": CLIENT_KEY}
        if env:
            self.env.update(env)
        self.proc = None
        self.port = None
        self.config_path = self.workdir / "penstock.yaml"
        self.start()

    def start(self):
        last = ""
        for _ in range(5):
            self.port = free_port()
            self.config = self.config_fn(self.port)
            self.config_path.write_text(to_yaml(self.config) + "\n")
            self.proc = Proc("penstock", [penstock_bin(), "--config", self.config_path],
                             self.workdir, env=self.env)
            try:
                self.proc.wait_log(r"listening on 127\.0\.0\.1:%d " % self.port, timeout=15)
                wait_accepting(self.port, self.proc)
                return
            except HarnessError as e:
                last = str(e)
                self.proc.stop(2)
                if "Address already in use" not in self.proc.stderr():
                    raise
        raise HarnessError("penstock could not start: " + last)

    @property
    def pid(self):
        return self.proc.pid

    def fd_count(self):
        return self.proc.fd_count()

    def rss_kb(self, field="VmRSS"):
        return self.proc.rss_kb(field)

    def stop(self, grace=15):
        rc, killed = self.proc.stop(grace)
        self.proc.check_sanitizers()
        if killed:
            raise HarnessError("penstock did not exit within %ss of SIGTERM:\n%s" % (
                grace, self.proc.stderr_tail()))
        if rc != 0:
            raise HarnessError("penstock exited with %s:\n%s" % (rc, self.proc.stderr_tail()))
        return rc

    # conveniences
    def conn(self, timeout=10):
        return Conn(self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, key=CLIENT_KEY, timeout=10):
        return request(self.port, method, path, body=body, headers=headers, key=key,
                       timeout=timeout)

    def chat(self, model="gpt-test", headers=None, key=CLIENT_KEY, timeout=10, **fields):
        return self.request("POST", "/v1/chat/completions", chat_body(model, **fields),
                            headers=headers, key=key, timeout=timeout)

    def assert_serving(self):
        """The gateway still answers health checks and proxies a completion."""
        r = self.request("GET", "/healthz", key=None)
        assert r.status == 200, "healthz after the test: %d %r" % (r.status, r.body)
        r = self.chat()
        assert r.status == 200, "completion after the test: %d %r" % (r.status, r.body)
        assert r.json()["choices"][0]["message"]["content"], r.body


class Stack:
    """Mock providers and a gateway in front of them, in their own temp dir.

    The gateway forwards x-mock-* request headers (forward_headers), so a test picks
    mockllm's faults per request. mocks={"slow": ["--latency-ms", "1500"]} adds a mockllm
    "slow" (with those flags for every request) behind provider "slow" and model
    "gpt-slow": for counting one upstream's connections apart. The mock "mock" (models
    "gpt-test", "gpt-mock", "same-name") is always there. dead_provider adds provider "dead" (model
    "gpt-dead") on a loopback port where nothing listens; external={"fake": port} adds a
    provider for an upstream the test runs itself (FakeUpstream)."""

    def __init__(self, workers=2, timeouts=None, limits=None, provider_key=PROVIDER_KEY,
                 mock_expect_key=PROVIDER_KEY, mocks=None, dead_provider=False,
                 external=None, forward_headers=("x-mock-*",), log_level="info",
                 settings=None):
        self.dir = Path(tempfile.mkdtemp(prefix="penstock-it-"))
        _dirs.add(self.dir)
        self.mocks = {}
        self.gw = None
        try:
            specs = {"mock": []}
            specs.update(mocks or {})
            for name, args in specs.items():
                self.mocks[name] = Mock(self.dir, expect_key=mock_expect_key, args=args)
            ports = {name: m.port for name, m in self.mocks.items()}
            if dead_provider:
                ports["dead"] = free_port()
            ports.update(external or {})  # {name: port} of upstreams run by the test
            self.mock = self.mocks["mock"]

            def config_fn(port):
                return gateway_config(port, ports, self.dir, workers=workers,
                                      timeouts=timeouts, limits=limits,
                                      forward_headers=forward_headers, log_level=log_level,
                                      settings=settings)
            self.gw = Gateway(self.dir, config_fn, provider_key=provider_key)
        except BaseException:
            self.stop(check=False)
            raise

    def check_alive(self):
        """Raise if a process died or reported a sanitizer error so far."""
        for name, obj in [("penstock", self.gw)] + list(self.mocks.items()):
            if obj is None:
                continue
            obj.proc.check_sanitizers()
            if not obj.proc.alive():
                raise HarnessError("%s died (rc %s):\n%s" % (
                    name, obj.proc.p.returncode, obj.proc.stderr_tail()))

    def stop(self, check=True):
        """Stop both; with check, raise on a sanitizer report, a hang or a bad exit."""
        errors = []
        for obj in [self.gw] + list(self.mocks.values()):
            if obj is None or obj.proc is None:
                continue
            try:
                if obj.proc.returncode is None or obj.proc.alive():
                    obj.stop()
                else:
                    obj.proc.check_sanitizers()
            except BaseException as e:  # keep stopping the rest
                errors.append(e)
        shutil.rmtree(self.dir, ignore_errors=True)  # failures carry the stderr tails
        _dirs.discard(self.dir)
        if check and errors:
            raise errors[0]


# ---------------------------------------------------------------- HTTP client

def chat_body(model="gpt-test", stream=None, **fields):
    body = {"model": model, "messages": [{"role": "user", "content": "Say something."}]}
    if stream is not None:
        body["stream"] = stream
    body.update(fields)
    return json.dumps(body).encode()


def build_request(method, path, body=None, headers=None, key=CLIENT_KEY, host="penstock.test",
                  content_length=True):
    """Bytes of one request. headers: dict or list of (name, value); key None: no auth."""
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host]
    if key is not None:
        lines.append("Authorization: Bearer %s" % key)
    hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {n.lower() for n, _ in hdrs}
    if body is not None:
        if isinstance(body, str):
            body = body.encode()
        if "content-type" not in names:
            lines.append("Content-Type: application/json")
        if content_length and "content-length" not in names and \
                "transfer-encoding" not in names:
            lines.append("Content-Length: %d" % len(body))
    for n, v in hdrs:
        lines.append("%s: %s" % (n, v))
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class ProtocolError(AssertionError):
    pass


class Response:
    def __init__(self):
        self.version = None
        self.status = None
        self.reason = None
        self.headers = []      # [(name, value)] as sent
        self.body = b""
        self.chunks = []       # [(arrival time, data)] for chunked bodies
        self.complete = False  # the body's framing ended properly
        self.closed = False    # the server closed the connection, or said it would
        self.interim = []      # 1xx responses seen before this one: [(status, headers)]
        self.head_time = None  # arrival time of the head

    def header(self, name):
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    def header_all(self, name):
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise AssertionError("body is not JSON (%s): %r" % (e, self.body[:500]))

    def sse_events(self):
        """The data: payloads of the SSE body, in order."""
        out = []
        for block in self.body.decode().split("\n\n"):
            for line in block.split("\n"):
                if line.startswith("data: "):
                    out.append(line[6:])
        return out

    def __repr__(self):
        return "<Response %s %r body=%r>" % (self.status, self.headers, self.body[:300])


class Conn:
    """One client connection. recv buffers unread bytes so responses can be pipelined."""

    def __init__(self, port, host="127.0.0.1", timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def send_request(self, method, path, body=None, headers=None, key=CLIENT_KEY, **kw):
        self.send(build_request(method, path, body, headers, key, **kw))

    def _fill(self, deadline):
        """Receive more bytes into buf. Returns False at EOF (or reset)."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no response bytes in time (have %r)" % bytes(self.buf[:300]))
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no response bytes in time (have %r)" % bytes(self.buf[:300]))
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _line(self, deadline, limit=65536):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if len(self.buf) > limit:
                raise ProtocolError("line too long")
            if not self._fill(deadline):
                return None

    def _read_head(self, deadline):
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head = bytes(self.buf[:i])
                del self.buf[:i + 4]
                return head
            if len(self.buf) > 1 << 20:
                raise ProtocolError("response head too long")
            if not self._fill(deadline):
                if self.buf:
                    raise ProtocolError("connection closed inside a response head: %r"
                                        % bytes(self.buf[:300]))
                return None

    def read_response(self, timeout=None, method="POST", stop_at_interim=False,
                      expect_complete=True):
        """Read one response. Returns None if the connection closed before any byte of it.
        With expect_complete, a body cut short raises ProtocolError; otherwise check
        resp.complete."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        r = Response()
        while True:
            head = self._read_head(deadline)
            if head is None:
                return None
            r.head_time = time.monotonic()
            lines = head.split(b"\r\n")
            m = re.match(rb"HTTP/(1\.[01]) (\d{3}) ?(.*)$", lines[0])
            if not m:
                raise ProtocolError("bad status line %r" % lines[0])
            status = int(m.group(2))
            headers = []
            for ln in lines[1:]:
                name, sep, value = ln.partition(b":")
                if not sep or not name or name != name.strip():
                    raise ProtocolError("bad header line %r" % ln)
                headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
            if 100 <= status < 200:
                r.interim.append((status, headers))
                if stop_at_interim:
                    r.version, r.status, r.headers = m.group(1).decode(), status, headers
                    r.complete = True
                    return r
                continue
            r.version = m.group(1).decode()
            r.status = status
            r.reason = m.group(3).decode("latin-1")
            r.headers = headers
            break
        self._read_body(r, deadline, method)
        conn_hdr = (r.header("connection") or "").lower()
        if "close" in conn_hdr:
            r.closed = True
        if expect_complete and not r.complete:
            raise ProtocolError("response body cut short: %r" % r)
        return r

    def _read_body(self, r, deadline, method):
        te = r.header("transfer-encoding")
        cl = r.header("content-length")
        if method == "HEAD" or r.status in (204, 304):
            r.complete = True
        elif te is not None:
            if te.lower() != "chunked":
                raise ProtocolError("unexpected transfer-encoding %r" % te)
            self._read_chunked(r, deadline)
        elif cl is not None:
            n = int(cl)
            while len(self.buf) < n:
                if not self._fill(deadline):
                    break
            r.body = bytes(self.buf[:n])
            del self.buf[:n]
            r.complete = len(r.body) == n
            r.closed = self.eof
        else:
            while self._fill(deadline):
                pass
            r.body = bytes(self.buf)
            self.buf.clear()
            r.complete = not self.reset
            r.closed = True

    def _read_chunked(self, r, deadline):
        body = bytearray()
        while True:
            line = self._line(deadline)
            if line is None:
                break
            size_txt = line.split(b";")[0].strip()
            try:
                size = int(size_txt, 16)
            except ValueError:
                raise ProtocolError("bad chunk size line %r" % line)
            if size == 0:
                # trailers, then the empty line
                while True:
                    t = self._line(deadline)
                    if t is None:
                        r.body = bytes(body)
                        r.closed = True
                        return
                    if t == b"":
                        r.body = bytes(body)
                        r.complete = True
                        return
            while len(self.buf) < size + 2:
                if not self._fill(deadline):
                    break
            if len(self.buf) < size + 2:
                break
            data = bytes(self.buf[:size])
            if self.buf[size:size + 2] != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
            del self.buf[:size + 2]
            r.chunks.append((time.monotonic(), data))
            body += data
        r.body = bytes(body)
        r.closed = True

    def read_until(self, marker, timeout=None):
        """Receive until marker is among the unread bytes (kept unread). False at EOF."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while marker not in self.buf:
            if not self._fill(deadline):
                return False
        return True

    def abort(self):
        """Close with a reset (SO_LINGER 0) instead of a FIN."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def wait_closed(self, timeout):
        """True if the peer closes (EOF or reset) within timeout; extra bytes are kept."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            return False
        return True


def request(port, method, path, body=None, headers=None, key=CLIENT_KEY, timeout=10):
    with Conn(port, timeout=timeout) as c:
        c.send_request(method, path, body, headers, key)
        r = c.read_response(method=method)
        if r is None:
            raise ProtocolError("connection closed without a response to %s %s" % (method, path))
        return r


def assert_openai_error(r, status, code=None, type_=None):
    """r is an error in OpenAI's shape with that status (and code/type when given)."""
    assert r.status == status, "expected %d, got %s: %r" % (status, r.status, r.body[:500])
    ct = r.header("content-type") or ""
    assert ct.startswith("application/json"), "error content-type %r" % ct
    doc = r.json()
    assert isinstance(doc, dict) and isinstance(doc.get("error"), dict), \
        "not an OpenAI error: %r" % r.body
    err = doc["error"]
    for field in ("message", "type", "code"):
        assert field in err, "error lacks %r: %r" % (field, r.body)
    assert isinstance(err["message"], str) and err["message"], r.body
    assert isinstance(err["type"], str) and err["type"], r.body
    if code is not None:
        assert err["code"] == code, "expected code %r, got %r" % (code, err["code"])
    if type_ is not None:
        assert err["type"] == type_, "expected type %r, got %r" % (type_, err["type"])
    return err


# ---------------------------------------------------------------- marks for run.py

def timeout(seconds):
    """Per-test time limit (run.py's default otherwise)."""
    def mark(fn):
        fn._timeout = seconds
        return fn
    return mark


def known_bug(reason):
    """Expected failure: the test stays strict; run.py reports XFAIL while it fails and
    FAIL once it passes (so the mark gets removed with the fix)."""
    def mark(fn):
        fn._known_bug = reason
        return fn
    return mark


# ---------------------------------------------------------------- a scripted upstream

class FakeUpstream:
    """An HTTP/1.1 upstream on a thread, for what mockllm can't do. script(conn_no, n,
    head, body) -> bytes to send back, (bytes, "close") to send them and close, or None
    to close the connection without an answer. conn_no counts connections from 0, n the
    requests on that connection from 0. Every request is recorded in .requests as
    (conn_no, head, body)."""

    def __init__(self, script):
        self.script = script
        self.requests = []
        self.connections = 0
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.stopping = False
        self.socks = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stopping:
            try:
                sock, _ = self.lsock.accept()
            except (socket.timeout, OSError):
                continue
            no = self.connections
            self.connections += 1
            self.socks.append(sock)
            t = threading.Thread(target=self._serve, args=(sock, no), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, sock, no):
        sock.settimeout(10)
        buf = b""
        n = 0
        try:
            while not self.stopping:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                length = int(m.group(1)) if m else 0
                while len(buf) < length:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:length], buf[length:]
                self.requests.append((no, head.decode("latin-1"), body))
                out = self.script(no, n, head.decode("latin-1"), body)
                n += 1
                if out is None:
                    return
                if isinstance(out, tuple):  # (bytes, "close")
                    sock.sendall(out[0])
                    return
                sock.sendall(out)
        except OSError:
            pass
        finally:
            sock.close()

    def close(self):
        self.stopping = True
        self.lsock.close()
        for sock in self.socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(5)


def json_response(doc, status=200, extra=""):
    body = json.dumps(doc).encode()
    return (("HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
             % (status, len(body), extra)).encode() + body)
