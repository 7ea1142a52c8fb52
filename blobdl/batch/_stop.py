"""Stopping a batch (a signal, or a callback that raised): the signal passed on to the pool
and every large item's child, their pipes drained while they end, a pool process that
outlives its grace killed, every child reaped."""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from multiprocessing.connection import Connection, wait

from ._item_process import Running
from ._pool import STOP_GRACE, Pool


def stop(pool: Pool | None, running: Collection[Running], signum: int) -> None:
    """Pass the signal on: every seat's item ends (nothing of it is kept), every child
    saves its state and exits; wait for all, draining their pipes meanwhile (a child
    stopping sends a last Progress event, which for thousands of parts is more than a
    pipe holds, and a child blocked on a full pipe never exits; the events are dropped:
    the batch is being abandoned). A pool process that outlives its grace is killed."""
    if pool is not None:
        pool.stop(signum)
    for child in running:
        if child.proc.pid is not None:
            os.kill(child.proc.pid, signum)
    pipes = {child.conn for child in running}
    sentinels = {child.proc.sentinel for child in running}
    if pool is not None:
        pipes |= {pipe for pipe in pool.pipes if not pipe.closed}
        sentinels |= {proc.sentinel for proc in pool.procs}
    deadline = time.monotonic() + 2 * STOP_GRACE
    while sentinels:
        for ready in wait([*pipes, *sentinels], timeout=STOP_GRACE / 4):
            if isinstance(ready, int):  # that child has exited
                sentinels.discard(ready)
            elif isinstance(ready, Connection) and not _discard(ready):
                pipes.discard(ready)
        if pool is not None and time.monotonic() > deadline:
            for proc in pool.procs:
                if proc.exitcode is None:
                    proc.kill()
    for child in running:
        child.proc.join()
        child.conn.close()
    if pool is not None:
        pool.reap()


def _discard(conn: Connection) -> bool:
    """Read and drop one message; False at EOF."""
    try:
        conn.recv()
    except (EOFError, OSError):
        return False
    return True
