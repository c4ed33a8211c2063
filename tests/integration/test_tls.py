"""HTTPS to upstreams: nginx terminates TLS in front of mockllm with a certificate from a
test CA made here (openssl CLI); penstock verifies it, refuses a wrong host name or an
untrusted CA with a 502 and a log line naming the reason, pools TLS connections and
resumes sessions (nginx logs $connection and $ssl_session_reused), and reaches the
upstream through a CONNECT proxy (a small threaded one here that counts its tunnels)."""
import os
import re
import json
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import harness as h
from connect_proxy import ConnectProxy
from harness import PROVIDER_KEY, UPSTREAM_MODEL

NGINX_CONF = """
{user}
worker_processes 1;
pid {home}/nginx.pid;
error_log {home}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format tls '$connection $ssl_session_reused $ssl_protocol $server_port $request_uri';
    access_log {home}/access.log tls;
    client_body_temp_path {home}/body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    keepalive_timeout {keepalive};
    client_max_body_size 8m;
    client_body_buffer_size 8m;
    upstream mock {{ server 127.0.0.1:{mock}; keepalive 16; }}
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:tls:1m;
    server {{
        listen 127.0.0.1:{good} ssl;
        ssl_certificate {home}/good.pem;
        ssl_certificate_key {home}/good.key;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
    server {{
        listen 127.0.0.1:{wrong} ssl;
        ssl_certificate {home}/wrong.pem;
        ssl_certificate_key {home}/wrong.key;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def openssl(home, *args):
    r = subprocess.run(["openssl"] + list(args), cwd=home, capture_output=True, timeout=60)
    if r.returncode:
        raise h.HarnessError("openssl %s: %s" % (" ".join(args), r.stderr.decode()[-500:]))


def make_ca(home, name):
    openssl(home, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", name + ".key", "-out", name + ".pem", "-days", "2",
            "-subj", "/CN=penstock test " + name, "-addext", "basicConstraints=critical,CA:true",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def make_cert(home, name, ca, san):
    openssl(home, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name)
    (home / (name + ".ext")).write_text(
        "subjectAltName=%s\nbasicConstraints=CA:false\nextendedKeyUsage=serverAuth\n" % san)
    openssl(home, "x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey",
            ca + ".key", "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile",
            name + ".ext")


class Nginx:
    """nginx terminating TLS on two ports: "good" (localhost, 127.0.0.1) and "wrong" (a
    certificate for another name), both in front of the mock."""

    def __init__(self, home, mock_port, keepalive="60s"):
        if not shutil.which("nginx"):
            raise h.HarnessError("nginx is not installed (apt-get install nginx-light)")
        self.home = home
        self.ports = {"good": h.free_port(), "wrong": h.free_port()}
        user = "user root;" if os.geteuid() == 0 else ""
        conf = home / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, home=home, mock=mock_port,
                                          keepalive=keepalive, **self.ports))
        self.proc = h.Proc("nginx", ["nginx", "-c", conf, "-p", home, "-e",
                                     home / "nginx-error.log", "-g", "daemon off;"], home)
        for port in self.ports.values():
            h.wait_accepting(port, self.proc)

    def log(self, port=None, count=None):
        """Access log lines as [connection, reused, protocol, port, uri], of one port if
        given; waits for count lines if given (nginx logs once the response is sent)."""
        def lines():
            path = self.home / "access.log"
            got = [ln.split() for ln in path.read_text().splitlines()] if path.exists() else []
            return [ln for ln in got if port is None or ln[3] == str(port)]
        if count is not None:
            h.wait_until(lambda: len(lines()) >= count, 5, what="%d access log lines" % count)
        return lines()

    def stop(self):
        self.proc.stop(10)


class RecordsUpstream:
    """An HTTPS upstream (Python's ssl) that answers every request on one connection with
    the response split into TLS records of chosen sizes, written while the socket is
    corked so they arrive together: a full 16 KiB record, then many small ones."""

    def __init__(self, home):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(home / "good.pem", home / "good.key")
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.lsock.settimeout(10)
        self.port = self.lsock.getsockname()[1]
        self.error = None
        self.thread = h.threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def response():
        doc = {"id": "chatcmpl-records", "object": "chat.completion", "model": UPSTREAM_MODEL,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                            "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
        doc["choices"][0]["message"]["content"] = "x" * 26000
        body = json.dumps(doc).encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        return head % len(body) + body

    def _serve(self):
        try:
            raw, _ = self.lsock.accept()
            raw.settimeout(10)
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
                    assert ("authorization: bearer " + PROVIDER_KEY).encode() in head.lower()
                    while len(buf) < length:
                        buf += conn.recv(65536)
                    buf = buf[length:]
                    out = self.response()
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                    conn.sendall(out[:16384])
                    for i in range(16384, len(out), 100):
                        conn.sendall(out[i:i + 100])
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        except (OSError, AssertionError, AttributeError) as e:
            self.error = e

    def close(self):
        self.lsock.close()
        self.thread.join(5)


class TlsStack:
    """mockllm, nginx in front of it with the test PKI, CONNECT proxies, and penstock with
    one provider per case. Models: gpt-https (verified, by name), gpt-https-ip (verified,
    IP literal: no SNI), gpt-wronghost, gpt-untrusted, gpt-noverify, gpt-proxied,
    gpt-denied (a proxy answering 403)."""

    def __init__(self, env, workers=1, nginx_keepalive="60s", records=False):
        self.dir = Path(tempfile.mkdtemp(prefix="penstock-tls-"))
        env.defer(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        make_ca(self.dir, "ca")
        make_ca(self.dir, "otherca")
        make_cert(self.dir, "good", "ca", "DNS:localhost,IP:127.0.0.1")
        make_cert(self.dir, "wrong", "ca", "DNS:wrong.example")
        self.mock = h.Mock(self.dir)
        env.defer(self.mock.stop)
        self.nginx = Nginx(self.dir, self.mock.port, nginx_keepalive)
        env.defer(self.nginx.stop)
        self.proxy = ConnectProxy()
        env.defer(self.proxy.close)
        self.denying = ConnectProxy(deny=403)
        env.defer(self.denying.close)
        ca = str(self.dir / "ca.pem")
        if records:
            self.records = RecordsUpstream(self.dir)
            env.defer(self.records.close)
        good, wrong = self.nginx.ports["good"], self.nginx.ports["wrong"]
        providers = {
            "https": {"base_url": "https://localhost:%d" % good, "ca_file": ca},
            "https-ip": {"base_url": "https://127.0.0.1:%d" % good, "ca_file": ca},
            "wronghost": {"base_url": "https://localhost:%d" % wrong, "ca_file": ca},
            "untrusted": {"base_url": "https://localhost:%d" % good,
                          "ca_file": str(self.dir / "otherca.pem")},
            "noverify": {"base_url": "https://localhost:%d" % wrong, "tls_verify": False},
            "proxied": {"base_url": "https://localhost:%d" % good, "ca_file": ca,
                        "proxy": "http://127.0.0.1:%d" % self.proxy.port},
            "denied": {"base_url": "https://localhost:%d" % good, "ca_file": ca,
                       "proxy": "http://127.0.0.1:%d" % self.denying.port},
        }
        if records:
            providers["records"] = {"base_url": "https://localhost:%d" % self.records.port,
                                    "ca_file": ca}

        def config_fn(port):
            cfg = h.gateway_config(port, {"mock": self.mock.port}, self.dir, workers=workers)
            for name, extra in providers.items():
                cfg["providers"].append(dict({
                    "name": name, "kind": "openai-compatible",
                    "api_key_env": "PENSTOCK_TEST_PROVIDER_KEY"}, **extra))
                cfg["models"].append({"name": "gpt-" + name, "targets": [
                    {"provider": name, "model": UPSTREAM_MODEL}]})
            return cfg
        self.gw = h.Gateway(self.dir, config_fn)
        env.defer(self.gw.stop)

    def wait_log(self, pattern):
        return self.gw.proc.wait_log(pattern, timeout=5)


def completion_ok(r):
    assert r.status == 200, r
    doc = r.json()
    assert doc["choices"][0]["message"]["content"], doc
    assert doc["model"] == UPSTREAM_MODEL, doc


def test_tls_verified_request(env):
    s = TlsStack(env)
    completion_ok(s.gw.chat("gpt-https"))
    completion_ok(s.gw.chat("gpt-https-ip"))
    r = s.gw.chat("gpt-https", stream=True)
    assert r.status == 200, r
    events = r.sse_events()
    assert events[-1] == "[DONE]", events
    assert any(e != "[DONE]" and h.json.loads(e)["choices"] for e in events), events
    # nginx saw TLS 1.3 (the best both offer) and the ALPN-agreed HTTP/1.1
    protos = {line[2] for line in s.nginx.log(count=3)}
    assert protos == {"TLSv1.3"}, s.nginx.log()


def test_tls_large_bodies(env):
    # A request of many TLS records and a response of many more (a response record may
    # reach 16 KiB of plaintext: the receive path must keep each in one buffer).
    s = TlsStack(env)
    big = "lorem ipsum dolor sit amet " * 20000
    r = s.gw.request("POST", "/v1/chat/completions",
                     h.chat_body("gpt-https", messages=[{"role": "user", "content": big}]),
                     headers={"x-mock-tokens": "40000"}, timeout=30)
    completion_ok(r)
    assert len(r.body) > 100000, len(r.body)
    r = s.gw.request("POST", "/v1/chat/completions", h.chat_body("gpt-https", stream=True),
                     headers={"x-mock-tokens": "20000"}, timeout=30)
    assert r.status == 200 and r.sse_events()[-1] == "[DONE]", r
    assert len(r.sse_events()) > 1000


def test_tls_record_sizes(env):
    # The tail of a full 16 KiB record arrives with many small records behind it: the
    # receive is bounded so that their plaintext still fits the receive buffers.
    s = TlsStack(env, records=True)
    for _ in range(3):
        r = s.gw.chat("gpt-records", timeout=5)
        assert r.status == 200, r
        assert r.body == RecordsUpstream.response().partition(b"\r\n\r\n")[2]
    assert s.records.error is None, s.records.error


def test_tls_wrong_hostname_is_502(env):
    s = TlsStack(env)
    r = s.gw.chat("gpt-wronghost")
    h.assert_openai_error(r, 502)
    s.wait_log(r"upstream localhost:%d: TLS handshake failed: certificate verify failed: "
               r"Hostname mismatch" % s.nginx.ports["wrong"])


def test_tls_untrusted_ca_is_502(env):
    s = TlsStack(env)
    r = s.gw.chat("gpt-untrusted")
    h.assert_openai_error(r, 502)
    s.wait_log(r"upstream localhost:%d: TLS handshake failed: certificate verify failed: "
               r"unable to get local issuer certificate" % s.nginx.ports["good"])
    assert h.PROVIDER_KEY not in s.gw.proc.stderr()


def test_tls_verify_off_warns_and_works(env):
    s = TlsStack(env)
    s.wait_log(r"provider noverify: tls_verify is false: the certificate of localhost is NOT "
               r"checked")
    completion_ok(s.gw.chat("gpt-noverify"))


def test_tls_pooling_and_resumption(env):
    s = TlsStack(env)  # one worker: one pool
    for _ in range(8):
        completion_ok(s.gw.chat("gpt-https"))
    good = s.nginx.ports["good"]
    log = s.nginx.log(good, 8)
    assert len(log) == 8 and len({ln[0] for ln in log}) == 1, log
    assert log[0][1] == "." and log[-1][1] == ".", log  # one full handshake
    # A request while the pooled connection is busy needs a second connection: it
    # resumes the session the first one got.
    with s.gw.conn() as slow:
        slow.send_request("POST", "/v1/chat/completions", h.chat_body("gpt-https"),
                          headers={"x-mock-latency-ms": "800"})
        time.sleep(0.2)
        completion_ok(s.gw.chat("gpt-https"))
        completion_ok(slow.read_response())
    log = s.nginx.log(good, 10)
    assert len(log) == 10, log
    conns = {}
    for ln in log:
        conns.setdefault(ln[0], set()).add(ln[1])
    assert len(conns) == 2, log
    second = [v for k, v in conns.items() if k != log[0][0]][0]
    assert second == {"r"}, log
    # and both stay pooled: more requests open nothing new
    for _ in range(4):
        completion_ok(s.gw.chat("gpt-https"))
    log = s.nginx.log(good, 14)
    assert len(log) == 14 and len({ln[0] for ln in log}) == 2, log


def test_tls_upstream_idle_close(env):
    # nginx closes an idle keep-alive connection (close_notify, then FIN): the pooled
    # connection is dropped and the next request opens a fresh one, resuming the session.
    s = TlsStack(env, nginx_keepalive="1s")
    completion_ok(s.gw.chat("gpt-https"))
    time.sleep(1.6)
    completion_ok(s.gw.chat("gpt-https"))
    log = s.nginx.log(count=2)
    assert len(log) == 2 and log[0][0] != log[1][0], log
    assert log[1][1] == "r", log


def test_tls_through_connect_proxy(env):
    s = TlsStack(env)
    for _ in range(3):
        completion_ok(s.gw.chat("gpt-proxied"))
    r = s.gw.chat("gpt-proxied", stream=True)
    assert r.status == 200 and r.sse_events()[-1] == "[DONE]", r
    # one tunnel, to the upstream's name (the proxy resolves it), reused by the pool
    assert s.proxy.tunnels == ["localhost:%d" % s.nginx.ports["good"]], s.proxy.tunnels


def test_tls_proxy_refusal_is_502(env):
    s = TlsStack(env)
    r = s.gw.chat("gpt-denied")
    h.assert_openai_error(r, 502)
    s.wait_log(r"upstream localhost:%d: egress proxy 127\.0\.0\.1:%d refused CONNECT with "
               r"status 403" % (s.nginx.ports["good"], s.denying.port))
    assert s.denying.tunnels == [], s.denying.tunnels
    # the gateway is fine and the other routes work
    completion_ok(s.gw.chat("gpt-https"))


def test_tls_health_checks(env):
    """Active health checks over HTTPS, verified like the provider's requests: a check that
    passes keeps the target, nginx's 502 (its upstream gone) opens the breaker and a
    recovery closes it; a provider whose certificate is not trusted fails its check; checks
    go through the provider's CONNECT proxy as its requests do."""
    s = TlsStack(env)
    check = {"path": "/v1/models", "interval": 200, "timeout": 200}
    cfg = dict(s.gw.config)
    checked = ("https", "untrusted", "proxied", "denied")
    cfg["providers"] = [dict(p, health_check=check) if p["name"] in checked
                        else p for p in cfg["providers"]]
    s.gw.config_path.write_text(h.to_yaml(cfg) + "\n")
    s.gw.proc.signal(signal.SIGHUP)
    s.wait_log(r"configuration reloaded: generation 2")
    s.wait_log(r"health check untrusted: failed \(TLS: certificate verify failed")
    s.wait_log(r"health check denied: failed \(proxy refused the tunnel \(HTTP/1.1 403")
    time.sleep(0.3)  # a few checks of the good ones have run
    assert "health check https: failed" not in s.gw.proc.stderr()
    assert "health check proxied: failed" not in s.gw.proc.stderr()
    with s.proxy.lock:  # no request was sent to gpt-proxied: every tunnel is a check's
        assert len(s.proxy.tunnels) >= 2, s.proxy.tunnels
    completion_ok(s.gw.chat("gpt-https"))
    s.mock.stop()
    s.wait_log(r"health check https: failed \(status 502\)")
    s.wait_log(r"breaker https/%s: open, the health check failed" % UPSTREAM_MODEL)
    s.mock.start()
    s.wait_log(r"health check https: passes again")
    completion_ok(s.gw.chat("gpt-https"))
