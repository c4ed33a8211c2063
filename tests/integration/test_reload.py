"""Hot reload (issue 6): SIGHUP and POST /admin/reload apply a new catalog and routing to
keep-alive connections already open; a bad file or a change only a restart can apply is
refused with the reason and the old configuration keeps serving; a stream in flight
finishes on the snapshot it began on; 100 reloads under load fail no request and leave one
snapshot in memory afterwards."""
import json
import signal
import subprocess
import threading
import time

import harness as h

ADMIN_TOKEN = "reload-admin-token-0123456789"
UP = h.UPSTREAM_MODEL


def target(provider, weight=1):
    return {"provider": provider, "model": UP, "weight": weight}


def admin_up(port):
    try:
        return h.request(port, "GET", "/healthz", key=None, timeout=2).status == 200
    except OSError:  # not listening yet
        return False


def reload_stack(env, mocks, models, workers=2):
    """A stack with an admin listener (token set) whose config the test rewrites."""
    admin_port = h.free_port()
    s = env.stack(workers=workers, mocks=mocks, settings={
        "admin": {"listen": "127.0.0.1:%d" % admin_port, "token": ADMIN_TOKEN},
        "models": models})
    h.wait_until(lambda: admin_up(admin_port), 10, what="admin listener")
    s.admin_port = admin_port
    return s


def rewrite(s, **top):
    """Write the running config again with some top-level keys replaced."""
    cfg = dict(s.gw.config, **top)
    s.gw.config_path.write_text(h.to_yaml(cfg) + "\n")
    return cfg


def admin_reload(s):
    return h.request(s.admin_port, "POST", "/admin/reload", body=b"", key=ADMIN_TOKEN)


def scrape(s):
    r = h.request(s.admin_port, "GET", "/metrics", key=None)
    assert r.status == 200, r
    out = {}
    for line in r.body.decode().splitlines():
        if line.startswith("penstock_config"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def provider_of(conn, model):
    conn.send_request("POST", "/v1/chat/completions", h.chat_body(model))
    r = conn.read_response()
    assert r.status == 200, r
    return r.header("x-penstock-provider")


def test_sighup_and_admin_reload_apply_to_open_connections(env):
    s = reload_stack(env, {"a": [], "b": []}, [
        {"name": "r", "targets": [target("a")]},
        {"name": "gone", "targets": [target("a")]},
        {"name": "gpt-test", "targets": [target("mock")]}])
    with s.gw.conn() as c:
        assert provider_of(c, "r") == "a"
        # SIGHUP: "r" moves to b, "gone" goes, "new" comes; the same connection sees it
        rewrite(s, models=[{"name": "r", "targets": [target("b")]},
                           {"name": "new", "targets": [target("b")]},
                           {"name": "gpt-test", "targets": [target("mock")]}])
        s.gw.proc.signal(signal.SIGHUP)
        s.gw.proc.wait_log(r"configuration reloaded: generation 2, ", timeout=10)
        assert provider_of(c, "r") == "b"
        assert provider_of(c, "new") == "b"
        c.send_request("POST", "/v1/chat/completions", h.chat_body("gone"))
        r = c.read_response()
        h.assert_openai_error(r, 404, code="model_not_found")
        # the admin API: back to a, and the answer says which generation is in effect
        rewrite(s, models=[{"name": "r", "targets": [target("a")]},
                           {"name": "gpt-test", "targets": [target("mock")]}])
        r = admin_reload(s)
        assert r.status == 200, r
        assert r.json() == {"reloaded": True, "generation": 3, "providers": 4, "models": 2}
        assert provider_of(c, "r") == "a"
        listed = json.loads(s.gw.request("GET", "/v1/models").body)
        assert sorted(m["id"] for m in listed["data"]) == ["gpt-test", "r"], listed
    m = scrape(s)
    assert m["penstock_config_generation"] == 3, m
    assert m['penstock_config_reloads_total{result="applied"}'] == 2, m
    assert m['penstock_config_reloads_total{result="refused"}'] == 0, m


def test_a_bad_config_is_refused_and_the_old_one_stays(env):
    s = reload_stack(env, {"a": []}, [{"name": "r", "targets": [target("a")]},
                                      {"name": "gpt-test", "targets": [target("mock")]}])
    good = s.gw.config_path.read_text()
    cases = [
        # not YAML the loader takes: the reason names file, line and column
        ("models:\n  - name: [\n", "penstock.yaml:"),
        # a target naming a provider that does not exist
        (h.to_yaml(dict(s.gw.config, models=[{"name": "r", "targets": [target("nope")]}])),
         "nope"),
        # what only a restart can apply
        (h.to_yaml(dict(s.gw.config, workers=3)), "workers changed"),
        (h.to_yaml(dict(s.gw.config, teams=[{"name": "t"}])), "a team added or removed"),
    ]
    for text, reason in cases:
        s.gw.config_path.write_text(text + "\n")
        r = admin_reload(s)
        assert r.status == 400, r
        msg = r.json()["error"]["message"]
        assert "reload refused" in msg and reason in msg, msg
        assert s.gw.chat("r").status == 200
    s.gw.config_path.write_text("listen: [\n")
    s.gw.proc.signal(signal.SIGHUP)
    s.gw.proc.wait_log(r"configuration reload refused, the running one stays", timeout=10)
    assert s.gw.chat("r").header("x-penstock-provider") == "a"
    m = scrape(s)
    assert m["penstock_config_generation"] == 1, m
    assert m['penstock_config_reloads_total{result="refused"}'] == 5, m
    s.gw.config_path.write_text(good)
    assert admin_reload(s).status == 200
    # the admin token is required
    r = h.request(s.admin_port, "POST", "/admin/reload", body=b"", key=None)
    assert r.status == 401, r


def test_a_stream_in_flight_finishes_on_its_snapshot(env):
    s = reload_stack(env, {"a": [], "b": []}, [
        {"name": "r", "targets": [target("a")]},
        {"name": "gpt-test", "targets": [target("mock")]}])
    body = h.chat_body("r", stream=True)
    headers = {"x-mock-event-delay-ms": "40", "x-mock-tokens": "20"}
    with s.gw.conn(timeout=20) as c:
        c.send_request("POST", "/v1/chat/completions", body, headers=headers)
        c.read_until(b"data: ", timeout=10)  # the stream has begun on a
        # the provider it runs on leaves the config altogether
        rewrite(s, providers=[p for p in s.gw.config["providers"] if p["name"] != "a"],
                models=[{"name": "r", "targets": [target("b")]},
                        {"name": "gpt-test", "targets": [target("mock")]}])
        assert admin_reload(s).status == 200
        assert s.gw.chat("r").header("x-penstock-provider") == "b"
        assert c.read_until(b"data: [DONE]", timeout=15), c.buf
        # every delta (20 tokens) and the finish, no error event
        assert c.buf.count(b"data: {") >= 21 and b'"error"' not in c.buf, c.buf
    assert s.mocks["a"].stats()["requests"] == 1
    # with no request left on it, the old generation is freed (idle workers too)
    h.wait_until(lambda: scrape(s)["penstock_config_snapshots"] == 1, 10,
                 what="the old snapshot freed")


@h.timeout(240)
def test_100_reloads_under_load_fail_nothing_and_leak_nothing(env):
    weighted = [{"name": "r", "routing": "weighted",
                 "targets": [target("a", 90), target("b", 10)]},
                {"name": "gpt-test", "targets": [target("mock")]}]
    latency = [{"name": "r", "routing": "latency", "targets": [target("a"), target("b")]},
               {"name": "gpt-test", "targets": [target("mock")]}]
    s = reload_stack(env, {"a": [], "b": []}, weighted)
    stop = threading.Event()
    errors, done = [], [0]
    lock = threading.Lock()

    def client(stream):
        body = h.chat_body("r", stream=stream)
        try:
            with s.gw.conn(timeout=20) as c:
                for _ in range(100000):  # bounded; stops when the reloads are over
                    if stop.is_set():
                        return
                    c.send_request("POST", "/v1/chat/completions", body)
                    r = c.read_response()
                    if r.status != 200 or (stream and b"[DONE]" not in r.body):
                        errors.append(r)
                        return
                    with lock:
                        done[0] += 1
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i % 2 == 1,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        # the load's own memory first (buffers, allocator arenas), then the baseline;
        # anonymous memory only: LMDB's file pages grow with every audit record
        time.sleep(2)
        rss_before = s.gw.rss_kb("RssAnon")
        for i in range(100):
            rewrite(s, models=latency if i % 2 == 0 else weighted)
            if i % 10 == 9:
                s.gw.proc.signal(signal.SIGHUP)
                gen = i + 2
                h.wait_until(lambda: scrape(s)["penstock_config_generation"] == gen, 10,
                             what="generation %d" % gen)
            else:
                r = admin_reload(s)
                assert r.status == 200, r
                assert r.json()["generation"] == i + 2, r.json()
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[0]
    assert done[0] > 300, done[0]
    h.wait_until(lambda: scrape(s)["penstock_config_snapshots"] == 1, 10,
                 what="every old snapshot freed")
    m = scrape(s)
    assert m["penstock_config_generation"] == 101, m
    assert m['penstock_config_reloads_total{result="applied"}'] == 100, m
    # memory back near the baseline (under ASan freed memory sits in its quarantine, and
    # its leak check at exit is the test instead)
    rss_after = s.gw.rss_kb("RssAnon")
    if not h.is_sanitized_build():
        assert rss_after - rss_before < 4 * 1024, (rss_before, rss_after)
    s.gw.assert_serving()


def test_team_rules_follow_a_reload(env):
    """A team's model list, rate limits and budget amount change in place; which teams
    there are and the budget's period take a restart."""
    priced = {"input_per_mtok": 100, "output_per_mtok": 100}

    def team(models, rpm, usd, period="monthly"):
        return [{"name": "t", "models": models, "limits": {"rpm": rpm},
                 "budget": {"usd": usd, "period": period}}]
    models = [{"name": "r", "price": priced, "targets": [target("a")]},
              {"name": "gpt-test", "price": priced, "targets": [target("mock")]}]
    admin_port = h.free_port()
    # one worker: the RPM pool is not lent out in parts to two
    s = env.stack(workers=1, mocks={"a": []}, settings={
        "admin": {"listen": "127.0.0.1:%d" % admin_port, "token": ADMIN_TOKEN},
        "models": models, "teams": team(["r"], 2, 100),
        "keys": [{"name": "tester", "team": "t", "key_env": "PENSTOCK_TEST_CLIENT_KEY"}]})
    h.wait_until(lambda: admin_up(admin_port), 10, what="admin listener")
    s.admin_port = admin_port
    h.assert_openai_error(s.gw.chat("gpt-test"), 403, code="model_not_allowed")
    assert s.gw.chat("r").status == 200
    assert s.gw.chat("r").status == 200
    h.assert_openai_error(s.gw.chat("r"), 429, code="rate_limit_exceeded")
    # the model list and the RPM change; the pool keeps its (empty) fill, refilling faster
    rewrite(s, teams=team(["r", "gpt-test"], 6000, 100))
    assert admin_reload(s).status == 200
    h.wait_until(lambda: s.gw.chat("gpt-test").status == 200, 5, what="the new limit")
    teams = h.request(admin_port, "GET", "/admin/teams", key=ADMIN_TOKEN).json()["data"]
    assert teams[0]["models"] == ["r", "gpt-test"] and teams[0]["limits"]["rpm"] == 6000, teams
    # a budget too small for any request, then a larger one: the spend so far stays
    rewrite(s, teams=team(["r", "gpt-test"], 6000, 0.000001))
    assert admin_reload(s).status == 200
    h.assert_openai_error(s.gw.chat("r"), 429, code="budget_exceeded")
    rewrite(s, teams=team(["r", "gpt-test"], 6000, 100))
    assert admin_reload(s).status == 200
    assert s.gw.chat("r").status == 200
    # what only a restart can apply
    for teams_, reason in [([], "a team added or removed"),
                           (team(["r"], 6000, 100, period="daily"), "budget period")]:
        rewrite(s, teams=teams_)
        r = admin_reload(s)
        assert r.status == 400 and reason in r.json()["error"]["message"], r
    # the last applied rules still hold (the pool refills at 100 a second)
    h.wait_until(lambda: s.gw.chat("gpt-test").status == 200, 5, what="a request admitted")


def test_penstockctl_reload(env):
    s = reload_stack(env, {"a": []}, [{"name": "r", "targets": [target("a")]},
                                      {"name": "gpt-test", "targets": [target("mock")]}])
    argv = [str(h.build_dir() / "tools" / "penstockctl"), "--admin",
            "http://127.0.0.1:%d" % s.admin_port, "reload"]
    envv = {"PENSTOCK_ADMIN_TOKEN": ADMIN_TOKEN, "PATH": "/usr/bin:/bin"}
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=envv)
    assert p.returncode == 0 and p.stdout == "reloaded: generation 2, 3 providers, 2 models\n", p
    rewrite(s, workers=5)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=envv)
    assert p.returncode == 1 and "workers changed" in p.stderr and "HTTP 400" in p.stderr, p
    assert s.gw.chat("r").status == 200


def test_upstream_connections_survive_a_reload(env):
    """A provider reached the same way after a reload keeps its pooled connections: no new
    connection (or TLS handshake) after each reload."""
    s = reload_stack(env, {"a": []}, [{"name": "r", "targets": [target("a")]},
                                      {"name": "gpt-test", "targets": [target("mock")]}],
                     workers=1)
    with s.gw.conn() as c:
        for _ in range(3):
            assert provider_of(c, "r") == "a"
        opened = s.mocks["a"].stats()["connections_accepted"]
        for i in range(3):
            # the model's routing changes; the provider's endpoint does not
            rewrite(s, models=[{"name": "r", "routing": "latency" if i % 2 == 0 else
                                "priority", "targets": [target("a")]},
                               {"name": "gpt-test", "targets": [target("mock")]}])
            assert admin_reload(s).status == 200
            for _ in range(3):
                assert provider_of(c, "r") == "a"
        # (each stats request is a connection of its own)
        assert s.mocks["a"].stats()["connections_accepted"] == opened + 1
        # a provider that moves elsewhere gets a pool of its own
        rewrite(s, providers=[dict(p, base_url=p["base_url"].replace("127.0.0.1", "127.1"))
                              if p["name"] == "a" else p for p in s.gw.config["providers"]])
        assert admin_reload(s).status == 200
        assert provider_of(c, "r") == "a"
        assert s.mocks["a"].stats()["connections_accepted"] == opened + 3
