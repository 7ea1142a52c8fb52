"""A destination that is already there, checked under its lock: kept, replaced or refused.

Kept when the pinned digest vouches for its bytes, or, without a digest, when the record
its download left on it does (``_source``: this URL's finished download, unchanged since,
and the remote still serving that blob: one probe, none of its bytes fetched); replaced
when the digest does not match, or when nothing vouches for it and ``force`` says so; else
refused with ``DestinationExists``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..errors import DestinationExists
from ..http._remote import Identity
from . import _source
from ._digest import sha256_file
from ._files import require_regular


class Kept(NamedTuple):
    size: int  # of the file at the destination, kept as the download
    verified: bool  # the digest vouched for it (else: the record of its download)


def kept(
    dest: Path, url: str, expected: str | None, remote: Callable[[], Identity], *, force: bool
) -> Kept | None:
    """The file at ``dest``, when it is kept as the download of ``url``; None when there is
    none, or it is to be replaced. ``remote()`` probes the remote: asked only when the
    record of a finished download of ``url`` is on the file, unchanged. Raises
    ``DestinationExists`` when the file must stay and nothing vouches for it."""
    if _nothing_at(dest):
        return None
    if not dest.exists():
        if dest.is_symlink() and expected is None and not force:
            raise DestinationExists(str(dest))  # a link to a file not there yet: the user's
        return None
    require_regular(dest)  # again under the lock: hashing a FIFO would hang
    if expected is not None:
        return Kept(dest.stat().st_size, True) if sha256_file(dest) == expected else None
    if _source.vouches(dest, url, remote):
        return Kept(dest.stat().st_size, False)
    if not force:
        raise DestinationExists(str(dest))
    return None


def _nothing_at(dest: Path) -> bool:
    """Whether no name ``dest`` is there at all, not even a link: one ``lstat``, where
    ``exists`` and ``is_symlink`` cost two (the case of every new download)."""
    try:
        os.lstat(dest)
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        pass  # judged as before, by ``exists`` and ``is_symlink``
    return False
