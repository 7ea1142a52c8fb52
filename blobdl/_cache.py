"""A content-addressed blob cache, laid out as Ollama's blob store: ``DIR/sha256-<hex>``.

Entries only ever appear by atomic rename of a complete, digest-verified file (they are
downloaded through the normal machinery, under the per-destination lock), so a present
entry is complete; concurrent jobs sharing a cache wait on that lock instead of writing the
same entry twice. A destination is then a hard link to the entry, or a copy where the
filesystem cannot link (another device, no hard links).

A hard link shares the bytes: a user editing their destination in place edits the entry.
So entries are made read-only, and each has a ``.seal`` beside it recording its size and
mtime when it was verified; a hit whose entry no longer matches its seal is hashed again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from ._fileio import local_error, open_own

LINK_SUFFIX = ".blobdl-link"
_CANNOT_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES})


def entry_path(cache_dir: Path, hexdigest: str) -> Path:
    return cache_dir / f"sha256-{hexdigest}"


def seal(entry: Path) -> None:
    """Mark a verified entry: read-only, with its size and mtime on record."""
    try:
        entry.chmod(0o444)
        info = entry.stat()
        _seal_path(entry).write_text(f"{info.st_size} {info.st_mtime_ns}\n")
    except OSError as exc:
        raise local_error(entry, exc) from None


def sealed(entry: Path) -> bool:
    """True if the entry is exactly as it was when it was verified."""
    try:
        info = entry.stat()
        return _seal_path(entry).read_text().split() == [str(info.st_size), str(info.st_mtime_ns)]
    except (OSError, ValueError):
        return False


def unseal(entry: Path) -> None:
    for path in (_seal_path(entry), entry):
        path.unlink(missing_ok=True)


def _seal_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".seal")


def place(entry: Path, dest: Path) -> None:
    """Make ``dest`` a hard link to (or a copy of) ``entry``, replacing it atomically."""
    if dest.exists() and os.path.samefile(entry, dest):
        return
    # Unique per call: two jobs placing the same destination must not share a scratch name.
    scratch = dest.with_name(f"{dest.name}{LINK_SUFFIX}-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        try:
            os.link(entry, scratch)
        except OSError as exc:
            if exc.errno not in _CANNOT_LINK:
                raise
            _copy(entry, scratch)
        os.replace(scratch, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            scratch.unlink()
        raise local_error(dest, exc) from None


def _copy(entry: Path, scratch: Path) -> None:
    """Copy into a scratch file we create (never through whatever else is at the name)."""
    out = open_own(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with open(entry, "rb") as source, os.fdopen(out, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
