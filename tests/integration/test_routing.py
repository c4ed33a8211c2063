"""Routing and resilience (issue 6): the weighted split, latency routing, fallback on a
503, a refused connection and a timeout, breakers, fallback across dialects, and streams
that break after they began. Each test writes its own models (settings=) over several
mockllm instances; the mocks' /mock/stats counters say where requests went."""
import json
import signal
import threading
import time

import harness as h

UP = "m"  # upstream model name of every OpenAI-shaped target here
ANTHROPIC = {"name": "claude-fb", "max_tokens": 1024,
             "targets": [{"provider": "mock-anthropic", "model": h.ANTHROPIC_UPSTREAM_MODEL}]}
TEST = {"name": "gpt-test", "targets": [{"provider": "mock", "model": h.UPSTREAM_MODEL}]}


def model(name, *providers, routing="priority", **kw):
    targets = []
    for p in providers:
        p, _, w = p.partition(":")
        targets.append({"provider": p, "model": UP, "weight": int(w or 1)})
    return dict({"name": name, "routing": routing, "targets": targets}, **kw)


def requests_of(stack, name):
    return stack.mocks[name].stats()["requests"]


def anthropic_body(model_name, stream=False):
    body = {"model": model_name, "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say something."}]}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


@h.timeout(120)
def test_weighted_split_90_10(env):
    s = env.stack(mocks={"a": [], "b": []}, settings={
        "models": [model("w", "a:90", "b:10", routing="weighted"), TEST]})
    total, threads = 10000, 8
    body = h.chat_body("w")
    errors = []

    def client(n):
        try:
            with s.gw.conn() as c:
                for _ in range(n):
                    c.send_request("POST", "/v1/chat/completions", body)
                    r = c.read_response()
                    assert r.status == 200, r
        except BaseException as e:  # reported by the main thread
            errors.append(e)
    ts = [threading.Thread(target=client, args=(total // threads,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[0]
    a, b = requests_of(s, "a"), requests_of(s, "b")
    assert a + b == total, (a, b)
    assert abs(a / total - 0.9) <= 0.01, (a, b)
    s.gw.assert_serving()


def served_counts(s, model_name, n):
    """Send n requests one after another; how many each provider served."""
    counts = {}
    for _ in range(n):
        r = s.gw.chat(model_name)
        assert r.status == 200, r
        p = r.header("x-penstock-provider")
        counts[p] = counts.get(p, 0) + 1
    return counts


@h.timeout(90)
def test_latency_moves_off_a_slowed_target_and_back(env):
    s = env.stack(workers=1, mocks={"a": [], "b": ["--latency-ms", "40"]}, settings={
        "models": [model("fast", "a", "b", routing="latency"), TEST],
        "latency": {"decay": "300ms", "explore_percent": 10}})
    c = served_counts(s, "fast", 60)
    assert c.get("a", 0) >= 48, c  # the fastest takes most
    assert c.get("b", 0) >= 3, c   # the other is still measured
    a = s.mocks["a"]
    a.args = ["--latency-ms", "250"]
    a.restart()
    c = served_counts(s, "fast", 60)
    assert c.get("b", 0) >= 48, c
    assert c.get("a", 0) >= 2, c   # probes notice when it gets better
    a.args = []
    a.restart()
    served_counts(s, "fast", 40)  # a few probes and decay times
    c = served_counts(s, "fast", 60)
    assert c.get("a", 0) >= 48, c


@h.timeout(60)
def test_fallback_on_503_refused_and_timeout(env):
    s = env.stack(mocks={"bad": ["--status", "503"], "slow": ["--latency-ms", "5000"],
                         "ok": []},
                  dead_provider=True, timeouts={"upstream_first_byte": "400ms"}, settings={
        "models": [model("f503", "bad", "ok"), model("frefused", "dead", "ok"),
                   model("ftimeout", "slow", "ok"),
                   model("fchain", "bad", fallback=["gpt-ok"]), model("gpt-ok", "ok"),
                   model("only-bad", "bad"), model("two-ok", "ok", "mock"), TEST]})
    for name, failed in [("f503", "bad/m 503"), ("frefused", "dead/m refused"),
                         ("ftimeout", "slow/m first-byte-timeout"), ("fchain", "bad/m 503")]:
        t0 = time.monotonic()
        r = s.gw.chat(name)
        assert r.status == 200, (name, r)
        assert r.json()["choices"][0]["message"]["content"]
        assert r.header("x-penstock-provider") == "ok", (name, r)
        assert r.header("x-penstock-attempts") == "2", (name, r)
        assert r.header("x-penstock-fallbacks") == failed, (name, r)
        if name == "ftimeout":
            assert 0.35 < time.monotonic() - t0 < 3, time.monotonic() - t0
    # a 4xx other than 429 is the client's fault: never tried again
    before = requests_of(s, "ok") + requests_of(s, "mock")
    r = s.gw.chat("two-ok", headers={"x-mock-status": "400"})
    assert r.status == 400, r
    assert requests_of(s, "ok") + requests_of(s, "mock") == before + 1
    assert r.header("x-penstock-attempts") is None
    # nothing left: the provider's own error after the attempt budget (3) is spent
    before = requests_of(s, "bad")
    r = s.gw.chat("only-bad")
    h.assert_openai_error(r, 503)
    assert r.header("x-penstock-attempts") == "3", r
    assert requests_of(s, "bad") == before + 3
    # a refused connection falls back quickly (no backoff between different targets)
    t0 = time.monotonic()
    for _ in range(20):
        assert s.gw.chat("frefused").status == 200
    assert (time.monotonic() - t0) / 20 < 0.1
    s.gw.assert_serving()


@h.timeout(60)
def test_breaker_opens_and_closes(env):
    s = env.stack(mocks={"flaky": ["--status", "503"], "ok": []}, settings={
        "models": [model("p", "flaky", "ok"), TEST],
        "breaker": {"failures": 3, "cooldown": "1s"}})
    for _ in range(10):
        r = s.gw.chat("p")
        assert r.status == 200 and r.header("x-penstock-provider") == "ok", r
    # three failures opened it: the other seven requests never reached flaky
    assert requests_of(s, "flaky") == 3
    assert "breaker flaky/m: open after 3 consecutive failures" in s.gw.proc.stderr()
    r = s.gw.chat("p")
    assert r.header("x-penstock-attempts") is None, r  # skipped without an attempt
    flaky = s.mocks["flaky"]
    flaky.args = []
    flaky.restart()
    time.sleep(1.1)
    # after the cool-down one probe goes through, succeeds, and the breaker closes
    for _ in range(5):
        r = s.gw.chat("p")
        assert r.status == 200 and r.header("x-penstock-provider") == "flaky", r
    assert requests_of(s, "flaky") == 5
    assert "breaker flaky/m: closed" in s.gw.proc.stderr()


def test_error_rate_opens_a_breaker(env):
    """Failures that never run 5 in a row still open the breaker once they pass the error
    rate over the window."""
    admin_port = h.free_port()
    s = env.stack(mocks={"a": []}, settings={
        "admin": {"listen": "127.0.0.1:%d" % admin_port},
        "models": [model("p", "a"), TEST],
        "retry": {"attempts": 1},
        "breaker": {"failures": 5, "error_rate": 40, "min_requests": 10, "window": "30s",
                    "cooldown": "30s"}})
    for i in range(11):  # the rate is judged at a failure: the 11th, with 10 seen
        fail = i % 2 == 0
        r = s.gw.chat("p", headers={"x-mock-status": "503"} if fail else None)
        assert r.status == (503 if fail else 200), r
    assert "breaker a/m: open after 6 of 11 attempts failed" in s.gw.proc.stderr()
    before = requests_of(s, "a")
    r = s.gw.chat("p")
    h.assert_openai_error(r, 503, code="upstream_unavailable")
    assert "circuit breaker is open" in r.json()["error"]["message"]
    assert requests_of(s, "a") == before  # refused without an attempt
    # /metrics shows it: the breaker's state and what its window saw
    body = h.request(admin_port, "GET", "/metrics", key=None).body.decode()
    for line in ['penstock_breaker_state{provider="a",model="m",state="open"} 1',
                 'penstock_breaker_state{provider="a",model="m",state="closed"} 0',
                 'penstock_target_attempts_window{provider="a",model="m",result="failed"} 6',
                 'penstock_target_attempts_window{provider="a",model="m",result="ok"} 5',
                 'penstock_breaker_state{provider="mock",model="%s",state="closed"} 1'
                 % h.UPSTREAM_MODEL]:
        assert line + "\n" in body, (line, body[-1500:])
    # a reload keeps what the breakers learned
    s.gw.proc.signal(signal.SIGHUP)
    s.gw.proc.wait_log(r"configuration reloaded: generation 2", timeout=10)
    h.assert_openai_error(s.gw.chat("p"), 503, code="upstream_unavailable")
    assert requests_of(s, "a") == before


@h.timeout(60)
def test_active_health_check_skips_a_dead_provider_and_takes_it_back(env):
    """A provider whose health check fails is skipped before any request is sent to it,
    and taken back once the check passes again. The check is switched on by a reload."""
    s = env.stack(mocks={"a": [], "b": []}, settings={"models": [model("p", "a", "b"), TEST]})
    cfg = dict(s.gw.config)
    cfg["providers"] = [dict(p, health_check={"path": "/v1/models", "interval": 100,
                                              "timeout": 100}) if p["name"] == "a" else p
                        for p in cfg["providers"]]
    s.gw.config_path.write_text(h.to_yaml(cfg) + "\n")
    s.gw.proc.signal(signal.SIGHUP)
    s.gw.proc.wait_log(r"configuration reloaded: generation 2", timeout=10)
    assert s.gw.chat("p").header("x-penstock-provider") == "a"
    a = s.mocks["a"]
    a.stop()
    s.gw.proc.wait_log(r"breaker a/m: open, the health check failed", timeout=10)
    for _ in range(5):
        r = s.gw.chat("p")
        assert r.status == 200 and r.header("x-penstock-provider") == "b", r
        assert r.header("x-penstock-attempts") is None, r  # a was never tried
    a.start()  # the same port
    h.wait_until(lambda: s.gw.chat("p").header("x-penstock-provider") == "a", 10,
                 what="the provider taken back")
    assert "health check a: passes again" in s.gw.proc.stderr()


def test_all_breakers_open_answers_503_at_once(env):
    s = env.stack(dead_provider=True, settings={
        "models": [model("gone", "dead"), TEST],
        "breaker": {"failures": 2, "cooldown": "30s"},
        "retry": {"attempts": 1}})
    for _ in range(2):
        h.assert_openai_error(s.gw.chat("gone"), 502, code="upstream_unavailable")
    t0 = time.monotonic()
    r = s.gw.chat("gone")
    h.assert_openai_error(r, 503, code="upstream_unavailable")
    assert "circuit breaker is open" in r.json()["error"]["message"]
    assert 25 <= int(r.header("retry-after")) <= 30, r
    assert time.monotonic() - t0 < 0.5


def test_fallback_across_dialects(env):
    s = env.stack(mocks={"bad": ["--status", "503"]}, dead_provider=True, settings={
        "models": [model("oa", "bad", fallback=["claude-fb"]),
                   model("an", "dead", fallback=["claude-fb"]), ANTHROPIC, TEST]})
    # an OpenAI caller, its OpenAI-shaped model failing, served by the Anthropic one
    r = s.gw.chat("oa")
    assert r.status == 200, r
    doc = r.json()
    assert doc["object"] == "chat.completion" and doc["choices"][0]["message"]["content"], doc
    assert r.header("x-penstock-provider") == "mock-anthropic", r
    assert r.header("x-penstock-fallbacks") == "bad/m 503", r
    # streamed the same way
    r = s.gw.chat("oa", stream=True)
    assert r.status == 200 and r.body.endswith(b"data: [DONE]\n\n"), r
    # an Anthropic caller: the first target would need translation (and refuses), the
    # fallback speaks Anthropic itself
    r = s.gw.request("POST", "/v1/messages", anthropic_body("an"),
                     headers={"anthropic-version": "2023-06-01"})
    assert r.status == 200, r
    assert r.json()["type"] == "message", r
    assert r.header("x-penstock-fallbacks") == "dead/m refused", r


def sse_events(body):
    return [e for e in body.split(b"\n\n") if e.strip()]


def test_stream_cut_mid_way_ends_with_an_error_event(env):
    s = env.stack(settings={"models": [ANTHROPIC, TEST]})
    cut = {"x-mock-disconnect-after": "3", "x-mock-event-delay-ms": "30"}
    # OpenAI, same dialect
    r = s.gw.chat("gpt-test", stream=True, headers=cut)
    assert r.status == 200 and r.complete, r
    ev = sse_events(r.body)
    assert ev[-1] == b"data: [DONE]" and ev[-2].startswith(b'data: {"error":'), ev[-3:]
    json.loads(ev[-2][6:])
    # Anthropic, same dialect
    r = s.gw.request("POST", "/v1/messages", anthropic_body("claude-fb", stream=True),
                     headers=dict(cut, **{"anthropic-version": "2023-06-01"}))
    assert r.status == 200 and r.complete, r
    ev = sse_events(r.body)
    assert ev[-1].startswith(b"event: error\ndata: "), ev[-2:]
    assert json.loads(ev[-1].split(b"data: ", 1)[1])["type"] == "error"
    # OpenAI caller, Anthropic provider (translated)
    r = s.gw.chat("claude-fb", stream=True, headers=cut)
    assert r.status == 200 and r.complete, r
    ev = sse_events(r.body)
    assert ev[-1] == b"data: [DONE]" and ev[-2].startswith(b'data: {"error":'), ev[-3:]
    s.gw.assert_serving()


def test_streams_that_break_open_a_breaker(env):
    # a provider that starts every stream with 200 and drops it after three events
    s = env.stack(mocks={"breaks": ["--disconnect-after", "3"], "ok": []}, settings={
        "models": [model("p", "breaks", "ok"), TEST],
        "breaker": {"failures": 2, "cooldown": "30s"}})
    for _ in range(2):
        r = s.gw.chat("p", stream=True)
        assert r.status == 200 and r.header("x-penstock-provider") == "breaks", r
        ev = sse_events(r.body)
        assert ev[-1] == b"data: [DONE]" and ev[-2].startswith(b'data: {"error":'), ev[-3:]
    assert "breaker breaks/m: open after 2 consecutive failures" in s.gw.proc.stderr()
    # open: the next stream goes to the other target, whole
    r = s.gw.chat("p", stream=True)
    assert r.status == 200 and r.header("x-penstock-provider") == "ok", r
    assert r.body.endswith(b"data: [DONE]\n\n") and b'"error"' not in r.body, r
    assert requests_of(s, "breaks") == 2
    # whole streams say the target is well: many of them never open a breaker
    for _ in range(5):
        r = s.gw.chat("gpt-test", stream=True)
        assert r.status == 200 and r.body.endswith(b"data: [DONE]\n\n"), r
    assert "breaker mock/" not in s.gw.proc.stderr()


def test_event_cut_in_half_is_not_relayed(env):
    # The upstream dies in the middle of an event: the client gets the whole events, then
    # an error event, never half a line of JSON.
    whole = b'data: {"id":"x","object":"chat.completion.chunk","choices":[]}\n\n'
    half = b'data: {"id":"y","object":"chat.com'

    def script(conn, n, head, body):
        chunk = whole + half
        return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(chunk), chunk), "close")
    fake = h.FakeUpstream(script)
    env.defer(fake.close)
    s = env.stack(external={"fake": fake.port})
    r = s.gw.chat("gpt-fake", stream=True)
    assert r.status == 200 and r.complete, r
    ev = sse_events(r.body)
    assert ev[0] == whole.strip(), ev
    assert ev[1].startswith(b'data: {"error":') and ev[2] == b"data: [DONE]", ev
    assert len(ev) == 3 and half not in r.body, ev
