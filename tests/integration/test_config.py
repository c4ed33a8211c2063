"""penstock --check-config and start-up with good and bad configuration files."""
import shutil
import subprocess
import tempfile
from pathlib import Path

import harness as h

GOOD = """\
listen: 127.0.0.1:18099
workers: 1
providers:
  - name: local
    kind: openai-compatible
    base_url: http://127.0.0.1:9
    api_key_env: PENSTOCK_TEST_PROVIDER_KEY
models:
  - name: gpt-x
    targets:
      - provider: local
        model: upstream-x
keys:
  - name: ci
    key_env: PENSTOCK_TEST_CLIENT_KEY
timeouts:
  header_read: 250ms
  upstream_first_byte: 2s
limits:
  max_body_bytes: 1MiB
"""

# (name, text, the text of the line the error is on (None: not about one place), a word
# the message must contain)
BAD = [
    ("unknown_key", GOOD.replace("    api_key_env: PENSTOCK_TEST_PROVIDER_KEY\n",
                                 "    api_key_env: PENSTOCK_TEST_PROVIDER_KEY\n    colour: blue\n"),
     "colour: blue", "colour"),
    ("bad_duration", GOOD.replace("header_read: 250ms", "header_read: 10 parsecs"),
     "header_read: 10 parsecs", "header_read"),
    ("unknown_provider", GOOD.replace("provider: local", "provider: nowhere"),
     "provider: nowhere", "nowhere"),
    ("bad_listen", GOOD.replace("listen: 127.0.0.1:18099", "listen: 127.0.0.1:99999"),
     "listen: 127.0.0.1:99999", "port"),
    ("bad_yaml", GOOD.replace("workers: 1", "workers: [1"), None, ""),
]


def line_of(text, needle):
    return next(i + 1 for i, ln in enumerate(text.splitlines()) if needle in ln)


def run_penstock(args, env=None, timeout=20):
    e = h.child_env({"PENSTOCK_TEST_PROVIDER_KEY": h.PROVIDER_KEY,
                     "PENSTOCK_TEST_CLIENT_KEY": h.CLIENT_KEY})
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    p = subprocess.run([str(h.penstock_bin())] + args, capture_output=True, text=True,
                       env=e, timeout=timeout, stdin=subprocess.DEVNULL)
    rep = h.sanitizer_report(p.stderr)
    assert rep is None, "sanitizer report:\n" + rep
    return p


def write(env, name, text):
    d = Path(tempfile.mkdtemp(prefix="penstock-cfg-"))
    env.defer(lambda: shutil.rmtree(d, ignore_errors=True))
    p = d / name
    p.write_text(text)
    return p


def test_check_config_good(env):
    path = write(env, "good.yaml", GOOD)
    p = run_penstock(["--check-config", str(path)])
    assert p.returncode == 0, p.stderr
    assert "%s: ok" % path in p.stdout, p.stdout
    assert "1 providers, 1 models, 1 keys" in p.stdout, p.stdout
    assert h.PROVIDER_KEY not in p.stdout + p.stderr


def test_check_config_bad_names_file_and_line(env):
    for name, text, where, word in BAD:
        path = write(env, name + ".yaml", text)
        line = line_of(text, where) if where else None
        p = run_penstock(["--check-config", str(path)])
        assert p.returncode == 1, "%s: exit %d\n%s" % (name, p.returncode, p.stderr)
        assert p.stdout == "", "%s: %r" % (name, p.stdout)
        if line is not None:
            assert "%s:%d:" % (path, line) in p.stderr, "%s: %r" % (name, p.stderr)
        else:
            assert "%s:" % path in p.stderr, "%s: %r" % (name, p.stderr)
        assert word in p.stderr, "%s: %r" % (name, p.stderr)


def test_check_config_unset_secret(env):
    path = write(env, "good.yaml", GOOD)
    p = run_penstock(["--check-config", str(path)], env={"PENSTOCK_TEST_CLIENT_KEY": None})
    assert p.returncode == 1, p.stderr
    assert "PENSTOCK_TEST_CLIENT_KEY" in p.stderr and str(path) in p.stderr, p.stderr


def test_check_config_missing_file(env):
    p = run_penstock(["--check-config", "/nonexistent/penstock.yaml"])
    assert p.returncode == 1, p.stderr
    assert "/nonexistent/penstock.yaml" in p.stderr, p.stderr


def test_start_with_bad_config_exits_nonzero(env):
    name, text, where, _ = BAD[0]
    path = write(env, "bad.yaml", text)
    p = run_penstock(["--config", str(path)])
    assert p.returncode == 1, p.stderr
    assert "%s:%d:" % (path, line_of(text, where)) in p.stderr, p.stderr


def test_bad_command_line(env):
    p = run_penstock(["--no-such-flag"])
    assert p.returncode == 2 and "usage" in p.stderr, (p.returncode, p.stderr)
    p = run_penstock(["--version"])
    assert p.returncode == 0 and p.stdout.startswith("penstock "), p.stdout
