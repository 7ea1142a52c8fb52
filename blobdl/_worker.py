"""A worker: one attempt at one slot's byte range, in its own forked process.

``Worker`` is the coordinator's handle on it (start it, collect its outcome, kill it);
``worker_main`` is what runs in the child.

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
from ._spawn import start
from .config import Settings
from .errors import BlobdlError, TruncatedBody, WorkerCrashed


class Attempt(NamedTuple):
    """One attempt, sent to a freshly forked worker."""

    slot: int  # index into the counter table (pos/end live there)
    ranged: bool  # False: the whole-body fallback for servers without ranges
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
    start, end = table.pos(attempt.slot), table.end(attempt.slot)
    pool = make_pool(settings)
    url = remote.final_url
    with translate_errors(url):
        if attempt.ranged:
            response = open_range(pool, remote, Span(start, end))
            body_end = -1  # the slot's end, checked against Content-Range, bounds the body
        else:
            response = open_whole(pool, remote)
            # Even when the probe learned no size, this response may state its length:
            # never read past it, and never take a body cut short for the whole blob.
            length = content_length(response)
            body_end = start + length if length is not None else -1
        try:
            pos = _stream(
                attempt, body_reader(response), table, start, settings.buffer_size, body_end
            )
        finally:
            response.close()
    final_end = table.end(attempt.slot)
    if final_end < 0:
        final_end = body_end
    if final_end >= 0 and pos < final_end:
        raise TruncatedBody(url, pos - start, final_end - start)


def _stream(
    attempt: Attempt, read: Reader, table: CounterTable, pos: int, buffer_size: int, body_end: int
) -> int:
    """The hot loop: socket -> one reused buffer -> pwrite; returns the position reached.

    Stops at the slot's end (which may move in at any time) or, when the slot is open-ended
    (-1), at ``body_end`` (the response's own end) or at EOF when that is -1 too."""
    buffer = memoryview(bytearray(buffer_size))
    parent = os.getppid()
    pacer = _Pacer()
    while True:
        end = table.end(attempt.slot)
        if end < 0:
            end = body_end
        want = buffer_size if end < 0 else min(buffer_size, end - pos)
        want = pacer.limit(want, table.cap(attempt.slot))
        if want <= 0:
            return pos
        count = read(buffer if want == buffer_size else buffer[:want])  # may be 1 byte
        if count == 0:
            return pos
        try:
            pwrite_all(attempt.fd, buffer if count == buffer_size else buffer[:count], pos)
        except OSError as exc:
            raise local_error(Path(attempt.path), exc) from None
        pos += count
        table.set_pos(attempt.slot, pos)
        pacer.pace(count, table.cap(attempt.slot))
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
