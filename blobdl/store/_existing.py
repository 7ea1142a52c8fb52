"""A destination that is already there, checked under its lock: kept, replaced or refused.

Kept when the pinned digest vouches for its bytes (nothing is fetched); replaced when no
digest was given and ``force`` says so, or when the digest does not match; else refused
with ``DestinationExists``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DestinationExists
from ._digest import sha256_file
from ._files import require_regular


def kept_size(dest: Path, expected: str | None, *, force: bool) -> int | None:
    """The size of the file at ``dest`` when it is kept as the download; None when there is
    none, or it is to be replaced. Raises ``DestinationExists`` when it must stay."""
    if not dest.exists():
        if dest.is_symlink() and expected is None and not force:
            raise DestinationExists(str(dest))  # a link to a file not there yet: the user's
        return None
    require_regular(dest)  # again under the lock: hashing a FIFO would hang
    if expected is not None and sha256_file(dest) == expected:
        return dest.stat().st_size
    if expected is None and not force:
        raise DestinationExists(str(dest))
    return None
