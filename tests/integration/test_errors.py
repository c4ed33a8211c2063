"""Every error status the gateway produces: OpenAI-shaped bodies, and the gateway keeps
serving after each. Framing errors (the engine's own rejects) close the connection:
after a malformed message nothing that follows on it can be trusted."""
import harness as h
from harness import assert_openai_error

MAX_BODY = 4096
MAX_HEADER = 2048
MAX_HEADERS = 20


def make_stack():
    return h.Stack(
        limits={"max_body_bytes": MAX_BODY, "max_header_bytes": MAX_HEADER,
                "max_headers": MAX_HEADERS},
        timeouts={"upstream_first_byte": "300ms", "upstream_connect": "2s"},
        dead_provider=True)  # nothing listens there


def raw(stack, data, expect_close=True):
    """Send bytes on a fresh connection; the response, and (for the engine's rejects)
    that the gateway closes the connection after it."""
    with stack.gw.conn() as c:
        c.send(data)
        r = c.read_response()
        assert r is not None, "connection closed without a response"
        if expect_close:
            assert r.header("connection") == "close", r.headers
            assert c.wait_closed(5), "the gateway kept a connection open after a reject"
        return r


def chat_req(headers=None, body=None, **kw):
    return h.build_request("POST", "/v1/chat/completions",
                           h.chat_body() if body is None else body, headers=headers, **kw)


# ---------------------------------------------------------------- 401

def test_401_missing_key(stack):
    r = stack.gw.chat(key=None)
    err = assert_openai_error(r, 401, code="invalid_api_key", type_="invalid_request_error")
    assert "API key" in err["message"], err
    stack.gw.assert_serving()


def test_401_wrong_key(stack):
    r = stack.gw.chat(key="sk-client-test-0123456788")  # one character off
    assert_openai_error(r, 401, code="invalid_api_key")
    r = stack.gw.chat(key=h.CLIENT_KEY + "x")  # a longer key with the right prefix
    assert_openai_error(r, 401, code="invalid_api_key")
    r = stack.gw.chat(key=h.CLIENT_KEY[:-1])  # a prefix of the right key
    assert_openai_error(r, 401, code="invalid_api_key")
    stack.gw.assert_serving()


def test_401_not_bearer(stack):
    r = stack.gw.request("POST", "/v1/chat/completions", h.chat_body(), key=None,
                         headers={"Authorization": "Basic " + h.CLIENT_KEY})
    assert_openai_error(r, 401, code="invalid_api_key")
    stack.gw.assert_serving()


def test_401_keeps_connection(stack):
    with stack.gw.conn() as c:
        c.send_request("POST", "/v1/chat/completions", h.chat_body(), key="sk-nope")
        assert_openai_error(c.read_response(), 401)
        c.send_request("POST", "/v1/chat/completions", h.chat_body())
        assert c.read_response().status == 200


# ---------------------------------------------------------------- 404, 405

def test_404_unknown_path(stack):
    r = stack.gw.request("GET", "/v1/nothing-here")
    assert_openai_error(r, 404, code="unknown_url")
    r = stack.gw.request("POST", "/v2/chat/completions", h.chat_body())
    assert_openai_error(r, 404, code="unknown_url")
    stack.gw.assert_serving()


def test_404_unknown_model(stack):
    r = stack.gw.chat("no-such-model")
    err = assert_openai_error(r, 404, code="model_not_found", type_="invalid_request_error")
    assert "no-such-model" in err["message"], err
    stack.gw.assert_serving()


def test_405_get_chat_completions(stack):
    r = stack.gw.request("GET", "/v1/chat/completions")
    assert_openai_error(r, 405)
    assert r.header("allow") == "POST", r.headers
    r = stack.gw.request("POST", "/v1/models", b"{}")
    assert_openai_error(r, 405)
    assert r.header("allow") == "GET", r.headers
    stack.gw.assert_serving()


# ---------------------------------------------------------------- 413, 431

def big_body(n):
    body = h.chat_body(messages=[{"role": "user", "content": "x" * n}])
    assert len(body) > MAX_BODY
    return body


def test_413_content_length(stack):
    r = raw(stack, chat_req(body=big_body(MAX_BODY)))
    assert_openai_error(r, 413)
    stack.gw.assert_serving()


def test_413_content_length_head_only(stack):
    # refused on the head alone: the body is never waited for
    r = raw(stack, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Length: 100000000\r\n\r\n")
    assert_openai_error(r, 413)
    stack.gw.assert_serving()


def test_413_chunked(stack):
    body = big_body(MAX_BODY)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                      for i in range(0, len(body), 1000)) + b"0\r\n\r\n"
    head = h.build_request("POST", "/v1/chat/completions", None,
                           headers=[("Content-Type", "application/json"),
                                    ("Transfer-Encoding", "chunked")])
    r = raw(stack, head + chunks)
    assert_openai_error(r, 413)
    stack.gw.assert_serving()


def padded_body(size):
    body = h.chat_body(max_tokens=1)
    # padded in "user", a field OpenAI documents (mockllm refuses unknown ones)
    body = body[:-1] + b', "user": "' + b"p" * (size - len(body) - 12) + b'"}'
    assert len(body) == size, len(body)
    return body


def test_body_limit_boundary(stack):
    r = stack.gw.request("POST", "/v1/chat/completions", padded_body(MAX_BODY))
    assert r.status == 200, r
    r = raw(stack, chat_req(body=padded_body(MAX_BODY + 1)))
    assert_openai_error(r, 413)


def test_413_before_100_continue(stack):
    # a body over the limit is refused on its head: no 100 Continue invites it
    with stack.gw.conn() as c:
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
               b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1))
        r = c.read_response(stop_at_interim=True)
        assert r is not None and not r.interim, r.interim
        assert_openai_error(r, 413)
    stack.gw.assert_serving()


def test_431_header_too_large(stack):
    r = raw(stack, chat_req(headers={"x-filler": "a" * MAX_HEADER}))
    assert_openai_error(r, 431)
    stack.gw.assert_serving()


def test_431_too_many_headers(stack):
    r = raw(stack, chat_req(headers=[("x-h%d" % i, "v") for i in range(MAX_HEADERS + 5)]))
    assert_openai_error(r, 431)
    stack.gw.assert_serving()


# ---------------------------------------------------------------- 400 and friends

def test_400_bad_json(stack):
    for body in (b"{not json", b"[1,2]", b"", b'"model"'):
        r = stack.gw.request("POST", "/v1/chat/completions", body)
        assert_openai_error(r, 400, type_="invalid_request_error")
    stack.gw.assert_serving()


def test_400_missing_model(stack):
    r = stack.gw.request("POST", "/v1/chat/completions", b'{"messages": []}')
    err = assert_openai_error(r, 400)
    assert "model" in err["message"], err
    stack.gw.assert_serving()


MALFORMED = {
    "both_cl_and_te": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "conflicting_cl": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
    "bad_cl": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
    "obs_fold": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-a: one\r\n two\r\n"
                b"Content-Length: 2\r\n\r\n{}",
    "bare_cr": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-a: o\rne\r\n"
               b"Content-Length: 2\r\n\r\n{}",
    "bad_header_name": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx(a): 1\r\n"
                       b"Content-Length: 2\r\n\r\n{}",
    "space_before_colon": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-a : 1\r\n"
                          b"Content-Length: 2\r\n\r\n{}",
    "nul_in_value": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-a: \x00\r\n"
                    b"Content-Length: 2\r\n\r\n{}",
    "bad_chunk_size": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "bad_request_line": b"POST  /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n",
}


def test_400_malformed_messages(stack):
    for name, data in MALFORMED.items():
        try:
            r = raw(stack, data)
            assert_openai_error(r, 400)
        except AssertionError as e:
            raise AssertionError("%s: %s" % (name, e))
    stack.gw.assert_serving()


def test_400_smuggling_attempt_does_not_reach_upstream(stack):
    before = stack.mock.stats()["requests"]
    # CL.TE: a front end that honoured Content-Length would see one request, a back end
    # honouring chunked a second, smuggled one. Both must be refused as one bad message.
    smuggled = h.build_request("POST", "/v1/chat/completions", h.chat_body())
    data = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + h.CLIENT_KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: %d\r\n\r\n0\r\n\r\n" % (5 + len(smuggled)) + smuggled)
    r = raw(stack, data)
    assert_openai_error(r, 400)
    assert stack.mock.stats()["requests"] == before


def test_505_http_version(stack):
    r = raw(stack, b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n")
    assert_openai_error(r, 505)
    stack.gw.assert_serving()


def test_501_transfer_coding(stack):
    r = raw(stack, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                   b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
    assert_openai_error(r, 501)
    stack.gw.assert_serving()


# ---------------------------------------------------------------- upstream trouble

def test_502_upstream_refused(stack):
    r = stack.gw.chat("gpt-dead")
    assert_openai_error(r, 502, code="upstream_unavailable", type_="api_error")
    stack.gw.assert_serving()


def test_502_upstream_closed_before_answering(stack):
    for _ in range(3):  # fresh and pooled paths alike
        r = stack.gw.chat(headers={"x-mock-disconnect-after": "0"})
        assert_openai_error(r, 502, code="upstream_unavailable")
    stack.gw.assert_serving()


def test_504_upstream_slow(stack):
    # the mock answers after 3 s; upstream_first_byte is 300 ms
    r = stack.gw.chat(headers={"x-mock-latency-ms": "3000"}, timeout=10)
    assert_openai_error(r, 504, code="upstream_timeout", type_="api_error")
    stack.gw.assert_serving()


def test_upstream_error_status_relayed(stack):
    r = stack.gw.chat(headers={"x-mock-status": "503"})
    err = assert_openai_error(r, 503)
    assert err["message"] == "mock error 503", err  # the provider's own error body
    assert r.header("x-penstock-provider") == "mock"
    stack.gw.assert_serving()


def test_many_errors_in_a_row(stack):
    # many bad requests in a row on fresh connections do not wear the gateway down
    for i in range(30):
        raw(stack, MALFORMED["obs_fold"] if i % 2 else MALFORMED["bare_cr"])
        assert_openai_error(stack.gw.chat("no-such-model"), 404)
    stack.gw.assert_serving()
