"""A peer that holds a client's connection set-up, for tests: it is never silent for a read
timeout, and it never lets the set-up finish.

Usage::

    with SlowSetUp("handshake") as peer:  # a TLS server whose handshake never ends
        ...  # https://127.0.0.1:{peer.port}/...
    with SlowSetUp("connect") as proxy:  # a proxy whose answer to CONNECT never ends
        ...  # proxy=proxy.url
    with SlowSetUp("tunnel", tls=(cert, key)) as proxy:  # an https proxy that tunnels,
        ...  # and the handshake inside its tunnel never ends
    with SlowSetUp("connect", tunnels=1) as proxy:  # the first CONNECT is tunnelled
        ...  # honestly (a probe gets through), every later answer never ends
    with SlowSetUp("connect", late=0.6, ends=1.4) as proxy:  # the answer to CONNECT starts
        ...  # 0.6 s after the request and ends 1.4 s after it; then the proxy is silent

Whatever it trickles, it sends one byte every ``step`` seconds for ``hold`` seconds at most,
then closes: after a client's reads, each waiting less than ``step``, never time out. The
handshake it trickles is a TLS record header announcing 16 KiB of handshake, then the
record's bytes (OpenSSL waits for the whole record). ``late``: seconds of silence before the
first byte; ``ends``: seconds after the request when a trickled answer to CONNECT ends (None:
never), the peer silent after it. ``connections``: how many it accepted.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
import time
from contextlib import suppress
from types import TracebackType
from typing import Literal

from .nodelay import no_delay

Trickled = Literal["handshake", "connect", "tunnel"]
_RECORD = b"\x16\x03\x03\x40\x00"  # handshake, TLS 1.2, 16384 bytes to come
_CONNECT_ANSWER = b"HTTP/1.1 200 Connection established\r\nX-Pad: "
_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class SlowSetUp:
    """A threaded peer on 127.0.0.1:<ephemeral>; ``close()`` ends and joins every thread."""

    def __init__(
        self,
        trickled: Trickled,
        *,
        tls: tuple[str, str] | None = None,
        step: float = 0.2,
        hold: float = 120.0,
        tunnels: int = 0,
        late: float = 0.0,
        ends: float | None = None,
    ) -> None:
        self.trickled, self.step, self.hold, self.tunnels = trickled, step, hold, tunnels
        self.late, self.ends = late, ends
        self._context: ssl.SSLContext | None = None
        if tls is not None:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(*tls)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._live: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        """This peer as a proxy URL (``https://`` when it speaks TLS first)."""
        return f"{'https' if self._context else 'http'}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closing.set()
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepting.join()
        with self._lock:
            live, threads = list(self._live), list(self._threads)
        for sock in live:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join()
        for sock in live:
            sock.close()

    def __enter__(self) -> SlowSetUp:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client = no_delay(self._listener.accept()[0])
            except OSError:
                return
            with self._lock:
                self.connections += 1
                honest = self.connections <= self.tunnels
                thread = threading.Thread(target=self._serve, args=(client, honest), daemon=True)
                self._live.append(client.dup())  # TLS takes the original over
                self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket, honest: bool) -> None:
        client.settimeout(self.hold)
        try:
            with client:
                peer: socket.socket = client
                if self._context is not None:
                    peer = self._context.wrap_socket(client, server_side=True)
                if honest:
                    self._tunnel(peer)
                else:
                    self._trickle(peer)
        except OSError:
            pass  # the client gave up: what this peer is for

    def _tunnel(self, peer: socket.socket) -> None:
        """Answer CONNECT as a proxy should, and relay until either side closes."""
        target = _read_head(peer).split(b" ")[1].decode()
        host, _, port = target.rpartition(":")
        with no_delay(socket.create_connection((host, int(port)), timeout=self.hold)) as upstream:
            peer.sendall(_ESTABLISHED)
            ends = {peer: upstream, upstream: peer}
            with selectors.DefaultSelector() as sel:
                sel.register(peer, selectors.EVENT_READ)
                sel.register(upstream, selectors.EVENT_READ)
                while not self._closing.is_set():
                    for key, _ in sel.select(self.step):
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        ends[key.fileobj].sendall(data)  # type: ignore[index]

    def _trickle(self, peer: socket.socket) -> None:
        if self.trickled == "connect":
            _read_head(peer)
            asked = time.monotonic()
            if self._closing.wait(self.late):
                return
            peer.sendall(_CONNECT_ANSWER)
            if self.ends is not None:
                self._end_answer(peer, asked + self.ends)
                return
        elif self.trickled == "tunnel":
            _read_head(peer)
            peer.sendall(_ESTABLISHED)
            peer.recv(65536)  # the ClientHello, inside the tunnel
            peer.sendall(_RECORD)
        else:
            peer.recv(65536)  # the ClientHello
            peer.sendall(_RECORD)
        until = time.monotonic() + self.hold
        while time.monotonic() < until and not self._closing.wait(self.step):
            peer.sendall(b"a" if self.trickled == "connect" else b"\x00")

    def _end_answer(self, peer: socket.socket, at: float) -> None:
        """Trickle the answer to CONNECT until ``at``, end it, then say nothing more."""
        while time.monotonic() + self.step < at:
            if self._closing.wait(self.step):
                return
            peer.sendall(b"a")
        if not self._closing.wait(max(0.0, at - time.monotonic())):
            peer.sendall(b"\r\n\r\n")
            self._closing.wait(self.hold)


def _read_head(peer: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        data = peer.recv(4096)
        if not data:
            raise ConnectionResetError("closed before its request's head ended")
        head += data
    return head
