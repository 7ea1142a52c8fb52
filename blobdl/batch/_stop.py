"""Stopping a batch (a signal, or a callback that raised): the signal passed on to the pool
and every large item's child, their pipes drained while they end, a pool process that
outlives its grace killed, every child reaped. What an item that ended before the stop
reached it said of its result is kept: it finished, whatever the stop says of the others."""

from __future__ import annotations

import time
from collections.abc import Collection
from multiprocessing.connection import Connection, wait
from typing import Any

from ..events import DownloadResult
from ..processes._clean_child import relay_log
from . import _pool
from ._item_process import LargeItems, Running
from ._pool import Pool, _Done
from ._seats import Seats


def stop_batch(seats: Seats, large: LargeItems, signum: int) -> dict[int, DownloadResult]:
    """The scheduler's stop: every seat's item and every large item's child ends, and is
    reaped (``stop``), and what a seat that outlasted its grace left is removed
    (``Seats.stopped``); the items that finished meanwhile, by index, and their results."""
    pool, running = seats.pool, list(large.running.values())
    whose = {child.conn: child.item for child in running}
    if pool is not None:
        whose.update({pool.pipes[seat]: item for seat, item in seats.on_seat.items()})
    finished = stop(pool, running, signum)
    seats.stopped()
    large.reaped()
    return {whose[conn]: result for conn, result in finished.items() if conn in whose}


def stop(
    pool: Pool | None, running: Collection[Running], signum: int
) -> dict[Connection, DownloadResult]:
    """Pass the signal on: every seat's item ends (nothing of it is kept), every child
    saves its state and exits; wait for all, draining their pipes meanwhile (a child
    stopping sends a last Progress event, which for thousands of parts is more than a
    pipe holds, and a child blocked on a full pipe never exits; the events are dropped:
    the batch is being abandoned). A pool process that outlives its grace is killed.
    Returns the pipes (a child's, a seat's) that said their item's result: it had
    finished, its file in place, before the stop reached it."""
    finished: dict[Connection, DownloadResult] = {}
    if pool is not None:
        pool.stop(signum)
    for child in running:
        child.proc.signal(signum)  # nothing, if it has ended
    pipes = {child.conn for child in running}
    sentinels = {child.proc.sentinel for child in running}
    if pool is not None:
        pipes |= {pipe for pipe in pool.pipes if not pipe.closed}
        sentinels |= {proc.sentinel for proc in pool.procs}
    grace = _pool.STOP_GRACE  # read here: the pool's own grace, however it was set
    deadline = time.monotonic() + 2 * grace
    while sentinels:
        for ready in wait([*pipes, *sentinels], timeout=grace / 4):
            if isinstance(ready, int):  # that child has exited
                sentinels.discard(ready)
            elif isinstance(ready, Connection) and not _read(ready, finished):
                pipes.discard(ready)
        if pool is not None and time.monotonic() > deadline:
            for proc in pool.procs:
                proc.kill()  # nothing, if it has ended
    for pipe in pipes:  # what they said before they exited, not read yet: a result, say
        while _ready(pipe) and _read(pipe, finished):
            pass
    for child in running:
        child.proc.join()
        child.conn.close()
    if pool is not None:
        pool.reap()
    return finished


def _read(conn: Connection, finished: dict[Connection, DownloadResult]) -> bool:
    """Read one message: kept in ``finished`` if it is a result, logged if it is an exec'd
    child's log record (its "partial kept" warning, say), else dropped; False at EOF."""
    try:
        message = conn.recv()
    except (EOFError, OSError):
        return False
    if isinstance(message, tuple) and len(message) == 2 and message[0] == "log":
        relay_log(message[1])
    elif (result := _result_in(message)) is not None:
        finished[conn] = result
    return True


def _ready(conn: Connection) -> bool:
    try:
        return conn.poll(0)
    except (EOFError, OSError):
        return False


def _result_in(message: Any) -> DownloadResult | None:
    """The result a seat's ``_Done`` or a child's ``("done", outcome)`` carries, if any."""
    if isinstance(message, _Done):
        outcome = message.outcome
    elif isinstance(message, tuple) and len(message) == 2 and message[0] == "done":
        outcome = message[1]
    else:
        return None
    return outcome if isinstance(outcome, DownloadResult) else None
