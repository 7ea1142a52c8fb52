"""Where the downloads land (disk by default, tmpfs on request) and where the blob is served from.

Users download onto disks, so the default destination is a directory on a real disk, checked
not to be tmpfs. ``--dest tmpfs`` writes to /dev/shm instead, to take the disk out of the
figures. The served blob lives on tmpfs when there is room (the server side is not what is
measured), else beside the downloads.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

SHM = Path("/dev/shm")
DISK = Path("/var/tmp")
MEMORY_FS = frozenset({"tmpfs", "ramfs", "devtmpfs"})


@dataclass(frozen=True)
class Places:
    served: Path  # the blobs the servers serve
    dest: Path  # where each run's download is written (emptied after each run)
    kind: str  # "disk" or "tmpfs": what dest really is
    fstype: str  # e.g. "ext4", "tmpfs"

    def describe(self) -> str:
        return f"{self.kind} ({self.fstype} at {self.dest})"


def fstype(path: Path) -> str:
    """The file-system type of the mount that holds ``path`` (like ``stat -f -c %T``)."""
    real = str(path.resolve())
    best = ("", "unknown")
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint.rstrip("/") or "/"
        inside = real == mount or real.startswith(mount.rstrip("/") + "/") or mount == "/"
        if inside and len(mount) >= len(best[0]):
            best = (mount, part.fstype)
    return best[1]


@contextmanager
def places(dest: str, workdir: Path | None, served_bytes: int) -> Iterator[Places]:
    """Private directories for the served blobs and the downloads; removed afterwards.

    ``dest``: "disk" or "tmpfs"; ``workdir`` overrides the base directory of the downloads
    (its real type is still checked and reported).
    """
    base = workdir or (SHM if dest == "tmpfs" else DISK)
    base.mkdir(parents=True, exist_ok=True)
    shm_room = shutil.disk_usage(SHM).free if SHM.is_dir() else 0
    # Room for the served blobs and, if the downloads go there too, the largest download.
    need = served_bytes * (2 if base == SHM else 1) + (256 << 20)
    serve_base = SHM if shm_room > need else base
    with _tempdir(base) as out, _tempdir(serve_base) as served:
        fs = fstype(out)
        yield Places(served, out, "tmpfs" if fs in MEMORY_FS else "disk", fs)


@contextmanager
def _tempdir(base: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="blobdl-bench-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
