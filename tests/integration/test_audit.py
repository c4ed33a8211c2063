"""test_audit.py - the audit trail against the real gateway, LMDB on disk and mockllm: one
record per request with the right fields (served, 401, 403, 429, upstream failure, stream,
translated, fallback), audit cost agreeing with the spend ledger, kill -9 in batch and
strict durability, the hash chain (verify, then a flipped byte found), streamed exports
with bounded memory, query filters and the admin endpoint, retention pruning under load
within the commit-latency bound, audit.enabled false, and prompt and response bodies for a
team with audit_bodies (redacted, bounded; none for other teams)."""
import csv
import io
import json
import signal
import subprocess
import threading
import time

import harness
from harness import chat_body, request, wait_until
from test_admin import ADMIN_TOKEN, PRICES, _healthy, admin, create_key, ctl, \
    penstockctl_bin, row, spend_report, usage_cost


def settings(admin_port, durability="batch", audit=None):
    def model(name, targets, **kw):
        i, o = PRICES.get(name, (1.0, 2.0))
        m = {"name": name, "price": {"input_per_mtok": i, "output_per_mtok": o},
             "targets": [{"provider": p, "model": u} for p, u in targets]}
        m.update(kw)
        return m
    return {
        "admin": {"listen": "127.0.0.1:%d" % admin_port, "token": ADMIN_TOKEN},
        "audit": audit or {"durability": durability, "retention_days": 90},
        "retry": {"attempts": 3},
        "models": [
            model("gpt-acct", [("mock", harness.UPSTREAM_MODEL)]),
            model("claude-acct", [("mock-anthropic", harness.ANTHROPIC_UPSTREAM_MODEL)],
                  max_tokens=1024),
            model("gpt-fb", [("dead", "gone-model"), ("mock", harness.UPSTREAM_MODEL)],
                  routing="priority"),
            model("gpt-dead", [("dead", "gone-model")]),
        ],
        "teams": [
            {"name": "acct", "budget": {"usd": 50, "period": "daily"}},
            {"name": "narrow", "models": ["gpt-acct"]},
            {"name": "slow", "limits": {"rpm": 1}},
            {"name": "bodies", "audit_bodies": True},
        ],
    }


def audit_stack(make, durability="batch", workers=2, audit=None):
    port = harness.free_port()
    s = make(workers=workers, dead_provider=True, settings=settings(port, durability, audit))
    s.admin_port = port
    wait_until(lambda: _healthy(port), 10, what="admin listener")
    return s


def make_stack():
    return audit_stack(harness.Stack)


def export(data_dir, *args, fmt="jsonl"):
    p = ctl("audit", "export", "--format", fmt, "--data-dir", str(data_dir), *args)
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(p.stdout)))
    return [json.loads(ln) for ln in p.stdout.splitlines()]


def records_by_id(data_dir):
    return {r["request_id"]: r for r in export(data_dir)}


def wait_records(data_dir, ids):
    got = {}

    def all_there():
        got.update(records_by_id(data_dir))
        return all(i in got for i in ids)
    wait_until(all_there, 10, what="audit records of %s" % (ids,))
    return got


def verified(data_dir):
    p = ctl("audit", "verify", "--data-dir", str(data_dir), "--json")
    return json.loads(p.stdout)["checked"]


def rid(r):
    v = r.header("x-request-id")
    assert v, r
    return v


def test_every_request_leaves_one_record(stack):
    gw = stack.gw.port
    key = create_key(stack, name="audited", team="acct")
    narrow = create_key(stack, name="narrow", team="narrow")
    slow = create_key(stack, name="slow", team="slow")
    cases = {}

    def send(name, body, path="/v1/chat/completions", key=key["key"], headers=None):
        r = request(gw, "POST", path, body, key=key, headers=headers)
        cases[name] = (rid(r), r)
        return r

    assert send("ok", chat_body("gpt-acct", max_tokens=20)).status == 200
    assert send("stream", chat_body("gpt-acct", stream=True, max_tokens=20)).status == 200
    assert send("translated", chat_body("claude-acct", max_tokens=20)).status == 200
    assert send("fallback", chat_body("gpt-fb", max_tokens=20)).status == 200
    assert send("bad_key", chat_body("gpt-acct"), key="sk-nope").status == 401
    assert send("forbidden", chat_body("claude-acct"), key=narrow["key"]).status == 403
    assert send("limited1", chat_body("gpt-acct"), key=slow["key"]).status == 200
    assert send("limited", chat_body("gpt-acct"), key=slow["key"]).status == 429
    assert send("dead", chat_body("gpt-dead")).status == 502
    assert send("upstream500", chat_body("gpt-acct"), headers={"x-mock-status": "500"}).status \
        == 500

    recs = wait_records(stack.dir, [v[0] for v in cases.values()])
    # exactly one record per request id
    ids = [r["request_id"] for r in export(stack.dir)]
    for name, (i, _) in cases.items():
        assert ids.count(i) == 1, (name, i)

    ok = recs[cases["ok"][0]]
    u = cases["ok"][1].json()["usage"]
    assert ok["status"] == 200 and ok["key_id"] == key["id"] and ok["team"] == "acct", ok
    assert ok["model"] == "gpt-acct" and ok["provider"] == "mock", ok
    assert ok["upstream_model"] == harness.UPSTREAM_MODEL and ok["dialect"] == "openai", ok
    assert ok["prompt_tokens"] == u["prompt_tokens"], ok
    assert ok["completion_tokens"] == u["completion_tokens"], ok
    assert ok["cost_micro_usd"] == usage_cost(u["prompt_tokens"], u["completion_tokens"],
                                              "gpt-acct"), ok
    assert ok["usage"] == "provider" and ok["stream"] is False and ok["fallbacks"] == 0, ok
    assert ok["client"].startswith("127.0.0.1:"), ok
    assert ok["latency_us"]["total"] > 0 and ok["latency_us"]["first_byte"] > 0, ok
    assert ok["latency_us"]["upstream"] > 0, ok
    assert ok["guardrail"] is None and ok["cache"] is None and len(ok["hash"]) == 64, ok
    assert "psk-" not in json.dumps(recs), "a key's secret in the audit trail"

    st = recs[cases["stream"][0]]
    assert st["stream"] is True and st["status"] == 200 and st["completion_tokens"] > 0, st
    tr = recs[cases["translated"][0]]
    assert tr["provider"] == "mock-anthropic" and tr["dialect"] == "openai", tr
    assert tr["upstream_model"] == harness.ANTHROPIC_UPSTREAM_MODEL, tr
    fb = recs[cases["fallback"][0]]
    assert fb["status"] == 200 and fb["fallbacks"] == 1 and fb["provider"] == "mock", fb
    assert fb["attempts"][0]["provider"] == "dead" and fb["attempts"][0]["error"], fb
    assert fb["attempts"][1]["status"] == 200, fb
    bad = recs[cases["bad_key"][0]]
    assert bad["status"] == 401 and bad["key_id"] is None and bad["cost_micro_usd"] == 0, bad
    fo = recs[cases["forbidden"][0]]
    assert fo["status"] == 403 and fo["key_id"] == narrow["id"], fo
    assert fo["model"] == "claude-acct" and fo["provider"] is None and not fo["attempts"], fo
    li = recs[cases["limited"][0]]
    assert li["status"] == 429 and li["team"] == "slow" and li["usage"] is None, li
    de = recs[cases["dead"][0]]
    assert de["status"] == 502 and de["provider"] is None and de["cost_micro_usd"] == 0, de
    assert de["attempts"] and all(a["error"] for a in de["attempts"]), de
    u5 = recs[cases["upstream500"][0]]
    assert u5["status"] == 500 and u5["attempts"][-1]["status"] == 500, u5

    # the Anthropic dialect is recorded as such
    body = json.dumps({"model": "claude-acct", "max_tokens": 16,
                       "messages": [{"role": "user", "content": "hi"}]})
    r = request(gw, "POST", "/v1/messages", body, key=None,
                headers={"x-api-key": key["key"], "anthropic-version": "2023-06-01"})
    assert r.status == 200, r.body
    a = wait_records(stack.dir, [rid(r)])[rid(r)]
    assert a["dialect"] == "anthropic" and a["provider"] == "mock-anthropic", a


def test_audit_cost_equals_the_ledger(stack):
    key = create_key(stack, name="ledger", team="acct")
    for i in range(6):
        model = "gpt-acct" if i % 2 else "claude-acct"
        r = request(stack.gw.port, "POST", "/v1/chat/completions",
                    chat_body(model, max_tokens=10 + i, stream=i % 3 == 0), key=key["key"])
        assert r.status == 200, r.body
    # quiet: every record and every ledger increment committed
    time.sleep(0.2)
    recs = export(stack.dir)
    ledger = spend_report(stack.dir, "model")
    for model in ("gpt-acct", "claude-acct"):
        audited = sum(r["cost_micro_usd"] for r in recs if r["model"] == model)
        n = sum(1 for r in recs if r["model"] == model and r["usage"])
        lr = row(ledger, "model", model)
        assert lr["micro_usd"] == audited and lr["requests"] == n, (model, lr, audited, n)


def test_verify_then_tamper(env):
    s = audit_stack(env.stack)
    ids = [rid(s.gw.chat(model="gpt-acct")) for _ in range(5)]
    wait_records(s.dir, ids)
    p = ctl("audit", "verify", "--data-dir", str(s.dir))
    assert "audit chain ok" in p.stdout, p.stdout
    victim = [r for r in export(s.dir) if r["request_id"] == ids[2]][0]
    s.gw.stop()
    # an edit in the data file behind LMDB's back: the model name in the victim's record
    # (every copy of its page, live or free, so whichever is current is changed)
    path = s.dir / "data.mdb"
    data = bytearray(path.read_bytes())
    needle = ids[2].encode()
    at, n = data.find(needle), 0
    while at >= 0:
        m = data.find(b"gpt-acct", at)
        data[m] ^= 0x01
        n += 1
        at = data.find(needle, at + 1)
    assert n, "the record is not in the file"
    path.write_bytes(bytes(data))
    p = ctl("audit", "verify", "--data-dir", str(s.dir), check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "BROKEN at record seq %d" % victim["seq"] in p.stderr, (victim["seq"], p.stderr)
    s.gw.start()  # the gateway still starts on a tampered log; verify keeps saying so


def test_query_filters_and_admin_endpoint(stack):
    a = create_key(stack, name="qa", team="acct")
    b = create_key(stack, name="qb", team="narrow")
    t0 = time.time_ns()
    for _ in range(3):
        assert request(stack.gw.port, "POST", "/v1/chat/completions",
                       chat_body("gpt-acct", max_tokens=5), key=a["key"]).status == 200
    assert request(stack.gw.port, "POST", "/v1/chat/completions",
                   chat_body("claude-acct"), key=b["key"]).status == 403
    assert request(stack.gw.port, "POST", "/v1/chat/completions",
                   chat_body("gpt-acct", max_tokens=5), key=b["key"]).status == 200
    wait_until(lambda: len(export(stack.dir, "--since", str(t0))) >= 5, 10, what="records")
    since = ("--since", str(t0))
    assert len(export(stack.dir, "--key", a["id"], *since)) == 3
    assert len(export(stack.dir, "--team", "narrow", *since)) == 2
    assert len(export(stack.dir, "--team", "narrow", "--status", "4xx", *since)) == 1
    assert len(export(stack.dir, "--team", "narrow", "--status", "200", *since)) == 1
    assert len(export(stack.dir, "--model", "claude-acct", "--key", b["id"], *since)) == 1
    assert export(stack.dir, "--until", str(t0), "--key", a["id"]) == []
    p = ctl("audit", "query", "--data-dir", str(stack.dir), "--key", a["id"], "--limit", "2")
    lines = p.stdout.splitlines()
    assert lines[0].startswith("time") and len(lines) == 3 and "gpt-acct" in lines[1], p.stdout
    rows = export(stack.dir, "--key", a["id"], fmt="csv")
    assert len(rows) == 3 and rows[0]["model"] == "gpt-acct" and rows[0]["status"] == "200"
    # the admin API answers the same question
    r = admin(stack, "GET", "/admin/audit?key=%s&since=%d" % (a["id"], t0))
    assert r.status == 200, r.body
    data = r.json()["data"]
    assert len(data) == 3 and all(d["key_id"] == a["id"] for d in data), data
    r = admin(stack, "GET", "/admin/audit?team=narrow&status=403&since=%d&limit=5" % t0)
    assert [d["status"] for d in r.json()["data"]] == [403], r.body
    assert admin(stack, "GET", "/admin/audit?status=abc").status == 400
    assert admin(stack, "GET", "/admin/audit?colour=red").status == 400
    for bad in (["--status", "20"], ["--since", "yesterday"], ["--format", "xml"]):
        p = ctl("audit", "export", "--data-dir", str(stack.dir), *bad, check=False)
        assert p.returncode == 2, (bad, p.stderr)


@harness.timeout(120)
def test_kill_9_batch_keeps_spend_and_audit_together(env):
    s = audit_stack(env.stack, workers=2)
    key = create_key(s.admin_port, name="crash", team="acct")
    sent = 0
    deadline = time.time() + 1.0
    while time.time() < deadline:
        r = request(s.gw.port, "POST", "/v1/chat/completions",
                    chat_body("gpt-acct", max_tokens=5), key=key["key"])
        assert r.status == 200, (sent, r.status, r.body[:300])
        sent += 1
    s.gw.proc.signal(signal.SIGKILL)
    s.gw.proc.wait(10)
    s.gw.proc.stop()
    recs = [r for r in export(s.dir) if r["key_id"] == key["id"]]
    lr = row(spend_report(s.dir, "model"), "model", "gpt-acct")
    audited = sum(r["cost_micro_usd"] for r in recs)
    assert lr["micro_usd"] == audited and lr["requests"] == len(recs), (lr, audited, len(recs))
    lost = sent - len(recs)
    print("batch kill -9: %d sent, %d audited, %d lost (the last commit window)" % (
        sent, len(recs), lost))
    assert 0 <= lost <= sent, (sent, len(recs))
    assert "audit chain ok" in ctl("audit", "verify", "--data-dir", str(s.dir)).stdout


@harness.timeout(120)
def test_kill_9_strict_loses_no_answered_request(env):
    s = audit_stack(env.stack, durability="strict")
    key = create_key(s.admin_port, name="strict", team="acct")
    answered = []
    for i in range(60):  # plain, streamed, translated (whole and streamed), refused
        model = "claude-acct" if i % 3 == 2 else "gpt-acct"
        r = request(s.gw.port, "POST", "/v1/chat/completions",
                    chat_body(model, max_tokens=5, stream=i % 2 == 1),
                    key="sk-wrong" if i % 10 == 9 else key["key"])
        assert r.status == (401 if i % 10 == 9 else 200) and r.complete, r
        answered.append(rid(r))
    s.gw.proc.signal(signal.SIGKILL)
    s.gw.proc.wait(10)
    s.gw.proc.stop()
    have = {r["request_id"] for r in export(s.dir)}
    missing = [i for i in answered if i not in have]
    assert not missing, "answered but not audited: %s" % missing


@harness.timeout(180)
def test_export_streams_10k_records(env):
    s = audit_stack(env.stack, workers=2)
    key = create_key(s.admin_port, name="bulk", team="acct")
    body = chat_body("gpt-acct", max_tokens=1)
    n = 10000
    with s.gw.conn() as c:  # one keep-alive connection, pipelined in batches
        raw = harness.build_request("POST", "/v1/chat/completions", body, key=key["key"])
        done = 0
        while done < n:
            k = min(100, n - done)
            c.send(raw * k)
            for _ in range(k):
                assert c.read_response().status == 200
            done += k
    wait_until(lambda: verified(s.dir) >= n, 20, what="10k records")
    for fmt in ("jsonl", "csv"):
        argv = [str(penstockctl_bin()), "audit", "export", "--format", fmt, "--data-dir",
                str(s.dir), "--key", key["id"]]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines, peak = 0, 0
        for _ in p.stdout:
            lines += 1
            if lines % 1000 == 0:
                try:
                    with open("/proc/%d/status" % p.pid) as f:
                        for ln in f:
                            if ln.startswith("VmRSS:"):
                                peak = max(peak, int(ln.split()[1]))
                except OSError:
                    pass
        assert p.wait(60) == 0, p.stderr.read()
        assert lines == n + (1 if fmt == "csv" else 0), (fmt, lines)
        print("export %s of %d records: peak RSS %d KiB" % (fmt, n, peak))
        assert peak < 64 * 1024, "penstockctl RSS %d KiB while exporting" % peak


# docs/audit.md, Retention: the bound on a commit's wait behind pruning, as tested here.
COMMIT_BOUND_S = 0.25


def store_metrics(port):
    r = admin(port, "GET", "/metrics")
    assert r.status == 200, r
    out = {}
    for ln in r.body.decode().splitlines():
        if ln.startswith("penstock_store_") and " " in ln:
            name, value = ln.rsplit(" ", 1)
            out[name] = float(value)
    return out


def pipelined_load(gw, key, until):
    """One keep-alive connection, 50 requests in flight at a time, until the deadline."""
    raw = harness.build_request("POST", "/v1/chat/completions",
                                chat_body("gpt-acct", max_tokens=1), key=key)
    sent = 0
    with gw.conn() as c:
        while time.time() < until:
            c.send(raw * 50)
            for _ in range(50):
                assert c.read_response().status == 200
            sent += 50
    return sent


@harness.timeout(120)
def test_retention_prunes_under_load_without_stall(env):
    retention_s = 1.5
    s = audit_stack(env.stack, workers=2, audit={"retention_days": 90,
                                                  "test_retention_ms": int(retention_s * 1000)})
    key = create_key(s.admin_port, name="retain", team="acct")
    results = []
    end = time.time() + 5.0
    threads = [threading.Thread(target=lambda: results.append(
        pipelined_load(s.gw, key["key"], end))) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(4.0)
    during = store_metrics(s.admin_port)  # pruning happened while requests flowed
    for t in threads:
        t.join(60)
    sent = sum(results)
    assert len(results) == 2 and sent > 0
    assert during["penstock_store_audit_pruned_total"] > 0, during

    # Every record older than the retention (plus one idle look, 1 s, and slack) is gone.
    def old_gone():
        recs = export(s.dir)
        oldest = min((r["seq"] for r in recs), default=None)
        return oldest is None or oldest >= (time.time() - retention_s - 2.0) * 1e9
    wait_until(old_gone, 10, interval=0.2, what="records past the retention pruned")
    p = ctl("audit", "verify", "--data-dir", str(s.dir), "--json")
    v = json.loads(p.stdout)
    assert v["ok"] and v["anchor"] > 0, v

    m = store_metrics(s.admin_port)
    pruned = m["penstock_store_audit_pruned_total"]
    commit_max = m["penstock_store_commit_seconds_max"]
    prune_max = m["penstock_store_prune_seconds_max"]
    over = m["penstock_store_commit_seconds_count"] - \
        m['penstock_store_commit_seconds_bucket{le="0.25"}']
    print("retention under load: %d requests, %d records pruned, %d commits; longest commit "
          "%.1f ms, longest pruning transaction %.1f ms" % (
              sent, pruned, m["penstock_store_commit_seconds_count"], commit_max * 1e3,
              prune_max * 1e3))
    assert pruned >= sent // 4, (pruned, sent)
    assert prune_max > 0 and prune_max < COMMIT_BOUND_S, prune_max
    assert commit_max < COMMIT_BOUND_S and over == 0, (commit_max, over)


def test_audit_off_persists_spend_only(env):
    s = audit_stack(env.stack, workers=1, audit={"enabled": False})
    key = create_key(s.admin_port, name="quiet", team="acct")
    for _ in range(5):
        r = request(s.gw.port, "POST", "/v1/chat/completions",
                    chat_body("gpt-acct", max_tokens=5), key=key["key"])
        assert r.status == 200
    assert request(s.gw.port, "POST", "/v1/chat/completions", chat_body("gpt-acct"),
                   key="sk-wrong").status == 401
    wait_until(lambda: (row(spend_report(s.dir, "model"), "model", "gpt-acct") or {}).get(
        "requests") == 5, 10, what="spend of 5 requests")
    assert export(s.dir) == []
    assert "audit is disabled" in s.gw.proc.stderr()


FAKE_OPENAI_KEY = "sk-proj-" + "Zq7" * 10
FAKE_AWS_ID = "AKIA" + "QWERTYUIOP123456"


def test_bodies_redacted_bounded_and_per_team(env):
    s = audit_stack(env.stack, workers=1,
                    audit={"durability": "batch", "body_max_bytes": 2048})
    gw = s.gw.port
    keeps = create_key(s.admin_port, name="keeps", team="bodies")
    other = create_key(s.admin_port, name="other", team="acct")
    prompt = "my key is %s and my AWS id %s, keep them safe" % (FAKE_OPENAI_KEY, FAKE_AWS_ID)

    def send(key, model="gpt-acct", content=prompt, **kw):
        body = json.dumps({"model": model, "max_tokens": 8,
                           "messages": [{"role": "user", "content": content}], **kw})
        r = request(gw, "POST", "/v1/chat/completions", body, key=key["key"])
        assert r.status == 200, r.body
        return r

    same = send(keeps)
    translated = send(keeps, model="claude-acct")
    streamed = send(keeps, stream=True, max_tokens=3)  # its events fit the 2 KiB bound
    big = send(keeps, content="word " * 2000)
    plain = send(other)
    ids = [rid(r) for r in (same, translated, streamed, big, plain)]
    recs = wait_records(s.dir, ids)
    got = [recs[i] for i in ids]

    text = json.dumps(got)
    assert FAKE_OPENAI_KEY not in text and FAKE_AWS_ID not in text, "a secret was stored"
    for r in got[:2]:
        assert "my key is [REDACTED] and my AWS id [REDACTED], keep them safe" in \
            json.loads(r["request_body"])["messages"][0]["content"], r
    # the answer as the client got it: the provider's bytes, or the translated body
    assert got[0]["response_body"] == same.body.decode(), got[0]
    assert got[1]["response_body"] == translated.body.decode(), got[1]
    assert json.loads(got[1]["response_body"])["object"] == "chat.completion", got[1]
    assert got[0]["response_streamed"] is False
    # a stream: its request, and its events as they passed (the usage chunk the gateway
    # asked for may be among them)
    assert "[REDACTED]" in got[2]["request_body"], got[2]
    assert got[2]["response_streamed"] is True, got[2]
    events = [line[6:] for line in got[2]["response_body"].split("\n")
              if line.startswith("data: ")]
    assert events[-1] == "[DONE]", got[2]["response_body"]
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1] if json.loads(e)["choices"])
    client_text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                          for e in streamed.sse_events()[:-1] if json.loads(e)["choices"])
    assert text == client_text and text, (text, client_text)
    # over the bound: cut, the marker within it
    cut = got[3]["request_body"]
    assert len(cut.encode()) <= 2048 and cut.endswith("[TRUNCATED]"), cut[-40:]
    assert cut.startswith('{"model": "gpt-acct"'), cut[:40]
    # a team without audit_bodies keeps none
    assert got[4]["request_body"] is None and got[4]["response_body"] is None, got[4]
    assert got[4]["response_streamed"] is False

    rows = {r["request_id"]: r for r in export(s.dir, "--team", "bodies", fmt="csv")}
    assert "[REDACTED]" in rows[ids[0]]["request_body"], rows[ids[0]]
    assert rows[ids[0]]["response_body"] == same.body.decode()
    assert FAKE_OPENAI_KEY not in json.dumps(rows)
    r = admin(s, "GET", "/admin/audit?team=bodies&limit=10")
    assert r.status == 200, r.body
    data = {d["request_id"]: d for d in r.json()["data"]}
    assert data[ids[0]]["request_body"] == got[0]["request_body"], data
