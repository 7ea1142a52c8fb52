"""Reading a body straight off its socket, many reads per write.

Over TLS a read returns at most one record (16 KiB), and through http.client each one
passes five Python frames before our loop writes it with its own ``pwrite`` and counter
updates: per GiB that is 65,536 trips, most of the CPU a lane spends beyond decryption.
``Gatherer`` instead reads from the socket itself, in non-blocking mode, for as long as
bytes are already there, and returns them all at once: it waits (the socket's own read
timeout) only for the first byte, so a slow link still shows progress as bytes arrive.
"""

from __future__ import annotations

import math
import select
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager

# Nothing to read right now (over TLS a whole record may not have arrived yet), or OpenSSL
# must send before it can read on (a key update, a renegotiation): wait for the socket.
_NOT_YET = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
# A lane that trickles (a capped or slow server) would wake for every TLS record; holding
# under SMALL bytes, it waits LINGER once for more. Tuned on nginx at 16 x 20 MiB/s (fewer
# wake-ups: 1.69-1.79 -> 1.50-1.63 CPU s per GiB); the server's pacing does not matter.
SMALL = 64 * 1024
LINGER = 0.005


class Gatherer:
    """Reads what has arrived on a non-blocking socket (see ``gathering``)."""

    def __init__(self, sock: socket.socket, timeout: float | None, linger: float = LINGER) -> None:
        self.sock, self.timeout, self.linger = sock, timeout, linger
        self.pending: OSError | None = None  # the error that ended the last batch

    def read(self, view: memoryview) -> int:
        """Fill ``view`` with what has arrived (lingering once if that is little); wait
        for more only while nothing has. 0: EOF.

        An error after some bytes (a reset behind data, a broken TLS record behind good
        ones) hands over those bytes first, as a plain read would, and is raised next."""
        if self.pending is not None:
            error, self.pending = self.pending, None
            raise error
        got, size, lingered = 0, len(view), False
        while got < size:
            try:
                count = self.sock.recv_into(view[got:] if got else view)
            except _NOT_YET as exc:
                if got >= SMALL or lingered:
                    return got
                if got:
                    time.sleep(self.linger)
                    lingered = True
                else:
                    writing = isinstance(exc, ssl.SSLWantWriteError)
                    wait_for(self.sock, select.POLLOUT if writing else select.POLLIN, self.timeout)
                continue
            except OSError as exc:  # ssl.SSLError too
                if not got:
                    raise
                self.pending = exc
                return got
            if count == 0:
                return got
            got += count
        return got


def wait_for(sock: socket.socket, event: int, timeout: float | None) -> None:
    """Wait until ``sock`` is ready for ``event`` (select.POLLIN, POLLOUT), at most
    ``timeout`` seconds (None: for ever), else raise TimeoutError. poll, not select: a
    worker that runs many lanes may hold descriptors past 1024."""
    poller = select.poll()
    poller.register(sock, event)
    if not poller.poll(None if timeout is None else math.ceil(timeout * 1000)):
        raise TimeoutError("read timed out")


@contextmanager
def gathering(sock: socket.socket, linger: float = LINGER) -> Iterator[Gatherer]:
    """A ``Gatherer`` over ``sock`` for the block; the socket gets its timeout back after
    (its connection may serve the lane's next request)."""
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        yield Gatherer(sock, timeout, linger)
    finally:
        sock.settimeout(timeout)
