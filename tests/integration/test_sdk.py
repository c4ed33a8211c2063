"""test_sdk.py - penstock driven by the official SDKs (npm openai, @anthropic-ai/sdk 1.x and
0.x), pinned in tests/sdk and installed by tools/test.

Each test is one cell of the matrix client SDK x model x case. "gpt-test" reaches mockllm
as an OpenAI-compatible provider, "claude-test" as an Anthropic provider, so the OpenAI SDK
on claude-test and the Anthropic SDKs on gpt-test go through the gateway's translation.
Cases: a completion, the same streamed (same text for the same token count), a tool call
forced by tool_choice, two parallel tool calls streamed, a two-turn tool flow, upstream
429 and 500 (the SDK's own RateLimitError / InternalServerError), a wrong client key
(AuthenticationError), and what the provider saw (its key, never the client's).

The direct_* cells point the SDKs straight at mockllm: they prove the strict mock accepts
what the official SDKs send, and record how each Anthropic SDK line sends its key.
"""
import json
import shutil
import subprocess

import harness as h
from harness import ANTHROPIC_UPSTREAM_MODEL, CLIENT_KEY, PROVIDER_KEY, UPSTREAM_MODEL

SDK_DIR = h.ROOT / "tests" / "sdk"
NODE_TIMEOUT = 30

# mockllm's words: a completion of N tokens is the first N of them
WORDS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".",
         " Penstock", " routes", " every", " request", " through", " one", " gateway", ",",
         " counting", " tokens", " as", " they", " pass", "."]
MAX_TOKENS = 12  # tests/sdk/common.mjs
TEXT = "".join(WORDS[:MAX_TOKENS])
TOOL = "get_weather"
TOOL_RESULT = "Sunny, 21 degrees"  # tests/sdk/common.mjs
PARIS = {"city": "Paris", "unit": "celsius"}
TOKYO = {"city": "Tokyo", "unit": "celsius"}

# client: (script, environment, dialect)
CLIENTS = {
    "openai": ("openai.mjs", {}, "openai"),
    "anthropic1": ("anthropic.mjs", {"PENSTOCK_ANTHROPIC_SDK": "1"}, "anthropic"),
    "anthropic0": ("anthropic.mjs", {"PENSTOCK_ANTHROPIC_SDK": "0"}, "anthropic"),
}
# model: (the provider's dialect, the upstream model name)
MODELS = {"gpt-test": ("openai", UPSTREAM_MODEL),
          "claude-test": ("anthropic", ANTHROPIC_UPSTREAM_MODEL)}
END = {"openai": "stop", "anthropic": "end_turn"}
TOOL_END = {"openai": "tool_calls", "anthropic": "tool_use"}


def make_stack():
    return h.Stack(mocks={"mock": ["--record"]})


class To:
    """Where an SDK is pointed: a port on 127.0.0.1, and the key it holds there."""

    def __init__(self, port, key):
        self.port = port
        self.key = key


def run_sdk(to, client, case, model, key=None, headers=None):
    """Run tests/sdk/<script> CASE against `to`; returns its JSON output."""
    port, key = to.port, key or to.key
    script, extra, _ = CLIENTS[client]
    node = shutil.which("node")
    assert node, "node is not installed (tools/deps installs nodejs)"
    assert (SDK_DIR / "node_modules" / "openai").is_dir(), \
        "tests/sdk/node_modules is missing: run `npm ci` in tests/sdk (tools/test does)"
    env = h.child_env({"PENSTOCK_BASE_URL": "http://127.0.0.1:%d" % port, "PENSTOCK_KEY": key,
                       "PENSTOCK_MODEL": model, "PENSTOCK_HEADERS": json.dumps(headers or {})})
    env.update(extra)
    try:
        p = subprocess.run([node, script, case], cwd=SDK_DIR, env=env, capture_output=True,
                           text=True, timeout=NODE_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError("%s %s did not finish within %ds" % (script, case, NODE_TIMEOUT))
    lines = p.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise AssertionError("%s %s printed no JSON (rc %d): %s %s" % (
            script, case, p.returncode, p.stdout[-1000:], p.stderr[-2000:]))


def result(doc):
    assert "result" in doc, "the SDK call failed: %s" % json.dumps(doc)[:1500]
    return doc["result"]


def sdk_error(doc):
    assert "error" in doc, "expected the SDK to raise, got %s" % json.dumps(doc)[:1500]
    return doc["error"]


def last_request(stack, dialect):
    r = h.request(stack.mock.port, "GET", "/mock/last?dialect=" + dialect, key=None)
    assert r.status == 200, "mock /mock/last: %d %r" % (r.status, r.body)
    return r.json()


def header(rec, name):
    vals = [v for n, v in rec["headers"] if n.lower() == name]
    assert len(vals) <= 1, "%s sent %d times: %r" % (name, len(vals), rec["headers"])
    return vals[0] if vals else None


def check_model(res, client, model):
    """Translated responses name the model the client asked for (mockllm, asked directly,
    names the model it was asked for)."""
    if model not in MODELS:
        assert res["model"] == model, res
        return
    translated = CLIENTS[client][2] != MODELS[model][0]
    allowed = {model} if translated else {model, MODELS[model][1]}
    assert res["model"] in allowed, "model %r, expected one of %r" % (res["model"], allowed)


def check_usage(res, output):
    assert res["usage"] and res["usage"]["output"] == output, res
    assert res["usage"]["input"] > 0, res


# ---------------------------------------------------------------- the cases

def case_text(stack, to, client, model):
    res = result(run_sdk(to, client, "text", model))
    assert res["text"] == TEXT, res
    assert res["finish"] == END[CLIENTS[client][2]], res
    check_usage(res, MAX_TOKENS)
    check_model(res, client, model)


def case_stream(stack, to, client, model):
    res = result(run_sdk(to, client, "stream", model))
    dialect = CLIENTS[client][2]
    assert res["text"] == TEXT, "streamed text differs from the completion's: %r" % res
    assert res["finish"] == END[dialect], res
    check_usage(res, MAX_TOKENS)
    check_model(res, client, model)
    if dialect == "openai":
        assert res["chunks"] >= MAX_TOKENS, "not streamed in pieces: %r" % res
    else:
        ev = res["events"]
        assert res["deltas"] == TEXT, res
        assert ev[:2] == ["message_start", "content_block_start"], ev
        assert ev[-3:] == ["content_block_stop", "message_delta", "message_stop"], ev
        assert ev.count("content_block_delta") >= 2, ev


def check_calls(res, client, expected):
    assert res["finish"] == TOOL_END[CLIENTS[client][2]], res
    calls = res["calls"]
    assert [c["name"] for c in calls] == [TOOL] * len(expected), res
    assert [c["args"] for c in calls] == expected, res
    ids = [c["id"] for c in calls]
    assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == len(ids), ids


def case_tool(stack, to, client, model):
    res = result(run_sdk(to, client, "tool", model))
    check_calls(res, client, [PARIS])
    check_model(res, client, model)


def case_tool_stream(stack, to, client, model):
    res = result(run_sdk(to, client, "tool_stream", model,
                         headers={"x-mock-tool-call": TOOL, "x-mock-tool-calls": "2"}))
    check_calls(res, client, [PARIS, TOKYO])
    if CLIENTS[client][2] == "anthropic":
        assert res["events"].count("content_block_start") == 2, res["events"]


def case_tool_flow(stack, to, client, model):
    res = result(run_sdk(to, client, "tool_flow", model))
    check_calls(res["first"], client, [PARIS])
    assert TOOL_RESULT in res["text"], "the tool result did not reach the model: %r" % res
    assert res["finish"] == END[CLIENTS[client][2]], res
    assert res["calls"] == [], res


def check_error_body(err, client, anthropic_type):
    body = err["body"]
    if CLIENTS[client][2] == "anthropic":
        assert isinstance(body, dict) and body.get("type") == "error", err
        assert body["error"]["type"] == anthropic_type, err
    else:  # the OpenAI SDK keeps the inner error object
        assert isinstance(body, dict) and body.get("message") and "type" in body, err


def case_rate_limit(stack, to, client, model):
    err = sdk_error(run_sdk(to, client, "text", model,
                            headers={"x-mock-status": "429"}))
    assert err["status"] == 429 and err["rate_limit"], err
    check_error_body(err, client, "rate_limit_error")


def case_server_error(stack, to, client, model):
    err = sdk_error(run_sdk(to, client, "text", model,
                            headers={"x-mock-status": "500"}))
    assert err["status"] == 500 and err["internal"], err
    check_error_body(err, client, "api_error")


def case_bad_key(stack, to, client, model):
    err = sdk_error(run_sdk(to, client, "text", model, key=to.key + "-wrong"))
    assert err["status"] == 401 and err["authentication"], err
    check_error_body(err, client, "authentication_error")


def case_provider_key(stack, to, client, model):
    result(run_sdk(to, client, "text", model))
    dialect, upstream = MODELS[model]
    rec = last_request(stack, dialect)
    flat = json.dumps(rec["headers"])
    assert CLIENT_KEY not in flat, "the client's key reached the provider: %s" % flat
    if dialect == "openai":
        assert header(rec, "authorization") == "Bearer " + PROVIDER_KEY, flat
        assert header(rec, "x-api-key") is None, flat
    else:
        assert header(rec, "x-api-key") == PROVIDER_KEY, flat
        assert header(rec, "authorization") is None, flat
        assert header(rec, "anthropic-version"), flat
    assert rec["body"]["model"] == upstream, rec["body"]


CASES = [("text", case_text), ("stream", case_stream), ("tool", case_tool),
         ("tool_stream", case_tool_stream), ("tool_flow", case_tool_flow),
         ("rate_limit", case_rate_limit), ("server_error", case_server_error),
         ("bad_key", case_bad_key), ("provider_key", case_provider_key)]
ROUTES = [("openai", "gpt-test"), ("anthropic1", "claude-test"), ("anthropic0", "claude-test"),
          ("openai", "claude-test"), ("anthropic1", "gpt-test"), ("anthropic0", "gpt-test")]


# ---------------------------------------------------------------- the SDKs straight at mockllm

def test_direct_anthropic_sdk_1_sends_bearer_and_a_recent_version(stack):
    res = result(run_sdk(To(stack.mock.port, PROVIDER_KEY), "anthropic1", "text", "direct"))
    assert res["text"] == TEXT, res
    rec = last_request(stack, "anthropic")
    assert header(rec, "authorization") == "Bearer " + PROVIDER_KEY, rec["headers"]
    assert header(rec, "x-api-key") is None, rec["headers"]
    assert header(rec, "anthropic-version") > "2023-06-01", rec["headers"]


def test_direct_anthropic_sdk_0_sends_x_api_key_and_2023_06_01(stack):
    res = result(run_sdk(To(stack.mock.port, PROVIDER_KEY), "anthropic0", "text", "direct"))
    assert res["text"] == TEXT, res
    rec = last_request(stack, "anthropic")
    assert header(rec, "x-api-key") == PROVIDER_KEY, rec["headers"]
    assert header(rec, "authorization") is None, rec["headers"]
    assert header(rec, "anthropic-version") == "2023-06-01", rec["headers"]


def test_direct_mock_refuses_the_wrong_key_in_either_anthropic_style(stack):
    for client in ("anthropic1", "anthropic0"):
        err = sdk_error(run_sdk(To(stack.mock.port, CLIENT_KEY), client, "text", "direct"))
        assert err["status"] == 401 and err["authentication"], (client, err)


def _direct(client, case):
    """The same check as through the gateway, with the mock standing in for it."""
    def test(stack):
        dict(CASES)[case](stack, To(stack.mock.port, PROVIDER_KEY), client, "direct")
    return test


for _client in CLIENTS:
    for _case in ("text", "stream", "tool", "tool_stream", "tool_flow", "rate_limit",
                  "server_error"):
        _name = "test_direct_%s_%s" % (_client, _case)
        globals()[_name] = _direct(_client, _case)
        globals()[_name].__name__ = _name


# ---------------------------------------------------------------- through the gateway

def _through_gateway(client, model, case):
    def test(stack):
        dict(CASES)[case](stack, To(stack.gw.port, CLIENT_KEY), client, model)
    return test


for _client, _model in ROUTES:
    for _case, _ in CASES:
        _name = "test_%s_to_%s_%s" % (_client, _model.replace("-", "_"), _case)
        globals()[_name] = _through_gateway(_client, _model, _case)
        globals()[_name].__name__ = _name
