"""One writer per destination: an advisory ``flock`` on ``DEST.blobdl-lock``.

The kernel drops a flock when its holder dies, so a crashed download never leaves the
destination stuck. The lock file is removed by its holder on release; a waiter that locked
a file which was removed meanwhile notices (different inode) and tries again.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from types import TracebackType

from ..errors import DestinationLocked
from ._files import open_own, take_lock

LOCK_SUFFIX = ".blobdl-lock"


class DestinationLock:
    def __init__(self, dest: Path, timeout: float) -> None:
        self.path = dest.with_name(dest.name + LOCK_SUFFIX)
        self.dest, self.timeout = dest, timeout
        self.fd: int | None = None

    def __enter__(self) -> DestinationLock:
        deadline = time.monotonic() + self.timeout
        while True:
            fd = self._open()
            if not take_lock(fd, deadline=deadline):
                holder = _read_holder(fd)
                os.close(fd)
                raise DestinationLocked(str(self.dest), holder)
            if self._still_linked(fd):
                break
            os.close(fd)  # we locked a file its previous holder had just removed
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # still holding the lock: nobody else owns this name now
        os.close(self.fd)
        self.fd = None

    def _open(self) -> int:
        # Truncated once locked: a link planted at the name must not lead us to a victim.
        return open_own(self.path, os.O_RDWR | os.O_CREAT)

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.lstat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False


def _read_holder(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode() or "x")
    except (OSError, ValueError):
        return None
