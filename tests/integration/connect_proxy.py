"""connect_proxy.py - a small HTTP CONNECT proxy on loopback for the TLS tests.

Each connection sends one CONNECT request; the proxy opens a TCP connection to the
target (loopback targets only), answers 200 and relays bytes both ways until either side
closes. With deny=STATUS it answers that status instead and counts nothing. tunnels lists
the targets of the tunnels opened, in order. Bounded: at most MAX_CONNS connections,
every socket has a timeout, close() stops everything. Standard library only.
"""
import select
import socket
import threading

MAX_CONNS = 64
MAX_HEAD = 8192
LOOPBACK = ("localhost", "127.0.0.1", "::1")


class ConnectProxy:
    def __init__(self, deny=None):
        self.deny = deny
        self.tunnels = []
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.stopping = False
        self.socks = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stopping:
            try:
                sock, _ = self.lsock.accept()
            except (socket.timeout, OSError):
                continue
            with self.lock:
                if len(self.socks) >= MAX_CONNS:
                    sock.close()
                    continue
                self.socks.append(sock)
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, sock):
        sock.settimeout(10)
        upstream = None
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                data = sock.recv(4096)
                if not data or len(head) + len(data) > MAX_HEAD:
                    return
                head += data
            head, _, early = head.partition(b"\r\n\r\n")
            parts = head.split(b"\r\n")[0].split()
            if self.deny:
                sock.sendall(b"HTTP/1.1 %d Denied\r\nContent-Length: 0\r\n\r\n" % self.deny)
                return
            if len(parts) != 3 or parts[0] != b"CONNECT":
                sock.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            target = parts[1].decode()
            host, _, port = target.rpartition(":")
            if host.strip("[]") not in LOOPBACK or not port.isdigit():
                sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
            with self.lock:
                self.socks.append(upstream)
                self.tunnels.append(target)
            sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if early:
                upstream.sendall(early)
            self._relay(sock, upstream)
        except OSError:
            pass
        finally:
            sock.close()
            if upstream:
                upstream.close()

    def _relay(self, a, b):
        peer = {a: b, b: a}
        while not self.stopping:
            ready, _, _ = select.select([a, b], [], [], 0.2)
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                peer[s].sendall(data)

    def close(self):
        self.stopping = True
        self.lsock.close()
        with self.lock:
            socks = list(self.socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(5)
