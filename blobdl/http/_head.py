"""The head of every response on our connections: read whole, in bounded time, interim
responses skipped.

A server may send any number of informational responses before its answer (RFC 9110 15.2):
``103 Early Hints`` is common at CDNs. http.client skips ``100 Continue`` only and hands any
other 1xx over as if it were the answer ("HTTP 103"); urllib3 does the same. The response
class here skips them all while reading the status line, for the probe, every range
request and a proxy's answer to CONNECT alike. ``101 Switching Protocols`` is the one 1xx
that is final, and we never ask to upgrade: it breaks the protocol (``InterimError``, a
``BadResponse`` once translated), as does an endless run of interim responses.

The socket's read timeout (the stall timeout) bounds each read, not the head: a server that
sends it a byte at a time, never silent that long, would hold the request as long as it
liked (64 KiB a header line). So from its first byte, the whole head (interim responses
included) must arrive within one read timeout, or the read times out as a silent socket's
would (``_HeadReads``). The first byte itself may take the whole timeout, as ever. A
proxy's answer to CONNECT is read while its connection is set up: each read then waits only
for what is left of the set-up (``_set_up``), so that answer is bounded as a whole too.
"""

from __future__ import annotations

import http.client
import io
import socket
import time
from collections.abc import Callable
from typing import Any

from ._chunks import StrictChunks
from ._set_up import left as set_up_left

MAX_INTERIM = 100  # interim responses before one answer; a legitimate server sends one or two


class InterimError(http.client.HTTPException):
    """The status line was a 101 nobody asked for, or behind too many interim responses."""


class _HeadReads(socket.SocketIO):
    """A socket's reads, as ``socket.makefile`` gives them to http.client; while a head is
    read (``within`` set), each read waits only for what is left of ``within`` seconds
    from the head's first byte."""

    within: float | None = None
    deadline: float | None = None

    def readinto(self, b: Any) -> int | None:
        if self.within is not None and self.deadline is None:  # the head's first byte:
            count = super().readinto(b)  # the socket's own timeout
            if count:
                self.deadline = time.monotonic() + self.within
            return count
        left = self._left()
        if left is None:
            return super().readinto(b)
        sock: socket.socket = self._sock  # type: ignore[attr-defined]
        timeout = sock.gettimeout()  # (each settimeout is a system call: only when needed)
        sock.settimeout(min(left, timeout) if timeout is not None else left)
        try:
            return super().readinto(b)
        finally:
            sock.settimeout(timeout)

    def _left(self) -> float | None:
        """What this read may wait: what is left of the head's time, or of the set-up's
        while a proxy's answer to CONNECT is read; None: the socket's own timeout."""
        if self.deadline is None:
            return set_up_left()
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the response's head did not arrive whole in time")
        return left


class _Socket:
    """Stands for the socket while http.client opens its file on it: the file's reads are
    ``_HeadReads``, made as ``socket.makefile("rb")`` makes its own."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads: _HeadReads | None = None

    def makefile(self, mode: str) -> io.BufferedReader:
        self.reads = _HeadReads(self.sock, "rb")
        self.sock._io_refs += 1  # type: ignore[attr-defined]  # as makefile counts its files
        return io.BufferedReader(self.reads, io.DEFAULT_BUFFER_SIZE)


class InterimSkippingResponse(StrictChunks):
    """http.client's response, its head read whole within the read timeout of its first
    byte, every 1xx but 101 skipped before the real status line (and a chunked body's
    lines read strictly: ``_chunks``)."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        self._reads: _HeadReads | None = None
        # A byte of the head arrived (an interim answer's too), however its reading ended.
        # Not known (False) where the head is read unbounded: no read timeout, a TLS tunnel
        # inside TLS.
        self.heard = False
        # What the body is read from: the connection may drop its socket while the
        # response still reads it ("Connection: close" hands it over to the response).
        self.source: Any = sock
        if isinstance(sock, socket.socket):  # an ssl.SSLSocket too
            stand_in = _Socket(sock)
            super().__init__(stand_in, *args, **kwargs)  # type: ignore[arg-type]
            self._reads = stand_in.reads
        else:  # a TLS tunnel inside TLS (urllib3's SSLTransport): its own file, unbounded
            super().__init__(sock, *args, **kwargs)

    def begin(self) -> None:
        reads = self._reads
        timeout = reads._sock.gettimeout() if reads is not None else None  # type: ignore[attr-defined]
        if reads is None or timeout is None:
            super().begin()
            return
        reads.within, reads.deadline = timeout, None
        try:
            super().begin()
        finally:
            self.heard = reads.deadline is not None  # set by the head's first byte
            reads.within = reads.deadline = None

    def _read_status(self) -> tuple[str, int, str]:
        read: Callable[[], tuple[str, int, str]] = super()._read_status  # type: ignore[misc]
        for _ in range(MAX_INTERIM + 1):
            version, status, reason = read()
            if status == 101:
                raise InterimError("switched protocols (101) although no upgrade was asked")
            if not 100 <= status < 200:
                return version, status, reason
            http.client.parse_headers(self.fp)  # an interim response is a header block only
        raise InterimError(f"more than {MAX_INTERIM} interim (1xx) responses before an answer")
