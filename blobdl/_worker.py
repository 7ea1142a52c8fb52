"""The worker process: one attempt at one slot's byte range.

A worker is forked by the coordinator, builds its own urllib3 pool (pools never cross a
fork), GETs ``[pos, end)`` of its slot, and writes with ``os.pwrite`` into the shared
preallocated file descriptor. After every write it publishes its position in the counter
table; it re-reads its slot's ``end`` before every read, so the coordinator can move the
end in (another worker took the tail). It sends one result down its pipe — ``None`` for
success or a picklable ``BlobdlError`` — and exits. Retries, backoff and stall handling
belong to the coordinator.
"""

from __future__ import annotations

import os
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import NamedTuple

from ._counters import CounterTable
from ._fileio import local_error, pwrite_all
from ._http import (
    Reader,
    body_reader,
    content_length,
    make_pool,
    open_range,
    open_whole,
    translate_errors,
)
from ._plan import Span
from ._remote import Remote
from .config import Settings
from .errors import BlobdlError, TruncatedBody


class Job(NamedTuple):
    """One attempt, sent to a freshly forked worker."""

    slot: int  # index into the counter table (pos/end live there)
    ranged: bool  # False: the whole-body fallback for servers without ranges
    fd: int  # the preallocated temporary file, inherited across the fork
    path: str  # its name, for error messages only


def worker_main(
    job: Job, remote: Remote, settings: Settings, table: CounterTable, conn: Connection
) -> None:
    """Entry point in the child process."""
    # _spawn.child_setup ran first: Ctrl-C is ignored, and we die with the coordinator.
    result: BlobdlError | None = None
    try:
        _fetch(job, remote, settings, table)
    except BlobdlError as exc:
        result = exc
    except Exception as exc:  # a bug: report it rather than hang the slot
        result = BlobdlError(f"worker failed unexpectedly: {exc!r}")
    conn.send(result)
    conn.close()


def _fetch(job: Job, remote: Remote, settings: Settings, table: CounterTable) -> None:
    start, end = table.pos(job.slot), table.end(job.slot)
    pool = make_pool(settings)
    url = remote.final_url
    with translate_errors(url):
        if job.ranged:
            response = open_range(pool, remote, Span(start, end))
            framing = -1  # the slot's end, checked against Content-Range, bounds the body
        else:
            response = open_whole(pool, remote)
            # Even when the probe learned no size, this response may state its length:
            # never read past it, and never take a body cut short for the whole blob.
            length = content_length(response)
            framing = start + length if length is not None else -1
        try:
            pos = _stream(job, body_reader(response), table, start, settings.buffer_size, framing)
        finally:
            response.close()
    final_end = table.end(job.slot)
    if final_end < 0:
        final_end = framing
    if final_end >= 0 and pos < final_end:
        raise TruncatedBody(url, pos - start, final_end - start)


def _stream(
    job: Job, read: Reader, table: CounterTable, pos: int, buffer_size: int, framing: int
) -> int:
    """The hot loop: socket -> one reused buffer -> pwrite; returns the position reached.

    Stops at the slot's end (which may move in at any time) or, when the slot is open-ended
    (-1), at ``framing`` (the response's own end) or at EOF when that is -1 too."""
    buffer = memoryview(bytearray(buffer_size))
    parent = os.getppid()
    pacer = _Pacer()
    while True:
        end = table.end(job.slot)
        if end < 0:
            end = framing
        want = buffer_size if end < 0 else min(buffer_size, end - pos)
        want = pacer.limit(want, table.cap(job.slot))
        if want <= 0:
            return pos
        count = read(buffer if want == buffer_size else buffer[:want])  # may be 1 byte
        if count == 0:
            return pos
        try:
            pwrite_all(job.fd, buffer if count == buffer_size else buffer[:count], pos)
        except OSError as exc:
            raise local_error(Path(job.path), exc) from None
        pos += count
        table.set_pos(job.slot, pos)
        pacer.pace(count, table.cap(job.slot))
        if os.getppid() != parent:  # orphaned: nobody will ever use these bytes
            os._exit(1)


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
