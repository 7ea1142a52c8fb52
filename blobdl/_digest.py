"""Digest verification that keeps up with the download.

sha256 is sequential, so the hasher follows the longest contiguous prefix of the blob that
is on disk (read from the shared counter table) and hashes it while the rest is still
downloading; when the last byte lands only the tail beyond that prefix is left to hash.
It runs in its own forked process: the coordinator stays single-threaded (it forks
workers, and forking a threaded process is unsafe), and hashing gets the other core.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from multiprocessing.connection import Connection
from pathlib import Path

from ._counters import CounterTable
from ._spawn import start
from .errors import UsageError

_HEX = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 4 << 20
_IDLE = 0.02  # seconds between looks at the table when the prefix has not moved


def parse_digest(text: str) -> str:
    """``sha256:<hex>`` (as Ollama and OCI registries write it) or a bare 64-hex sha256."""
    algorithm, _, value = text.strip().lower().rpartition(":")
    if algorithm not in ("", "sha256") or not _HEX.match(value):
        raise UsageError(f"not a sha256 digest: {text!r} (expected sha256:<64 hex digits>)")
    return value


def sha256_file(path: Path) -> str:
    """The sha256 of a whole file."""
    with path.open("rb", buffering=0) as f:
        return sha256_fd(f.fileno())


def sha256_fd(fd: int) -> str:
    """The sha256 of an open file, from its first byte to its size now."""
    digest = hashlib.sha256()
    _hash_range(digest, fd, 0, os.fstat(fd).st_size)
    return digest.hexdigest()


def _hash_range(digest: hashlib._Hash, fd: int, start: int, stop: int) -> int:
    buffer = memoryview(bytearray(_CHUNK))
    while start < stop:
        count = os.preadv(fd, [buffer[: min(_CHUNK, stop - start)]], start)
        if count == 0:
            break
        digest.update(buffer[:count])
        start += count
    return start


class PrefixHasher:
    """A forked process hashing ``fd`` along the table's on-disk prefix."""

    def __init__(self, fd: int, table: CounterTable) -> None:
        self._proc, self._conn = start(
            _hasher_main, (fd, table), name="blobdl-hasher", daemon=True, duplex=True
        )

    def finish(self, size: int) -> str:
        """Hash up to ``size`` and return the hex digest."""
        self._conn.send(size)
        result: str = self._conn.recv()
        self.stop()
        return result

    def stop(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()
        self._conn.close()


def _hasher_main(fd: int, table: CounterTable, conn: Connection) -> None:
    digest = hashlib.sha256()
    hashed = 0
    parent = os.getppid()
    while not conn.poll():
        reach = table.prefix()
        if reach > hashed:
            hashed = _hash_range(digest, fd, hashed, min(reach, hashed + 64 * _CHUNK))
        else:
            time.sleep(_IDLE)
        if os.getppid() != parent:
            os._exit(1)
    size = conn.recv()
    _hash_range(digest, fd, hashed, size)
    conn.send(digest.hexdigest())
