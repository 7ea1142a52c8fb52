"""The record a finished download carries on its file: which remote its bytes came from.

Without a digest nothing else vouches for a destination already there, so a rerun of the
same command would refuse what its earlier run finished. ``stamp`` writes, on the complete
temporary file just before its rename into place, the extended attribute
``user.blobdl.source``: the key of the URL (``_resume.url_key``, never the URL and its
credentials), the size, ETag and Last-Modified the download was pinned to, and the file's
inode, size and mtime once its last byte was written. ``vouches`` is its reading:
the record is there, for this URL, the file is as it was then (not replaced, copied or
edited since), and the remote as probed now is shown to be the same blob
(``_remote.proven_same``). A filesystem without user extended attributes records nothing:
such a file is refused as before.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

from ..http._remote import Identity, proven_same
from ._files import strangers
from ._resume import url_key

NAME = "user.blobdl.source"
FORMAT = 1
log = logging.getLogger("blobdl")
_T = TypeVar("_T")


class Source(NamedTuple):
    url_key: str  # sha256 of the URL the download was asked for
    remote: Identity  # the remote's size and validators, pinned by the download
    ino: int  # the file, once its last byte was written
    size: int
    mtime_ns: int


def stamp(fd: int, url: str, remote: Identity) -> None:
    """Record on the complete file at ``fd`` that its bytes are ``url``'s. Call it once
    nothing more is written to it (it notes the file's mtime). Best-effort: without the
    record a rerun refuses the file as if blobdl had not written it, and that is all."""
    try:
        info = os.fstat(fd)
        source = Source(url_key(url), remote, info.st_ino, info.st_size, info.st_mtime_ns)
        os.setxattr(fd, NAME, _encode(source))
    except OSError as exc:  # ENOTSUP: no user extended attributes on this filesystem
        log.debug("no source record on the finished file: %s", exc.strerror)


def vouches(path: Path, url: str, remote: Callable[[], Identity]) -> bool:
    """Whether ``path`` is the finished download of ``url`` and still what ``remote()``
    (asked only once everything local holds: it probes) serves."""
    source = unchanged(path, url)
    return source is not None and proven_same(source.remote, remote())


def unchanged(path: Path, url: str) -> Source | None:
    """The record on ``path`` if it is of ``url``'s finished download and the file is as
    it was then: all that ``vouches`` needs but the remote (so a probe asks one byte)."""
    source = recorded(path)
    if source is None or source.url_key != url_key(url):
        return None
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if (info.st_ino, info.st_size, info.st_mtime_ns) != (source.ino, source.size, source.mtime_ns):
        return None  # replaced, copied or edited since
    if strangers(path, info):
        return None  # its record is its owner's word, anything they like
    return source if source.size == source.remote.size else None


def recorded(path: Path) -> Source | None:
    """The record on the file at ``path`` (never through a link), or None."""
    try:
        return _decode(os.getxattr(path, NAME, follow_symlinks=False))
    # Anyone who can write the file can write this value: brackets nested too deep for the
    # JSON reader (RecursionError) are as unreadable as any other bogus value.
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def _encode(source: Source) -> bytes:
    size, etag, modified = source.remote
    body = {"format": FORMAT, **source._asdict(), "remote": [size, etag, modified]}
    return json.dumps(body, separators=(",", ":")).encode()


def _decode(raw: bytes) -> Source:
    body = json.loads(raw)
    if body["format"] != FORMAT:
        raise ValueError(f"format {body['format']} is not {FORMAT}")
    size, etag, modified = body["remote"]
    remote = Identity(_optional(size, int), _optional(etag, str), _optional(modified, str))
    numbers = (int(body[k]) for k in ("ino", "size", "mtime_ns"))
    return Source(str(body["url_key"]), remote, *numbers)


def _optional(value: object, kind: type[_T]) -> _T | None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{value!r} is not a {kind.__name__}")
    return value
