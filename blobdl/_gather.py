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
import time
from collections.abc import Iterator
from contextlib import contextmanager

# Nothing to read right now: over TLS a whole record may not have arrived yet.
_NOT_YET = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
# When bytes trickle in (a capped or slow lane), a wake-up per TLS record costs more CPU than
# the record: under SMALL bytes in hand, wait LINGER seconds once for more. It is no trick
# aimed at one server: it only sets how often a slow lane wakes, not what it asks for.
# (1 GiB HTTPS from nginx at 16 x 20 MiB/s, three pairs: 1.69-1.79 -> 1.50-1.63 CPU s,
# 90-92 % -> 94-98.5 % of the ideal rate: the server gets the CPU we no longer use.)
SMALL = 64 * 1024
LINGER = 0.005


class Gatherer:
    """Reads what has arrived on a non-blocking socket (see ``gathering``)."""

    def __init__(self, sock: socket.socket, timeout: float | None, linger: float = LINGER) -> None:
        self.sock, self.linger = sock, linger
        self.timeout_ms = None if timeout is None else max(0, int(timeout * 1000))
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)

    def read(self, view: memoryview) -> int:
        """Fill ``view`` with what has arrived (lingering once if that is little); wait
        for more only while nothing has. 0: EOF."""
        got, size, lingered = 0, len(view), False
        while got < size:
            try:
                count = self.sock.recv_into(view[got:] if got else view)
            except _NOT_YET:
                if got >= SMALL or lingered:
                    return got
                if got:
                    time.sleep(self.linger)
                    lingered = True
                else:
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
def gathering(sock: socket.socket, linger: float = LINGER) -> Iterator[Gatherer]:
    """A ``Gatherer`` over ``sock`` for the block; the socket gets its timeout back after
    (its connection may serve the lane's next request)."""
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        yield Gatherer(sock, timeout, linger)
    finally:
        sock.settimeout(timeout)
