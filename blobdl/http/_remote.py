"""The remote blob as the probe found it, and when two looks at it see the same blob.

``Remote`` is what the probe learned and the whole download pins; ``Identity`` is the part
of it that says *which* blob it is (size and validators). "Same blob" is decided here
only: by a resume record against a new probe, and by a refreshed URL against the pinned one
(``change``: nothing proves a change), and by the record a finished download left on its
file against a new probe (``proven_same``: something proves it is the same blob).
"""

from __future__ import annotations

from typing import NamedTuple

from .._said import MAX_SAID, escaped
from ..errors import RemoteChanged
from ._headers import parse_http_date


class Identity(NamedTuple):
    """Which blob: what a resume record keeps and a new probe must match."""

    size: int | None  # None: the server did not say
    etag: str | None  # validator pinned at probe time
    last_modified: str | None


class Remote(NamedTuple):
    """What the probe learned about the blob; pinned for the whole download."""

    url: str  # the URL the user asked for
    final_url: str  # after redirects: every part is fetched from here
    size: int | None  # None: the server did not say
    ranges: bool  # a range request was answered 206 (proven, not assumed)
    etag: str | None  # validator pinned at probe time
    last_modified: str | None
    filename: str | None  # from Content-Disposition, unsanitised
    headers: tuple[tuple[str, str], ...]  # user headers still safe to send to final_url
    # Seconds the probe's last request took to its status line, its connection's set-up
    # aside (0.0: not measured): how long this server takes to answer a request (_chunk).
    answer_time: float = 0.0
    date: str | None = None  # the probe's Date: whether its Last-Modified vouches (lasting)

    @property
    def identity(self) -> Identity:
        return Identity(self.size, self.etag, self.last_modified)


def change(before: Identity, after: Identity) -> str | None:
    """How ``after`` differs from ``before`` (e.g. "ETag changed from a to b"), or None.

    The one rule of "same blob", for a resume, a refreshed URL and every response mid-
    download alike: the size must match; a validator proves a change only when both looks
    have one and they differ. One that disappears (a server, or an edge of it, that stops
    sending it) or appears proves nothing: the bytes are not thrown away for it. Nor does
    an ETag that only turns weak or strong (``W/"x"`` for ``"x"``, an edge that may
    transform bodies): ETags differ only if their tags do (RFC 9110 8.8.3.2's weak
    comparison)."""
    if before.size != after.size:
        return f"size changed from {before.size} to {after.size}"
    for name, old, new, same in (
        ("ETag", before.etag, after.etag, _same_tag),
        ("Last-Modified", before.last_modified, after.last_modified, str.__eq__),
    ):
        if old and new and not same(old, new):  # both the server's text: escaped, cut
            return f"{name} changed from {escaped(old, MAX_SAID)} to {escaped(new, MAX_SAID)}"
    return None


def _same_tag(one: str, other: str) -> bool:
    """RFC 9110's weak comparison: the opaque tags are equal, either or both weak."""
    return one.removeprefix("W/") == other.removeprefix("W/")


def proven_same(before: Identity, after: Identity) -> bool:
    """Whether ``after`` is shown to be the blob ``before`` was: what keeping a file on
    the word of its download's record takes, where ``change`` only looks for a change.
    The sizes are known and equal, no validator shows a change (``change``), and a strong
    ETag is equal (a weak one does not vouch for bytes) or else the Last-Modified is.
    Nothing to compare shows nothing."""
    if before.size is None or change(before, after) is not None:
        return False
    if before.etag and before.etag == after.etag and not before.etag.startswith("W/"):
        return True
    return bool(before.last_modified) and before.last_modified == after.last_modified


def lasting(remote: Remote) -> Identity:
    """What the record of a finished download keeps of ``remote``, to show it the same blob
    later (``proven_same``): its identity, less its validators when the Last-Modified is not
    at least a second before the probe's Date. A blob served within the second it was
    modified may change again in that second under the same Last-Modified (RFC 9110
    8.8.2.2: then it is a weak validator), and under the same ETag too where the ETag is
    made of the mtime in seconds and the size (nginx's, Apache's); a rerun would keep the
    bytes it replaced. An ETag without a Last-Modified is kept: nothing tells it is so made."""
    if remote.last_modified is None:
        return remote.identity
    modified, served = parse_http_date(remote.last_modified), parse_http_date(remote.date)
    if modified is None or served is None or (served - modified).total_seconds() < 1:
        return remote.identity._replace(etag=None, last_modified=None)
    return remote.identity


def require_same(pinned: Remote, fresh: Remote) -> None:
    """Raise ``RemoteChanged`` unless ``fresh`` is the blob ``pinned`` is, served the same
    way (a refreshed URL that lost range support cannot continue the ranged parts)."""
    changed = change(pinned.identity, fresh.identity)
    if changed is None and pinned.ranges != fresh.ranges:
        changed = f"ranges changed from {pinned.ranges} to {fresh.ranges}"
    if changed is not None:
        raise RemoteChanged(fresh.final_url, changed)
