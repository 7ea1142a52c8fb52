"""Files on disk we do not control: filesystems without fallocate, planted links, forged
cache entries, special files at the destination — over real processes and sockets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl._fileio import reserve
from blobdl.errors import EXIT_OK
from tests.conftest import PART, REPO, Blob, sha256_file

Make = Callable[..., Blob]
HERE = Path(__file__).resolve().parent

# --- preallocation on filesystems without fallocate(2) -------------------------------------

# How long the launcher holds each one-byte pwrite (glibc's emulated posix_fallocate writes one
# per 4 KiB block): a network filesystem's round trip, the window a racing worker falls into.
NFS_ROUND_TRIP_US = 200


@pytest.fixture(scope="session")
def nofalloc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tests/nofalloc.c`` built for this session: runs a command with fallocate(2) failing
    with EOPNOTSUPP for real (a seccomp filter), as on NFSv3, FUSE or ext4 without extents."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the seccomp launcher")
    exe = tmp_path_factory.mktemp("nofalloc") / "nofalloc"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "nofalloc.c")], check=True)
    return exe


def test_no_fallocate_filesystem_never_zeroes_downloaded_bytes(
    nofalloc: Path, make: Make, tmp_path: Path
) -> None:
    # Many parts on many connections: workers write while any preallocation could still run.
    blob = make(64 * PART, seed=11)
    dest = tmp_path / "out"
    args = [str(nofalloc), str(NFS_ROUND_TRIP_US), sys.executable, "-m", "blobdl", blob.url,
            "-o", str(dest), "--min-part-size", "64KiB", "--max-part-size", "64KiB",
            "--connections", "8", "-q"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == EXIT_OK, done.stderr
    assert sha256_file(dest) == blob.sha256, "bytes were zeroed by emulated preallocation"


def test_reserve_allocates_for_real_where_the_filesystem_can(tmp_path: Path) -> None:
    path = tmp_path / "reserved"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        reserve(fd, 64 * PART, path)
        info = os.fstat(fd)
    finally:
        os.close(fd)
    assert info.st_size == 64 * PART
    if info.st_blocks == 0:
        pytest.skip("this filesystem has no fallocate(2): the file stays sparse")
    assert info.st_blocks * 512 >= 64 * PART
