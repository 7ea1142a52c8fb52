"""A minimal forwarding HTTP proxy on loopback, for tests: absolute-URI requests and CONNECT.

Usage::

    with ForwardProxy() as proxy:
        ...  # download through proxy.url
        assert proxy.forwarded > 0 and proxy.seen[0].method == "GET"

``ForwardProxy(tls=(certfile, keyfile))`` is an https proxy: clients speak TLS to it first
(TLS inside TLS for a tunnel to an https origin). With ``ask_cert=CA_FILE`` it asks each
client for a certificate too, and keeps what each showed (``client_certs``).

``ForwardProxy(refusals=[(403, "Filtered")])`` answers its first requests (forwarded or
CONNECT, one refusal each, in order) with those statuses itself, as a proxy's policy or a
lost upstream would, and serves the ones after honestly (a ``None`` among the refusals: that
request too). A ``bytes`` refusal is sent as it is, whatever it holds, and the connection
closed: ``b""`` closes it without a word, other bytes are an answer that is no HTTP at all
(a SOCKS or SSH server's, a status line cut short). A ``Reset`` refusal is sent the same
way, then the connection reset (RST) once the client sends anything more (a TLS handshake
into a tunnel it was told is open).

One request per client connection: a forwarded request goes upstream with
``Connection: close`` and its response comes back with ``Connection: close``, so clients
never reuse a connection the proxy is about to drop.  ``Proxy-*`` headers are recorded
and never forwarded.
"""

from __future__ import annotations

import selectors
import socket
import socketserver
import ssl
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import IO, Any, NamedTuple
from urllib.parse import urlsplit

from .nodelay import NoDelayServer, no_delay

TIMEOUT = 10.0  # a backstop: close() ends every relay long before this
_HOP_BY_HOP = frozenset({"connection", "proxy-connection", "proxy-authorization", "keep-alive"})


class Reset(bytes):
    """A ``bytes`` refusal after which the proxy resets the connection instead of closing it."""


class Seen(NamedTuple):
    """One request the proxy handled."""

    method: str  # GET for a forwarded request, CONNECT for a tunnel
    target: str  # the absolute URI, or host:port for CONNECT
    proxy_authorization: str | None
    headers: tuple[tuple[str, str], ...] = ()  # every header of the request, as received


class ForwardProxy:
    """A threaded proxy on 127.0.0.1:<ephemeral>; ``close()`` ends and joins every thread."""

    def __init__(
        self,
        tls: tuple[str, str] | None = None,
        refusals: Sequence[tuple[int, str] | bytes | None] = (),
        ask_cert: str | None = None,
    ) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._server.context = None
        if tls is not None:
            self._server.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._server.context.load_cert_chain(*tls)
            if ask_cert is not None:  # a CA file: ask each client for a certificate it signed
                self._server.context.verify_mode = ssl.CERT_OPTIONAL
                self._server.context.load_verify_locations(ask_cert)
        self.port: int = self._server.server_address[1]
        self.seen: list[Seen] = []
        # each TLS client's certificate, as its handshake showed it ({}: none shown)
        self.client_certs: list[dict[str, Any]] = []
        self.connections = 0  # accepted, before any TLS handshake (which may fail)
        self._refusals = list(refusals)
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    def url_with(self, credentials: str) -> str:
        """``http://<credentials>@127.0.0.1:<port>`` (https:// for a TLS proxy)."""
        return f"{self._scheme}://{credentials}@127.0.0.1:{self.port}"

    @property
    def _scheme(self) -> str:
        return "https" if self._server.context is not None else "http"

    @property
    def forwarded(self) -> int:
        """Requests handled (forwarded GETs and CONNECT tunnels)."""
        with self._lock:
            return len(self.seen)

    def methods(self) -> set[str]:
        with self._lock:
            return {s.method for s in self.seen}

    def note(self, seen: Seen) -> tuple[int, str] | bytes | None:
        """Record ``seen``; the refusal scripted for it, if any is left."""
        with self._lock:
            self.seen.append(seen)
            return self._refusals.pop(0) if self._refusals else None

    def shown(self, cert: dict[str, Any]) -> None:
        """A TLS client's handshake showed ``cert`` ({}: none)."""
        with self._lock:
            self.client_certs.append(cert)

    def accepted(self) -> None:
        with self._lock:
            self.connections += 1

    def track(self, sock: socket.socket, live: bool) -> None:
        with self._lock:
            if live:
                self._live.add(sock)
            else:
                self._live.discard(sock)

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join()
        with self._lock:
            live = list(self._live)
        for sock in live:  # wake relays blocked on a client that keeps its socket open
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._server.server_close()  # joins the handler threads (block_on_close)

    def __enter__(self) -> ForwardProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Server(NoDelayServer, socketserver.ThreadingTCPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    owner: ForwardProxy
    context: ssl.SSLContext | None

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        self.owner.accepted()
        if self.context is None:
            return sock, address
        sock.settimeout(TIMEOUT)  # the handshake too: a client that never starts it
        tls = self.context.wrap_socket(sock, server_side=True)
        self.owner.shown(dict(tls.getpeercert() or {}))
        return tls, address


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        proxy = self.server.owner
        self.connection.settimeout(TIMEOUT)
        proxy.track(self.connection, True)
        try:
            self._handle(proxy)
        except OSError:
            pass  # a client or upstream going away mid-relay is normal
        finally:
            proxy.track(self.connection, False)

    def _handle(self, proxy: ForwardProxy) -> None:
        head = _read_head(self.rfile)
        if not head:
            return
        method, target, _version = head[0].split(" ", 2)
        headers = [_split_header(line) for line in head[1:]]
        auth = next((v for k, v in headers if k.lower() == "proxy-authorization"), None)
        refusal = proxy.note(Seen(method, target, auth, tuple(headers)))
        if isinstance(refusal, bytes):
            self.wfile.write(refusal)  # then the handler returns, and the connection closes
            self.wfile.flush()
            if isinstance(refusal, Reset):
                self._reset()
        elif refusal is not None:
            self._refuse(*refusal)
        elif method == "CONNECT":
            self._tunnel(proxy, target)
        else:
            self._forward(proxy, method, target, headers)

    def _reset(self) -> None:
        """Wait for the client's next bytes, then close with no linger: an RST, no FIN."""
        self.connection.recv(1)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()  # socketserver's shutdown of it then fails, quietly

    def _refuse(self, status: int, reason: str) -> None:
        body = f"{status} {reason}\n".encode()
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        self.wfile.write(head.encode("latin-1") + body)
        self.wfile.flush()

    def _tunnel(self, proxy: ForwardProxy, target: str) -> None:
        host, _, port = target.rpartition(":")
        with _connect(proxy, host, int(port)) as upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            _relay(self.connection, upstream)

    def _forward(
        self, proxy: ForwardProxy, method: str, target: str, headers: list[tuple[str, str]]
    ) -> None:
        url = urlsplit(target)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        kept = [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_BY_HOP]
        request = [f"{method} {path} HTTP/1.1", *kept, "Connection: close", "", ""]
        with _connect(proxy, url.hostname or "", url.port or 80) as upstream:
            upstream.sendall("\r\n".join(request).encode("latin-1"))
            reply = upstream.makefile("rb")
            status, *lines = _read_head(reply)
            kept = [line for line in lines if _split_header(line)[0].lower() != "connection"]
            out = [status, *kept, "Connection: close", "", ""]
            self.wfile.write("\r\n".join(out).encode("latin-1"))
            while chunk := reply.read1(64 * 1024):
                self.wfile.write(chunk)
            self.wfile.flush()


@contextmanager
def _connect(proxy: ForwardProxy, host: str, port: int) -> Iterator[socket.socket]:
    # Towards the origin too: a relayed reply arrives in pieces and leaves as it came.
    with no_delay(socket.create_connection((host, port), timeout=TIMEOUT)) as upstream:
        proxy.track(upstream, True)
        try:
            yield upstream
        finally:
            proxy.track(upstream, False)


def _read_head(stream: IO[bytes]) -> list[str]:
    lines: list[str] = []
    while True:
        line = stream.readline(65537)
        if not line:
            return []  # closed before a complete head
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            return lines
        lines.append(text)


def _split_header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip(), value.strip()


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    peer = {a: b, b: a}
    with selectors.DefaultSelector() as sel:
        sel.register(a, selectors.EVENT_READ)
        sel.register(b, selectors.EVENT_READ)
        while True:
            # A TLS socket may hold decrypted bytes that select cannot see: those first.
            held = [s for s in (a, b) if isinstance(s, ssl.SSLSocket) and s.pending()]
            if held:
                peer[held[0]].sendall(held[0].recv(64 * 1024))
                continue
            for key, _ in sel.select(TIMEOUT) or [(None, None)]:
                if key is None:
                    return  # idle for TIMEOUT: give up
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = sock.recv(64 * 1024)
                if not data:
                    return
                peer[sock].sendall(data)
