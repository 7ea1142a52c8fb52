"""Resume: the record kept beside the temporary file, and every decision about it.

``Resume`` is one download's side of it: ``previous`` (the record an earlier run left, if
it is for this very blob), ``checkpointer`` (saves the positions the coordinator hands it),
``settle`` (what to keep after a failure), ``reject`` (bytes proven bad: kept aside with
``keep_bad``, never renamed into place) and ``finished``. The record is a small JSON
document, replaced atomically (write, fsync, rename), that only ever claims bytes which
were flushed to disk before it was written. Anything odd about it (truncated, corrupt,
written for another URL, not matching the temporary file) makes it ignored with a warning:
a resume record is never trusted blindly.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import stat
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from .._redact import redact_url
from ..config import header_value
from ..errors import (
    BlobdlError,
    DigestMismatch,
    LocalFileError,
    PartialChanged,
    RemoteChanged,
    RetriesExhausted,
)
from ..http._remote import Identity, Remote, change
from ..processes._signals import held
from ._destination import discard, temp_path
from ._files import (
    atomic_write,
    local_error,
    local_errors,
    open_own,
    read_own,
    strangers,
    unlink_gone,
)
from ._lock import DestinationLock

STATE_SUFFIX = ".blobdl-state"
BAD_SUFFIX = ".blobdl-bad"  # bytes that failed their digest, kept with Settings.keep_bad
FORMAT = 2  # 2: URLs are stored redacted, matched by the key of the full URL
log = logging.getLogger("blobdl")


class PartRecord(NamedTuple):
    start: int  # first byte of the part
    end: int  # one past its last byte
    pos: int  # every byte in [start, pos) is on disk


class Sample(NamedTuple):
    offset: int  # first byte of a block of the partial's recorded bytes
    length: int  # its length: at most SAMPLE bytes
    crc: int  # zlib.crc32 of its bytes as they were on disk when the record was written


# A block at each end of every part's recorded bytes is checksummed into the record: a rerun
# reads them back before it trusts the partial (``_unchanged``). At most MOST_SAMPLES blocks,
# from parts spread over the blob, however many parts there are.
SAMPLE = 4096
MOST_SAMPLES = 64


class State(NamedTuple):
    url: str
    final_url: str
    size: int
    etag: str | None
    last_modified: str | None
    parts: tuple[PartRecord, ...]
    # The pinned sha256 (hex) if there was one: a partial of those bytes resumes from any URL
    # (a registry hands out a new presigned URL each time it is asked; the bytes are checked).
    digest: str | None = None
    # sha256 of the full URL the record is for. The URLs above are stored redacted (a
    # token or a presigned signature in a query string is a credential); this matches them.
    url_key: str | None = None
    # Checksums of blocks of the recorded bytes (``samples``): another program's bytes put
    # in the partial between runs, at its size, are not resumed as the blob's.
    samples: tuple[Sample, ...] = ()

    @property
    def identity(self) -> Identity:
        return Identity(self.size, self.etag, self.last_modified)

    @property
    def done(self) -> int:
        return bytes_done(self.parts)


CheckpointCallback = Callable[[tuple[PartRecord, ...]], None]


def bytes_done(parts: Sequence[PartRecord]) -> int:
    """Bytes of the blob on disk according to ``parts``."""
    return sum(p.pos - p.start for p in parts)


@dataclass(frozen=True)
class Resume:
    """One download's temporary file and the record beside it."""

    url: str  # the URL the record must be for
    temp: Path  # the temporary file the parts are written into
    record: Path  # the resume record beside it
    enabled: bool  # Settings.resume: without it nothing is loaded or kept
    digest: str | None = None  # the pinned sha256: a record for it serves from any URL

    @classmethod
    def beside(cls, dest: Path, url: str, enabled: bool, digest: str | None = None) -> Resume:
        return cls(url, temp_path(dest), state_path(dest), enabled, digest)

    def previous(self, remote: Remote) -> State | None:
        """The record of an earlier run, if it is for this very blob and can be resumed."""
        if not self.enabled or not remote.ranges:
            return None
        previous = load(self.record, self.url, self.temp, self.digest)
        changed = None if previous is None else change(self.known(previous), remote.identity)
        if changed is not None:
            log.warning(
                "the remote changed since the partial download (%s); starting over", changed
            )
            return None
        return previous

    def holds_partial_of(self, remote: Remote) -> bool:
        """Whether bytes of this very blob were kept from an earlier (ranged) run."""
        if not self.enabled:
            return False
        previous = load(self.record, self.url, self.temp, self.digest)
        if previous is None or previous.done == 0:
            return False
        return change(self.known(previous), remote.identity) is None

    def known(self, previous: State) -> Identity:
        """What ``previous`` tells of this URL's blob: its identity, less its validators
        when it is another URL's record, admitted by the pinned digest (a mirror, a new
        presigned URL): another server's ETag and Last-Modified are its own, and the
        digest checks every byte at the end."""
        if previous.url_key == url_key(self.url):
            return previous.identity
        return previous.identity._replace(etag=None, last_modified=None)

    def wants_ranges(self, remote: Remote) -> bool:
        """The probe got a 200, but a partial of this very blob was fetched in ranges: most
        likely one flaky edge, worth probing again for ranges rather than starting over."""
        return not remote.ranges and self.holds_partial_of(remote)

    def forget(self) -> None:
        """Start over: no partial file, no record (both gone, or neither: not cut in two).
        What the disk refuses is a ``LocalFileError``."""
        with held(), local_errors(self.temp):
            discard(self.temp)
            remove(self.record)

    def pinned(self, remote: Remote, previous: State) -> Remote:
        """The remote a resume of ``previous`` pins: the probe's, with each validator it
        lacks taken from the record (``known``). A validator that disappears proves no
        change, so the partial is resumed; it is not forgotten either: every range is still
        asked for, and checked as, the blob the partial is of, and the record keeps it, or a
        blob changed since the first run would be mixed in under a success."""
        known = self.known(previous)
        etag = remote.etag or known.etag
        return remote._replace(etag=etag, last_modified=remote.last_modified or known.last_modified)

    def checkpointer(self, fd: int, remote: Remote) -> CheckpointCallback | None:
        """Saves the positions the coordinator hands it; None when resume is off."""
        if not self.enabled:
            return None

        def checkpoint(parts: tuple[PartRecord, ...]) -> None:
            try:
                os.fdatasync(fd)  # the record may only claim bytes that are already durable
                identity = remote.identity
                size = identity.size or 0
                etag, modified = identity.etag, identity.last_modified
                state = State(remote.url, remote.final_url, size, etag, modified, parts,
                              self.digest, samples=samples(fd, parts))  # fmt: skip
                save(self.record, state)
            except OSError as exc:
                raise local_error(self.record, exc) from None

        return checkpoint

    def finished(self) -> None:
        """The download is in place (or proven bad): its record has nothing left to claim.
        Best-effort: a record that cannot be removed (its directory made read-only) is said,
        never an error of its own; the download's outcome stands."""
        try:
            remove(self.record)
        except OSError as exc:
            log.warning("could not remove the resume record %s: %s", self.record, exc.strerror)

    def reject(self, dest: Path, expected: str, actual: str, *, keep_bad: bool) -> NoReturn:
        """A digest mismatch: the bytes are bad; never rename them onto the destination
        (with ``keep_bad`` they go beside it, as ``DEST.blobdl-bad``)."""
        self.finished()
        if keep_bad:
            bad = dest.with_name(dest.name + BAD_SUFFIX)
            try:
                os.replace(self.temp, bad)  # replaces a link planted at the name
            except OSError as exc:
                raise local_error(bad, exc) from None
        raise DigestMismatch(expected, actual)

    def settle(self, error: BaseException) -> None:
        """After ``error``: keep the partial file when its record claims bytes and nothing
        proved them bad; else remove both. Never raises over ``error``."""
        try:
            if keeps_partial(error) and self.mention_kept():
                return
            self.forget()
        except (OSError, LocalFileError) as cleanup:
            log.warning("could not clean up %s after the failure: %s", self.temp, cleanup)

    def mention_kept(self) -> bool:
        """Say so if a partial download is kept beside the destination (its record claims
        bytes): a run that stops, wherever it stops, tells where the next one resumes."""
        if not (self.enabled and claims_bytes(self.record) and self.temp.exists()):
            return False  # (the partial removed under it: its record claims nothing there)
        log.warning("partial download kept in %s; run the same command again to resume", self.temp)
        return True


def keeps_partial(error: BaseException) -> bool:
    """Worth keeping the partial file for: nothing showed its bytes to be bad. Only a proven
    change of the remote, a digest mismatch or a partial another program replaced or
    truncated does; anything else (a final status, a TLS
    failure, a protocol breach, a raising callback, an interrupt) keeps the bytes, and the
    next run's probe revalidates them against the remote before using them."""
    if isinstance(error, RetriesExhausted):
        error = error.last_error
    return not isinstance(error, (RemoteChanged, DigestMismatch, PartialChanged))


def drop_unrecorded(dest: Path) -> None:
    """Remove the partial of ``dest`` that no record vouches for: what a process killed as it
    wrote a small download (which starts over, and keeps no record) left there. Under the
    destination's lock, so no writer's partial goes: one held is left alone, as is one with a
    record (an earlier run's, to resume). Best-effort: what the disk refuses stays."""
    with contextlib.suppress(BlobdlError, OSError), DestinationLock(dest, 0.0):
        if not state_path(dest).exists():
            discard(temp_path(dest))


def state_path(dest: Path) -> Path:
    return dest.with_name(dest.name + STATE_SUFFIX)


def save(path: Path, state: State) -> None:
    """Replace the record atomically; a crash leaves the old or the new one, never half."""
    body = _body(state)
    document = json.dumps({"check": _check(body), "state": body}, separators=(",", ":"))
    atomic_write(path, document.encode(), scratch=_scratch(path))


def load(path: Path, url: str, temp: Path, digest: str | None = None) -> State | None:
    """The record for ``url`` (or for the pinned ``digest``) beside ``temp``, or None (with
    a warning if one was there)."""
    if not path.exists():
        return None
    stranger = _stranger(path, temp)
    if stranger is not None:
        log.warning("ignoring resume state %s: %s is another user's", path, stranger)
        return None
    try:
        state = _parse(read_own(path).decode())
    except (OSError, LocalFileError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable resume state %s (%s)", path, exc)
        return None
    if state.url_key != url_key(url) and (digest is None or state.digest != digest):
        log.warning("ignoring resume state %s: it is for %s", path, state.url)
        return None
    try:
        info = temp.lstat()
    except OSError:
        info = None
    if info is None or info.st_size != state.size:
        log.warning("ignoring resume state %s: the partial file is missing or resized", path)
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        # Written through, it would change a file that is not ours (``open_own`` refuses
        # it): refused at every rerun, it could never be resumed. The run starts over
        # beside it, removing only our name of it.
        log.warning("ignoring resume state %s: the partial file is linked elsewhere", path)
        return None
    if not _unchanged(temp, state.samples):
        log.warning("ignoring resume state %s: the partial file's bytes are not the ones it "
                    "recorded (another program wrote there); starting over", path)  # fmt: skip
        return None
    return state


def samples(fd: int, parts: Sequence[PartRecord]) -> tuple[Sample, ...]:
    """Checksums of the first and the last block of each part's bytes on disk in ``fd``
    (of parts spread over the blob, at most ``MOST_SAMPLES`` blocks): read back from the
    page cache as the record that claims them is written, microseconds a checkpoint."""
    begun = [part for part in parts if part.pos > part.start]
    step = max(1, -(-2 * len(begun) // MOST_SAMPLES))
    spans: set[tuple[int, int]] = set()
    for part in begun[::step]:
        spans.add((part.start, min(SAMPLE, part.pos - part.start)))
        tail = max(part.start, part.pos - SAMPLE)
        spans.add((tail, part.pos - tail))
    return tuple(Sample(at, n, zlib.crc32(os.pread(fd, n, at))) for at, n in sorted(spans))


def _unchanged(temp: Path, recorded: Sequence[Sample]) -> bool:
    """Whether the blocks ``recorded`` of the partial at ``temp`` still hold the bytes they
    held (a record written before samples were kept has none, and vouches as it did)."""
    if not recorded:
        return True
    try:
        fd = open_own(temp, os.O_RDONLY)  # never a FIFO or a link swapped in since the lstat
    except LocalFileError:
        return False
    try:
        return all(zlib.crc32(os.pread(fd, s.length, s.offset)) == s.crc for s in recorded)
    except OSError:
        return False
    finally:
        os.close(fd)


def _stranger(*paths: Path) -> Path | None:
    """The first of ``paths`` that another user owns (``strangers``), if any: a partial
    planted beside the destination would become the download, its planter's bytes."""
    for path in paths:
        try:
            if strangers(path, path.lstat()):
                return path
        except OSError:
            continue  # (what cannot be looked at is judged where it is read)
    return None


def claims_bytes(path: Path) -> bool:
    """Whether the record at ``path`` claims any byte on disk (worth keeping for a resume)."""
    try:
        return _parse(read_own(path).decode()).done > 0
    except (OSError, LocalFileError, ValueError, KeyError, TypeError):
        return False


def sweep(dest: Path) -> None:
    """``dest`` is complete and in place: the partial and record an earlier run left beside
    it (killed after its rename, before it removed them) claim nothing any more, and go.
    Best-effort, as ``Resume.finished``: the blob is there, whatever stays beside it."""
    try:
        with held():
            discard(temp_path(dest))
            remove(state_path(dest))
    except OSError as exc:
        log.warning("could not remove what an earlier run left beside %s: %s", dest, exc)


def remove(path: Path) -> None:
    for candidate in (path, _scratch(path)):
        unlink_gone(candidate)


def _scratch(path: Path) -> Path:
    """One fixed scratch name per record, so that ``remove`` finds what a crash left."""
    return path.with_name(path.name + ".new")


def url_key(url: str) -> str:
    """What a record keeps to recognise ``url`` without storing it."""
    return hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()


def _body(state: State) -> dict[str, Any]:
    return {
        "format": FORMAT,
        **state._asdict(),
        "url": redact_url(state.url),
        "final_url": redact_url(state.final_url),
        "url_key": state.url_key or url_key(state.url),
        "parts": [list(p) for p in state.parts],
        "samples": [list(sample) for sample in state.samples],
    }


def _check(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _parse(text: str) -> State:
    try:
        document = json.loads(text)
    except RecursionError:  # brackets nested too deep for the reader: damage as any other
        raise ValueError("nested too deep") from None
    body = document["state"]
    if document["check"] != _check(body):
        raise ValueError("checksum mismatch")
    if body["format"] != FORMAT:
        raise ValueError(f"format {body['format']} is not {FORMAT}")
    parts = tuple(PartRecord(*(int(v) for v in p)) for p in body["parts"])
    state = State(
        url=str(body["url"]),
        final_url=str(body["final_url"]),
        size=int(body["size"]),
        etag=body["etag"],
        last_modified=body["last_modified"],
        parts=parts,
        digest=body.get("digest"),
        url_key=str(body["url_key"]),
        samples=tuple(Sample(*(int(v) for v in sample)) for sample in body.get("samples", ())),
    )
    if state.digest is not None and not isinstance(state.digest, str):
        raise ValueError("the digest is not a string")
    # The validators are pinned and sent (If-Match, If-Unmodified-Since) when the probe
    # lacks them: only text a response's header could have held, as blobdl wrote it.
    for name, value in (("ETag", state.etag), ("Last-Modified", state.last_modified)):
        if value is not None and not header_value(value):
            raise ValueError(f"the {name} is not a header's value")
    _require_cover(state)
    _require_samples(state)
    return state


def coalesced(parts: Sequence[PartRecord], most: int) -> tuple[PartRecord, ...]:
    """``parts`` (tiling a blob) as at most ``most`` parts that claim no byte they did not.

    A finished part joins the part after it, losing nothing: a record comes back with each
    run's finished steals folded in, not growing run after run. If more than ``most``
    remain (a record of a blob's worth of one-byte parts would keep a rerun busy for
    minutes, a request each), neighbours pair up, each pair keeping its first part's bytes:
    the second's are fetched again."""
    kept: list[PartRecord] = []
    for part in parts:
        if kept and kept[-1].pos == kept[-1].end:
            part = PartRecord(kept.pop().start, part.end, part.pos)
        kept.append(part)
    while len(kept) > max(most, 1):
        pairs = itertools.zip_longest(kept[::2], kept[1::2])
        kept = [a if b is None else PartRecord(a.start, b.end, a.pos) for a, b in pairs]
    return tuple(kept)


def _require_samples(state: State) -> None:
    """Samples as ``samples`` takes them: few, short, inside the blob (a forged record must
    not have a rerun read gigabytes to check it)."""
    if len(state.samples) > MOST_SAMPLES + 2:
        raise ValueError("more samples than a record keeps")
    for sample in state.samples:
        if not (0 < sample.length <= SAMPLE and 0 <= sample.offset <= state.size - sample.length):
            raise ValueError(f"a sample at byte {sample.offset} is not of the blob")


def _require_cover(state: State) -> None:
    """Parts must tile [0, size) with positions inside their part."""
    reach = 0
    for part in state.parts:
        if part.start != reach or not part.start <= part.pos <= part.end:
            raise ValueError(f"parts do not tile the blob at byte {reach}")
        reach = part.end
    if reach != state.size:
        raise ValueError("parts do not cover the blob")
