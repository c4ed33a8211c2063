"""test_dialects.py - translation between the OpenAI and Anthropic dialects, on raw HTTP.

"gpt-test" reaches mockllm as an OpenAI-compatible provider, "claude-test" as an Anthropic
provider (default max_tokens 1024). mockllm runs with --record, so each test reads what
the provider received (GET /mock/last) as well as what the client got back; mockllm is
strict, so a field passed to the other dialect by accident comes back as a 400.
"""
import json

import harness as h
from harness import ANTHROPIC_UPSTREAM_MODEL, CLIENT_KEY, PROVIDER_KEY, UPSTREAM_MODEL

VERSION = {"anthropic-version": "2023-06-01"}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}},
                  "required": ["city"]}
OA_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                              "parameters": WEATHER_SCHEMA}},
            {"type": "function", "function": {"name": "get_time", "parameters": WEATHER_SCHEMA}}]
AN_TOOLS = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA},
            {"name": "get_time", "input_schema": WEATHER_SCHEMA}]
USER = {"role": "user", "content": "Say something."}
TEXT12 = "The quick brown fox jumps over the lazy dog. Penstock routes"


def make_stack():
    return h.Stack(mocks={"mock": ["--record"]})


def chat(stack, body, headers=None, key=CLIENT_KEY):
    """POST /v1/chat/completions (OpenAI dialect) with a JSON body."""
    return stack.gw.request("POST", "/v1/chat/completions", json.dumps(body), headers=headers,
                            key=key)


def messages(stack, body, headers=None, key=CLIENT_KEY, x_api_key=True):
    """POST /v1/messages (Anthropic dialect): the key in x-api-key, else Bearer."""
    hdrs = dict(VERSION)
    hdrs.update(headers or {})
    if x_api_key and key is not None:
        hdrs["x-api-key"] = key
        key = None
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return stack.gw.request("POST", "/v1/messages", raw, headers=hdrs, key=key)


def ok(r):
    assert r.status == 200, "expected 200, got %s: %r" % (r.status, r.body[:800])
    return r


def sent(stack, dialect):
    """What the mock received last in that dialect: {method, target, headers, body}."""
    r = h.request(stack.mock.port, "GET", "/mock/last?dialect=" + dialect, key=None)
    assert r.status == 200, "nothing reached the mock in %s: %r" % (dialect, r.body)
    return r.json()


def events(r):
    """[(event name or None, data)] of an SSE body."""
    out = []
    for block in r.body.decode().split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            out.append((name, "\n".join(data)))
    return out


def assert_anthropic_error(r, status, type_):
    assert r.status == status, "expected %d, got %s: %r" % (status, r.status, r.body[:500])
    doc = r.json()
    assert doc.get("type") == "error" and isinstance(doc.get("error"), dict), r.body
    assert doc["error"].get("type") == type_, "expected %r: %r" % (type_, r.body)
    assert isinstance(doc["error"].get("message"), str) and doc["error"]["message"], r.body


# ---------------------------------------------------------------- requests, OpenAI in -> Anthropic out

def test_openai_to_anthropic_system_and_default_max_tokens(stack):
    r = ok(chat(stack, {"model": "claude-test", "messages": [
        {"role": "system", "content": "Be brief."}, USER]}))
    got = sent(stack, "anthropic")
    body = got["body"]
    assert got["target"] == "/v1/messages", got["target"]
    assert body["model"] == ANTHROPIC_UPSTREAM_MODEL, body
    assert body["max_tokens"] == 1024, "the catalog's default max_tokens: %r" % body
    system = body["system"]
    text = system if isinstance(system, str) else "".join(b["text"] for b in system)
    assert text == "Be brief.", body
    assert body["messages"] == [{"role": "user", "content": "Say something."}] or \
        body["messages"] == [{"role": "user", "content": [{"type": "text",
                                                           "text": "Say something."}]}], body
    doc = r.json()
    assert doc["object"] == "chat.completion" and doc["model"] == "claude-test", doc
    assert doc["choices"][0]["message"]["content"], doc
    assert doc["choices"][0]["finish_reason"] == "stop", doc
    u = doc["usage"]
    assert u["completion_tokens"] == 16 and u["total_tokens"] == u["prompt_tokens"] + 16, u


def test_openai_to_anthropic_headers_carry_the_provider_key(stack):
    ok(chat(stack, {"model": "claude-test", "messages": [USER]}))
    hdrs = {n.lower(): v for n, v in sent(stack, "anthropic")["headers"]}
    assert hdrs.get("x-api-key") == PROVIDER_KEY, hdrs
    assert hdrs.get("anthropic-version"), hdrs
    assert "authorization" not in hdrs, hdrs
    assert CLIENT_KEY not in json.dumps(hdrs), hdrs


def test_openai_to_anthropic_max_tokens_temperature_top_p(stack):
    ok(chat(stack, {"model": "claude-test", "messages": [USER], "max_tokens": 7,
                    "temperature": 0.5, "top_p": 0.9}))
    body = sent(stack, "anthropic")["body"]
    assert body["max_tokens"] == 7 and body["temperature"] == 0.5 and body["top_p"] == 0.9, body
    r = ok(chat(stack, {"model": "claude-test", "messages": [USER], "max_completion_tokens": 9}))
    assert sent(stack, "anthropic")["body"]["max_tokens"] == 9
    assert r.json()["usage"]["completion_tokens"] == 9, r.body


def test_openai_to_anthropic_multi_turn(stack):
    msgs = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
            {"role": "user", "content": "three"}]
    ok(chat(stack, {"model": "claude-test", "messages": msgs}))
    got = sent(stack, "anthropic")["body"]["messages"]
    assert [m["role"] for m in got] == ["user", "assistant", "user"], got
    flat = [m["content"] if isinstance(m["content"], str) else
            "".join(b["text"] for b in m["content"]) for m in got]
    assert flat == ["one", "two", "three"], got


def test_openai_to_anthropic_stop_sequences(stack):
    r = ok(chat(stack, {"model": "claude-test", "messages": [USER], "stop": ["END", "STOP"]}))
    assert sent(stack, "anthropic")["body"]["stop_sequences"] == ["END", "STOP"]
    assert r.json()["choices"][0]["finish_reason"] == "stop", r.body  # from stop_sequence
    ok(chat(stack, {"model": "claude-test", "messages": [USER], "stop": "END"}))
    assert sent(stack, "anthropic")["body"]["stop_sequences"] == ["END"]


def test_openai_to_anthropic_images(stack):
    parts = [{"type": "text", "text": "What is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG}},
             {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    ok(chat(stack, {"model": "claude-test", "messages": [{"role": "user", "content": parts}]}))
    blocks = sent(stack, "anthropic")["body"]["messages"][0]["content"]
    images = [b for b in blocks if b["type"] == "image"]
    assert images[0]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG}, blocks
    assert images[1]["source"] == {"type": "url", "url": "https://example.com/cat.png"}, blocks


def test_openai_to_anthropic_tools_and_tool_choice(stack):
    cases = [("auto", {"type": "auto"}), ("required", {"type": "any"}),
             ({"type": "function", "function": {"name": "get_time"}},
              {"type": "tool", "name": "get_time"})]
    for choice, expected in cases:
        ok(chat(stack, {"model": "claude-test", "messages": [USER], "tools": OA_TOOLS,
                        "tool_choice": choice}))
        body = sent(stack, "anthropic")["body"]
        assert body["tools"][0] == {"name": "get_weather", "description": "Weather",
                                    "input_schema": WEATHER_SCHEMA}, body["tools"]
        assert body["tools"][1]["name"] == "get_time", body["tools"]
        tc = dict(body["tool_choice"])
        tc.pop("disable_parallel_tool_use", None)
        assert tc == expected, (choice, body["tool_choice"])
    # "none": no tool may be called (Anthropic's {"type": "none"}, or no tools at all)
    r = ok(chat(stack, {"model": "claude-test", "messages": [USER], "tools": OA_TOOLS,
                        "tool_choice": "none"}))
    body = sent(stack, "anthropic")["body"]
    assert body.get("tool_choice", {}).get("type") == "none" or "tools" not in body, body
    assert r.json()["choices"][0]["message"]["content"], r.body


def test_openai_to_anthropic_tool_call_response(stack):
    r = ok(chat(stack, {"model": "claude-test", "messages": [USER], "tools": OA_TOOLS,
                        "tool_choice": "required"}, headers={"x-mock-tool-calls": "2"}))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    calls = choice["message"]["tool_calls"]
    assert [c["type"] for c in calls] == ["function", "function"], calls
    assert [c["function"]["name"] for c in calls] == ["get_weather"] * 2, calls
    assert [json.loads(c["function"]["arguments"])["city"] for c in calls] == ["Paris", "Tokyo"]
    assert calls[0]["id"] and calls[0]["id"] != calls[1]["id"], calls
    assert sent(stack, "anthropic")["body"]["tool_choice"]["type"] == "any"


def test_openai_to_anthropic_parallel_tool_results_in_one_user_turn(stack):
    msgs = [USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Tokyo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny in Paris"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Rain in Tokyo"}]
    r = ok(chat(stack, {"model": "claude-test", "messages": msgs, "tools": OA_TOOLS}))
    got = sent(stack, "anthropic")["body"]["messages"]
    assert [m["role"] for m in got] == ["user", "assistant", "user"], got
    uses = [b for b in got[1]["content"] if b["type"] == "tool_use"]
    assert [(u["id"], u["input"]) for u in uses] == [("call_1", {"city": "Paris"}),
                                                      ("call_2", {"city": "Tokyo"})], got[1]
    results = [b for b in got[2]["content"] if b["type"] == "tool_result"]
    assert [b["tool_use_id"] for b in results] == ["call_1", "call_2"], got[2]
    text = r.json()["choices"][0]["message"]["content"]
    assert "Sunny in Paris" in text and "Rain in Tokyo" in text, text


def test_openai_fields_anthropic_lacks_are_not_passed(stack):
    # each of these, passed through, gets a 400 from the strict mock
    r = ok(chat(stack, {"model": "claude-test", "messages": [USER], "n": 1, "seed": 7,
                        "user": "u-1", "presence_penalty": 0, "frequency_penalty": 0,
                        "logit_bias": {}, "parallel_tool_calls": True, "tools": OA_TOOLS,
                        "stream": False}))
    body = sent(stack, "anthropic")["body"]
    for k in ("n", "seed", "user", "presence_penalty", "frequency_penalty", "logit_bias",
              "parallel_tool_calls", "stream_options"):
        assert k not in body, (k, body)
    assert r.json()["choices"][0]["message"]["content"], r.body


# ---------------------------------------------------------------- requests, Anthropic in -> OpenAI out

def test_anthropic_to_openai_system_and_max_tokens(stack):
    r = ok(messages(stack, {"model": "gpt-test", "max_tokens": 7, "system": "Be brief.",
                            "messages": [USER], "temperature": 0.5, "top_p": 0.9}))
    got = sent(stack, "openai")
    body = got["body"]
    assert got["target"] == "/v1/chat/completions", got["target"]
    assert body["model"] == UPSTREAM_MODEL, body
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}, body
    assert body["messages"][1]["role"] == "user", body
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 7, body
    assert body["temperature"] == 0.5 and body["top_p"] == 0.9, body
    hdrs = {n.lower(): v for n, v in got["headers"]}
    assert hdrs.get("authorization") == "Bearer " + PROVIDER_KEY, hdrs
    assert "x-api-key" not in hdrs and "anthropic-version" not in hdrs, hdrs
    doc = r.json()
    assert doc["type"] == "message" and doc["role"] == "assistant", doc
    assert doc["model"] == "gpt-test", doc
    assert doc["content"] == [{"type": "text", "text": "The quick brown fox jumps over the"}] \
        or doc["content"][0]["text"] == "The quick brown fox jumps over the", doc
    assert doc["stop_reason"] == "end_turn", doc
    assert doc["usage"]["output_tokens"] == 7 and doc["usage"]["input_tokens"] > 0, doc


def test_anthropic_system_blocks_and_bearer_key(stack):
    ok(messages(stack, {"model": "gpt-test", "max_tokens": 5, "messages": [USER],
                        "system": [{"type": "text", "text": "A."}, {"type": "text", "text": "B."}]},
                x_api_key=False))
    first = sent(stack, "openai")["body"]["messages"][0]
    assert first["role"] == "system", first
    text = first["content"] if isinstance(first["content"], str) else \
        "".join(p["text"] for p in first["content"])
    assert "A." in text and "B." in text, first


def test_anthropic_to_openai_stop_images_tools(stack):
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                            "data": PNG}}]
    ok(messages(stack, {"model": "gpt-test", "max_tokens": 5, "stop_sequences": ["END"],
                        "messages": [{"role": "user", "content": content}], "tools": AN_TOOLS,
                        "tool_choice": {"type": "tool", "name": "get_time"}}))
    body = sent(stack, "openai")["body"]
    assert body["stop"] in (["END"], "END"), body
    parts = body["messages"][0]["content"]
    img = [p for p in parts if p["type"] == "image_url"]
    assert img and img[0]["image_url"]["url"] == "data:image/png;base64," + PNG, parts
    assert body["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "Weather", "parameters": WEATHER_SCHEMA}}, body
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}, body
    ok(messages(stack, {"model": "gpt-test", "max_tokens": 5, "messages": [USER],
                        "tools": AN_TOOLS, "tool_choice": {"type": "any"}}))
    assert sent(stack, "openai")["body"]["tool_choice"] == "required"


def test_anthropic_to_openai_tool_use_response_and_results(stack):
    r = ok(messages(stack, {"model": "gpt-test", "max_tokens": 100, "messages": [USER],
                            "tools": AN_TOOLS, "tool_choice": {"type": "tool", "name": "get_weather"}}))
    doc = r.json()
    assert doc["stop_reason"] == "tool_use", doc
    uses = [b for b in doc["content"] if b["type"] == "tool_use"]
    assert len(uses) == 1 and uses[0]["name"] == "get_weather", doc
    assert uses[0]["input"] == {"city": "Paris", "unit": "celsius"}, doc
    follow = [USER, {"role": "assistant", "content": doc["content"]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0]["id"],
                                            "content": "Sunny in Paris"}]}]
    r = ok(messages(stack, {"model": "gpt-test", "max_tokens": 100, "messages": follow,
                            "tools": AN_TOOLS}))
    got = sent(stack, "openai")["body"]["messages"]
    assert [m["role"] for m in got] == ["user", "assistant", "tool"], got
    assert got[1]["tool_calls"][0]["id"] == uses[0]["id"], got
    assert json.loads(got[1]["tool_calls"][0]["function"]["arguments"]) == uses[0]["input"]
    assert got[2]["tool_call_id"] == uses[0]["id"], got
    assert "Sunny in Paris" in r.json()["content"][0]["text"], r.body


def test_anthropic_fields_openai_lacks_are_not_passed(stack):
    ok(messages(stack, {"model": "gpt-test", "max_tokens": 5, "messages": [USER], "top_k": 5,
                        "metadata": {"user_id": "u-1"}}))
    body = sent(stack, "openai")["body"]
    assert "top_k" not in body and "metadata" not in body, body


# ---------------------------------------------------------------- streams

def test_anthropic_client_stream_event_order_from_openai_upstream(stack):
    r = ok(messages(stack, {"model": "gpt-test", "max_tokens": 12, "stream": True,
                            "messages": [USER]}))
    assert (r.header("content-type") or "").startswith("text/event-stream"), r.headers
    evs = [(n, json.loads(d)) for n, d in events(r)]
    names = [n for n, _ in evs if n != "ping"]
    assert names[:2] == ["message_start", "content_block_start"], names
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"], names
    assert set(names[2:-3]) == {"content_block_delta"}, names
    assert all(d["type"] == n for n, d in evs), evs
    assert evs[0][1]["message"]["model"] == "gpt-test", evs[0]
    text = "".join(d["delta"]["text"] for n, d in evs if n == "content_block_delta")
    assert text == TEXT12, text
    delta = [d for n, d in evs if n == "message_delta"][0]
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] == 12
    # the gateway asks the OpenAI upstream for usage itself
    assert sent(stack, "openai")["body"]["stream_options"] == {"include_usage": True}


def test_anthropic_client_streamed_tool_call_from_openai_upstream(stack):
    r = ok(messages(stack, {"model": "gpt-test", "max_tokens": 100, "stream": True,
                            "messages": [USER], "tools": AN_TOOLS},
                    headers={"x-mock-tool-call": "get_weather", "x-mock-tool-calls": "2"}))
    evs = [json.loads(d) for n, d in events(r) if n != "ping"]
    starts = [e for e in evs if e["type"] == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["tool_use", "tool_use"], starts
    assert [s["content_block"]["name"] for s in starts] == ["get_weather"] * 2, starts
    args = {}
    for e in evs:
        if e["type"] == "content_block_delta":
            assert e["delta"]["type"] == "input_json_delta", e
            args[e["index"]] = args.get(e["index"], "") + e["delta"]["partial_json"]
    assert [json.loads(args[s["index"]])["city"] for s in starts] == ["Paris", "Tokyo"], args
    assert [e for e in evs if e["type"] == "message_delta"][0]["delta"]["stop_reason"] == "tool_use"


def test_openai_client_stream_from_anthropic_upstream(stack):
    r = ok(chat(stack, {"model": "claude-test", "max_tokens": 12, "stream": True,
                        "messages": [USER]}))
    data = [d for _, d in events(r)]
    assert data[-1] == "[DONE]", data[-3:]
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "claude-test"
               for c in chunks), chunks[:2]
    assert not any("usage" in c and c["usage"] for c in chunks), "usage chunk not asked for"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == TEXT12, text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop", chunks[-1]
    assert "stream_options" not in sent(stack, "anthropic")["body"]


def test_openai_client_stream_usage_chunk_when_asked(stack):
    r = ok(chat(stack, {"model": "claude-test", "max_tokens": 12, "stream": True,
                        "stream_options": {"include_usage": True}, "messages": [USER]}))
    data = [d for _, d in events(r)]
    assert data[-1] == "[DONE]", data[-3:]
    last = json.loads(data[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 12, last
    body = sent(stack, "anthropic")["body"]
    assert body["stream"] is True and "stream_options" not in body, body


def test_openai_client_streamed_tool_calls_from_anthropic_upstream(stack):
    r = ok(chat(stack, {"model": "claude-test", "stream": True, "messages": [USER],
                        "tools": OA_TOOLS},
                headers={"x-mock-tool-call": "get_weather", "x-mock-tool-calls": "2"}))
    data = [d for _, d in events(r)]
    assert data[-1] == "[DONE]", data[-3:]
    calls = {}
    finish = None
    for c in (json.loads(d) for d in data[:-1]):
        for ch in c["choices"]:
            finish = ch.get("finish_reason") or finish
            for tc in ch["delta"].get("tool_calls") or []:
                slot = calls.setdefault(tc["index"], {"id": None, "name": None, "args": ""})
                slot["id"] = tc.get("id") or slot["id"]
                slot["name"] = (tc.get("function") or {}).get("name") or slot["name"]
                slot["args"] += (tc.get("function") or {}).get("arguments") or ""
    assert finish == "tool_calls", data[-3:]
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather"] * 2, calls
    assert [json.loads(calls[i]["args"])["city"] for i in sorted(calls)] == ["Paris", "Tokyo"]
    assert all(calls[i]["id"] for i in calls), calls
    assert sent(stack, "anthropic")["body"]["tools"][0]["name"] == "get_weather"


# ---------------------------------------------------------------- errors in the caller's dialect

def test_anthropic_errors_made_by_the_gateway(stack):
    assert_anthropic_error(messages(stack, {"model": "claude-test", "max_tokens": 5,
                                            "messages": [USER]}, key=CLIENT_KEY + "x"),
                           401, "authentication_error")
    assert_anthropic_error(messages(stack, {"model": "claude-test", "max_tokens": 5,
                                            "messages": [USER]}, key=None),
                           401, "authentication_error")
    assert_anthropic_error(messages(stack, {"model": "no-such-model", "max_tokens": 5,
                                            "messages": [USER]}), 404, "not_found_error")
    assert_anthropic_error(messages(stack, b'{"model": "claude-test", '), 400,
                           "invalid_request_error")


def test_anthropic_client_upstream_errors(stack):
    for model in ("claude-test", "gpt-test"):
        for status, type_ in ((429, "rate_limit_error"), (500, "api_error")):
            r = messages(stack, {"model": model, "max_tokens": 5, "messages": [USER]},
                         headers={"x-mock-status": str(status)})
            assert_anthropic_error(r, status, type_)


def test_openai_client_errors_from_anthropic_upstream(stack):
    for status, expected in ((429, 429), (500, 500), (529, 503)):
        r = chat(stack, {"model": "claude-test", "messages": [USER]},
                 headers={"x-mock-status": str(status)})
        h.assert_openai_error(r, expected)
    h.assert_openai_error(chat(stack, {"model": "claude-test", "messages": [USER]},
                               headers={"x-mock-status": "429"}), 429, type_="rate_limit_error")
    h.assert_openai_error(chat(stack, {"model": "claude-test", "messages": [USER]},
                               key=CLIENT_KEY + "x"), 401)
