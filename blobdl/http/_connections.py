"""The sockets a lane's connections open, so that another thread can cut them.

A lane runs on a thread of a worker process that goes on with other lanes, so it cannot be
ended by a signal. Its worker ends it by shutting down its sockets: that wakes it from any
wait on them (the TLS handshake, the wait for a status line, a body read) with EOF or an
error. urllib3 opens each connection's socket in ``HTTPConnection._new_conn``; the pool
classes here use connections that note a duplicate of that socket in the ``Sockets`` of
the thread that opened it (``noted_in``). A duplicate, because the TLS layer takes the
original over (detaches it), and because a shutdown acts on the connection, not on one
descriptor of it: ours still cuts whatever wraps it, and is never another lane's socket
reusing a closed descriptor's number. Threads without ``Sockets`` note nothing (the
coordinator's probe). Only a wait before the socket exists (DNS, connect) is out of reach.
Their set-up (the lookup, each address's connect, a proxy's CONNECT, TLS) is bounded as a
whole (``_set_up``), and so is that wait.
The connections also note when they were ready: the time a request takes to its status
line, less the connection's set-up (``answer_time``), is what sizes a lane's chunks
(``_chunk``); and they read their responses past any interim (1xx) ones (``_interim``).

A pool may be shared by threads (a pull's blob lookups share the registry's), so a
connection is closed only by the request that holds it: one whose answer it will serve no
other request after (``spend``: an error answer's) is closed by its pool when handed back,
never lent again; and a request whose connection is closed under it all the same fails as a
connection closed (``ClosedUnderRequest``), not inside http.client.

A kept connection is a guess that the server still holds it: its close of an idle one can
cross our next request on it. A GET that meets only that close, no byte of an answer, is
asked again on another connection by the pool itself (``KeptConnectionLost``), not counted
as a failed attempt by whoever asked.
"""

from __future__ import annotations

import errno
import http.client
import socket
import ssl
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
)

from ._head import InterimSkippingResponse
from ._set_up import clamp, connect, setting_up


class Sockets:
    """Duplicates of the sockets one lane opened; ``cut`` may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[tuple[socket.socket, weakref.ref[_NotedHTTPConnection]]] = []

    def note(self, sock: socket.socket, conn: _NotedHTTPConnection) -> None:
        with self._lock:
            self._let_go_of_closed()
            self._held.append((sock.dup(), weakref.ref(conn)))

    def cut(self) -> None:
        """Shut down every connection the lane opened (a closed one raises: skipped)."""
        with self._lock:
            for held, owner in self._held:
                conn = owner()
                if conn is not None:  # told first: its request wakes to the shutdown
                    conn.cut = True
                with suppress(OSError):
                    held.shutdown(socket.SHUT_RDWR)

    def open_to(self) -> list[str]:
        """The hosts of the connections still open (a kept session's idle one, say); the
        duplicates of those urllib3 closed are let go first (ours alone would keep them
        open, and the server would still count them)."""
        with self._lock:
            self._let_go_of_closed()
            conns = [owner() for _, owner in self._held]
            return [conn.host for conn in conns if conn is not None and conn.sock is not None]

    def let_go_of_closed(self) -> None:
        """Close our duplicates of the connections urllib3 has closed."""
        with self._lock:
            self._let_go_of_closed()

    def close(self) -> None:
        """Let go of the duplicates (the lane is over)."""
        with self._lock:
            for held, _ in self._held:
                held.close()
            self._held.clear()

    def _let_go_of_closed(self) -> None:
        # A lane asks one request at a time, so when it opens a connection it is done with
        # every one urllib3 has closed (a server that closes after each response): our
        # duplicate alone would keep it open, one descriptor per chunk, until the attempt ends.
        keep = []
        for held, owner in self._held:
            conn = owner()
            if conn is None or conn.sock is None:
                held.close()
            else:
                keep.append((held, owner))
        self._held = keep


_thread = threading.local()


@contextmanager
def noted_in(sockets: Sockets) -> Iterator[None]:
    """Connections this thread opens in the block note their sockets in ``sockets``."""
    _thread.sockets = sockets
    try:
        yield
    finally:
        _thread.sockets = None
        sockets.close()


def _note(sock: socket.socket, conn: _NotedHTTPConnection) -> None:
    sockets: Sockets | None = getattr(_thread, "sockets", None)
    if sockets is not None:
        sockets.note(sock, conn)


def _let_go_of_closed() -> None:
    """Before a connection opens: the closed ones this thread noted are really closed, so
    that a new socket is never open beside an old one that only our duplicate holds."""
    sockets: Sockets | None = getattr(_thread, "sockets", None)
    if sockets is not None:
        sockets.let_go_of_closed()


class TunnelClosed(ProxyError):
    """The proxy answered CONNECT with 200, then closed (or reset) the tunnel before the
    server's TLS handshake was over."""


class ClosedUnderRequest(ConnectionAbortedError):
    """The connection was closed (by another thread) while one of its requests ran."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNABORTED, "the connection was closed under its request")


# What a request meets when its connection is closed under it, wherever it is: no socket
# (AttributeError), urllib3's record of the request wiped (ResponseNotReady, which would be
# said as a malformed answer), or a descriptor closed under a send or a read.
_CLOSED_UNDER = (AttributeError, http.client.ImproperConnectionState, OSError)


# How a peer hangs up: at once (EOF, reset), or in the middle of a TLS record.
_HUNG_UP = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError)


class KeptConnectionLost(ConnectionResetError):
    """The server closed a connection kept from an earlier answer as our next request on it
    came: no byte of an answer, only the close (http.client's RemoteDisconnected, a reset,
    TLS's EOF). The pool asks again on a new connection (``_HTTPPool.urlopen``)."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNRESET, "closed by the server as the request came")


class ServerHungUp(http.client.HTTPException):
    """Through a proxy's tunnel (its CONNECT answered, the server's TLS handshake carried),
    the answer was cut by a hang-up: the server's, relayed. Raised with the hang-up as its
    cause, which says what it was; urllib3 takes a closed connection for one that never
    reached its proxy, and said it as the proxy's failure (``proxy_errors`` names the
    server)."""


# Asked again after a kept connection was lost, at most: each time on another connection
# (the lost one is closed), which is a new one unless other threads handed theirs back.
_LOST_AGAIN = 3


class _NotedHTTPConnection(HTTPConnection):
    """Notes its socket in the opening thread's ``Sockets``, and when it was ready; also
    the base of the HTTPS one, whose ``connect`` (TLS handshake, proxy tunnel) it wraps."""

    ready_at = 0.0  # time.monotonic() when the connection was ready for its first request
    spent = False  # it serves no other request: its pool closes it when it is handed back
    cut = False  # shut down by its lane's ``Sockets.cut``: a close met on it is ours
    _closes = 0  # closes begun and ended, by any thread
    _asked_after = 0  # ``_closes`` when its current request began
    _answers = 0  # answers its socket carried: past 0, a request goes on a kept connection
    _on_kept = False  # its current request went on a kept connection
    _answer: InterimSkippingResponse | None = None  # its current request's, once begun
    _tunnel_open = False  # a proxy answered CONNECT with 200, in this connect()

    def response_class(self, *args: Any, **kwargs: Any) -> InterimSkippingResponse:  # type: ignore[override]
        """The response http.client reads the answer into (it calls this as it would a
        class), kept so that a failure can tell whether a byte of the answer had come."""
        self._answer = InterimSkippingResponse(*args, **kwargs)
        return self._answer

    def _new_conn(self) -> socket.socket:
        # urllib3's, but the lookup and each address bounded by the set-up (``_set_up``);
        # its errors are urllib3's, as it words them.
        _let_go_of_closed()
        try:
            sock = connect((self._dns_host, self.port), self.source_address, self.socket_options)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            said = f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            raise ConnectTimeoutError(self, said) from exc
        except OSError as exc:
            said = f"Failed to establish a new connection: {exc}"
            raise NewConnectionError(self, said) from exc
        sys.audit("http.client.connect", self, self.host, self.port)
        try:
            clamp(sock)  # a proxy's TLS handshake, or the server's, gets what is left
        except TimeoutError:
            sock.close()
            raise
        _note(sock, self)
        return sock

    @property
    def is_connected(self) -> bool:
        """Whether the connection may carry another request: urllib3 asks before it reuses
        one, and polls its socket, where bytes past the last response (a server's extra
        body, a second response glued on, one nobody asked for) show it broken: never read
        as the next answer (RFC 9112 6.3). Over TLS they may instead be decrypted already,
        in a record that also held the body's end: no poll sees them there."""
        sock = self.sock
        held = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        return super().is_connected and not held

    def connect(self) -> None:
        # urllib3 opens a connection with its connect timeout as the connection's timeout.
        within = self.timeout if isinstance(self.timeout, (int, float)) else None
        self._tunnel_open, self._answers = False, 0
        with setting_up(within):
            try:
                super().connect()
            except _HUNG_UP as exc:
                if not self._tunnel_open:
                    raise
                # The proxy said 200 to CONNECT, then closed before the server's handshake
                # had a byte back: urllib3 counts us connected to the server by then, and the
                # error named the server ("TLS error with ...").
                raise TunnelClosed("the proxy closed the tunnel it had opened", exc) from exc
        self.ready_at = time.monotonic()

    def close(self) -> None:
        # Counted as it begins and as it ends (odd while under way), whichever thread closes:
        # a request begun before it ended, or while it ran, was closed under.
        self._closes += 1
        try:
            super().close()
        finally:
            self._closes += 1

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._asked_after = self._closes
        self._on_kept = self._answers > 0 and self.sock is not None
        try:
            super().request(*args, **kwargs)
        except _CLOSED_UNDER as exc:
            self._check_closed_under(exc)
            raise

    def getresponse(self) -> urllib3.HTTPResponse:  # type: ignore[override]  # as urllib3's
        try:
            response = super().getresponse()
        except _CLOSED_UNDER as exc:
            self._check_closed_under(exc)
            if self._lost(exc):
                raise KeptConnectionLost() from exc
            if self._tunnel_open and isinstance(exc, _HUNG_UP):
                raise ServerHungUp() from exc
            raise
        finally:
            self._answer = None  # the caller's now: held here, it might outlive its close
        self._answers += 1
        return response

    def _lost(self, exc: BaseException) -> bool:
        """Whether ``exc``, met waiting for the answer, is the server's close of this kept
        connection crossing our request: a hang-up, before any byte of an answer (after one,
        an interim answer's too, the server had taken the request: its failure), and not
        our own cut (a stopped lane or seat meets its shutdown as a close: nothing more
        is to be asked)."""
        heard = self._answer is not None and self._answer.heard
        return self._on_kept and not heard and not self.cut and isinstance(exc, _HUNG_UP)

    def _check_closed_under(self, exc: BaseException) -> None:
        """A step of this connection's request (its sending, its answer) raised ``exc``:
        if another thread closed the connection meanwhile, that close is what it was
        (``ClosedUnderRequest``); else it is the request's own failure (a reset, a timeout:
        http.client closes after those), raised as it is. Inline, not a context manager:
        every request of a small item passes here."""
        closed_under = self._closes != self._asked_after or self._asked_after % 2 == 1
        if closed_under and not (isinstance(exc, OSError) and exc.errno != errno.EBADF):
            raise ClosedUnderRequest() from None

    def _tunnel(self) -> None:
        assert self.sock is not None
        try:
            clamp(self.sock)
            super()._tunnel()
        except TimeoutError as exc:  # the proxy's answer did not come in time: its fault
            raise ProxyError("the proxy did not answer CONNECT in time", exc) from exc
        except (OSError, http.client.HTTPException) as exc:
            # Closed, reset, or no HTTP at all (a SOCKS or SSH server given as the proxy): the
            # server was never reached. urllib3 counts us connected to the proxy from here
            # on, so it would not say so, and the error would name the server.
            raise ProxyError("the proxy did not answer CONNECT", exc) from exc
        finally:
            self._answer = None  # the proxy's answer to CONNECT: not the request's
        self._tunnel_open = True
        clamp(self.sock)  # the server's handshake, through the tunnel, gets what is left


class _NotedHTTPSConnection(_NotedHTTPConnection, HTTPSConnection):
    pass


def spend(response: urllib3.BaseHTTPResponse) -> None:
    """The connection that carries ``response`` serves no other request: handed back to its
    pool (urllib3 hands it back as soon as the body is read to its end), it is closed there
    and never lent again. So its reader may close it afterwards: nobody else can hold it."""
    conn = response.connection
    if isinstance(conn, _NotedHTTPConnection):
        conn.spent = True


def answer_time(response: urllib3.BaseHTTPResponse, sent: float, answered: float) -> float:
    """Seconds ``response`` took from its request (``sent``) to its status line
    (``answered``), less setting its connection up (when it was new): how long the server
    takes to answer a request, as a probe measures it (``Remote.answer_time``) and a lane."""
    return answered - max(sent, float(getattr(response.connection, "ready_at", 0.0)))


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _NotedHTTPConnection

    def urlopen(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        """urllib3's, but a GET (or HEAD) whose kept connection the server closed as it came
        (``KeptConnectionLost``) is asked again on another connection: it never reached
        the server's answer, and no client could have told the connection was going. Not a
        failed attempt; only its own failures are the caller's to count."""
        body = args[0] if args else kwargs.get("body")
        again = _LOST_AGAIN if method in ("GET", "HEAD") and body is None else 0
        while True:
            try:
                return super().urlopen(method, url, *args, **kwargs)
            except (ProtocolError, ProxyError) as exc:
                if again == 0 or not _kept_lost(exc):
                    raise
                again -= 1

    def _put_conn(self, conn: Any) -> None:
        if isinstance(conn, _NotedHTTPConnection) and conn.spent:
            conn.close()
            conn = None  # its place stays empty, as urllib3 leaves a dropped one's
        super()._put_conn(conn)


class _HTTPSPool(_HTTPPool, urllib3.HTTPSConnectionPool):
    ConnectionCls = _NotedHTTPSConnection


def _kept_lost(exc: ProtocolError | ProxyError) -> bool:
    """Whether urllib3's ``exc`` is a kept connection lost (its words: "Connection aborted.";
    through a proxy "Unable to connect to proxy": http.client's close of the connection, on
    a hang-up, wipes what urllib3 knew of the tunnel it had)."""
    return any(isinstance(arg, KeptConnectionLost) for arg in exc.args)


_Manager = TypeVar("_Manager", bound=urllib3.PoolManager)


def noting(manager: _Manager) -> _Manager:
    """Have ``manager`` (a ProxyManager too) open connections whose sockets are noted."""
    manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
    return manager
