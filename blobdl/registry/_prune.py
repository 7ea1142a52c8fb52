"""``prune``: what pulls leave behind in Ollama's store, found and removed.

- abandoned partials in ``blobs-partial/`` (the engine's temp, state and bad files of a blob
  nobody is fetching, and the staged blob itself), with their lock files;
- stale lock files (claims and fetch locks nobody holds, and the lock files a killed pull's
  batch kept from one small blob to the next);
- manifest scratch files a killed pull left in ``.blobdl-tmp/`` (or in a model's folder,
  on another file system, ``manifests/*/*/*/.blobdl-tmp/``), and the scratch files older
  blobdl versions left beside a manifest (``.TAG.tmp-PID``), which Ollama warns about as
  bad manifest names at every start;
- blobs no manifest names, once older than an hour (Ollama's own grace: a younger one may
  belong to an ``ollama pull`` or ``ollama create`` in progress), and none while a manifest
  Ollama cannot read is in the store or Ollama is writing into ``blobs/``;
- empty manifest folders.

Never what a running pull holds: every group of files is removed only while its locks are
held here, taken without waiting (a pull holding one keeps it all). ``dry_run`` takes the
locks only to look: it creates and removes nothing. Unused blobs go through ``free``, which
``pull`` also calls for the blobs a moved tag left.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from ..errors import LocalFileError
from ..store._files import local_error
from ..store._lock import kept_files, remove_stale, unheld
from ._claims import CLAIM_SUFFIX, FETCH_SUFFIX, locked
from ._store import BLOB_DIGEST, SCRATCH_DIR, Store, freed_by_removing, locate

GRACE = 3600.0  # seconds: Ollama's layerPruneGracePeriod
SCRATCH_AGE = 600.0  # seconds: a manifest is written in milliseconds; older scratch is left over
ENGINE_LOCK = ".blobdl-lock"  # the engine's own lock beside a staged blob (store._lock)
_PARTIAL = re.compile(r"(sha256-[0-9a-f]{64})(.*)", re.DOTALL)
_SCRATCH = re.compile(r"manifest-\d+-[0-9a-f]{8}")  # Store.write_manifest
_OLD_SCRATCH = re.compile(r"\..+\.tmp-\d+(?:-[0-9a-f]{8})?", re.DOTALL)  # older versions
BUSY = "a running pull holds it"
FREE_BATCH = 64  # blobs whose claims (open lock files) freeing holds at once


class Freed(NamedTuple):
    removed: list[tuple[str, int]]  # (digest, bytes on disk)
    kept: list[str]  # unused, but kept: a manifest Ollama cannot read may need them
    busy: list[str]  # claimed by a running pull


class Removal(NamedTuple):
    path: Path
    size: int  # bytes it held on disk
    what: str  # why it goes: "abandoned partial", "stale lock", "unused blob", ...


class Kept(NamedTuple):
    path: Path
    why: str


class PruneReport(NamedTuple):
    models_dir: Path
    models_dir_from: str
    removed: tuple[Removal, ...]  # or, on a dry run, what would be
    kept: tuple[Kept, ...]  # left behind although unused: a running pull holds it, ...
    unreadable: tuple[Path, ...]  # manifests Ollama cannot read: no blob was removed
    strays: tuple[Path, ...]  # names at depth 4 that are no model (Ollama warns, skips them)
    dry_run: bool

    @property
    def freed(self) -> int:
        return sum(r.size for r in self.removed)


def prune(
    models_dir: str | os.PathLike[str] | None = None,
    *,
    dry_run: bool = False,
    now: float | None = None,
) -> PruneReport:
    location = locate(models_dir, os.environ, Path.home())
    if not location.path.is_dir():
        raise LocalFileError(str(location.path), "no such store")
    store = Store(location.path, create=False)
    now = time.time() if now is None else now
    removed: list[Removal] = []
    kept: list[Kept] = []
    _partials(store, dry_run, removed, kept)
    removed += _kept_locks(store, dry_run)
    removed += _scratch(store, dry_run, now)
    catalog = store.catalog()
    unused = [d for d in _old_blobs(store, now - GRACE) if d not in catalog.kept]
    writing = _ollama_writing(store, now - GRACE)
    if writing is not None:
        why = f"an ollama pull is running: {writing} changed within the hour"
        kept += [Kept(_blob(store, d), why) for d in unused]
        unused = []
    freed = free(store, unused, dry_run=dry_run)
    removed += [Removal(_blob(store, d), n, "unused blob") for d, n in freed.removed]
    kept += [Kept(_blob(store, d), BUSY) for d in freed.busy]
    removed += _folders(store.manifests, dry_run, now - SCRATCH_AGE)
    after = store.catalog()
    strays = [p for p in after.strays if not any(r.path == p for r in removed)]
    return PruneReport(location.path, location.source, tuple(removed), tuple(kept),
                       after.unreadable, tuple(strays), dry_run)  # fmt: skip


def free(store: Store, digests: Iterable[str], *, dry_run: bool = False) -> Freed:
    """Delete the blobs of ``digests`` that no manifest names and no pull claims, as
    ``ollama pull`` deletes the layers a moved tag left: their claims are taken first,
    the manifests read next, so a manifest written meanwhile is seen. Nothing is deleted
    while a manifest Ollama cannot read is in the store (it may need them). The claims
    are lock files held open: ``FREE_BATCH`` blobs at a time."""
    wanted = sorted({d for d in digests if BLOB_DIGEST.fullmatch(d)})
    if wanted and not dry_run:
        store.folder(store.partial)  # for the claims (a store only Ollama wrote has none)
    freed = Freed([], [], [])
    for start in range(0, len(wanted), FREE_BATCH):
        batch = _free(store, wanted[start : start + FREE_BATCH], dry_run)
        freed.removed.extend(batch.removed)
        freed.kept.extend(batch.kept)
        freed.busy.extend(batch.busy)
    return freed


def _free(store: Store, wanted: list[str], dry_run: bool) -> Freed:
    removed: list[tuple[str, int]] = []
    with contextlib.ExitStack() as stack:
        claim = store.claims.exclusive
        mine = [d for d in wanted if stack.enter_context(claim(d, dry_run))]
        catalog = store.catalog()
        unused = [d for d in mine if d not in catalog.kept]
        busy = [d for d in wanted if d not in mine]
        if catalog.unreadable:
            return Freed([], unused, busy)
        for digest in unused:
            size = store.blob_bytes(digest) if dry_run else store.remove_blob(digest)
            if size is not None:
                removed.append((digest, size))
    return Freed(removed, [], busy)


def _partials(store: Store, dry_run: bool, removed: list[Removal], kept: list[Kept]) -> None:
    """Each blob's files in ``blobs-partial/``, removed together once nobody claims,
    fetches or downloads that blob: its three locks are held here meanwhile."""
    groups: dict[str, list[Path]] = {}
    for name in sorted(_names(store.partial)):
        match = _PARTIAL.fullmatch(name)
        if match and not (store.partial / name).is_dir():
            groups.setdefault(match.group(1), []).append(store.partial / name)
    for prefix, paths in groups.items():
        locks = [store.partial / (prefix + s) for s in (FETCH_SUFFIX, CLAIM_SUFFIX, ENGINE_LOCK)]
        with contextlib.ExitStack() as held:
            try:
                free = all(held.enter_context(_lock(p, dry_run)) for p in locks)
            except LocalFileError as exc:  # a link planted at a lock: nobody's lock
                kept += [Kept(path, exc.detail) for path in paths]
                continue
            if not free:
                kept += [Kept(path, BUSY) for path in paths]
                continue
            for path in paths:  # a lock file goes when its lock is released here
                what = "stale lock" if path in locks else "abandoned partial"
                removed += _remove(path, what, dry_run or path in locks)


def _kept_locks(store: Store, dry_run: bool) -> Iterator[Removal]:
    """The lock files a pull's batch kept in ``blobs-partial/`` from one small blob to the
    next (``store._lock.KeptLockFile``) that nobody holds: a pull killed whole left them."""
    for path in kept_files(store.partial):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if unheld(path) if dry_run else remove_stale(path):  # (which looks first itself)
            yield Removal(path, freed_by_removing(info), "stale lock")


def _lock(path: Path, dry_run: bool) -> contextlib.AbstractContextManager[bool]:
    return locked(path, shared=False, wait=False, look_only=dry_run)


def _scratch(store: Store, dry_run: bool, now: float) -> Iterator[Removal]:
    """Manifest scratch files older than ``SCRATCH_AGE``: ours in ``.blobdl-tmp/``, and
    those of older versions at depth 4 of ``manifests/``."""
    real = store.scratch.is_dir() and not store.scratch.is_symlink()
    ours = [store.scratch / n for n in _names(store.scratch) if real and _SCRATCH.fullmatch(n)]
    # A manifest folder on another file system has its scratch folder inside (Store).
    beside = [p for p in _glob(store.manifests, f"*/*/*/{SCRATCH_DIR}/manifest-*")
              if _SCRATCH.fullmatch(p.name) and store.trusted(p.parent)]  # fmt: skip
    older = [p for p in _glob(store.manifests, "*/*/*/.*")
             if _OLD_SCRATCH.fullmatch(p.name) and store.trusted(p.parent)]  # fmt: skip
    for path in ours + beside + older:
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) and info.st_mtime < now - SCRATCH_AGE:
                yield from _remove(path, "manifest scratch left by a killed pull", dry_run)


def _old_blobs(store: Store, before: float) -> Iterator[str]:
    """The digests of the files in ``blobs/`` named as blobs and older than ``before``
    (Ollama's own partial files there, ``sha256-<hex>-partial...``, are not ours)."""
    for name in _names(store.blobs):
        digest = name.replace("sha256-", "sha256:", 1)
        if not BLOB_DIGEST.fullmatch(digest):
            continue
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(store.blobs / name)
            if not stat.S_ISDIR(info.st_mode) and info.st_mtime < before:
                yield digest


def _ollama_writing(store: Store, since: float) -> str | None:
    """A file in ``blobs/`` that is no blob and changed since ``since``: Ollama is writing
    there (a pull's ``-partial`` files, ``create``'s temp files). An ``ollama pull`` names
    its blobs only when it ends, and trusts an old one it finds without touching it: while
    it runs, an old unused blob may be one it is about to name."""
    for name in sorted(_names(store.blobs)):
        if BLOB_DIGEST.fullmatch(name.replace("sha256-", "sha256:", 1)):
            continue
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(store.blobs / name)
            if stat.S_ISREG(info.st_mode) and info.st_mtime >= since:
                return name
    return None


def _folders(manifests: Path, dry_run: bool, before: float) -> list[Removal]:
    """Empty folders under ``manifests/`` (not itself), deepest first, that were last
    changed before ``before`` (a pull may be about to write into a new one)."""
    walk = sorted(os.walk(manifests, topdown=False), reverse=True)  # children first
    old = set()
    for folder, _, _ in walk:
        with contextlib.suppress(OSError):
            if os.lstat(folder).st_mtime < before:
                old.add(Path(folder))
    removed: list[Removal] = []
    gone: set[Path] = set()
    for folder, dirs, files in walk:
        path = Path(folder)
        left = [d for d in dirs if path / d not in gone] + files
        if path != manifests and path in old and not left:
            removed += _remove(path, "empty manifest folder", dry_run)
            gone.add(path)
    return removed


def _blob(store: Store, digest: str) -> Path:
    return store.blobs / f"sha256-{digest[7:]}"


def _remove(path: Path, what: str, dry_run: bool) -> list[Removal]:
    """``path`` removed (a lock file is unlinked by its release instead, so only counted).
    One that another prune (or the pull that wrote it) removed since it was listed, or a
    folder a pull wrote into since, is left to them: not counted, and no error."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return []
    size = freed_by_removing(info)
    if not dry_run:
        try:
            if stat.S_ISDIR(info.st_mode):
                path.rmdir()
            else:
                path.unlink()
        except FileNotFoundError:
            return []
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and stat.S_ISDIR(info.st_mode):
                return []
            raise local_error(path, exc) from None
    return [Removal(path, size, what)]


def _glob(folder: Path, pattern: str) -> list[Path]:
    """``folder.glob(pattern)`` (names starting with '.' matched too, links followed), but
    a folder removed while it looks (``ollama rm``, another prune, a pull tidying its
    scratch folder) is skipped: pathlib's glob raises FileNotFoundError there (3.11)."""
    found = glob.glob(pattern, root_dir=folder, include_hidden=True)
    return [folder / path for path in sorted(found)]


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LocalFileError(str(folder), exc.strerror or str(exc)) from None
