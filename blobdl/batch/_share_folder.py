"""Where a cluster task keeps its share file (``_cluster_task._Grant``): a folder in the
temporary directory that no task outlives for long, a SIGKILLed one included.

A task holds an ``flock`` on its folder while it runs, and the kernel lets go of it when the
task's process dies, however it dies. So a folder whose lock anyone can take is a dead
task's: the next task on the machine removes it. A worker killed mid-item (its nanny starts
another) leaves nothing that accumulates; a running task's folder is never touched.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

from ..store._files import still_at, take_lock

PREFIX = "blobdl-share-"


class ShareFolder:
    """A new folder, held (locked) by this process until ``close``; the dead tasks' are
    swept first."""

    def __init__(self) -> None:
        sweep()
        self.path, self._fd = _new_locked()

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)  # after the removal: a sweep never sees it unlocked


def sweep() -> None:
    """Remove every share folder of ours in the temporary directory that nobody holds."""
    pattern = os.path.join(glob.escape(tempfile.gettempdir()), PREFIX + "*")
    for path in glob.glob(pattern):
        try:
            fd = _open_folder(path)
        except OSError:
            continue  # gone meanwhile, not a folder, or not ours to open
        try:
            mine = os.fstat(fd).st_uid == os.getuid()
            if mine and take_lock(fd, wait=False) and still_at(path, fd):
                shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _new_locked() -> tuple[str, int]:
    while True:
        path = tempfile.mkdtemp(prefix=PREFIX)
        try:
            fd = _open_folder(path)
        except FileNotFoundError:  # swept before we held it (unlocked, it looked dead)
            continue
        take_lock(fd)  # a sweep that took it first holds it a moment, and removes the folder
        if still_at(path, fd):
            return path, fd
        os.close(fd)  # swept between its creation and our lock: another one


def _open_folder(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
