"""The happy path: completions and streams relayed, keys swapped, HTTP/1.1 connection
features (keep-alive, pipelining, chunked request bodies, 100-continue), the small
endpoints."""
import json
import re
import time

import harness as h
from harness import CLIENT_KEY, PROVIDER_KEY, UPSTREAM_MODEL


# mockllm's fault headers, passed upstream by the gateway (forward_headers: x-mock-*)
DRIP = {"x-mock-event-delay-ms": "200", "x-mock-tokens": "5"}


def strip_volatile(doc):
    """A completion without the fields that differ per call (id, created)."""
    doc = dict(doc)
    doc.pop("id", None)
    doc.pop("created", None)
    return doc


def test_completion_relayed(stack):
    body = h.chat_body("gpt-test")
    r = stack.gw.request("POST", "/v1/chat/completions", body)
    assert r.status == 200, r
    assert r.header("content-type").startswith("application/json"), r.headers
    assert re.fullmatch(r"[0-9a-f]{20}", r.header("x-request-id") or ""), r.headers
    assert r.header("x-penstock-provider") == "mock", r.headers
    assert r.header("x-penstock-model") == UPSTREAM_MODEL, r.headers
    doc = r.json()
    # the alias was spliced: the mock echoes the model it received
    assert doc["model"] == UPSTREAM_MODEL, doc
    assert doc["choices"][0]["message"]["content"].startswith("The quick brown fox"), doc
    usage = doc["usage"]
    assert usage["completion_tokens"] == 16, usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage

    # Byte for byte what the mock says to the spliced body (its prompt_tokens counts the
    # body's length, so a splice of the wrong length would show here).
    spliced = body.replace(b'"gpt-test"', json.dumps(UPSTREAM_MODEL).encode())
    direct = h.request(stack.mock.port, "POST", "/v1/chat/completions", spliced,
                       key=PROVIDER_KEY)
    assert direct.status == 200, direct
    assert strip_volatile(doc) == strip_volatile(direct.json())


def test_same_name_model_goes_through_untouched(stack):
    r = stack.gw.chat("same-name")
    assert r.status == 200, r
    assert r.json()["model"] == "same-name"
    assert r.header("x-penstock-model") == "same-name"


def test_request_ids_differ(stack):
    ids = {stack.gw.request("GET", "/healthz", key=None).header("x-request-id")
           for _ in range(5)}
    ids |= {stack.gw.chat().header("x-request-id") for _ in range(3)}
    assert len(ids) == 8 and None not in ids, ids


def test_gateway_sends_provider_key_not_client_key(stack):
    # The mock runs with --expect-key PROVIDER_KEY: it refuses the client's key...
    direct = h.request(stack.mock.port, "POST", "/v1/chat/completions",
                       h.chat_body(UPSTREAM_MODEL), key=CLIENT_KEY)
    assert direct.status == 401, direct
    # ...so a 200 through the gateway proves the gateway swapped the key.
    r = stack.gw.chat()
    assert r.status == 200, r


def test_wrong_provider_key_passes_mock_401_through(env):
    s = env.stack(provider_key="sk-provider-wrong")
    r = s.gw.chat()
    err = h.assert_openai_error(r, 401, code="invalid_api_key")
    # the mock's own error body, relayed: the gateway accepted the client's key
    assert err["message"] == "mock error 401", err
    assert r.header("x-penstock-provider") == "mock", r.headers
    assert s.gw.request("GET", "/healthz", key=None).status == 200


def check_stream(r, tokens):
    assert r.status == 200, r
    assert r.header("content-type") == "text/event-stream", r.headers
    assert r.header("transfer-encoding") == "chunked", r.headers
    assert r.complete, "stream did not end with the last chunk"
    events = r.sse_events()
    assert events and events[-1] == "[DONE]", events[-3:]
    docs = [json.loads(e) for e in events[:-1]]
    assert docs[0]["choices"][0]["delta"].get("role") == "assistant", docs[0]
    text = "".join(d["choices"][0]["delta"].get("content", "") for d in docs if d["choices"])
    words = "The quick brown fox jumps over the lazy dog.".split()
    assert text.split() == words[:tokens], text
    assert all(d["model"] == UPSTREAM_MODEL for d in docs)
    return docs


def test_stream_relayed_in_order(stack):
    r = stack.gw.chat(stream=True, max_tokens=5)
    docs = check_stream(r, 5)
    assert docs[-1]["choices"][0]["finish_reason"] == "stop", docs[-1]
    assert len(docs) == 7, len(docs)  # role, 5 tokens, finish


def test_stream_include_usage(stack):
    r = stack.gw.chat(stream=True, max_tokens=4, stream_options={"include_usage": True})
    docs = check_stream(r, 4)
    usage = docs[-1]["usage"]
    assert usage["completion_tokens"] == 4 and usage["prompt_tokens"] > 0, docs[-1]


def test_stream_first_event_before_upstream_finished(stack):
    # The mock waits 200 ms between its 8 events (role, 5 tokens, finish, [DONE]): at
    # least 1.4 s from first to last. A gateway that buffers would deliver them
    # together; relayed as they come, the first arrives well before the last.
    r = stack.gw.chat(stream=True, headers=DRIP, timeout=20)
    check_stream(r, 5)
    assert len(r.chunks) >= 4, "events arrived in %d chunks" % len(r.chunks)
    first_t, first = r.chunks[0]
    last_t = r.chunks[-1][0]
    assert b"[DONE]" not in first, first
    assert last_t - first_t >= 0.7, "first and last chunk %.3fs apart" % (last_t - first_t)
    # and the head came before the events were all produced
    assert r.chunks[-1][0] - r.head_time >= 0.7


def test_http10_stream_is_close_delimited(stack):
    body = h.chat_body(stream=True, max_tokens=3)
    req = h.build_request("POST", "/v1/chat/completions", body).replace(
        b"HTTP/1.1\r\n", b"HTTP/1.0\r\n", 1)
    with stack.gw.conn() as c:
        c.send(req)
        r = c.read_response()
        assert r.status == 200, r
        assert r.header("transfer-encoding") is None, r.headers
        assert r.closed and r.complete, r
        assert r.sse_events()[-1] == "[DONE]", r.body[-200:]


def test_keep_alive(stack):
    with stack.gw.conn() as c:
        ids = set()
        for i in range(6):
            if i % 3 == 0:
                c.send_request("GET", "/healthz", key=None)
                r = c.read_response(method="GET")
            elif i % 3 == 1:
                c.send_request("POST", "/v1/chat/completions", h.chat_body(max_tokens=i))
                r = c.read_response()
                assert r.json()["usage"]["completion_tokens"] == i
            else:
                c.send_request("GET", "/v1/models")
                r = c.read_response(method="GET")
            assert r.status == 200, r
            assert not r.closed and not c.eof, "the gateway closed a keep-alive connection"
            ids.add(r.header("x-request-id"))
        assert len(ids) == 6


def test_pipelining(stack):
    # A slow stream first: the two answers behind it must wait their turn.
    reqs = [
        h.build_request("POST", "/v1/chat/completions", h.chat_body(stream=True),
                        headers=DRIP),
        h.build_request("POST", "/v1/chat/completions", h.chat_body(max_tokens=3)),
        h.build_request("GET", "/v1/models"),
    ]
    with stack.gw.conn(timeout=15) as c:
        c.send(b"".join(reqs))
        r1 = c.read_response()
        r2 = c.read_response()
        r3 = c.read_response(method="GET")
    assert r1.status == 200 and r1.sse_events()[-1] == "[DONE]", r1
    assert len(r1.sse_events()) == 8, r1.sse_events()
    assert r2.status == 200 and r2.json()["usage"]["completion_tokens"] == 3, r2
    assert r3.status == 200 and r3.json()["object"] == "list", r3


def test_pipelining_small_requests(stack):
    reqs = b"".join(h.build_request("POST", "/v1/chat/completions", h.chat_body(max_tokens=n))
                    for n in (1, 2, 3))
    with stack.gw.conn() as c:
        c.send(reqs)
        got = [c.read_response().json()["usage"]["completion_tokens"] for _ in range(3)]
    assert got == [1, 2, 3], got


def test_chunked_request_body(stack):
    body = h.chat_body(max_tokens=2)
    head = h.build_request("POST", "/v1/chat/completions", None,
                           headers=[("Content-Type", "application/json"),
                                    ("Transfer-Encoding", "chunked")])
    pieces = [body[:7], body[7:30], body[30:]]
    with stack.gw.conn() as c:
        c.send(head)
        for p in pieces:
            # each chunk in two sends: the size line split from its data
            c.send(b"%x\r\n" % len(p))
            time.sleep(0.03)
            c.send(p + b"\r\n")
            time.sleep(0.03)
        c.send(b"0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    doc = r.json()
    assert doc["model"] == UPSTREAM_MODEL and doc["usage"]["completion_tokens"] == 2, doc
    # the de-chunked body is the same bytes: the mock counts the same prompt
    plain = stack.gw.request("POST", "/v1/chat/completions", body).json()
    assert doc["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"], (doc, plain)


def test_large_body_spans_receive_buffers(stack):
    text = "lorem ipsum " * 20000  # 240 KB: many receive buffers, gathered
    body = h.chat_body(messages=[{"role": "user", "content": text}], max_tokens=1)
    r = stack.gw.request("POST", "/v1/chat/completions", body, timeout=20)
    assert r.status == 200, r
    spliced_len = len(body) - len(b"gpt-test") + len(UPSTREAM_MODEL.encode())
    assert r.json()["usage"]["prompt_tokens"] == spliced_len // 4 + 1, r.json()["usage"]


def test_expect_100_continue(stack):
    body = h.chat_body(max_tokens=1)
    head = h.build_request("POST", "/v1/chat/completions", None,
                           headers=[("Content-Type", "application/json"),
                                    ("Content-Length", str(len(body))),
                                    ("Expect", "100-continue")])
    with stack.gw.conn() as c:
        c.send(head)
        interim = c.read_response(stop_at_interim=True)
        assert interim is not None and interim.status == 100, interim
        c.send(body)
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["usage"]["completion_tokens"] == 1
        # and the connection goes on
        c.send_request("GET", "/healthz", key=None)
        assert c.read_response(method="GET").status == 200


def test_healthz_readyz(stack):
    for path in ("/healthz", "/readyz"):
        r = stack.gw.request("GET", path, key=None)
        assert r.status == 200, r
        assert r.json() == {"status": "ok"}, r.body
    r = stack.gw.request("POST", "/healthz", b"{}", key=None)
    h.assert_openai_error(r, 405)
    assert r.header("allow") == "GET", r.headers


def test_head_has_no_body(stack):
    # A HEAD answer keeps Content-Length but sends no body: the next response on the
    # connection must parse right after its head.
    with stack.gw.conn() as c:
        c.send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response(method="HEAD")
        assert r.status == 200 and r.body == b"", r
        assert int(r.header("content-length")) > 0, r.headers
        r2 = c.read_response(method="GET")
        assert r2.status == 200 and r2.json() == {"status": "ok"}, r2


def test_models_list(stack):
    r = stack.gw.request("GET", "/v1/models")
    assert r.status == 200, r
    doc = r.json()
    assert doc["object"] == "list", doc
    ids = [m["id"] for m in doc["data"]]
    configured = [m["name"] for m in stack.gw.config["models"]]
    assert ids == configured, (ids, configured)
    assert all(m["object"] == "model" for m in doc["data"])
    h.assert_openai_error(stack.gw.request("GET", "/v1/models", key=None), 401,
                          code="invalid_api_key")


def test_secrets_not_logged(stack):
    stack.gw.chat(key="sk-wrong-client-key")
    stack.gw.chat()
    log = stack.gw.proc.stderr()
    for secret in (CLIENT_KEY, PROVIDER_KEY, "sk-wrong-client-key"):
        assert secret not in log, "secret %r in the gateway's log" % secret


def test_content_length_body_split_across_sends(stack):
    body = h.chat_body(max_tokens=3)
    req = h.build_request("POST", "/v1/chat/completions", body)
    cut = req.index(b"\r\n\r\n") + 4
    with stack.gw.conn() as c:
        for piece in (req[:20], req[20:cut], body[:9], body[9:]):
            c.send(piece)
            time.sleep(0.03)
        r = c.read_response()
    assert r.status == 200 and r.json()["usage"]["completion_tokens"] == 3, r


@h.timeout(90)
def test_slow_reader_gets_the_whole_stream(stack):
    # ~40 MB of events: far over the gateway's 256 KiB output high-water mark, so it
    # must pause reading the upstream while we don't read, and resume when we do.
    tokens = 200000
    with stack.gw.conn(timeout=60) as c:
        c.send_request("POST", "/v1/chat/completions", h.chat_body(stream=True),
                       headers={"x-mock-tokens": str(tokens)})
        assert c.read_until(b"data: ")
        time.sleep(1.0)  # stop reading for a while
        r = c.read_response()
    assert r.status == 200 and r.complete, r
    events = r.sse_events()
    assert events[-1] == "[DONE]"
    assert len(events) == tokens + 3, len(events)  # role, tokens, finish, [DONE]
    # in order, none lost or doubled: the mock cycles through a fixed list of 24 words
    text = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[1:tokens + 1]]
    period = text[:24]
    assert all(text[i] == period[i % 24] for i in range(tokens)), "tokens out of order"


def test_busy_poll_serves_plain_and_streamed(env):
    # busy_poll_us changes how a worker waits, never what it answers
    s = env.stack(workers=1, settings={"busy_poll_us": 200})
    for _ in range(20):
        r = s.gw.request("POST", "/v1/chat/completions", h.chat_body("gpt-test"))
        assert r.status == 200, r
        assert r.json()["usage"]["completion_tokens"] == 16, r.body
    r = s.gw.request("POST", "/v1/chat/completions", h.chat_body("gpt-test", stream=True))
    assert r.status == 200, r
    assert r.body.rstrip().endswith(b"data: [DONE]"), r.body[-80:]
