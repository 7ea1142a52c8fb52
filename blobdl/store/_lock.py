"""One writer per destination: an advisory ``flock`` on ``DEST.blobdl-lock``; and many
blobs fetched by several processes in turns (``in_turns``), as many claimed at once as the
process may hold open.

The kernel drops a flock when its holder dies, so a crashed download never leaves the
destination stuck. The lock file is removed by its holder on release; a waiter that locked
a file which was removed meanwhile notices (different inode) and tries again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from ..errors import DestinationLocked
from ..processes._signals import held
from ._files import open_own, still_at, take_lock

log = logging.getLogger("blobdl")

LOCK_SUFFIX = ".blobdl-lock"
T = TypeVar("T")


class DestinationLock:
    def __init__(self, dest: Path, timeout: float) -> None:
        self.path = dest.with_name(dest.name + LOCK_SUFFIX)
        self.dest, self.timeout = dest, timeout
        self.fd: int | None = None

    def __enter__(self) -> DestinationLock:
        deadline = time.monotonic() + self.timeout
        while True:
            fd = None
            try:
                with held():  # a file opened is a file noted (and closed if we stop)
                    fd = self._open()
                if not take_lock(fd, deadline=deadline):  # the wait: Ctrl-C ends it
                    raise DestinationLocked(str(self.dest), _read_holder(fd))
                with held():  # the lock taken is the lock noted: __exit__ lets go of it
                    if still_at(self.path, fd):
                        self.fd = fd
                        _write_holder(fd)
                        return self
            except BaseException as exc:
                if self.fd is not None:
                    self.__exit__(type(exc), exc, None)  # we held it: no lock file left
                elif fd is not None:
                    os.close(fd)
                raise
            os.close(fd)  # we locked a file its previous holder had just removed

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Let go: the lock file removed, then closed. Best-effort, and never an error of
        its own: a directory that became read-only (or vanished) must not replace the
        error on its way out, nor fail a download that is complete."""
        if self.fd is None:
            return
        with held(drop=True):
            try:
                self.path.unlink()  # still holding the lock: nobody else owns this name now
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove the lock file %s: %s", self.path, exc.strerror)
            finally:
                os.close(self.fd)
                self.fd = None

    def _open(self) -> int:
        # Truncated once locked: a link planted at the name must not lead us to a victim.
        return open_own(self.path, os.O_RDWR | os.O_CREAT)


def _write_holder(fd: int) -> None:
    """Our process id in the lock file, for a waiter's message only: a full disk that cannot
    take it must not fail the download (the flock is the lock, not these bytes)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)


def _read_holder(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode() or "x")
    except (OSError, ValueError):
        return None


def in_turns(
    items: Sequence[T],
    claim: Callable[[T, bool], AbstractContextManager[bool]],
    missing: Callable[[T], bool],
    fetch: Callable[[list[T]], None],
    *,
    at_once: int | None = None,
) -> None:
    """Fetch, all at once, the missing items no other process holds (``claim(item, False)``
    yields False without waiting when another does); then, one by one, each of the others
    once its holder lets go, if the holder did not leave it behind. Two processes sharing a
    store so fetch each item once, and neither waits while it has work of its own.

    A claim holds a file open: they are taken ``at_once`` items at a time (``held_at_once``
    by default), each group fetched before the next is claimed, so that a repository of
    more files than the process may open is fetched all the same."""
    size = at_once or held_at_once()
    others: list[T] = []
    for start in range(0, len(items), size):
        group = items[start : start + size]
        with contextlib.ExitStack() as held:
            mine = [held.enter_context(claim(item, False)) for item in group]
            fetch([item for item, ours in zip(group, mine, strict=True) if ours and missing(item)])
        others += [item for item, ours in zip(group, mine, strict=True) if not ours]
    for item in others:
        with claim(item, True):
            if missing(item):
                fetch([item])


def held_at_once() -> int:
    """Claims a process may hold at once: a quarter of the files it may open (the soft
    limit; 1,024 by default), the rest left to the downloads (sockets, pipes, files)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    return max(8, soft // 4)
