"""Ollama's store, as ``pull`` fills it, so that ``ollama`` can use the result::

    DIR/blobs/sha256-<hex>                                  complete, verified blobs only
    DIR/manifests/<host[:port]>/<namespace>/<model>/<tag>   the exact manifest bytes
    DIR/blobs-partial/sha256-<hex>                          a blob being downloaded, with the
                                                            engine's state, lock and temp files

A blob is downloaded to ``blobs-partial/`` with its digest checked by the engine, then
renamed into ``blobs/`` (same filesystem, so atomic). The manifest is written last, also by
rename, so an interrupted pull never leaves a manifest naming a missing blob. Two pulls that
share a blob take turns on ``blobs-partial/sha256-<hex>.pull-lock``: the second finds the
blob in ``blobs/`` once the first is done and fetches nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import InsufficientSpace
from ..store._destination import temp_path
from ..store._files import atomic_write, fsync_dir, local_error, local_errors, open_own, take_lock
from ._names import Reference
from ._oci import Blob, Manifest

PARTIAL_DIR = "blobs-partial"
LOCK_SUFFIX = ".pull-lock"


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.partial = root / PARTIAL_DIR
        for folder in (self.blobs, self.partial):
            make_dirs(folder)

    def blob_path(self, blob: Blob) -> Path:
        return self.blobs / f"sha256-{blob.hex}"

    def staging_path(self, blob: Blob) -> Path:
        return self.partial / f"sha256-{blob.hex}"

    def has(self, blob: Blob) -> bool:
        """Present with the right size. Blobs get here only verified, so the name vouches
        for the bytes; a size that differs is damage, and the blob is fetched again."""
        try:
            return self.blob_path(blob).stat().st_size == blob.size
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise local_error(self.blob_path(blob), exc) from None

    def check_space(self, missing: list[Blob]) -> None:
        """Refuse, before the first byte, a pull that cannot fit. A kept partial already
        holds its space (the engine preallocates), so only what it lacks is needed."""
        needed = sum(blob.size - self.reserved(blob) for blob in missing)
        free = shutil.disk_usage(self.partial).free
        if needed > free:
            raise InsufficientSpace(str(self.root), needed, free)

    def reserved(self, blob: Blob) -> int:
        """Bytes of ``blob`` the filesystem already holds for its kept partial."""
        try:
            info = temp_path(self.staging_path(blob)).lstat()
        except OSError:
            return 0
        if not stat.S_ISREG(info.st_mode):
            return 0
        return min(blob.size, info.st_blocks * 512)

    def place(self, blob: Blob, staged: Path) -> None:
        """Move a verified download into ``blobs/``."""
        with local_errors(staged):
            os.chmod(staged, 0o644)
            os.replace(staged, self.blob_path(blob))
            fsync_dir(self.blobs)

    def write_manifest(self, ref: Reference, manifest: Manifest) -> Path:
        """Written last and durably (its name tells ``ollama`` the model is there), 0644
        whatever the umask, as ``make_dirs`` makes the folders."""
        folder = self.root / "manifests" / ref.host / ref.namespace / ref.model
        make_dirs(folder)
        path = folder / ref.tag
        atomic_write(path, manifest.raw, exact_mode=True, sync_dir=True)
        return path

    @contextlib.contextmanager
    def claim(self, blob: Blob, wait: bool) -> Iterator[bool]:
        """Hold ``blobs-partial/sha256-<hex>.pull-lock``; yields False (without waiting) when
        another pull holds it. The kernel drops the lock when its holder dies."""
        fd = open_own(self.partial / f"sha256-{blob.hex}{LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT)
        try:
            yield take_lock(fd, wait=wait)
        finally:
            os.close(fd)  # releases the lock; the file stays (removing it would race)


def make_dirs(folder: Path) -> None:
    """Create ``folder`` and its parents as 0755 (whatever the umask); fail early if the
    store cannot be written."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.is_dir():
            break
        missing.append(parent)
    with local_errors(folder):
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o755)
                os.chmod(path, 0o755)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")
