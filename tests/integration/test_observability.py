"""Metrics (GET /metrics on the admin listener) and the JSON access log, checked against
the requests the test sent; the access log follows logrotate (rename, SIGHUP)."""
import json
import re
import signal
import time

import harness as h


def observed_gateway(env, log_path, prices=None):
    admin_port = h.free_port()
    d = h.tempfile.mkdtemp(prefix="penstock-it-")
    mock = h.Mock(d)
    env.defer(mock.stop)

    def config_fn(port):
        cfg = h.gateway_config(port, {"mock": mock.port}, d, workers=2)
        for m in cfg["models"]:
            m["price"] = {"input_per_mtok": 1, "output_per_mtok": 2}
        cfg["admin"] = {"listen": "127.0.0.1:%d" % admin_port}
        cfg["access_log"] = {"destination": str(log_path)}
        cfg["teams"] = [{"name": "t", "models": ["gpt-test"], "limits": {"rpm": 1000}}]
        cfg["keys"] = [{"name": "tester", "team": "t", "key_env": "PENSTOCK_TEST_CLIENT_KEY"}]
        return cfg
    gw = h.Gateway(d, config_fn)
    env.defer(gw.stop)
    return gw, admin_port


def scrape(admin_port):
    r = h.request(admin_port, "GET", "/metrics", key=None)
    assert r.status == 200, r
    assert r.header("content-type").startswith("text/plain"), r
    samples = {}
    for line in r.body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-z_:]+)(\{[^}]*\})? (\S+)$", line)
        assert m, "not a sample line: %r" % line
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


def log_lines(path, want, timeout=5):
    """The access log's lines once it has at least `want` (lines wait up to 100 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= want or time.monotonic() > deadline:
            return [json.loads(x) for x in lines]
        time.sleep(0.05)


def test_metrics_and_access_log_match_the_requests(env):
    log = h.Path(h.tempfile.mkdtemp(prefix="penstock-log-")) / "access.log"
    gw, admin_port = observed_gateway(env, log)
    ids = []
    for _ in range(5):
        r = gw.chat("gpt-test")
        assert r.status == 200, r
        ids.append(r.header("x-request-id"))
    r = gw.chat("gpt-test", stream=True)
    assert r.status == 200
    stream_id = r.header("x-request-id")
    assert gw.chat("gpt-test", key="wrong-key").status == 401
    assert gw.chat("claude-test").status == 403  # not the team's
    assert gw.chat("no-such-model").status == 404
    assert gw.chat("gpt-test", headers={"x-mock-status": "500"}).status == 500

    lines = log_lines(log, 10)
    assert len(lines) == 10, lines
    by_id = {x["request_id"]: x for x in lines}
    for i in ids:
        x = by_id[i]
        assert x["status"] == 200 and x["model"] == "gpt-test" and x["team"] == "t", x
        assert x["completion_tokens"] > 0 and x["cost_usd"] > 0, x
        assert x["provider"] == "mock" and x["key_id"] == "cfg_tester", x
        assert x["client"].startswith("127.0.0.1:"), x
    assert by_id[stream_id]["stream"] is True, by_id[stream_id]
    statuses = sorted(x["status"] for x in lines)
    assert statuses == [200] * 6 + [401, 403, 404, 500], statuses
    text = log.read_text()
    assert h.CLIENT_KEY not in text and h.PROVIDER_KEY not in text

    m = scrape(admin_port)
    assert m['penstock_requests_total{model="gpt-test",status="200"}'] == 6, m
    assert m['penstock_requests_total{model="gpt-test",status="500"}'] == 1, m
    assert m['penstock_requests_total{model="claude-test",status="403"}'] == 1, m
    assert m['penstock_requests_by_team_total{team="t",status="200"}'] == 6, m
    out = sum(x["completion_tokens"] for x in lines if x["model"] == "gpt-test")
    assert m['penstock_tokens_total{model="gpt-test",direction="output"}'] == out, m
    assert m["penstock_requests_in_flight"] == 0, m
    assert m['penstock_request_duration_seconds_count{model="gpt-test"}'] == 7, m
    assert m["penstock_connections_accepted_total"] >= 10, m
    assert m["penstock_store_records_total"] > 0 and "penstock_store_queue_depth" in m, m
    assert not any(h.CLIENT_KEY in k for k in m)


def test_access_log_follows_logrotate(env):
    log = h.Path(h.tempfile.mkdtemp(prefix="penstock-log-")) / "access.log"
    gw, _ = observed_gateway(env, log)
    for _ in range(3):
        assert gw.chat("gpt-test").status == 200
    assert len(log_lines(log, 3)) == 3
    rotated = log.with_name("access.log.1")
    log.rename(rotated)
    gw.proc.signal(signal.SIGHUP)
    gw.proc.wait_log(r"access log reopened", timeout=5)
    for _ in range(4):
        assert gw.chat("gpt-test").status == 200
    assert len(log_lines(log, 4)) == 4
    assert len(rotated.read_text().splitlines()) == 3  # nothing lost, nothing split
