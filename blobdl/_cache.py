"""A content-addressed blob cache, laid out as Ollama's blob store: ``DIR/sha256-<hex>``.

Entries only ever appear by atomic rename of a complete, digest-verified file (they are
downloaded through the normal machinery, under the per-destination lock), so a present
entry is complete; concurrent jobs sharing a cache wait on that lock instead of writing the
same entry twice. A destination is then a hard link to the entry, or a copy where the
filesystem cannot link (another device, no hard links).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from ._fileio import local_error

LINK_SUFFIX = ".blobdl-link"
_CANNOT_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES})


def entry_path(cache_dir: Path, hexdigest: str) -> Path:
    return cache_dir / f"sha256-{hexdigest}"


def place(entry: Path, dest: Path) -> None:
    """Make ``dest`` a hard link to (or a copy of) ``entry``, replacing it atomically."""
    if dest.exists() and os.path.samefile(entry, dest):
        return
    scratch = dest.with_name(dest.name + LINK_SUFFIX)
    scratch.unlink(missing_ok=True)
    try:
        try:
            os.link(entry, scratch)
        except OSError as exc:
            if exc.errno not in _CANNOT_LINK:
                raise
            shutil.copyfile(entry, scratch)
        os.replace(scratch, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            scratch.unlink()
        raise local_error(dest, exc) from None
