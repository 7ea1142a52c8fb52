"""A connection's set-up, bounded as a whole: the TCP connect, a proxy's TLS handshake and
its answer to CONNECT, and the TLS handshake with the server must all be over within the
connect timeout (``Settings.connect_timeout``, the time it promises to open a connection).

Each wait of a set-up is bounded alone by the socket's timeout, and that is no bound on the
whole: a peer that sends a byte just within it, every time, holds the set-up for as long as
it likes. CPython's own TLS handshake is one call with one deadline, but a proxy's answer to
CONNECT is read line by line, and urllib3 handshakes with a server inside a proxy's TLS (TLS
in TLS) in Python, one read per record. So while a connection is set up (``setting_up``, on
the thread that sets it up), every wait is given only what is left of its time (``clamp``):
the socket before each handshake, each read of the CONNECT answer (``_head``), each read and
write of a proxy's TLS socket (``SetUpSSLSocket``). Past the deadline, TimeoutError.

Why the connect timeout and not the stall timeout: the set-up is the connect timeout's
promise, and a setting that bounds silence would let a trickle of bytes through. DNS stays
out of reach (no socket to bound yet), as do the addresses tried before one answers (each
gets the connect timeout; the time spent on them counts against the rest).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_thread = threading.local()


@contextmanager
def setting_up(within: float | None) -> Iterator[None]:
    """A connection is set up on this thread in the block, within ``within`` seconds (None:
    unbounded, as the socket's own timeouts are)."""
    _thread.deadline = None if within is None else time.monotonic() + within
    try:
        yield
    finally:
        _thread.deadline = None


def left() -> float | None:
    """Seconds left of this thread's set-up; None when none is under way (or it is
    unbounded). TimeoutError once they are over."""
    deadline: float | None = getattr(_thread, "deadline", None)
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the connection was not set up within the connect timeout")
    return remaining


def clamp(sock: socket.socket) -> None:
    """Have ``sock`` wait no longer than what is left of this thread's set-up (if any)."""
    remaining = left()
    if remaining is not None:
        timeout = sock.gettimeout()
        sock.settimeout(remaining if timeout is None else min(timeout, remaining))


class SetUpSSLSocket(ssl.SSLSocket):
    """The socket of a proxy's TLS (an ``SSLContext.sslsocket_class``): urllib3's handshake
    with the server inside it reads and writes through ``recv`` and ``sendall``, each of
    which then waits only for what is left of the set-up."""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        clamp(self)
        return super().recv(buflen, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        clamp(self)
        super().sendall(data, flags)
