"""The gateway as an HTTP client: what it sends upstream, how it takes odd responses, and
the retry of a pooled connection the upstream closed. A scripted upstream (FakeUpstream)
does what mockllm can't."""
import json

import harness as h
from harness import PROVIDER_KEY, CLIENT_KEY, UPSTREAM_MODEL, json_response

COMPLETION = {"id": "chatcmpl-fake", "object": "chat.completion", "model": UPSTREAM_MODEL,
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def fake_stack(env, script, **kw):
    fake = h.FakeUpstream(script)
    env.defer(fake.close)
    s = env.stack(external={"fake": fake.port}, **kw)
    return s, fake


def header(head, name):
    for line in head.split("\r\n")[1:]:
        n, _, v = line.partition(":")
        if n.strip().lower() == name:
            return v.strip()
    return None


def test_upstream_request_head(env):
    s, fake = fake_stack(env, lambda *a: json_response(COMPLETION))
    body = h.chat_body("gpt-fake")
    r = s.gw.request("POST", "/v1/chat/completions", body,
                     headers={"x-client-secret": "do-not-forward", "Cookie": "a=b"})
    assert r.status == 200, r
    assert r.json() == COMPLETION
    assert len(fake.requests) == 1
    _, head, sent = fake.requests[0]
    assert head.split("\r\n")[0] == "POST /v1/chat/completions HTTP/1.1", head
    assert header(head, "host") == "127.0.0.1:%d" % fake.port, head
    assert header(head, "authorization") == "Bearer " + PROVIDER_KEY, head
    assert header(head, "content-length") == str(len(sent)), head
    assert header(head, "x-request-id") == r.header("x-request-id"), head
    assert CLIENT_KEY not in head
    assert "do-not-forward" not in head and "a=b" not in head, head
    assert json.loads(sent) == dict(json.loads(body), model=UPSTREAM_MODEL)
    assert sent == body.replace(b'"gpt-fake"', b'"%s"' % UPSTREAM_MODEL.encode())


def test_reused_connection_closed_by_upstream_is_retried(env):
    # The upstream closes its kept-alive connection as the second request arrives on it
    # (an idle close crossing our send): that request goes again on a fresh connection.
    def script(conn, n, head, body):
        if conn == 0 and n == 1:
            return None
        return json_response(COMPLETION)
    s, fake = fake_stack(env, script, workers=1)
    assert s.gw.chat("gpt-fake").status == 200
    r = s.gw.chat("gpt-fake")
    assert r.status == 200, r
    assert [c for c, _, _ in fake.requests] == [0, 0, 1], fake.requests
    (_, h1, b1), (_, h2, b2) = fake.requests[1:]
    assert header(h1, "x-request-id") == header(h2, "x-request-id") == r.header("x-request-id")
    assert b1 == b2
    assert s.gw.chat("gpt-fake").status == 200  # the new connection is pooled in turn
    assert [c for c, _, _ in fake.requests] == [0, 0, 1, 1]


def test_retry_happens_once_and_only_on_reused_connections(env):
    def script(conn, n, head, body):
        return json_response(COMPLETION) if conn == 0 and n == 0 else None
    # one attempt per request: the pipeline's own retries (test_routing) stay out of it
    s, fake = fake_stack(env, script, workers=1, settings={"retry": {"attempts": 1}})
    assert s.gw.chat("gpt-fake").status == 200
    # reused connection closed, then the fresh one too: one retry, then 502
    h.assert_openai_error(s.gw.chat("gpt-fake"), 502, code="upstream_unavailable")
    assert [c for c, _, _ in fake.requests] == [0, 0, 1], fake.requests
    # a fresh connection that fails is not retried (nothing was pooled)
    h.assert_openai_error(s.gw.chat("gpt-fake"), 502, code="upstream_unavailable")
    assert [c for c, _, _ in fake.requests] == [0, 0, 1, 2], fake.requests
    s.gw.assert_serving()


def test_upstream_cut_inside_a_content_length_body(env):
    def script(conn, n, head, body):
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{\"partial\": ", "close")
    s, fake = fake_stack(env, script)
    with s.gw.conn() as c:
        c.send_request("POST", "/v1/chat/completions", h.chat_body("gpt-fake"))
        r = c.read_response(expect_complete=False)
        assert r is not None and r.status == 200, r
        assert r.header("content-length") == "1000"
        assert not r.complete and r.closed, r
    s.gw.assert_serving()


def test_upstream_chunked_response_relayed(env):
    doc = json.dumps(COMPLETION).encode()
    parts = [doc[:10], doc[10:50], doc[50:]]

    def script(conn, n, head, body):
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" +
                b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) +
                b"0\r\nx-trailer: t\r\n\r\n")
    s, fake = fake_stack(env, script, workers=1)
    for _ in range(2):  # the connection is reusable after a chunked body
        r = s.gw.chat("gpt-fake")
        assert r.status == 200 and r.complete, r
        assert r.body == doc
    assert fake.connections == 1


def test_upstream_close_delimited_response(env):
    doc = json.dumps(COMPLETION).encode()

    def script(conn, n, head, body):
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\n\r\n" + doc, "close")
    s, fake = fake_stack(env, script, workers=1)
    for _ in range(2):  # such a connection is not pooled: each request opens its own
        r = s.gw.chat("gpt-fake")
        assert r.status == 200 and r.complete, r
        assert r.body == doc
    assert fake.connections == 2


def test_upstream_malformed_response(env):
    s, fake = fake_stack(env, lambda *a: b"HTTP/1.1 2xx Nope\r\n\r\n")
    h.assert_openai_error(s.gw.chat("gpt-fake"), 502, code="upstream_unavailable")
    s.gw.assert_serving()


def test_upstream_interim_response_skipped(env):
    s, fake = fake_stack(env, lambda *a: b"HTTP/1.1 100 Continue\r\n\r\n" +
                         json_response(COMPLETION))
    with s.gw.conn() as c:
        c.send_request("POST", "/v1/chat/completions", h.chat_body("gpt-fake"))
        r = c.read_response()
        assert r.status == 200 and not r.interim, r
        assert r.json() == COMPLETION


def test_upstream_rate_limit_relayed_with_retry_after(env):
    err = {"error": {"message": "slow down", "type": "rate_limit_error", "param": None,
                     "code": "rate_limit_exceeded"}}
    s, fake = fake_stack(env, lambda *a: json_response(err, 429, "Retry-After: 7\r\n"))
    r = s.gw.chat("gpt-fake")
    h.assert_openai_error(r, 429, code="rate_limit_exceeded")
    assert r.header("retry-after") == "7", r.headers
    assert r.header("x-penstock-provider") == "fake"


def test_forward_headers(env):
    s, fake = fake_stack(env, lambda *a: json_response(COMPLETION),
                         forward_headers=("x-mock-*", "X-Trace-Id", "cookie", "authorization",
                                          "host", "content-length"))
    r = s.gw.request("POST", "/v1/chat/completions", h.chat_body("gpt-fake"),
                     headers=[("x-mock-one", "1"), ("X-MOCK-Two", "2"), ("x-trace-id", "t-9"),
                              ("x-other", "no"), ("Cookie", "c=1"), ("x-mockery", "m")])
    assert r.status == 200, r
    head = fake.requests[0][1]
    lines = head.split("\r\n")[1:]
    names = [ln.partition(":")[0].lower() for ln in lines]
    assert header(head, "x-mock-one") == "1" and header(head, "x-mock-two") == "2", head
    assert header(head, "x-trace-id") == "t-9", head
    assert "x-other" not in names and "x-mockery" not in names, head
    # credentials and framing are never taken from the client, whatever the config says
    assert "cookie" not in names, head
    assert names.count("authorization") == 1 and CLIENT_KEY not in head, head
    assert names.count("host") == 1 and names.count("content-length") == 1, head


def test_no_headers_forwarded_by_default(env):
    s, fake = fake_stack(env, lambda *a: json_response(COMPLETION), forward_headers=())
    r = s.gw.request("POST", "/v1/chat/completions", h.chat_body("gpt-fake"),
                     headers={"x-mock-latency-ms": "1", "x-trace-id": "t"})
    assert r.status == 200, r
    head = fake.requests[0][1]
    assert "x-mock" not in head.lower() and "x-trace-id" not in head.lower(), head


def test_unresolvable_provider_fails_alone(env):
    """A provider whose host name does not resolve (DNS down, a typo) does not stop the
    gateway: its model answers 502 and the other models keep working."""
    d = h.tempfile.mkdtemp(prefix="penstock-it-")
    mock = h.Mock(d)
    env.defer(mock.stop)

    def config_fn(port):
        cfg = h.gateway_config(port, {"mock": mock.port}, d, workers=1)
        cfg["providers"].append({"name": "nowhere", "kind": "openai",
                                 "base_url": "https://nowhere.invalid",
                                 "api_key_env": "PENSTOCK_TEST_PROVIDER_KEY"})
        cfg["models"].append({"name": "gpt-nowhere", "targets": [
            {"provider": "nowhere", "model": "x"}]})
        return cfg
    gw = h.Gateway(d, config_fn)
    env.defer(gw.stop)
    gw.proc.wait_log(r"nowhere\.invalid:443: .*requests to it fail", timeout=5)
    r = gw.chat("gpt-nowhere")
    assert r.status == 502, r
    assert r.json()["error"]["code"] == "upstream_unavailable", r.body
    r = gw.chat("gpt-test")
    assert r.status == 200, r
