"""A lane: one attempt at one slot's byte range, on a thread of a worker process.

``run_attempt`` is the lane; ``_worker`` runs it in a worker process (forked by the
coordinator) and gives the coordinator its handle. A lane speaks HTTP through a session of
its own (``Session``: its own pool, since pools never cross a fork), GETs ``[pos, end)`` of
its slot in chunks over one keep-alive connection (``_chunk``), each a ``RangeBody``, and
``Filler`` moves the bytes into the shared preallocated file descriptor. Before each
request it publishes the request's end (``asked``); after every write, its position and the
bytes it received. It re-reads its slot's ``end`` before every request and every read, so
the coordinator can move the end in (another lane took the tail): at a chunk boundary when
it splits, at once only when it cuts a stalled lane. It returns one result — ``None`` for
success or a picklable ``BlobdlError``. Retries, backoff and stall handling belong to the
coordinator; ``Cancel`` lets its worker end it early.
"""

from __future__ import annotations

import mmap
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..config import Settings
from ..errors import BlobdlError, TruncatedBody
from ..http._body import RangeBody
from ..http._remote import Remote
from ..http._session import Session
from ..http._span import Span
from ..store._files import local_error
from ..store._writes import Splicer, pwrite_all
from ._chunk import next_chunk
from ._counter_table import CounterTable

# Bytes gathered off a TLS socket per write: 16 records. More saved no CPU we could measure
# (1 GiB HTTPS, 16 lanes: 64 KiB 1.81, 256 KiB 1.60, 1 MiB 1.74 CPU s; noisy) and makes every
# worker touch (own) more of its buffer.
GATHER = 256 * 1024

# A ``readinto``: fills the start of the view with what has arrived, returns how much.
_Read = Callable[[memoryview], int]


class Attempt(NamedTuple):
    """One attempt at a part, sent to the worker process that runs it."""

    slot: int  # index into the counter table (pos/end live there)
    ranged: bool  # False: the whole-body fallback for servers without ranges
    first_chunk: int  # bytes of the first ranged request (see _chunk.next_chunk)
    fd: int  # the preallocated temporary file, inherited across the worker's fork
    path: str  # its name, for error messages only


class Cancel:
    """Ends a lane from another thread: the lane sees ``stopped`` between two reads, and
    ``cut`` wakes it from a wait on any of its session's sockets or from its pacer's sleep."""

    def __init__(self, session: Session | None = None) -> None:
        self.stopped = False
        self.session = session or Session()
        self._woken = threading.Event()

    def cut(self) -> None:
        self.stopped = True
        self._woken.set()
        self.session.cut()

    def sleep(self, seconds: float) -> None:
        """Sleep, unless (until) the lane is cut."""
        self._woken.wait(seconds)


def run_attempt(
    attempt: Attempt, remote: Remote, settings: Settings, table: CounterTable, cancel: Cancel
) -> BlobdlError | None:
    """One attempt, on a thread of a worker process: None for success, else why not."""
    try:
        _fetch(attempt, remote, settings, table, cancel)
    except BlobdlError as exc:
        return exc
    except Exception as exc:  # a bug: report it rather than hang the slot
        return BlobdlError(f"lane failed unexpectedly: {exc!r}")
    return None


def _fetch(
    attempt: Attempt, remote: Remote, settings: Settings, table: CounterTable, cancel: Cancel
) -> None:
    filler = Filler(attempt, table, settings.buffer_size, cancel)
    try:
        with cancel.session.opened(settings, remote) as session:
            if attempt.ranged:
                _fetch_chunks(filler, session, remote, attempt.first_chunk)
            else:
                _fetch_whole(filler, session, remote)
    finally:  # the process goes on with other lanes: nothing of this one may linger
        filler.close()


def _fetch_chunks(filler: Filler, session: Session, remote: Remote, first: int) -> None:
    """The slot's range as a series of ranged GETs over one keep-alive connection, each
    sized by ``next_chunk`` and published (``asked``) before it is sent."""
    slot, table = filler.attempt.slot, filler.table
    pos, chunk, rate, overhead = table.pos(slot), 0, 0.0, 0.0
    while pos < (end := table.end(slot)):
        chunk = next_chunk(chunk, rate, end - pos, first, overhead)
        span = _ask(table, slot, Span(pos, pos + chunk))
        if span.end <= pos:
            return
        with session.range(span) as body:
            pos = filler.take(body, pos)
        # The probe's answer came with no lanes running: a machine busy with its own lanes
        # delays our reading of a status line, but makes no idle connection worth avoiding.
        overhead = min(body.answer_time, remote.answer_time)
        if pos < min(span.end, table.end(slot)):
            raise TruncatedBody(remote.final_url, pos - span.start, span.length)
        rate = (pos - span.start) / max(time.monotonic() - body.answered, 1e-6)


def _ask(table: CounterTable, slot: int, span: Span) -> Span:
    """Publish the request's end, then read the slot's end again: a split the coordinator
    placed meanwhile (it only ever splits at or past ``asked``) shortens the request."""
    table.set_asked(slot, span.end)
    end = table.end(slot)
    if end < span.end:
        span = Span(span.start, max(span.start, end))
        table.set_asked(slot, span.end)
    return span


def _fetch_whole(filler: Filler, session: Session, remote: Remote) -> None:
    """The fallback for servers without ranges: one GET of the whole body."""
    slot, table = filler.attempt.slot, filler.table
    start = table.pos(slot)
    with session.whole(start) as body:
        pos = filler.take(body, start)
    # Even when the probe learned no size, this response may state its length: never take
    # a body cut short for the whole blob.
    final_end = table.end(slot)
    if final_end < 0:
        final_end = body.stop
    if final_end >= 0 and pos < final_end:
        raise TruncatedBody(remote.final_url, pos - start, final_end - start)


class Filler:
    """One lane's hot path: its buffer, its pacer, and the loop that fills the file."""

    def __init__(
        self, attempt: Attempt, table: CounterTable, buffer_size: int, cancel: Cancel
    ) -> None:
        self.attempt, self.table, self.cancel = attempt, table, cancel
        self.path = Path(attempt.path)
        # Anonymous pages cost nothing until written (bytearray zero-fills every page).
        self.buffer = memoryview(mmap.mmap(-1, buffer_size, flags=mmap.MAP_PRIVATE))
        self.pacer = _Pacer(cancel.sleep)
        self.parent = os.getppid()
        self.splicer = Splicer()

    def aim(self, attempt: Attempt) -> None:
        """Fill ``attempt``'s file and slot from now on: a seat of a batch keeps one filler
        (its buffer, its splice pipe) for one small download after another."""
        self.attempt, self.path = attempt, Path(attempt.path)
        self.pacer = _Pacer(self.cancel.sleep)  # its allowance is measured afresh

    def close(self) -> None:
        # The buffer goes with the last view of it (an error's traceback may hold one).
        self.splicer.close()

    def take(self, body: RangeBody, pos: int) -> int:
        """``stream`` from ``pos``, then ``body.reached``: the position reached, less the
        bytes whose framing is not checked yet (a chunked body's current chunk). A chunk
        whose size line stated more than its data handed out the line end, the next size
        line and the next chunk's bytes as its own: they are never kept as the blob's, and
        a retry asks for them again.

        The slot's ``pos`` only ever counts checked bytes (``_stream`` publishes it so after
        every write): what reads it as done (a checkpoint, the hasher, a steal, the retry
        after a worker killed mid-chunk) never sees a byte it may have to take back."""
        end = self.stream(body, pos)
        body.reached(end)  # may check the last chunk's end
        end = max(pos, end - body.unchecked())
        self.table.set_pos(self.attempt.slot, end)
        return end

    def stream(self, body: RangeBody, pos: int) -> int:
        """``body`` -> the file from ``pos``; returns the position reached. Through one
        reused buffer and pwrite, or, for a body that lends its socket once its buffered
        bytes are taken, spliced (plain TCP) or gathered (TLS: every record that has
        arrived, one write).

        Stops at the body's end (``stop``; -1: none) or at the slot's end (which may move
        in at any time; -1: until EOF), whichever comes first, or at EOF."""
        whole, read, stop = len(self.buffer), body.read, body.stop
        if body.sock is None:  # the only bodies with a framing to check (chunked)
            unchecked = body.unchecked if body.framed else None
            return self._stream(read, pos, stop, whole, unchecked=unchecked)
        if self.splicer.enabled and not body.tls:
            return self._stream(read, pos, stop, whole, body.sock, body.buffered)
        with body.gathering() as gathered:
            ahead = pos + body.buffered if stop < 0 else min(stop, pos + body.buffered)
            taken = self._stream(read, pos, ahead, whole) if ahead > pos else pos
            if taken < ahead:
                return taken
            return self._stream(gathered, taken, stop, min(GATHER, whole))

    def _stream(
        self,
        read: _Read,
        pos: int,
        stop: int,
        size: int,
        sock: socket.socket | None = None,
        buffered: int = 0,
        unchecked: Callable[[], int] | None = None,
    ) -> int:
        """``stream``'s loop: at most ``size`` bytes per read and write; from ``sock``, once
        ``buffered`` bytes are read, spliced. The position it publishes after each write
        leaves out the ``unchecked()`` bytes (None: every byte read is checked)."""
        slot, table = self.attempt.slot, self.table
        while True:
            end = table.end(slot)
            if end < 0 or 0 <= stop < end:
                end = stop
            want = size if end < 0 else min(size, end - pos)
            cap = table.cap(slot)  # one read: a read is paced at the cap it was taken under
            want = self.pacer.limit(want, cap)
            if want <= 0 or self.cancel.stopped:
                return pos
            if sock is not None and buffered <= 0 and self.splicer.enabled:
                count = self.splicer.move(sock, self.attempt.fd, pos, want, self.path)
            else:
                count = self._copy(read, pos, want if buffered <= 0 else min(want, buffered))
                buffered -= count
            if count == 0:
                return pos
            table.add_received(slot, count)
            pos += count
            table.set_pos(slot, pos if unchecked is None else pos - unchecked())
            slept = self.pacer.pace(count, cap)
            if slept:
                table.add_slept(slot, slept)
            if os.getppid() != self.parent:  # orphaned: nobody will ever use these bytes
                os._exit(1)

    def _copy(self, read: _Read, pos: int, want: int) -> int:
        """Read what has arrived (up to ``want``) into the buffer and pwrite it at ``pos``."""
        buffer = self.buffer if want == len(self.buffer) else self.buffer[:want]
        count = read(buffer)  # may be 1 byte
        try:
            pwrite_all(self.attempt.fd, buffer[:count], pos)
        except OSError as exc:
            raise local_error(self.path, exc) from None
        return count


class _Pacer:
    """Keeps a lane at or under its share of ``limit_rate`` (``cap``, bytes/s).

    Reads are cut to about a tenth of a second's worth (one byte at least), so the worker's
    position keeps moving: a long sleep after one big read would look like a stall to the
    coordinator (a floor of 1 KiB slept 1,024 s after each read at 1 B/s, 5 s at 200)."""

    SLICE = 0.1  # seconds of allowance per read

    def __init__(self, sleep: Callable[[float], None]) -> None:
        self.sleep = sleep  # a sleep that a cut ends early
        self.cap = 0
        self.since = 0.0
        self.sent = 0

    def limit(self, want: int, cap: int) -> int:
        return want if cap <= 0 else min(want, max(1, int(cap * self.SLICE)))

    def pace(self, count: int, cap: int) -> int:
        """Sleep as long as ``count`` more bytes put the lane ahead of ``cap``; the
        microseconds it slept (it may be cut short)."""
        if cap <= 0:
            return 0
        now = time.monotonic()
        if cap != self.cap:  # a new share: measure from here
            self.cap, self.since, self.sent = cap, now, 0
        self.sent += count
        ahead = self.since + self.sent / cap - now
        if ahead <= 0:
            return 0
        self.sleep(ahead)
        return int((time.monotonic() - now) * 1_000_000)
