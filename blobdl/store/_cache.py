"""A content-addressed blob cache, laid out as Ollama's blob store: ``DIR/sha256-<hex>``.

Entries only ever appear by atomic rename of a complete, digest-verified file (they are
downloaded through the normal machinery, under the per-destination lock), so a present
entry is complete; concurrent jobs sharing a cache wait on that lock instead of writing the
same entry twice. A destination is then a hard link to the entry, or a copy where the
filesystem cannot link (another device, no hard links) or another user owns the entry (a
shared cache: linked, the destination would be a file they can edit). ``through_cache`` is one
download's way through the cache: it serves a hit, or has the engine fill the entry first.

A hard link shares the bytes: a user editing their destination in place edits the entry.
So entries are made read-only, and each verified entry has a seal recording its device,
inode, size, mtime and ctime. Seals never live in the cache directory (whoever can write
there could forge one, and utime forges an mtime): they live in a private 0700 directory of
this user's (``$BLOBDL_SEAL_DIR``, else ``$XDG_STATE_HOME/blobdl/seals``, else
``~/.local/state/blobdl/seals``), one file per entry named by a hash of the entry's real
path. A new or replaced entry has another inode, an edited one another ctime (which utime
cannot set back); an entry without a matching seal is hashed again before it is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Settings
from ..errors import LocalFileError
from ..events import DownloadResult
from ..processes._signals import commit, held
from ._destination import BESIDE, check_destination
from ._digest import sha256_fd
from ._files import atomic_write, local_error, local_errors, make_directory, open_own
from ._lock import DestinationLock
from ._resume import sweep

LINK_SUFFIX = ".blobdl-link"
#: What a destination's scratch link (``_link``) adds to its name, at its longest.
LINK_BESIDE = len(f"{LINK_SUFFIX}-4194304-ffffffff")
CACHE_LOCK_WAIT = 24 * 3600.0  # seconds a download waits for another one filling its entry
SEAL_DIR_ENV = "BLOBDL_SEAL_DIR"
_CANNOT_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES})
_NOT_AN_ENTRY = "is not a regular file; refusing to use it as a cache entry"
log = logging.getLogger("blobdl")

Fill = Callable[[Path, float], DownloadResult]
"""Downloads the blob into a cache entry (its path), waiting up to so many seconds for
another download that holds the entry's lock."""


def through_cache(
    settings: Settings, hexdigest: str, dest: Path, fill: Fill, url: str, started: float
) -> DownloadResult:
    """Serve ``dest`` from ``cache_dir/sha256-<hex>`` (``fill`` downloads the entry first if
    it may not be served), then link the destination to the entry. ``url`` and ``started``
    (``time.monotonic()``) are for the result of a hit."""
    assert settings.cache_dir is not None
    cache = Path(settings.cache_dir)
    make_directory(cache)
    entry = entry_path(cache, hexdigest)
    check_destination(dest, max(BESIDE, LINK_BESIDE))
    fetched = None
    verified = _hit(entry, hexdigest, settings.verify_cache)
    if verified is None:
        # Shared caches: wait for another download filling the same entry instead of failing.
        fetched = fill(entry, max(settings.lock_timeout, CACHE_LOCK_WAIT))
        verified = seal(entry, hexdigest)
    else:
        _sweep_beside(entry)
    after = place(entry, dest, verified)
    if after is not verified:
        reseal(entry, hexdigest, after)  # our own new link changed the entry's ctime
    # An earlier run without the cache may have left a partial of it beside ``dest``.
    _sweep_beside(dest)
    if fetched is not None and fetched.bytes_fetched > 0:
        return dataclasses.replace(fetched, path=dest)
    elapsed = time.monotonic() - started
    return DownloadResult(
        dest, after.st_size, elapsed, 0, 0, 0, url, "", verified=True, cached=True
    )


def _hit(entry: Path, hexdigest: str, verify_always: bool) -> os.stat_result | None:
    """The entry's status if it may be served. A present entry is complete (entries
    appear by atomic rename after their digest was checked), but only a seal in our
    private seal directory vouches that it is still that file: anything else (a forged
    or edited entry, ``verify_always``) is hashed first, and dropped if it is wrong."""
    if entry_info(entry) is None:
        return None
    if not verify_always:
        info = sealed(entry, hexdigest)
        if info is not None:
            return info
    return verify(entry, hexdigest)


def _sweep_beside(path: Path) -> None:
    """``path`` (an entry, or a destination placed from one) is complete: what an earlier
    run left beside it claims nothing any more. A filler killed after the entry's rename
    left its record and lock; a run without the cache, its partial of the destination.
    They go under ``path``'s lock, taken without waiting: one held belongs to a live job
    (another hit sweeping, a filler hashing the entry, a run writing the destination),
    which is left alone."""
    try:
        with DestinationLock(path, 0.0):
            sweep(path)
    except LocalFileError as exc:  # DestinationLocked among them
        log.debug("left what is beside %s as it is: %s", path, exc)


def entry_path(cache_dir: Path, hexdigest: str) -> Path:
    return cache_dir / f"sha256-{hexdigest}"


def entry_info(entry: Path) -> os.stat_result | None:
    """The entry's own status (a link at its name is not followed); None if absent.

    Anything but a regular file at an entry's name is refused: it is not an entry of ours."""
    try:
        info = os.lstat(entry)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise local_error(entry, exc) from None
    if not stat.S_ISREG(info.st_mode):
        raise LocalFileError(str(entry), _NOT_AN_ENTRY)
    return info


def verify(entry: Path, hexdigest: str) -> os.stat_result | None:
    """Hash the entry; sealed and its status returned if it matches, else dropped (None)."""
    fd = _open_entry(entry)
    try:
        if sha256_fd(fd) != hexdigest:
            log.warning("cache entry %s does not match its digest; fetching it again", entry)
            unseal(entry)
            return None
        return _seal_fd(fd, entry, hexdigest)
    finally:
        os.close(fd)


def seal(entry: Path, hexdigest: str) -> os.stat_result:
    """Mark an entry just verified by its download: read-only, its identity on record."""
    fd = _open_entry(entry)
    try:
        return _seal_fd(fd, entry, hexdigest)
    finally:
        os.close(fd)


def _seal_fd(fd: int, entry: Path, hexdigest: str) -> os.stat_result:
    # The open file, not the name: what is recorded is what was hashed. Another user's
    # entry (a shared cache) keeps the mode its owner chose: only they may change it.
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o444)
        info = os.fstat(fd)
    except OSError as exc:
        raise local_error(entry, exc) from None
    reseal(entry, hexdigest, info)
    return info


def _open_entry(entry: Path) -> int:
    """Read an entry without following a link at its name or blocking on a FIFO (other
    hard links are its destinations)."""
    return open_own(entry, os.O_RDONLY, shared=True)


def reseal(entry: Path, hexdigest: str, info: os.stat_result) -> None:
    """Record ``info`` as the verified identity of ``entry`` (best effort: without a seal
    the entry is only hashed again next time)."""
    record = _seal_record(entry)
    if record is None:
        return
    # Not fsynced: a seal lost in a crash only costs one more hash of the entry.
    identity = _identity(info, hexdigest).encode("ascii")
    try:
        atomic_write(record, identity, mode=0o600, durable=False)
    except LocalFileError as exc:
        log.warning("cannot record the seal of %s (%s); it will be hashed next time", entry, exc)


def sealed(entry: Path, hexdigest: str) -> os.stat_result | None:
    """The entry's status if it is exactly the file that was verified, else None."""
    record = _seal_record(entry)
    try:
        info = entry_info(entry)
        if record is None or info is None:
            return None
        return info if _read_seal(record) == _identity(info, hexdigest) else None
    except (OSError, LocalFileError, ValueError):
        return None


def _read_seal(record: Path) -> str | None:
    """The seal's text, if this user wrote it: a seal directory found open to others is
    made private, but a seal someone else put there meanwhile vouches for nothing."""
    with os.fdopen(open_own(record, os.O_RDONLY), "rb") as f:
        if os.fstat(f.fileno()).st_uid != os.geteuid():
            return None
        return f.read().decode("ascii")


def unseal(entry: Path) -> None:
    record = _seal_record(entry)
    for path in (record, entry):
        if path is not None:
            path.unlink(missing_ok=True)


def _identity(info: os.stat_result, hexdigest: str) -> str:
    fields = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return " ".join(str(v) for v in (*fields, hexdigest)) + "\n"


def _seal_record(entry: Path) -> Path | None:
    """Where the seal of ``entry`` lives, or None if there is no private place for it."""
    directory = _seal_dir()
    if directory is None:
        return None
    key = hashlib.sha256(os.fsencode(os.path.realpath(entry))).hexdigest()
    return directory / key


def _seal_dir() -> Path | None:
    """The private seal directory, created 0700; None (hash every hit) if it is not ours."""
    configured = os.environ.get(SEAL_DIR_ENV)
    if configured:
        directory = Path(configured)
    else:
        state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        directory = Path(state) / "blobdl" / "seals"
    try:
        make_directory(directory, 0o700)
        with local_errors(directory):
            info = os.lstat(directory)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                log.warning(
                    "seal directory %s is not this user's own; hashing every cache hit", directory
                )
                return None
            if stat.S_IMODE(info.st_mode) & 0o077:
                directory.chmod(0o700)
    except LocalFileError as exc:  # worded as errors are: "is a file, not a directory"
        why = exc.detail if exc.path == str(directory) else str(exc)  # else a parent's
        log.warning("no seal directory %s (%s); hashing every cache hit", directory, why)
        return None
    return directory


def place(entry: Path, dest: Path, verified: os.stat_result) -> os.stat_result:
    """Make ``dest`` a hard link to (or a copy of) ``entry``, replacing it atomically, and
    return the entry's status afterwards (a new link changes its ctime).

    ``verified`` is the entry as it was checked: an entry replaced since is never placed."""
    if dest.exists() and os.path.samefile(entry, dest):
        return verified
    # Unique per call: two jobs placing the same destination must not share a scratch name.
    scratch = dest.with_name(f"{dest.name}{LINK_SUFFIX}-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        _link_or_copy(entry, scratch, verified)
        commit()  # the rename puts the verified blob in place: the download has succeeded
        os.replace(scratch, dest)
        after = os.lstat(dest)
    except BaseException as exc:  # Ctrl-C during a long copy too: no scratch file left
        with held(drop=True), contextlib.suppress(OSError):  # nor a second one in the removal
            scratch.unlink()
        if isinstance(exc, OSError):
            raise local_error(dest, exc) from None
        raise
    return after if _same_file(after, verified) else verified


def _link_or_copy(entry: Path, scratch: Path, verified: os.stat_result) -> None:
    """Link ``scratch`` to the entry if it is ours, else copy it there. Another user's
    entry (a shared cache) is never linked: the destination would be their file, which
    they may make writable and edit at any time."""
    if verified.st_uid == os.geteuid():
        try:
            os.link(entry, scratch)
        except OSError as exc:
            if exc.errno not in _CANNOT_LINK:
                raise
        else:
            _require_same(os.lstat(scratch), verified, entry)
            return
    _copy(entry, scratch, verified)


def _same_file(info: os.stat_result, verified: os.stat_result) -> bool:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns) == (
        verified.st_dev,
        verified.st_ino,
        verified.st_size,
        verified.st_mtime_ns,
    )


def _require_same(info: os.stat_result, verified: os.stat_result, entry: Path) -> None:
    if not _same_file(info, verified):
        raise LocalFileError(str(entry), "cache entry changed while it was being used")


def _copy(entry: Path, scratch: Path, verified: os.stat_result) -> None:
    """Copy into a scratch file we create (never through whatever else is at the name)."""
    source = _open_entry(entry)
    try:
        _require_same(os.fstat(source), verified, entry)
        out = open_own(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with open(source, "rb", closefd=False) as reader, os.fdopen(out, "wb") as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)
    finally:
        os.close(source)
