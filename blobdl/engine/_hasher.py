"""Digest verification that keeps up with the download.

sha256 is sequential, so the hasher follows the longest contiguous prefix of the blob that
is on disk (read from the shared counter table) and hashes it while the rest is still
downloading; when the last byte lands only the tail beyond that prefix is left to hash.
It runs in its own forked process: the coordinator stays single-threaded (it forks
workers, and forking a threaded process is unsafe), and hashing gets the other core.
``hashed_run`` is a download's run with a hasher beside it, started and stopped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import ExitStack
from multiprocessing.connection import Connection

from ..errors import WorkerCrashed
from ..processes._signals import held
from ..processes._spawn import start
from ..store._digest import CHUNK, hash_range
from ._counter_table import CounterTable
from ._parts import Tally

_IDLE = 0.02  # seconds between looks at the table when the prefix has not moved (enough)
# The prefix is hashed once this much more of it is on disk (or when the download ends):
# where it grows as fast as it lands (parts in order under a rate limit), hashing each
# lane's read as it came cost 0.2-0.3 CPU-s per 512 MiB (a look at every slot of the table,
# and a buffer, per step). What is left at the end is at most this: 10 ms of hashing.
_STEP = 16 << 20


class PrefixHasher:
    """A forked process hashing ``fd`` along the table's on-disk prefix."""

    def __init__(self, fd: int, table: CounterTable) -> None:
        self._proc, self._conn = start(
            _hasher_main, (fd, table), name="blobdl-hasher", daemon=True, duplex=True
        )

    def finish(self, size: int) -> str:
        """Hash up to ``size`` and return the hex digest; ``WorkerCrashed`` if the hasher
        died (killed, say): the bytes are all on disk, and a rerun hashes them again."""
        try:
            self._conn.send(size)
            result: str = self._conn.recv()
        except (OSError, EOFError):
            self._proc.join(1.0)
            raise WorkerCrashed(self._proc.exitcode, "hashing process") from None
        self.stop()
        return result

    def stop(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()
        self._conn.close()


def hashed_run(
    fd: int, table: CounterTable, run: Callable[[], Tally], *, hashing: bool
) -> tuple[Tally, str | None]:
    """``run()``'s tally and, when ``hashing``, the sha256 of the bytes it wrote into ``fd``:
    a hasher follows them along ``table`` as they land, and is stopped however it ends."""
    with ExitStack() as cleanup:
        hasher = None
        if hashing:
            with held():  # a child forked is a child noted, and stopped
                hasher = PrefixHasher(fd, table)
                cleanup.callback(hasher.stop)
        tally = run()
        return tally, hasher.finish(tally.final_size) if hasher else None


def _hasher_main(fd: int, table: CounterTable, conn: Connection) -> None:
    digest = hashlib.sha256()
    hashed = 0
    parent = os.getppid()
    idle = 0.0
    # Waiting on the pipe, not sleeping: ``finish`` is answered the moment it is asked
    # (a sleep cost every digest-checked download half an _IDLE on average, 10 ms).
    while not conn.poll(idle):
        reach = table.prefix()
        if reach - hashed >= _STEP:
            hashed = hash_range(digest, fd, hashed, min(reach, hashed + 64 * CHUNK))
            idle = 0.0
        else:
            idle = _IDLE
        if os.getppid() != parent:
            os._exit(1)
    try:
        size = conn.recv()
    except (EOFError, OSError):  # the coordinator is gone (its end closes before we are
        os._exit(1)  # signalled): nobody will use the digest, and a traceback is no word
    hash_range(digest, fd, hashed, size)
    conn.send(digest.hexdigest())
