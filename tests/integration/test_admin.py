"""test_admin.py - the admin plane and penstockctl against the real gateway, LMDB on disk
and mockllm: key lifecycle (API and CLI), what a created, revoked or expired key gets in
both dialects, revocation under load on every worker, model access, spend reports that
match the mock's usage at the catalog's prices, spend across kill -9, the admin token."""
import json
import os
import signal
import subprocess
import threading
import time

import harness
from harness import (ANTHROPIC_UPSTREAM_MODEL, UPSTREAM_MODEL, Conn, assert_openai_error,
                     chat_body, free_port, request, wait_until)

ADMIN_TOKEN = "adm-test-token-0123456789abcdef"

# USD per million tokens; micro-dollars per token = the price itself (x 1e6 / 1e6).
PRICES = {
    "gpt-test": (2.50, 10.00),
    "gpt-mock": (0.15, 0.60),
    "claude-test": (3.00, 15.00),
    "gpt-acct": (2.50, 10.00),     # only the spend tests use these two
    "claude-acct": (0.80, 4.00),
}


def penstockctl_bin():
    return harness.build_dir() / "tools" / "penstockctl"


def gov_settings(admin_port, token=ADMIN_TOKEN, workers_extra=None):
    """Priced models (the mock behind both dialects), two teams, batch durability."""
    def model(name, provider, upstream, **kw):
        i, o = PRICES[name]
        m = {"name": name, "price": {"input_per_mtok": i, "output_per_mtok": o},
             "targets": [{"provider": provider, "model": upstream}]}
        m.update(kw)
        return m
    admin = {"listen": "127.0.0.1:%d" % admin_port}
    if token:
        admin["token"] = token
    return {
        "admin": admin,
        "audit": {"durability": "batch"},
        "models": [
            model("gpt-test", "mock", UPSTREAM_MODEL),
            model("gpt-mock", "mock", UPSTREAM_MODEL),
            model("claude-test", "mock-anthropic", ANTHROPIC_UPSTREAM_MODEL, max_tokens=1024),
            model("gpt-acct", "mock", UPSTREAM_MODEL),
            model("claude-acct", "mock-anthropic", ANTHROPIC_UPSTREAM_MODEL, max_tokens=1024),
        ],
        "teams": [
            {"name": "search", "models": ["gpt-test", "claude-test", "gpt-mock"],
             "limits": {"rpm": 100000, "tpm": 100000000},
             "budget": {"usd": 100, "period": "monthly"}},
            {"name": "acct", "budget": {"usd": 50, "period": "daily"}},
            {"name": "tiny", "budget": {"usd": 0.001, "period": "daily"}},
        ],
    }


def admin_stack(make, workers=2, token=ADMIN_TOKEN):
    """A Stack whose admin listener is on a port of its own; returns (stack, admin port)."""
    port = free_port()
    s = make(workers=workers, settings=gov_settings(port, token))
    wait_until(lambda: _healthy(port), 10, what="admin listener")
    return s, port


def _healthy(port):
    try:
        return request(port, "GET", "/healthz", key=None, timeout=2).status == 200
    except OSError:
        return False


def make_stack():
    s, port = admin_stack(harness.Stack)
    s.admin_port = port
    return s


def admin(stack_or_port, method, path, body=None, token=ADMIN_TOKEN):
    port = getattr(stack_or_port, "admin_port", stack_or_port)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    return request(port, method, path, body=body, key=token)


def create_key(port, **fields):
    r = admin(port, "POST", "/admin/keys", fields)
    assert r.status == 201, "create: %d %r" % (r.status, r.body)
    doc = r.json()
    assert doc["key"].startswith("psk-") and len(doc["key"]) == 47, doc
    return doc


def anthropic_request(port, key, model="claude-test", stream=False):
    body = {"model": model, "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "Say something."}]}
    return request(port, "POST", "/v1/messages", json.dumps(body), key=None,
                   headers={"x-api-key": key, "anthropic-version": "2023-06-01"})


def assert_anthropic_auth_error(r):
    assert r.status == 401, "expected 401, got %d: %r" % (r.status, r.body)
    doc = r.json()
    assert doc.get("type") == "error", doc
    assert doc["error"]["type"] == "authentication_error", doc


def ctl(*args, token=ADMIN_TOKEN, admin_port=None, check=True):
    env = dict(os.environ)
    env.pop("PENSTOCK_ADMIN_TOKEN", None)
    if token:
        env["PENSTOCK_ADMIN_TOKEN"] = token
    argv = [str(penstockctl_bin())]
    if admin_port:
        argv += ["--admin", "http://127.0.0.1:%d" % admin_port]
    argv += list(args)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    for text in (p.stdout, p.stderr):
        assert not harness.sanitizer_report(text), text
    if check:
        assert p.returncode == 0, "penstockctl %s: rc %d\n%s%s" % (
            " ".join(args), p.returncode, p.stdout, p.stderr)
    return p


# ---------------------------------------------------------------- the admin token

def test_health_is_open_and_api_needs_the_token(stack):
    for path in ("/healthz", "/readyz"):
        r = request(stack.admin_port, "GET", path, key=None)
        assert r.status == 200 and r.json()["status"] == "ok", r.body
    r = admin(stack, "GET", "/admin/keys", token=None)
    assert r.status == 401, r.body
    assert r.json()["error"]["type"] == "authentication_error", r.body
    r = admin(stack, "GET", "/admin/keys", token=ADMIN_TOKEN + "x")
    assert r.status == 401, r.body
    r = admin(stack, "GET", "/admin/keys", token=ADMIN_TOKEN[:-1])
    assert r.status == 401, r.body
    assert admin(stack, "GET", "/admin/keys").status == 200
    p = ctl("keys", "list", token="wrong-token", admin_port=stack.admin_port, check=False)
    assert p.returncode == 1 and "HTTP 401" in p.stderr, p.stderr


def test_no_token_configured_disables_the_api(env):
    s, port = admin_stack(env.stack, token=None)
    r = request(port, "GET", "/healthz", key=None)
    assert r.status == 200, r.body
    for token in (None, ADMIN_TOKEN, ""):
        r = admin(port, "GET", "/admin/keys", token=token)
        assert r.status == 403, r.body
        err = r.json()["error"]
        assert "disabled" in err["message"] and err["type"] == "permission_error", r.body
    assert s.gw.chat().status == 200  # the data plane does not care


def test_errors_are_json_with_statuses(stack):
    cases = [
        ("GET", "/admin/nothing", None, 404),
        ("PUT", "/admin/keys", "{}", 405),
        ("POST", "/admin/keys", "not json", 400),
        ("POST", "/admin/keys", "[]", 400),
        ("POST", "/admin/keys", {"team": "search"}, 400),                 # no name
        ("POST", "/admin/keys", {"name": "x", "colour": "red"}, 400),     # unknown field
        ("POST", "/admin/keys", {"name": "x", "rpm": -1}, 400),
        ("POST", "/admin/keys", {"name": "x", "budget_usd": "ten"}, 400),
        ("POST", "/admin/keys", {"name": "x", "budget_period": "daily"}, 400),
        ("POST", "/admin/keys", {"name": "x", "expires_at": "tomorrow"}, 400),
        ("POST", "/admin/keys", {"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, 400),
        ("POST", "/admin/keys", {"name": "x", "expires_in_s": 5,
                                 "expires_at": "2100-01-01T00:00:00Z"}, 400),
        ("POST", "/admin/keys", {"name": "x", "team": "no-such-team"}, 400),
        ("POST", "/admin/keys", {"name": "x", "models": ["no-such-model"]}, 400),
        ("DELETE", "/admin/keys/k_0000000000000000", None, 404),
        ("DELETE", "/admin/keys/cfg_tester", None, 409),
        ("GET", "/admin/spend", None, 400),                                # by is required
        ("GET", "/admin/spend?by=colour", None, 400),
        ("GET", "/admin/spend?by=team&since=2024-02-30", None, 400),
        ("GET", "/admin/spend?by=team&since=2024-03-02&until=2024-03-01", None, 400),
        ("GET", "/admin/spend?by=team&colour=red", None, 400),
    ]
    for method, path, body, status in cases:
        r = admin(stack, method, path, body)
        assert r.status == status, "%s %s %r: %d %r" % (method, path, body, r.status, r.body)
        err = r.json()["error"]
        assert err["message"] and err["type"], r.body
    # the bootstrap key still works after the refused revocation
    assert stack.gw.chat().status == 200


# ---------------------------------------------------------------- key lifecycle

def test_key_lifecycle_through_the_api(stack):
    doc = create_key(stack, name="svc-a", team="search", rpm=5000, tpm=2000000,
                     budget_usd=2.5, budget_period="daily", models=["gpt-test", "claude-test"])
    kid, secret = doc["id"], doc["key"]
    assert doc["name"] == "svc-a" and doc["team"] == "search" and doc["revoked"] is False
    assert doc["limits"] == {"rpm": 5000, "tpm": 2000000}, doc
    assert doc["budget"]["limit_micro_usd"] == 2500000 and doc["budget"]["period"] == "daily"
    assert doc["models"] == ["gpt-test", "claude-test"] and doc["expires"] is None

    listed = admin(stack, "GET", "/admin/keys").json()["data"]
    mine = [k for k in listed if k["id"] == kid]
    assert len(mine) == 1 and "key" not in mine[0], mine
    assert secret not in json.dumps(listed)
    assert any(k["bootstrap"] and k["id"] == "cfg_tester" for k in listed), listed

    # it works in both dialects (stream and not)
    r = stack.gw.chat(key=secret)
    assert r.status == 200, r.body
    r = stack.gw.chat(key=secret, stream=True)
    assert r.status == 200, r.body
    r = anthropic_request(stack.gw.port, secret)
    assert r.status == 200, r.body
    assert r.json()["type"] == "message"

    r = admin(stack, "DELETE", "/admin/keys/" + kid)
    assert r.status == 200 and r.json() == {"id": kid, "revoked": True}, r.body
    r = stack.gw.chat(key=secret)
    assert_openai_error(r, 401, code="invalid_api_key")
    assert_anthropic_auth_error(anthropic_request(stack.gw.port, secret))
    got = admin(stack, "GET", "/admin/keys/" + kid).json()
    assert got["revoked"] is True, got
    # revoking twice is harmless; the other path revokes too
    r = admin(stack, "POST", "/admin/keys/%s/revoke" % kid, {})
    assert r.status == 200, r.body


def test_key_lifecycle_through_penstockctl(stack):
    port = stack.admin_port
    p = ctl("keys", "create", "--name", "cli-key", "--team", "search", "--model", "gpt-test",
            "--rpm", "100", "--budget-usd", "1.5", "--budget-period", "weekly",
            "--expires-in", "30d", admin_port=port)
    secret = p.stdout.strip()
    assert secret.startswith("psk-") and len(secret) == 47, p.stdout
    assert "shown once" in p.stderr, p.stderr
    kid = p.stderr.split("created key ")[1].split()[0]
    assert stack.gw.chat(key=secret).status == 200

    p = ctl("keys", "list", admin_port=port)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith(kid)]
    assert len(line) == 1 and "cli-key" in line[0] and "active" in line[0], p.stdout
    assert secret not in p.stdout
    listed = json.loads(ctl("keys", "list", "--json", admin_port=port).stdout)["data"]
    k = [k for k in listed if k["id"] == kid][0]
    assert k["budget"]["period"] == "weekly" and k["limits"]["rpm"] == 100, k
    assert k["expires"] is not None

    p = ctl("keys", "revoke", kid, admin_port=port)
    assert p.stdout.strip() == "revoked " + kid, p.stdout
    assert_openai_error(stack.gw.chat(key=secret), 401, code="invalid_api_key")
    p = ctl("keys", "list", admin_port=port)
    assert "revoked" in [ln for ln in p.stdout.splitlines() if ln.startswith(kid)][0]

    # clear failures, with exit codes
    p = ctl("keys", "revoke", "k_0000000000000000", admin_port=port, check=False)
    assert p.returncode == 1 and "no key" in p.stderr, p.stderr
    p = ctl("keys", "create", admin_port=port, check=False)
    assert p.returncode == 2 and "--name" in p.stderr, p.stderr
    p = ctl("keys", "list", token=None, admin_port=port, check=False)
    assert p.returncode == 2 and "PENSTOCK_ADMIN_TOKEN" in p.stderr, p.stderr
    p = ctl("keys", "list", admin_port=free_port(), check=False)
    assert p.returncode == 3, p.stderr
    p = ctl("keys", "list", "--by", "team", admin_port=port, check=False)
    assert p.returncode == 2 and "--by does not apply" in p.stderr, p.stderr
    p = ctl("spend", "--by", "team", "--since", "yesterday", "--data-dir", str(stack.dir),
            check=False)
    assert p.returncode == 2 and "YYYY-MM-DD" in p.stderr, p.stderr


def test_expired_key_gets_401(stack):
    doc = create_key(stack, name="short-lived", expires_in_s=1)
    assert stack.gw.chat(key=doc["key"]).status == 200
    time.sleep(2.1)
    assert_openai_error(stack.gw.chat(key=doc["key"]), 401, code="invalid_api_key")
    assert_anthropic_auth_error(anthropic_request(stack.gw.port, doc["key"]))
    listed = admin(stack, "GET", "/admin/keys/" + doc["id"]).json()
    assert listed["expired"] is True and listed["revoked"] is False, listed


def test_model_outside_the_keys_list_is_403(stack):
    doc = create_key(stack, name="narrow", team="search", models=["gpt-test"])
    assert stack.gw.chat(model="gpt-test", key=doc["key"]).status == 200
    r = stack.gw.chat(model="gpt-mock", key=doc["key"])
    assert_openai_error(r, 403)
    r = anthropic_request(stack.gw.port, doc["key"], model="claude-test")
    assert r.status == 403, r.body
    assert r.json()["error"]["type"] == "permission_error", r.body
    # the team allows gpt-mock, the key does not; a team key without a list may
    doc = create_key(stack, name="wide", team="search")
    assert stack.gw.chat(model="gpt-mock", key=doc["key"]).status == 200
    assert_openai_error(stack.gw.chat(model="gpt-acct", key=doc["key"]), 403)


@harness.timeout(90)
def test_revoke_under_load_stops_every_worker_at_once(stack):
    doc = create_key(stack, name="hammered", team="search")
    secret, kid = doc["key"], doc["id"]
    revoked_at = [None]  # monotonic time when the revoke call returned
    stop = threading.Event()
    results = []         # (sent at, status), every thread
    lock = threading.Lock()
    errors = []

    def hammer():
        mine = []
        try:
            c = Conn(stack.gw.port, timeout=10)
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                t = time.monotonic()
                c.send_request("POST", "/v1/chat/completions", chat_body("gpt-test"),
                               key=secret)
                r = c.read_response()
                if r is None:  # the server closed the connection: open another
                    c.close()
                    c = Conn(stack.gw.port, timeout=10)
                    continue
                mine.append((t, r.status))
            c.close()
        except Exception as e:  # reported below, not swallowed
            errors.append(e)
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    r = admin(stack, "DELETE", "/admin/keys/" + kid)
    revoked_at[0] = time.monotonic()
    assert r.status == 200, r.body
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(40)
    assert not errors, errors
    before = [s for t, s in results if t < revoked_at[0]]
    after = [s for t, s in results if t > revoked_at[0]]
    assert before.count(200) > 50, "too little load before the revoke: %d" % len(before)
    assert len(after) > 50, "too little load after the revoke: %d" % len(after)
    late = [s for s in after if s != 401]
    assert not late, "%d requests sent after the revoke returned got %s" % (
        len(late), sorted(set(late)))


# ---------------------------------------------------------------- spend

def usage_cost(prompt, completion, model):
    """micro-USD as the gateway charges: ceil over the request, prices in micro per Mtok."""
    i, o = PRICES[model]
    num = prompt * round(i * 1e6) + completion * round(o * 1e6)
    return -(-num // 1000000)


def send_and_account(gw_port, key, n_openai, n_anthropic):
    """Requests on gpt-acct and claude-acct; the expected totals from the mock's usage."""
    want = {"gpt-acct": [0, 0, 0, 0], "claude-acct": [0, 0, 0, 0]}  # usd, in, out, requests
    for i in range(n_openai):
        body = chat_body("gpt-acct", max_tokens=50,
                         messages=[{"role": "user", "content": "count me " * (i + 1)}])
        r = request(gw_port, "POST", "/v1/chat/completions", body, key=key)
        assert r.status == 200, r.body
        u = r.json()["usage"]
        w = want["gpt-acct"]
        w[0] += usage_cost(u["prompt_tokens"], u["completion_tokens"], "gpt-acct")
        w[1] += u["prompt_tokens"]
        w[2] += u["completion_tokens"]
        w[3] += 1
    for i in range(n_anthropic):
        r = anthropic_request(gw_port, key, model="claude-acct")
        assert r.status == 200, r.body
        u = r.json()["usage"]
        prompt = u["input_tokens"] + u.get("cache_read_input_tokens", 0)
        w = want["claude-acct"]
        w[0] += usage_cost(prompt, u["output_tokens"], "claude-acct")
        w[1] += prompt
        w[2] += u["output_tokens"]
        w[3] += 1
    return want


def spend_report(data_dir, by, *extra):
    p = ctl("spend", "--by", by, "--data-dir", str(data_dir), "--json", *extra)
    return json.loads(p.stdout)


def row(doc, field, value):
    rows = [r for r in doc["data"] if r.get(field) == value]
    assert len(rows) <= 1, doc
    return rows[0] if rows else None


def as_tuple(r):
    return None if r is None else (r["micro_usd"], r["input_tokens"], r["output_tokens"],
                                   r["requests"])


def test_spend_reports_match_the_usage(stack):
    doc = create_key(stack, name="acct-key", team="acct")
    want = send_and_account(stack.gw.port, doc["key"], 6, 4)
    total = [sum(v[i] for v in want.values()) for i in range(4)]

    def ledger_has_all():
        r = row(spend_report(stack.dir, "team"), "team", "acct")
        return r is not None and r["requests"] == total[3]
    wait_until(ledger_has_all, 10, what="the ledger to commit")

    by_team = spend_report(stack.dir, "team")
    assert as_tuple(row(by_team, "team", "acct")) == tuple(total), by_team
    by_model = spend_report(stack.dir, "model")
    for m, w in want.items():
        assert as_tuple(row(by_model, "model", m)) == tuple(w), (m, by_model)
    by_key = spend_report(stack.dir, "key")
    k = row(by_key, "key", doc["id"])
    assert k and k["name"] == "acct-key" and k["team"] == "acct", by_key
    assert as_tuple(k) == tuple(total), by_key
    assert abs(row(by_team, "team", "acct")["usd"] - total[0] / 1e6) < 1e-9

    # the admin API gives the same numbers, named the same way
    api = admin(stack, "GET", "/admin/spend?by=key").json()
    assert as_tuple(row(api, "key", doc["id"])) == tuple(total), api
    api = admin(stack, "GET", "/admin/spend?by=model").json()
    for m, w in want.items():
        assert as_tuple(row(api, "model", m)) == tuple(w), api
    p = ctl("spend", "--by", "team", "--via-admin", admin_port=stack.admin_port)
    assert "acct" in p.stdout and "TOTAL" in p.stdout, p.stdout

    # days: today is in, a range that ends yesterday is empty
    today = time.strftime("%Y-%m-%d", time.gmtime())
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    r = spend_report(stack.dir, "team", "--since", today, "--until", today)
    assert as_tuple(row(r, "team", "acct")) == tuple(total), r
    r = spend_report(stack.dir, "team", "--until", yesterday)
    assert row(r, "team", "acct") is None and r["until"] == yesterday, r

    # the team's budget status counts the same spend
    teams = admin(stack, "GET", "/admin/teams").json()["data"]
    acct = [t for t in teams if t["name"] == "acct"][0]
    assert acct["budget"]["spent_micro_usd"] == total[0], acct
    assert acct["budget"]["limit_micro_usd"] == 50000000 and acct["budget"]["period"] == "daily"

    # the human table
    p = ctl("spend", "--by", "model", "--data-dir", str(stack.dir))
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("gpt-acct ")][0]
    usd = want["gpt-acct"][0]
    assert "%d.%06d" % (usd // 1000000, usd % 1000000) in line, p.stdout


def test_budget_alerts_are_listed(stack):
    doc = create_key(stack, name="tiny-key", team="tiny")
    alerts = admin(stack, "GET", "/admin/alerts").json()["data"]
    assert not [a for a in alerts if a["id"] == "tiny"], alerts
    spent = 0
    for _ in range(10):  # the team's budget is 1000 micro-dollars: a few requests pass 50 %
        r = stack.gw.chat(model="gpt-test", key=doc["key"], max_tokens=20)
        if r.status != 200:
            break
        u = r.json()["usage"]
        spent += usage_cost(u["prompt_tokens"], u["completion_tokens"], "gpt-test")
        if spent >= 500:
            break
    assert spent >= 500, "the budget refused before half of it was spent: %d" % spent
    want = [p for p in (50, 80, 100) if spent * 100 >= p * 1000]

    def listed():
        got = admin(stack, "GET", "/admin/alerts").json()["data"]
        return sorted(a["percent"] for a in got if a["scope"] == "team" and a["id"] == "tiny")
    wait_until(lambda: listed() == want, 5, what="alerts %s" % want)
    a = [a for a in admin(stack, "GET", "/admin/alerts").json()["data"] if a["id"] == "tiny"][0]
    assert a["dimension"] == "usd" and a["limit"] == 1000 and a["spent"] == spent, a
    assert a["period"] == "daily", a
    team = [t for t in admin(stack, "GET", "/admin/teams").json()["data"]
            if t["name"] == "tiny"][0]
    assert sorted(x["percent"] for x in team["budget"]["alerts"]) == want, team
    p = ctl("alerts", admin_port=stack.admin_port)
    assert [ln for ln in p.stdout.splitlines() if ln.startswith("team ") and " tiny " in ln], \
        p.stdout
    p = ctl("teams", admin_port=stack.admin_port)
    assert [ln for ln in p.stdout.splitlines() if ln.startswith("tiny ")], p.stdout


@harness.timeout(120)
def test_spend_survives_kill_9_and_restart(env):
    s, port = admin_stack(env.stack)
    key = create_key(port, name="crash-key", team="acct")
    want = send_and_account(s.gw.port, key["key"], 5, 3)
    total = tuple(sum(v[i] for v in want.values()) for i in range(4))
    wait_until(lambda: as_tuple(row(spend_report(s.dir, "team"), "team", "acct")) == total,
               10, what="the ledger to commit")
    before = {by: spend_report(s.dir, by) for by in ("team", "key", "model")}

    s.gw.proc.signal(signal.SIGKILL)
    assert s.gw.proc.wait(10) == -signal.SIGKILL
    s.gw.proc.stop()  # reap and close its log
    # nothing changes on disk while the gateway is down, nor when it comes back
    assert {by: spend_report(s.dir, by) for by in before} == before
    s.gw.start()
    wait_until(lambda: _healthy(port), 10, what="admin listener after restart")
    assert {by: spend_report(s.dir, by) for by in before} == before
    # the key survived too, and so did its team's spend in the budget
    assert s.gw.chat(model="gpt-acct", key=key["key"]).status == 200
    teams = admin(port, "GET", "/admin/teams").json()["data"]
    acct = [t for t in teams if t["name"] == "acct"][0]
    assert acct["budget"]["spent_micro_usd"] >= total[0], acct

    more = send_and_account(s.gw.port, key["key"], 2, 0)
    grown = total[3] + 1 + 2
    wait_until(lambda: row(spend_report(s.dir, "team"), "team", "acct")["requests"] == grown,
               10, what="the ledger after restart")
    after = row(spend_report(s.dir, "model"), "model", "gpt-acct")
    assert after["requests"] == want["gpt-acct"][3] + 3, after
    assert after["micro_usd"] > want["gpt-acct"][0] + more["gpt-acct"][0] - 1, after
