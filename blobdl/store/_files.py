"""The destination on disk: checks, preallocation, positional writes, atomic rename."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import LocalFileError


def require_regular(path: Path) -> None:
    """Refuse anything at ``path`` but a regular file (absent is fine); never blocks."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise local_error(path, exc) from None
    if not stat.S_ISREG(info.st_mode):
        raise LocalFileError(str(path), f"is {_kind(info.st_mode)}, not a regular file")


def open_own(path: Path, flags: int, mode: int = 0o644) -> int:
    """Open one of our own files (lock, temp, state, seal) without trusting its name.

    A symbolic link planted there is never followed, and only a regular file with no other
    hard link is accepted: writing through either would change a file that is not ours.
    Never blocks (a FIFO at the name is refused, not waited on)."""
    extra = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags | extra, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise LocalFileError(str(path), "is a symbolic link; refusing to follow it") from None
        raise local_error(path, exc) from None
    try:
        _require_own(fd, path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _require_own(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise LocalFileError(str(path), f"is {_kind(info.st_mode)}, not a regular file")
    if info.st_nlink > 1:  # 0 is fine: a file just unlinked by its previous owner
        raise LocalFileError(str(path), "has other hard links; refusing to write through it")


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISLNK: "a symbolic link",
    }
    return next((name for test, name in kinds.items() if test(mode)), "a special file")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def local_error(path: Path, exc: OSError) -> LocalFileError:
    """An OSError on our own files, as a blobdl error (ENOSPC, EIO, EACCES...)."""
    return LocalFileError(str(path), exc.strerror or str(exc))
