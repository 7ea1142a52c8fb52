"""The library entry points: ``Downloader`` and ``download``.

This is the only module that ties the pieces together: check the input, lock the
destination, probe the remote, resume or preallocate the temporary file, let the
coordinator run the parts (and the hasher follow them), verify, and rename the result into
place. On failure nothing is left at the destination; a resumable failure keeps the
temporary file and its state for the next run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from . import _isolate, _state
from ._cache import entry_info, place, reseal, seal, sealed, verify
from ._cache import entry_path as cache_entry
from ._coordinator import CheckpointCallback, Coordinator
from ._digest import PrefixHasher, parse_digest, sha256_file
from ._events import (
    DownloadResult,
    Event,
    EventCallback,
    Failed,
    Finished,
    Progress,
    ProgressCallback,
    Started,
)
from ._fileio import (
    check_destination,
    check_free_space,
    discard,
    finalize,
    local_error,
    open_temp,
    require_regular,
    reserve,
    safe_basename,
    set_size,
    temp_path,
)
from ._http import check_url, lift_userinfo, resolve
from ._lock import DestinationLock
from ._plan import download_parts
from ._remote import Remote
from ._state import PartRecord, State
from .config import Settings, redact_url
from .errors import (
    BlobdlError,
    DestinationExists,
    DigestMismatch,
    RemoteChanged,
    RetriesExhausted,
    UsageError,
)

DEFAULT_NAME = "blobdl.out"
CACHE_LOCK_WAIT = 24 * 3600.0  # seconds a job waits for another one filling the same entry
BAD_SUFFIX = ".blobdl-bad"
log = logging.getLogger("blobdl")


class Downloader:
    """Downloads blobs with one frozen ``Settings``; safe to reuse for many downloads."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        base = settings or Settings()
        unknown = set(overrides) - Settings.field_names()
        if unknown:
            raise UsageError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        self.settings = dataclasses.replace(base, **overrides) if overrides else base

    def download(
        self,
        url: str,
        path: str | os.PathLike[str] | None = None,
        *,
        digest: str | None = None,
        on_progress: ProgressCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> DownloadResult:
        """Download ``url`` to ``path`` (default: a safe name from the server or the URL,
        in the current directory), checking ``digest`` (``sha256:<hex>``) if given.

        ``on_event`` receives every event (started, progress every second, part retried,
        part stalled, finished, failed); ``on_progress`` only the progress ones.
        Raises a ``BlobdlError`` subclass on failure, leaving nothing at ``path``.
        """
        listener = _listener(on_progress, on_event)
        # user:pass@ becomes an Authorization header here, once: no URL downstream holds it.
        bare, headers = lift_userinfo(url, self.settings.headers)
        if bare == url:
            return self._run(url, None, path, digest, listener)
        with_auth = Downloader(self.settings, headers=headers)
        return with_auth._run(bare, None, path, digest, listener)

    def download_resolved(
        self,
        remote: Remote,
        path: str | os.PathLike[str] | None = None,
        *,
        digest: str | None = None,
        on_progress: ProgressCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> DownloadResult:
        """``download()`` for a remote that was already probed (``download_many`` probes to
        share out connections); the remote is still revalidated against any resume state."""
        listener = _listener(on_progress, on_event)
        return self._run(remote.url, remote, path, digest, listener)

    def _run(
        self,
        url: str,
        remote: Remote | None,
        path: str | os.PathLike[str] | None,
        digest: str | None,
        tell: EventCallback,
    ) -> DownloadResult:
        if _isolate.threaded():  # never fork a threaded process: a clean one forks instead
            args = (self.settings, url, remote, _fspath(path), digest)
            return _isolate.call(_run_here, args, tell)
        return self._run_here(url, remote, path, digest, tell)

    def _run_here(
        self,
        url: str,
        remote: Remote | None,
        path: str | os.PathLike[str] | None,
        digest: str | None,
        tell: EventCallback,
    ) -> DownloadResult:
        job = _Job(url, None, time.monotonic(), tell)
        try:
            check_url(url)
            job = dataclasses.replace(job, expected=parse_digest(digest) if digest else None)
            if self.settings.cache_dir and job.expected:
                result = self._via_cache(job, path, remote)
            else:
                dest, remote = self._destination(job, path, remote)
                result = self._locked(job, dest, remote)
        except BlobdlError as exc:
            _quietly(tell, Failed(redact_url(url), os.fspath(path or ""), str(exc), exc.exit_code))
            raise
        tell(Finished(result))
        return result

    def _destination(
        self, job: _Job, path: str | os.PathLike[str] | None, remote: Remote | None
    ) -> tuple[Path, Remote | None]:
        """The checked destination; without a path the name comes from the server."""
        if path is None:
            remote = remote or resolve(job.url, self.settings)
            dest = Path(default_name(remote))
        else:
            dest = Path(path)
        check_destination(dest)
        return dest, remote

    def _via_cache(
        self, job: _Job, path: str | os.PathLike[str] | None, remote: Remote | None
    ) -> DownloadResult:
        """Serve from (or fill) ``cache_dir/sha256-<hex>``, then link the destination."""
        assert self.settings.cache_dir is not None and job.expected is not None
        cache = Path(self.settings.cache_dir)
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise local_error(cache, exc) from None
        entry = cache_entry(cache, job.expected)
        dest = Path(path) if path is not None else Path(_name_from_url(job.url))
        check_destination(dest)
        fetched = None
        verified = self._cache_hit(job, entry)
        if verified is None:
            # Shared caches: wait for another job filling the same entry instead of failing.
            filler = Downloader(
                self.settings,
                cache_dir=None,
                force=True,
                lock_timeout=max(self.settings.lock_timeout, CACHE_LOCK_WAIT),
            )
            fetched = filler._locked(job, entry, remote)
            verified = seal(entry, job.expected)
        after = place(entry, dest, verified)
        if after is not verified:
            reseal(entry, job.expected, after)  # our own new link changed the entry's ctime
        if fetched is not None and fetched.bytes_fetched > 0:
            return dataclasses.replace(fetched, path=dest)
        size = after.st_size
        elapsed = job.elapsed()
        return DownloadResult(dest, size, elapsed, 0, 0, 0, job.url, "", verified=True, cached=True)

    def _cache_hit(self, job: _Job, entry: Path) -> os.stat_result | None:
        """The entry's status if it may be served. A present entry is complete (entries
        appear by atomic rename after their digest was checked), but only a seal in our
        private seal directory vouches that it is still that file: anything else (a forged
        or edited entry, ``verify_cache``) is hashed first, and dropped if it is wrong."""
        assert job.expected is not None
        if entry_info(entry) is None:
            return None
        if not self.settings.verify_cache:
            info = sealed(entry, job.expected)
            if info is not None:
                return info
        return verify(entry, job.expected)

    def _locked(self, job: _Job, dest: Path, remote: Remote | None) -> DownloadResult:
        with DestinationLock(dest, self.settings.lock_timeout):
            # Checked under the lock: another holder may have just finished this very file.
            existing = self._existing(job, dest)
            if existing is not None:
                return existing
            remote = remote or resolve(job.url, self.settings)
            return self._fetch(job, remote, dest)

    def _existing(self, job: _Job, dest: Path) -> DownloadResult | None:
        """A destination that is already there: kept if the digest vouches for it."""
        if not dest.exists():
            return None
        require_regular(dest)  # again under the lock: hashing a FIFO would hang
        if job.expected is not None and sha256_file(dest) == job.expected:
            size = dest.stat().st_size
            return DownloadResult(dest, size, job.elapsed(), 0, 0, 0, job.url, "", verified=True)
        if job.expected is None and not self.settings.force:
            raise DestinationExists(str(dest))
        return None

    def _fetch(self, job: _Job, remote: Remote, dest: Path) -> DownloadResult:
        temp, state_file = temp_path(dest), _state.state_path(dest)
        remote = self._ranges_again(job, remote, temp, state_file)
        previous = self._previous(job, remote, temp, state_file)
        records = previous.parts if previous else self._fresh(job, remote, dest, temp, state_file)
        fd: int | None = open_temp(temp, fresh=previous is None)
        assert fd is not None
        try:
            size = remote.size or 0
            if previous is None:
                set_size(fd, size, temp)
                reserve(fd, size, temp)  # before any worker exists: nothing writes beside it
            coordinator = Coordinator(
                remote,
                records,
                fd,
                str(temp),
                self.settings,
                job.tell,
                _checkpointer(fd, remote, state_file) if self.settings.resume else None,
            )
            job.tell(Started(job.url, str(dest), remote.size, len(records), _done(records)))
            with ExitStack() as cleanup:
                hasher = None
                if job.expected is not None:
                    hasher = PrefixHasher(fd, coordinator.table)
                    cleanup.callback(hasher.stop)
                tally = coordinator.run()
                actual = hasher.finish(tally.final_size) if hasher else None
            if actual is not None and actual != job.expected:
                self._reject(fd, temp, state_file, dest, job.expected or "", actual)
            owned, fd = fd, None  # finalize closes it, whatever happens
            finalize(owned, temp, dest, tally.final_size)
            _state.remove(state_file)
        except BaseException as exc:
            self._after_failure(exc, fd, temp, state_file)
            raise
        return DownloadResult(
            path=dest,
            size=tally.final_size,
            elapsed=job.elapsed(),
            bytes_fetched=tally.bytes_fetched,
            retries=tally.retries,
            parts=tally.parts,
            steals=tally.steals,
            url=remote.url,
            final_url=remote.final_url,
            resumed=previous.done if previous else 0,
            verified=actual is not None,
        )

    def _ranges_again(self, job: _Job, remote: Remote, temp: Path, state_file: Path) -> Remote:
        """The probe got a 200, but a partial of this very blob was fetched in ranges: most
        likely one flaky edge. Probe again (with the retry policy) rather than start over;
        if ranges stay refused the partial is kept and the BadResponse raised."""
        if remote.ranges or not self.settings.resume:
            return remote
        previous = _state.load(state_file, job.url, temp)
        if previous is None or previous.done == 0 or not previous.describes(remote):
            return remote
        return resolve(job.url, self.settings, need_ranges=True)

    def _previous(self, job: _Job, remote: Remote, temp: Path, state_file: Path) -> State | None:
        """The resumable state of an earlier run, if it is for this very blob."""
        if not self.settings.resume or not remote.ranges:
            return None
        previous = _state.load(state_file, job.url, temp)
        if previous is not None and not previous.describes(remote):
            log.warning("the remote changed since the partial download; starting over")
            return None
        return previous

    def _fresh(
        self, job: _Job, remote: Remote, dest: Path, temp: Path, state_file: Path
    ) -> list[PartRecord]:
        """Start over: forget any earlier partial file, check space, plan the parts."""
        discard(temp)
        _state.remove(state_file)
        if remote.size:
            check_free_space(dest, remote.size)
        spans = download_parts(
            remote.size, remote.ranges, self.settings, hashing=job.expected is not None
        )
        return [PartRecord(s.start, s.end, s.start) for s in spans]

    def _reject(
        self, fd: int, temp: Path, state_file: Path, dest: Path, expected: str, actual: str
    ) -> None:
        """A digest mismatch: the bytes are bad; never rename them onto the destination."""
        _state.remove(state_file)
        if self.settings.keep_bad:
            bad = dest.with_name(dest.name + BAD_SUFFIX)
            try:
                os.replace(temp, bad)  # replaces a link planted at the name, never writes through
            except OSError as exc:
                raise local_error(bad, exc) from None
        raise DigestMismatch(expected, actual)

    def _after_failure(
        self, exc: BaseException, fd: int | None, temp: Path, state_file: Path
    ) -> None:
        """Keep the partial file when its record claims bytes and nothing proved them bad;
        never raise over ``exc``: the caller re-raises it."""
        try:
            if fd is not None:
                os.close(fd)
            if self.settings.resume and _resumable(exc) and _state.claims_bytes(state_file):
                log.warning(
                    "partial download kept in %s; run the same command again to resume", temp
                )
                return
            discard(temp)
            _state.remove(state_file)
        except OSError as cleanup:
            log.warning("could not clean up %s after the failure: %s", temp, cleanup)


@dataclasses.dataclass(frozen=True)
class _Job:
    url: str
    expected: str | None  # sha256 hex the bytes must have
    started: float
    tell: EventCallback

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _listener(
    on_progress: ProgressCallback | None, on_event: EventCallback | None
) -> EventCallback:
    """One callback for the coordinator, fanning out to what the caller asked for."""

    def tell(event: Event) -> None:
        if on_event is not None:
            on_event(event)
        if on_progress is not None and isinstance(event, Progress):
            on_progress(event)

    return tell


def _run_here(
    settings: Settings,
    url: str,
    remote: Remote | None,
    path: str | None,
    digest: str | None,
    tell: EventCallback | None,
) -> DownloadResult:
    """A download in the clean process ``_isolate`` started for a threaded caller."""
    return Downloader(settings)._run_here(url, remote, path, digest, tell or _ignore)


def _ignore(event: Event) -> None:
    pass


def _fspath(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


def _done(records: list[PartRecord] | tuple[PartRecord, ...]) -> int:
    return sum(r.pos - r.start for r in records)


def _resumable(exc: BaseException) -> bool:
    """Worth keeping the partial file for: nothing showed its bytes to be bad. Only a proven
    change of the remote or a digest mismatch does; anything else (a final status, a TLS
    failure, a protocol breach, a raising callback, an interrupt) keeps the bytes, and the
    next run's probe revalidates them against the remote before using them."""
    if isinstance(exc, RetriesExhausted):
        exc = exc.last_error
    return not isinstance(exc, (RemoteChanged, DigestMismatch))


def _quietly(tell: EventCallback, event: Event) -> None:
    """Tell a failure without letting a raising callback replace the error being raised."""
    try:
        tell(event)
    except Exception as exc:
        log.warning("the event callback raised %r while a failure was reported", exc)


def _checkpointer(fd: int, remote: Remote, state_file: Path) -> CheckpointCallback:
    def checkpoint(parts: tuple[PartRecord, ...]) -> None:
        try:
            os.fdatasync(fd)  # the record may only claim bytes that are already durable
            _state.save(
                state_file,
                State(
                    remote.url,
                    remote.final_url,
                    remote.size or 0,
                    remote.etag,
                    remote.last_modified,
                    parts,
                ),
            )
        except OSError as exc:
            raise local_error(state_file, exc) from None

    return checkpoint


def _name_from_url(url: str) -> str:
    return safe_basename(unquote(urlsplit(url).path)) or DEFAULT_NAME


def default_name(remote: Remote) -> str:
    """A safe base name: Content-Disposition first, then the URL's last path segment."""
    for candidate in (
        remote.filename,
        unquote(urlsplit(remote.url).path),
        unquote(urlsplit(remote.final_url).path),
    ):
        name = safe_basename(candidate)
        if name:
            return name
    return DEFAULT_NAME


def download(
    url: str,
    path: str | os.PathLike[str] | None = None,
    *,
    digest: str | None = None,
    on_progress: ProgressCallback | None = None,
    on_event: EventCallback | None = None,
    **settings: Any,
) -> DownloadResult:
    """Download ``url`` to ``path`` with default settings overridden by ``settings``."""
    return Downloader(**settings).download(
        url, path, digest=digest, on_progress=on_progress, on_event=on_event
    )
