"""A worker: one attempt at one slot's byte range, in its own forked process.

``Worker`` is the coordinator's handle on it (start it, collect its outcome, kill it);
``worker_main`` is what runs in the child.

A worker is forked by the coordinator, builds its own urllib3 pool (pools never cross a
fork), GETs ``[pos, end)`` of its slot in chunks over one keep-alive connection
(``_chunk``), and writes with ``os.pwrite`` into the shared preallocated file descriptor.
Before each request it publishes the request's end (``asked``); after every write, its
position and the bytes it received. It re-reads its slot's ``end`` before every request and
every read, so the coordinator can move the end in (another worker took the tail): at a
chunk boundary when it splits, at once only when it cuts a stalled lane. It sends one
result down its pipe — ``None`` for success or a picklable ``BlobdlError`` — and exits.
Retries, backoff and stall handling belong to the coordinator.
"""

from __future__ import annotations

import mmap
import os
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import NamedTuple

import psutil
from urllib3 import PoolManager

from ._chunk import next_chunk
from ._counters import CounterTable
from ._fileio import Splicer, local_error, pwrite_all
from ._gather import gathering
from ._http import (
    RawBody,
    Reader,
    body_reader,
    content_length,
    finish,
    make_pool,
    open_range,
    open_whole,
    raw_body,
    translate_errors,
)
from ._plan import Span
from ._remote import Remote
from ._spawn import start
from .config import MAX_BYTES, Settings
from .errors import BlobdlError, TruncatedBody, WorkerCrashed

# Bytes gathered off a TLS socket per write: 16 records. More saved no CPU we could measure
# (1 GiB HTTPS, 16 lanes: 64 KiB 1.81, 256 KiB 1.60, 1 MiB 1.74 CPU s; noisy) and makes every
# worker touch (own) more of its buffer.
GATHER = 256 * 1024


class Attempt(NamedTuple):
    """One attempt, sent to a freshly forked worker."""

    slot: int  # index into the counter table (pos/end live there)
    ranged: bool  # False: the whole-body fallback for servers without ranges
    first_chunk: int  # bytes of the first ranged request (see _chunk.next_chunk)
    fd: int  # the preallocated temporary file, inherited across the fork
    path: str  # its name, for error messages only


class Worker:
    """The coordinator's handle on one running worker process and our end of its pipe."""

    def __init__(
        self, attempt: Attempt, remote: Remote, settings: Settings, table: CounterTable
    ) -> None:
        args = (attempt, remote, settings, table)
        name = f"blobdl-part-{attempt.slot}"
        self._proc, self._conn = start(worker_main, args, name=name, daemon=True)

    @property
    def sentinel(self) -> int:
        """Ready for ``multiprocessing.connection.wait`` once the process has exited."""
        return self._proc.sentinel

    def outcome(self) -> BlobdlError | None:
        """After it exited: None for success, else why it failed (a crash if it said nothing)."""
        self._proc.join()
        error: BlobdlError | None
        try:
            error = self._conn.recv() if self._conn.poll() else WorkerCrashed(self._proc.exitcode)
        except (EOFError, OSError):
            error = WorkerCrashed(self._proc.exitcode)
        self._conn.close()
        return error

    def waiting(self) -> bool:
        """Whether it is blocked waiting (on its socket), not runnable: a lane that has not
        moved while its worker could run is starved of CPU by us, not slowed by the network,
        and cutting it would only throw away what it has in flight."""
        try:
            return psutil.Process(self._proc.pid).status() == psutil.STATUS_SLEEPING
        except psutil.Error:
            return False  # gone: its sentinel tells the rest

    def kill(self) -> None:
        """End a worker that cannot be trusted to notice by itself (blocked in recv)."""
        self._proc.kill()
        self._proc.join()
        self._conn.close()


def worker_main(
    attempt: Attempt, remote: Remote, settings: Settings, table: CounterTable, conn: Connection
) -> None:
    """Entry point in the child process."""
    # _spawn.child_setup ran first: Ctrl-C is ignored, and we die with the coordinator.
    result: BlobdlError | None = None
    try:
        _fetch(attempt, remote, settings, table)
    except BlobdlError as exc:
        result = exc
    except Exception as exc:  # a bug: report it rather than hang the slot
        result = BlobdlError(f"worker failed unexpectedly: {exc!r}")
    conn.send(result)
    conn.close()


def _fetch(attempt: Attempt, remote: Remote, settings: Settings, table: CounterTable) -> None:
    pool = make_pool(settings)
    lane = _Lane(attempt, table, settings.buffer_size)
    with translate_errors(remote.final_url):
        if attempt.ranged:
            _fetch_chunks(lane, pool, remote, attempt.first_chunk)
        else:
            _fetch_whole(lane, pool, remote)


def _fetch_chunks(lane: _Lane, pool: PoolManager, remote: Remote, first: int) -> None:
    """The slot's range as a series of ranged GETs over one keep-alive connection, each
    sized by ``next_chunk`` and published (``asked``) before it is sent."""
    slot, table = lane.attempt.slot, lane.table
    pos, chunk, rate = table.pos(slot), 0, 0.0
    while pos < (end := table.end(slot)):
        chunk = next_chunk(chunk, rate, end - pos, first)
        span = _ask(table, slot, Span(pos, pos + chunk))
        if span.end <= pos:
            return
        began = time.monotonic()
        response = open_range(pool, remote, span)
        try:
            pos = lane.stream(body_reader(response), pos, span.end, raw_body(response))
        finally:
            finish(response, complete=pos == span.end)
        if pos < min(span.end, table.end(slot)):
            raise TruncatedBody(remote.final_url, pos - span.start, span.length)
        rate = (pos - span.start) / max(time.monotonic() - began, 1e-6)


def _ask(table: CounterTable, slot: int, span: Span) -> Span:
    """Publish the request's end, then read the slot's end again: a split the coordinator
    placed meanwhile (it only ever splits at or past ``asked``) shortens the request."""
    table.set_asked(slot, span.end)
    end = table.end(slot)
    if end < span.end:
        span = Span(span.start, max(span.start, end))
        table.set_asked(slot, span.end)
    return span


def _fetch_whole(lane: _Lane, pool: PoolManager, remote: Remote) -> None:
    """The fallback for servers without ranges: one GET of the whole body."""
    start = lane.table.pos(lane.attempt.slot)
    response = open_whole(pool, remote)
    # Even when the probe learned no size, this response may state its length:
    # never read past it, and never take a body cut short for the whole blob.
    length = content_length(response)
    body_end = start + length if length is not None else -1
    try:
        pos = lane.stream(body_reader(response), start, body_end)
    finally:
        response.close()
    final_end = lane.table.end(lane.attempt.slot)
    if final_end < 0:
        final_end = body_end
    if final_end >= 0 and pos < final_end:
        raise TruncatedBody(remote.final_url, pos - start, final_end - start)


class _Lane:
    """One worker's hot path: its buffer, its pacer, and the loop that fills the file."""

    def __init__(self, attempt: Attempt, table: CounterTable, buffer_size: int) -> None:
        self.attempt, self.table = attempt, table
        self.path = Path(attempt.path)
        # Anonymous pages cost nothing until written (bytearray zero-fills every page).
        self.buffer = memoryview(mmap.mmap(-1, buffer_size))
        self.pacer = _Pacer()
        self.parent = os.getppid()
        self.splicer = Splicer()

    def stream(self, read: Reader, pos: int, stop: int, raw: RawBody | None = None) -> int:
        """Socket -> the file from ``pos``; returns the position reached. Through one reused
        buffer and pwrite, or, for a ``raw`` body once its buffered bytes are taken, spliced
        (plain TCP) or gathered (TLS: every record that has arrived, one write).

        Stops at ``stop`` (the response's own end; -1: none) or at the slot's end (which may
        move in at any time; -1: until EOF), whichever comes first, or at EOF."""
        if raw is None or (self.splicer.enabled and not raw.tls):
            return self._stream(read, pos, stop, raw)
        with gathering(raw.sock) as gatherer:
            ahead = pos + raw.buffered if stop < 0 else min(stop, pos + raw.buffered)
            taken = self._stream(read, pos, ahead, None) if ahead > pos else pos
            if taken < ahead:
                return taken
            return self._stream(gatherer.read, taken, stop, None, GATHER)

    def _stream(self, read: Reader, pos: int, stop: int, raw: RawBody | None, most: int = 0) -> int:
        slot, table, size = self.attempt.slot, self.table, min(most or MAX_BYTES, len(self.buffer))
        buffered = raw.buffered if raw is not None else 0
        while True:
            end = table.end(slot)
            if end < 0 or 0 <= stop < end:
                end = stop
            want = size if end < 0 else min(size, end - pos)
            want = self.pacer.limit(want, table.cap(slot))
            if want <= 0:
                return pos
            if raw is not None and buffered <= 0 and self.splicer.enabled:
                count = self.splicer.move(raw.sock, self.attempt.fd, pos, want, self.path)
            else:
                count = self._copy(read, pos, want if buffered <= 0 else min(want, buffered))
                buffered -= count
            if count == 0:
                return pos
            table.add_received(slot, count)
            pos += count
            table.set_pos(slot, pos)
            self.pacer.pace(count, table.cap(slot))
            if os.getppid() != self.parent:  # orphaned: nobody will ever use these bytes
                os._exit(1)

    def _copy(self, read: Reader, pos: int, want: int) -> int:
        """Read what has arrived (up to ``want``) into the buffer and pwrite it at ``pos``."""
        buffer = self.buffer if want == len(self.buffer) else self.buffer[:want]
        count = read(buffer)  # may be 1 byte
        try:
            pwrite_all(self.attempt.fd, buffer[:count], pos)
        except OSError as exc:
            raise local_error(self.path, exc) from None
        return count


class _Pacer:
    """Keeps a worker at or under its share of ``limit_rate`` (``cap``, bytes/s).

    Reads are cut to about a tenth of a second's worth, so the worker's position keeps
    moving (a long sleep after one big read would look like a stall to the coordinator)."""

    SLICE = 0.1  # seconds of allowance per read

    def __init__(self) -> None:
        self.cap = 0
        self.since = 0.0
        self.sent = 0

    def limit(self, want: int, cap: int) -> int:
        return want if cap <= 0 else min(want, max(1024, int(cap * self.SLICE)))

    def pace(self, count: int, cap: int) -> None:
        if cap <= 0:
            return
        now = time.monotonic()
        if cap != self.cap:  # a new share: measure from here
            self.cap, self.since, self.sent = cap, now, 0
        self.sent += count
        ahead = self.since + self.sent / cap - now
        if ahead > 0:
            time.sleep(ahead)
