"""Hostile and unlucky conditions: slow clients, upstreams that die or stall, clients
that vanish mid-stream (and what that leaves behind), many connections at once,
shutdown with requests in flight, the upstream connection pool."""
import resource
import selectors
import select
import signal
import socket
import time

import harness as h


def mock_open(mock):
    """Connections the mock has open, not counting the one asking."""
    return mock.stats()["connections_open"] - 1


def settle(what, get, want, timeout=5):
    """Wait until get() == want; fail showing the last value."""
    last = [None]

    def ok():
        last[0] = get()
        return last[0] == want
    try:
        h.wait_until(ok, timeout, interval=0.05, what=what)
    except AssertionError:
        raise AssertionError("%s: %r after %ss, expected %r" % (what, last[0], timeout, want))


def stable_fd_count(gw):
    """The gateway's fd count once it stops changing (a client we closed a moment ago may
    not be closed on its side yet)."""
    last = [gw.fd_count()]

    def same():
        time.sleep(0.1)
        now = gw.fd_count()
        ok, last[0] = now == last[0], now
        return ok
    h.wait_until(same, 5, interval=0, what="the gateway's fd count to settle")
    return last[0]


# ---------------------------------------------------------------- slow clients

def test_slowloris_is_disconnected(env):
    s = env.stack(timeouts={"header_read": "1s"})
    slow = socket.create_connection(("127.0.0.1", s.gw.port), timeout=5)
    env.defer(slow.close)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-slow: " + b"a" * 200
    sent, closed, served = 0, False, False
    t0 = time.monotonic()
    while time.monotonic() - t0 < 8:
        try:
            slow.send(head[sent:sent + 1])
            sent += 1
        except OSError:
            closed = True
            break
        readable, _, _ = select.select([slow], [], [], 0.2)
        if readable:
            try:
                data = slow.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed = True
                break
        if not served and time.monotonic() - t0 > 0.4:
            # another client is served normally meanwhile
            r = s.gw.chat()
            assert r.status == 200, r
            served = True
    assert closed, "a client trickling its head was still connected after 8 s " \
                   "(header_read 1s); it sent %d bytes" % sent
    assert served
    assert sent < len(head)
    s.gw.assert_serving()


def test_body_and_idle_timeouts(env):
    s = env.stack(timeouts={"body_read": "1s", "idle": "1s"})
    # a body that never completes
    with s.gw.conn() as c:
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        assert c.wait_closed(8), "a stalled body kept its connection past body_read"
    # an idle keep-alive connection
    with s.gw.conn() as c:
        c.send_request("GET", "/healthz", key=None)
        assert c.read_response(method="GET").status == 200
        assert c.wait_closed(8), "an idle keep-alive connection outlived the idle timeout"
    s.gw.assert_serving()


# ---------------------------------------------------------------- upstream trouble

def test_upstream_reset_mid_stream(env):
    s = env.stack()
    # (mockllm drops output still queued when it disconnects: the delay lets events 0
    # and 1 leave before the reset)
    cut = {"x-mock-disconnect-after": "2", "x-mock-event-delay-ms": "50"}
    for _ in range(2):
        with s.gw.conn() as c:
            c.send_request("POST", "/v1/chat/completions", h.chat_body(stream=True),
                           headers=cut)
            r = c.read_response(timeout=10)
            assert r is not None and r.status == 200, r
            # the events sent before the reset, then an error event and the stream's end
            assert r.body.count(b"chat.completion.chunk") == 2, r
            assert r.body.endswith(b'data: [DONE]\n\n'), r
            assert b'data: {"error":' in r.body, r
    s.gw.assert_serving()


def test_upstream_stall_mid_stream(env):
    # the upstream stops sending for longer than upstream_idle: the client's stream ends
    # with an error event (were it waited for, the whole stream would take > 10 s)
    s = env.stack(timeouts={"upstream_idle": "500ms"})
    with s.gw.conn() as c:
        c.send_request("POST", "/v1/chat/completions", h.chat_body(stream=True),
                       headers={"x-mock-event-delay-ms": "4000", "x-mock-tokens": "2"})
        r = c.read_response(timeout=10)
        assert r is not None and r.status == 200, r
        assert b"upstream response stalled" in r.body, r
        assert r.body.endswith(b'data: [DONE]\n\n'), r
    s.gw.assert_serving()


def test_upstream_down_then_back(env):
    s = env.stack()
    assert s.gw.chat().status == 200
    s.mock.stop()
    h.assert_openai_error(s.gw.chat(), 502, code="upstream_unavailable")
    s.mock.start()  # same port
    r = s.gw.chat()
    assert r.status == 200, r


# ---------------------------------------------------------------- vanishing clients

def open_stream(gw, delay_ms=100):
    """A long stream (its events delay_ms apart) on the provider "long", once its first
    event has arrived."""
    c = gw.conn()
    c.send_request("POST", "/v1/chat/completions", h.chat_body("gpt-long", stream=True),
                   headers={"x-mock-event-delay-ms": str(delay_ms), "x-mock-tokens": "5000"})
    assert c.read_until(b"data: "), "no first event"
    return c


def test_client_gone_mid_stream_closes_upstream(env):
    s = env.stack(workers=1, mocks={"long": []})  # its own mock: its connections alone
    long = s.mocks["long"]
    assert s.gw.chat().status == 200  # the pool holds a connection to "mock" from now on
    base_fds = stable_fd_count(s.gw)
    assert mock_open(long) == 0
    for close in ("close", "abort"):
        c = open_stream(s.gw)
        settle("upstream connections during the stream", lambda: mock_open(long), 1)
        settle("gateway fds during the stream", s.gw.fd_count, base_fds + 2)  # client, upstream
        getattr(c, close)()
        settle("gateway fds after the client %s" % close, s.gw.fd_count, base_fds)
        settle("mock connections after the client %s" % close, lambda: mock_open(long), 0)
    s.gw.assert_serving()


def test_client_fin_while_upstream_thinks_cancels_upstream(env):
    s = env.stack(workers=1)
    base_fds = stable_fd_count(s.gw)
    c = s.gw.conn()
    c.send_request("POST", "/v1/chat/completions", h.chat_body(),
                   headers={"x-mock-latency-ms": "3000"})
    settle("request upstream", lambda: s.mock.stats()["requests"], 1)
    c.close()
    settle("gateway fds after the client left", s.gw.fd_count, base_fds, timeout=1.5)


@h.timeout(120)
def test_no_fd_or_memory_leak_after_many_disconnects(env):
    s = env.stack(workers=1, mocks={"long": []})
    long = s.mocks["long"]
    # Receive buffers are touched as traffic cycles through the ring: push ~90 MB through
    # first so every buffer page is resident before the baseline.
    for _ in range(2):
        r = s.gw.chat(headers={"x-mock-tokens": "9000000"}, timeout=60)
        assert r.status == 200 and len(r.body) > 40 << 20, r.status

    def round_(i):
        # short event delays: a stream whose client left ends soon after (see
        # test_client_fin_while_upstream_thinks_cancels_upstream)
        c = open_stream(s.gw, delay_ms=20)
        c.abort() if i % 2 else c.close()
        if i % 10 == 0:
            assert s.gw.chat(max_tokens=1).status == 200
            h.assert_openai_error(s.gw.chat("no-such-model"), 404)
            with s.gw.conn() as bad:
                bad.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx(y): 1\r\n\r\n")
                h.assert_openai_error(bad.read_response(), 400)

    # Warm up with the very load measured: malloc's arenas grow to what the peak of
    # streams still being torn down needs (clients go faster than streams end), and keep
    # that; the same load once more must then need nothing new.
    n = 400
    for i in range(n):
        round_(i)
    settle("mock connections after warm-up", lambda: mock_open(long), 0)
    fds0, rss0 = stable_fd_count(s.gw), s.gw.rss_kb()
    for i in range(n):
        round_(i)
    settle("mock connections after %d disconnects" % n, lambda: mock_open(long), 0)
    settle("gateway fds after %d disconnects" % n, s.gw.fd_count, fds0)
    growth = s.gw.rss_kb() - rss0
    # KiB. ASan keeps freed memory in quarantine: there LeakSanitizer is the leak check.
    margin = 64 * 1024 if h.is_sanitized_build() else 512
    assert growth < margin, "RSS grew %d KiB over %d disconnects" % (growth, n)
    s.gw.assert_serving()


# ---------------------------------------------------------------- many connections

def parse_response(buf):
    """(status, bytes used) for one whole Content-Length response in buf, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if len(buf) < end + 4 + length:
        return None
    return status, end + 4 + length


@h.timeout(120)
def test_1000_concurrent_keepalive_connections(env):
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * n + 256  # ours, the gateway's clients and upstreams, the mock's
    if soft < need:
        assert hard >= need, "RLIMIT_NOFILE hard limit %d < %d" % (hard, need)
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        env.defer(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    s = env.stack()  # started after raising the limit: the children inherit it
    req = h.build_request("POST", "/v1/chat/completions", h.chat_body(max_tokens=2))
    sel = selectors.DefaultSelector()
    socks = []
    env.defer(lambda: [x.close() for x in socks])
    env.defer(sel.close)
    for _ in range(n):
        x = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        x.setblocking(False)
        x.connect_ex(("127.0.0.1", s.gw.port))
        socks.append(x)

    def run_round(first):
        state = {}
        for x in socks:
            state[x] = {"buf": bytearray(), "sent": False, "status": None}
            sel.register(x, selectors.EVENT_WRITE)
        pending = n
        deadline = time.monotonic() + 60
        while pending:
            left = deadline - time.monotonic()
            assert left > 0, "%d of %d connections got no response in time" % (pending, n)
            for key, ev in sel.select(timeout=min(left, 1)):
                x, st = key.fileobj, state[key.fileobj]
                if ev & selectors.EVENT_WRITE and not st["sent"]:
                    err = x.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    assert err == 0, "connect failed: %s" % err
                    assert x.send(req) == len(req)
                    st["sent"] = True
                    sel.modify(x, selectors.EVENT_READ)
                    continue
                data = x.recv(65536)
                assert data, "the gateway closed a keep-alive connection (round %s)" % (
                    "1" if first else "2")
                st["buf"] += data
                got = parse_response(st["buf"])
                if got:
                    st["status"] = got[0]
                    assert got[1] == len(st["buf"]), "unexpected bytes after the response"
                    sel.unregister(x)
                    pending -= 1
        statuses = [state[x]["status"] for x in socks]
        bad = [st for st in statuses if st != 200]
        assert not bad, "%d responses were not 200: %r" % (len(bad), bad[:10])

    run_round(True)
    # all of them are still open at the gateway at the same time
    assert s.gw.fd_count() >= n, s.gw.fd_count()
    run_round(False)  # and each carries a second request
    for x in socks:
        x.close()
    socks.clear()
    s.gw.assert_serving()


def test_max_connections(env):
    s = env.stack(workers=1, limits={"max_connections": 5})
    conns = []
    env.defer(lambda: [c.close() for c in conns])
    for _ in range(5):
        c = s.gw.conn()
        c.send_request("GET", "/healthz", key=None)
        assert c.read_response(method="GET").status == 200
        conns.append(c)
    with s.gw.conn() as extra:  # the kernel accepts it; the gateway closes it at once
        try:
            extra.send_request("GET", "/healthz", key=None)
        except OSError:
            pass
        assert extra.read_response(method="GET") is None
    conns.pop().close()

    def served():
        try:
            return s.gw.request("GET", "/healthz", key=None).status == 200
        except (OSError, AssertionError):
            return False
    h.wait_until(served, 5, interval=0.05, what="a free connection slot to be used")
    for c in conns:  # the others were left alone
        c.send_request("GET", "/healthz", key=None)
        assert c.read_response(method="GET").status == 200


# ---------------------------------------------------------------- shutdown

def test_sigterm_finishes_requests_in_flight(env):
    s = env.stack(timeouts={"shutdown_grace": "6s"})
    conns = []
    env.defer(lambda: [c.close() for c in conns])
    for _ in range(3):
        c = s.gw.conn()
        c.send_request("POST", "/v1/chat/completions", h.chat_body(),
                       headers={"x-mock-latency-ms": "2500"})
        conns.append(c)
    settle("requests upstream", lambda: s.mock.stats()["requests"], 3)
    s.gw.proc.signal(signal.SIGTERM)

    def refused():
        try:
            socket.create_connection(("127.0.0.1", s.gw.port), timeout=1).close()
            return False
        except (ConnectionRefusedError, ConnectionResetError):
            # a SYN that raced the listener's shutdown is reset: not served either way
            return True
    h.wait_until(refused, 2.0, what="new connections to be refused after SIGTERM")
    assert s.gw.proc.alive(), "exited with requests in flight"
    # (their answers were still to come)
    assert not select.select([c.sock for c in conns], [], [], 0)[0]
    for c in conns:
        r = c.read_response(timeout=10)
        assert r is not None and r.status == 200, r
        assert r.json()["choices"][0]["message"]["content"]
        assert r.header("connection") == "close", r.headers
    rc = s.gw.proc.wait(6 + 3)
    assert rc == 0, "exit code %r after SIGTERM:\n%s" % (rc, s.gw.proc.stderr_tail())
    assert refused()


def test_sigterm_idle_gateway_exits_at_once(env):
    s = env.stack(timeouts={"shutdown_grace": "20s"})
    with s.gw.conn() as idle:  # an idle keep-alive connection is no reason to wait
        idle.send_request("GET", "/healthz", key=None)
        assert idle.read_response(method="GET").status == 200
        s.gw.proc.signal(signal.SIGTERM)
        rc = s.gw.proc.wait(10)
        assert rc == 0, "exit code %r (None: still running 10 s after SIGTERM)" % rc
        assert idle.wait_closed(2)


# ---------------------------------------------------------------- upstream pool

def test_upstream_pool_reuses_connections(env):
    s = env.stack(workers=1)
    before = s.mock.stats()
    n = 8
    for _ in range(n):
        assert s.gw.chat().status == 200  # each on its own client connection
    after = s.mock.stats()
    assert after["requests"] - before["requests"] == n
    # one upstream connection for the n requests (the stats call itself is one more)
    opened = after["connections_accepted"] - before["connections_accepted"] - 1
    assert opened == 1, "%d upstream connections for %d sequential requests" % (opened, n)


def test_upstream_pool_survives_upstream_restart(env):
    s = env.stack(workers=1)
    assert s.gw.chat().status == 200  # leaves a pooled connection
    s.mock.restart()  # the pooled connection is now closed by the upstream
    before = s.mock.stats()
    r = s.gw.chat()
    assert r.status == 200, r
    assert s.gw.chat().status == 200  # and the fresh connection is pooled in turn
    after = s.mock.stats()
    assert after["requests"] == 2, after
    opened = after["connections_accepted"] - before["connections_accepted"] - 1
    assert opened == 1, "%d upstream connections after the restart" % opened
