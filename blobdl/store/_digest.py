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
from pathlib import Path

from ..errors import UsageError

_HEX = re.compile(r"[0-9a-f]{64}")  # fullmatch: "$" passes a final "\n"
CHUNK = 4 << 20


def parse_digest(text: str) -> str:
    """``sha256:<hex>`` (as Ollama and OCI registries write it) or a bare 64-hex sha256."""
    algorithm, _, value = text.strip().lower().rpartition(":")
    if algorithm not in ("", "sha256") or not _HEX.fullmatch(value):
        raise UsageError(f"not a sha256 digest: {text!r} (expected sha256:<64 hex digits>)")
    return value


def sha256_file(path: Path) -> str:
    """The sha256 of a whole file: the user's destination, not one of our own files, so a
    link at its name is followed (a destination is judged by its target, and a cached one
    is a hard link to its entry)."""
    with path.open("rb", buffering=0) as f:
        return sha256_fd(f.fileno())


def sha256_fd(fd: int) -> str:
    """The sha256 of an open file, from its first byte to its size now."""
    digest = hashlib.sha256()
    hash_range(digest, fd, 0, os.fstat(fd).st_size)
    return digest.hexdigest()


def hash_range(digest: hashlib._Hash, fd: int, start: int, stop: int) -> int:
    # No bigger than the range: a small blob's digest must not zero-fill 4 MiB first.
    buffer = memoryview(bytearray(max(1, min(CHUNK, stop - start))))
    while start < stop:
        count = os.preadv(fd, [buffer[: min(CHUNK, stop - start)]], start)
        if count == 0:
            break
        digest.update(buffer[:count])
        start += count
    return start
