"""Reading a body straight off its socket, many reads per write.

Over TLS a read returns at most one record (16 KiB), and through http.client each one
passes five Python frames before our loop writes it with its own ``pwrite`` and counter
updates: per GiB that is 65,536 trips, most of the CPU a lane spends beyond decryption.
``Gatherer`` instead reads from the socket itself, in non-blocking mode, for as long as
bytes are already there, and returns them all at once: it waits (the socket's own read
timeout) only for the first byte, so a slow link still shows progress as bytes arrive.
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

# Nothing to read right now: over TLS a whole record may not have arrived yet.
_NOT_YET = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Gatherer:
    """Reads what has arrived on a non-blocking socket (see ``gathering``)."""

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        self.sock = sock
        self.timeout_ms = None if timeout is None else max(0, int(timeout * 1000))
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)

    def read(self, view: memoryview) -> int:
        """Fill ``view`` with what has arrived; wait only while nothing has. 0: EOF."""
        got, size = 0, len(view)
        while got < size:
            try:
                count = self.sock.recv_into(view[got:] if got else view)
            except _NOT_YET:
                if got:
                    return got
                self._wait()
                continue
            if count == 0:
                return got
            got += count
        return got

    def _wait(self) -> None:
        if not self.poller.poll(self.timeout_ms):
            raise TimeoutError("read timed out")


@contextmanager
def gathering(sock: socket.socket) -> Iterator[Gatherer]:
    """A ``Gatherer`` over ``sock`` for the block; the socket gets its timeout back after
    (its connection may serve the lane's next request)."""
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        yield Gatherer(sock, timeout)
    finally:
        sock.settimeout(timeout)
