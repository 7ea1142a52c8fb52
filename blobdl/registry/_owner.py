"""Who owns what blobdl adds to Ollama's store, and which of its folders we may follow.

When root writes into a store another user owns (Ollama's service runs as ``ollama``), new
files and folders take that owner, so that user can read, resume and delete them. Root then
follows a link inside the store only if root or we made it: one that user planted could send
our writes, and the files we give that user, anywhere.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import LocalFileError
from ..store._files import directory_problem, local_error, local_errors

Owner = tuple[int, int] | None  # uid, gid new files take (a store root writes for another user)
Identity = tuple[int, int] | None  # a folder's (st_dev, st_ino), to know it again


def owner_for(root: Path) -> Owner:
    """Whom new files and folders belong to: when root writes into a store that another
    user owns (the store, or the nearest folder above it that exists), that user; else
    None (they are the writer's)."""
    if os.geteuid() != 0:
        return None
    for folder in (root, *root.parents):
        try:
            info = os.stat(folder)
        except OSError:
            continue
        owner = (info.st_uid, info.st_gid)
        return None if owner == (os.geteuid(), os.getegid()) else owner
    return None


def make_dirs(folder: Path, owner: Owner = None) -> None:
    """Create ``folder`` (the store's root) and its parents as 0755 (whatever the umask),
    owned by ``owner``."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.is_dir():
            break
        missing.append(parent)
    for path in reversed(missing):
        _make_dir(path, owner)


def enter(root: Path, path: Path, owner: Owner, *, create: bool) -> None:
    """Make sure ``path``, a folder inside the store at ``root``, is one: made where missing
    (0755, ``owner``'s) unless not ``create``; writable. On the way down from the root, a
    link is followed only if we or root made it."""
    current = root
    for name in path.relative_to(root).parts:
        current = current / name
        if not _store_folder(current, create, owner):
            return  # missing, and not to be made: nothing below it either
    if create and not os.access(path, os.W_OK | os.X_OK):
        raise LocalFileError(str(path), "not writable")


def identity(folder: Path) -> Identity:
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def hand_over(folder: Path, checked: Identity, owner: Owner, prefixes: Iterable[str]) -> None:
    """The files in ``folder`` whose names start with one of ``prefixes`` become ``owner``'s,
    if ``folder`` is still the one whose identity was ``checked`` (not one moved under us)."""
    if owner is None:
        return
    starts = tuple(prefixes)
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != checked:
            return  # not the folder we checked (moved under us): give nothing away
        for name in os.listdir(fd):
            if name.startswith(starts):
                with contextlib.suppress(OSError):
                    os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_dir(path: Path, owner: Owner) -> None:
    with local_errors(path), contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)
        if owner is not None:
            os.chown(path, *owner, follow_symlinks=False)


def _store_folder(path: Path, create: bool, owner: Owner) -> bool:
    """Whether ``path`` (a name inside the store) is a folder we may go into, made if
    missing and ``create``; False if missing and not made. A link must be ours or root's;
    anything else that is no folder is named."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return False
        _make_dir(path, owner)
        info = os.lstat(path)
    except OSError as exc:
        raise local_error(path, exc) from None
    if stat.S_ISLNK(info.st_mode):
        if info.st_uid not in (0, os.geteuid()):
            raise LocalFileError(
                str(path), "is a symbolic link made by another user; refusing to follow it"
            )
        if not os.path.exists(path):
            raise LocalFileError(str(path), "is a symbolic link to nothing")
    problem = directory_problem(path)
    if problem is not None:
        raise problem
    return True
