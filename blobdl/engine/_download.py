"""One download, start to end: ``Downloader`` and ``download``.

The story of one download: check the input, lock the destination, probe the remote, ask
``_resume`` for an earlier partial or plan the parts afresh (``_plan``), preallocate the
temporary file, let the coordinator run the parts (and the hasher follow them), verify,
and rename the result into place. On failure nothing is left at the destination;
``Resume.settle`` decides whether the temporary file and its record stay for the next run.

A batch tells a small blob's story with ``_small.OneRequest``, which changes two steps of
this one: the probe is the first GET, which brings the whole blob (``_probed``), and one
thread streams it into the temporary file instead of a coordinator (``_fetch``). Every
other step, and every check, is this module's (``_written`` is the frame both share).

What the story leans on has a home of its own: the order and its result (``_order``),
telling the caller (``_tell``), a destination already there (``store._existing``), the
record a finished file carries of where it came from (``store._source``), its name when
none is given (``store._names``), bytes proven bad (``Resume.reject``), and the hasher
beside the coordinator (``_hasher.hashed_run``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Settings, check_callback, check_path, check_text, overridden, plain
from ..errors import UsageError
from ..events import DownloadResult, EventCallback, Finished, ProgressCallback, Started
from ..http._probe import resolve
from ..http._remote import Identity, Remote, lasting
from ..http._urls import check_url, lift_userinfo
from ..processes import _clean_process
from ..processes._signals import called, callers, commit, held, inner, stoppable
from ..store._cache import entry_path, through_cache
from ..store._destination import (
    check_destination,
    check_free_space,
    finalize,
    folder_writable,
    given_destination,
    not_writable,
    open_temp,
    reserve,
    set_size,
)
from ..store._digest import parse_digest
from ..store._existing import Kept, kept
from ..store._lock import DestinationLock
from ..store._names import default_name, name_from_url
from ..store._resume import PartRecord, Resume, bytes_done, sweep
from ..store._source import stamp
from ._coordinator import Coordinator
from ._hasher import hashed_run
from ._order import Order
from ._parts import Tally
from ._plan import download_parts, resumed_parts
from ._share import Receiving, Share
from ._tell import failures_told, ignore, tell_caller

log = logging.getLogger("blobdl")
#: What marks a finished file before it is made durable (``_source.stamp``, bound to its source).
Mark = Callable[[int], None]


class Downloader:
    """Downloads blobs with one frozen ``Settings``; safe to reuse for many downloads."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = overridden(settings, overrides)

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
        check_text("url", url)
        check_path("path", path)
        check_text("digest", digest, optional=True)
        check_callback("on_progress", on_progress)
        check_callback("on_event", on_event)
        url, path, digest = plain(url), plain(_fspath(path)), plain(digest)  # see ``plain``
        tell = tell_caller(callers(on_progress), callers(on_event))
        # user:pass@ becomes an Authorization header here, once: no URL downstream holds it.
        bare, headers = lift_userinfo(url, self.settings.headers)
        with called():  # SIGTERM is Ctrl-C here too, if the download runs in a clean process
            if bare == url:
                return self._run(url, None, path, digest, tell)
            with_auth = Downloader(self.settings, headers=headers)
            return with_auth._run(bare, None, path, digest, tell)

    def _download_resolved(
        self,
        remote: Remote,
        path: str | os.PathLike[str] | None = None,
        *,
        digest: str | None = None,
        on_event: EventCallback | None = None,
        share: Share | None = None,
        to_host: Callable[[str], None] | None = None,
    ) -> DownloadResult:
        """``download()`` of a remote its batch probed (to share out connections), still
        revalidated against any resume state; ``share``, ``to_host``: see ``Order``."""
        tell = tell_caller(None, on_event)
        return self._run(remote.url, remote, path, digest, tell, share, to_host)

    def _run(
        self,
        url: str,
        remote: Remote | None,
        path: str | os.PathLike[str] | None,
        digest: str | None,
        tell: EventCallback,
        share: Share | None = None,
        to_host: Callable[[str], None] | None = None,
    ) -> DownloadResult:
        """``to_host``: see ``Order`` (a batch item's child never runs in a clean process)."""
        if _clean_process.needs_clean():  # never fork here: a clean process forks instead
            args = (self.settings, url, remote, _fspath(path), digest, share)
            return _clean_process.call(_run_here, args, tell, _writes(self.settings, path, digest))
        return self._run_here(url, remote, path, digest, tell, share, to_host)

    def _run_here(
        self,
        url: str,
        remote: Remote | None,
        path: str | os.PathLike[str] | None,
        digest: str | None,
        tell: EventCallback,
        share: Share | None = None,
        to_host: Callable[[str], None] | None = None,
    ) -> DownloadResult:
        order = Order(url, None, time.monotonic(), tell, share, to_host=to_host)
        # SIGTERM, like Ctrl-C, stops it wherever it is (exit 130, the partial kept), until
        # the file is in place: from then on it has succeeded (see _signals).
        with stoppable():
            with failures_told(tell, url, path):
                check_url(url)
                expected = parse_digest(digest) if digest else None
                # A file that appears at the destination while it downloads is judged as
                # one there at the start would be (``kept``): replaced with force or a
                # digest (the bytes put there are checked), else refused, never replaced.
                replace = self.settings.force or expected is not None
                order = dataclasses.replace(order, expected=expected, replace=replace)
                if self.settings.cache_dir and order.expected:
                    result = self._via_cache(order, path, remote)
                else:
                    dest, remote = self._destination(order, path, remote)
                    if folder_writable(dest):
                        result = self._locked(order, dest, remote)
                    else:
                        result = self._unlocked(order, dest, remote)
            tell(Finished(result))
            return result

    def _destination(
        self, order: Order, path: str | os.PathLike[str] | None, remote: Remote | None
    ) -> tuple[Path, Remote | None]:
        """The checked destination; without a path the name comes from the server."""
        if path is None:
            remote = self._probed(order, remote)
            dest = self._named(remote)
        else:
            dest = given_destination(path)
        check_destination(dest, writable=False)  # see ``_unlocked``
        return dest, remote

    def _via_cache(
        self, order: Order, path: str | os.PathLike[str] | None, remote: Remote | None
    ) -> DownloadResult:
        """Serve from (or fill) ``cache_dir/sha256-<hex>``, then link the destination."""
        assert order.expected is not None
        dest = given_destination(path) if path is not None else Path(name_from_url(order.url))
        if not folder_writable(dest):  # nothing can be placed there: its digest judges it
            check_destination(dest, writable=False)
            return self._unlocked(order, dest, remote)

        def fill(entry: Path, lock_timeout: float) -> DownloadResult:
            filler = self._derived(cache_dir=None, force=True, lock_timeout=lock_timeout)
            with inner():  # the entry is in place, not yet the destination
                return filler._locked(order, entry, remote)

        return through_cache(self.settings, order.expected, dest, fill, order.url, order.started)

    def _locked(self, order: Order, dest: Path, remote: Remote | None) -> DownloadResult:
        # One probe, for whichever asks first: the check of a destination already there (its
        # record against the remote's validators), or the download.
        probed = functools.cache(lambda: self._probed(order, remote))
        with self._lock(dest):
            # Checked under the lock: another holder may have just finished this very file.
            found = kept(dest, order.url, order.expected, lambda: probed().identity,
                         force=self.settings.force)  # fmt: skip
            if found is not None:
                sweep(dest)  # a run killed after its rename left its record beside it
                return _in_place(order, dest, found)
            resume = Resume.beside(dest, order.url, self.settings.resume, order.expected)
            try:
                remote = probed()
            except BaseException:
                resume.mention_kept()  # a partial of an earlier run stays, as it was
                raise
            return self._fetch(order, remote, dest, resume)

    def _unlocked(self, order: Order, dest: Path, remote: Remote | None) -> DownloadResult:
        """A destination in a folder no one lets us write (``_unwritable``)."""
        return _unwritable(order, dest, lambda: self._probed(order, remote).identity)

    # --- the steps a batch's small download tells its own way (``_small.OneRequest``) ----

    def _lock(self, dest: Path) -> DestinationLock:
        """The destination's lock (its own file, made and removed)."""
        return DestinationLock(dest, self.settings.lock_timeout)

    def _probed(self, order: Order, remote: Remote | None) -> Remote:
        """The remote: as given (already probed), else probed now."""
        return remote or _resolve(order, self.settings)

    def _named(self, remote: Remote) -> Path:
        """The destination of a download given no path: the server's name for it."""
        return Path(default_name(remote))

    def _derived(self, **overrides: Any) -> Downloader:
        """The same downloader with some settings changed (a cache entry's filler)."""
        return Downloader(self.settings, **overrides)

    def _fetch(self, order: Order, remote: Remote, dest: Path, resume: Resume) -> DownloadResult:
        """The parts of the blob, planned or resumed, run by a coordinator (and hashed by a
        hasher that follows the bytes on disk as they land)."""
        hashing = order.expected is not None  # a hasher follows the bytes as they land
        try:
            if resume.wants_ranges(remote):  # refused again: BadResponse, and the partial stays
                remote = _resolve(order, self.settings, need_ranges=True)
            previous = resume.previous(remote)
            if previous is not None:
                remote = resume.pinned(remote, previous)
                records = resumed_parts(previous, self.settings, hashing=hashing)
            else:
                records = _fresh(self.settings, order, remote, dest, resume)
        except BaseException as exc:
            with held(drop=True):  # a second Ctrl-C must not cut the cleanup short
                resume.settle(exc)
            raise

        def run(fd: int) -> tuple[Tally, str | None]:
            checkpoint = resume.checkpointer(fd, remote)
            coordinator = Coordinator(
                remote, records, fd, str(resume.temp), self.settings, order.tell, checkpoint,
                order.share, order.to_host,
            )  # fmt: skip
            started = Started(order.url, str(dest), remote.size, len(records), bytes_done(records))
            # Told once the hasher and the first lanes' workers are forked (see Crew).
            run = functools.partial(coordinator.run, lambda: order.tell(started))
            return hashed_run(fd, coordinator.table, run, hashing=hashing)

        resumed = bytes_done(records) if previous else 0
        return self._written(order, remote, dest, resume, run, resumed, previous is None)

    def _written(
        self,
        order: Order,
        remote: Remote,
        dest: Path,
        resume: Resume,
        run: Callable[[int], tuple[Tally, str | None]],
        resumed: int = 0,
        fresh: bool = True,
    ) -> DownloadResult:
        """The frame of every download: the temporary file opened (created anew when
        ``fresh``, else the partial that ``resumed`` bytes of) and sized, ``run`` filling it
        (it returns what it did, and the bytes' digest if one is expected), the digest
        checked, the file made durable and renamed onto ``dest``. On any failure
        ``resume.settle`` decides what stays."""
        fd: int | None = None
        try:
            with held():  # a file opened is a file noted, and closed on the way out
                fd = open_temp(resume.temp, fresh=fresh)
            size = remote.size or 0
            # Reserved before any worker exists (nothing writes beside it), which sizes the
            # file too; one the filesystem cannot reserve is sized sparse.
            if fresh and not reserve(fd, size, resume.temp):
                set_size(fd, size, resume.temp)
            tally, actual = run(fd)
            if actual is not None and actual != order.expected:
                with held(drop=True):  # the bytes are bad: that is the outcome
                    resume.reject(
                        dest, order.expected or "", actual, keep_bad=self.settings.keep_bad
                    )
            commit()  # every byte is in and checked: from here on it is done
            owned, fd = fd, None  # finalize closes it, whatever happens
            mark = functools.partial(stamp, url=order.url, remote=lasting(remote))  # its source
            self._finalize(owned, resume.temp, dest, tally.final_size, mark, order.replace)
            resume.finished()
        except BaseException as exc:
            with held(drop=True):  # a second Ctrl-C must not cut the cleanup short
                _close_quietly(fd)
                resume.settle(exc)
            raise
        return order.result(dest, remote, tally, resumed, verified=actual is not None)

    def _finalize(
        self, fd: int, temp: Path, dest: Path, size: int, mark: Mark, replace: bool
    ) -> None:
        """Marked (``mark(fd)``), durable, then renamed onto ``dest`` (see ``finalize``)."""
        finalize(fd, temp, dest, size, stamp=mark, replace=replace)


def _resolve(order: Order, settings: Settings, *, need_ranges: bool = False) -> Remote:
    """Probe the order's URL, a batch's item telling its batch where (``to_host``), that
    its first request is under way there (``Receiving.ask``), and hearing who else of it
    receives or asks there."""
    batch = Receiving(order.share)
    with batch.asking(order.url):
        return resolve(order.url, settings, need_ranges=need_ranges, to_host=order.to_host,
                       others_receiving=batch.refused, sleep=batch.backoff(time.sleep))  # fmt: skip


def _fresh(
    settings: Settings, order: Order, remote: Remote, dest: Path, resume: Resume
) -> tuple[PartRecord, ...]:
    """Start over: forget any earlier partial file, check space, plan the parts."""
    resume.forget()
    if remote.size:
        check_free_space(dest, remote.size)
    spans = download_parts(remote.size, remote.ranges, settings, hashing=order.expected is not None)
    return tuple(PartRecord(s.start, s.end, s.start) for s in spans)


def _in_place(order: Order, dest: Path, found: Kept) -> DownloadResult:
    """The file at ``dest`` kept as the download: its result, and from here on it is done."""
    result = order.in_place(dest, found.size, verified=found.verified)
    commit()
    return result


def _unwritable(order: Order, dest: Path, identity: Callable[[], Identity]) -> DownloadResult:
    """A destination in a folder no one lets us write (a read-only mount, a shared dataset):
    no lock can be made beside it, nor anything written. A file there that is kept as the
    download (its digest, or its record and ``identity()``, one probe, vouch for it) is the
    result, as under the lock: it changes only by a rename, whole. Anything else is refused
    as the folder's (exit 5), before any of its bytes are asked for."""
    # force: what nothing vouches for is not refused as there, it cannot go
    found = kept(dest, order.url, order.expected, identity, force=True)
    if found is None:
        raise not_writable(dest)
    return _in_place(order, dest, found)


def _run_here(
    settings: Settings,
    url: str,
    remote: Remote | None,
    path: str | None,
    digest: str | None,
    share: Share | None,
    tell: EventCallback | None,
) -> DownloadResult:
    """A download in the clean process ``_clean_process`` started for a threaded caller
    (``share``: its batch's grant, in a file the two processes share)."""
    return Downloader(settings)._run_here(url, remote, path, digest, tell or ignore, share)


def _close_quietly(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError as exc:
            log.warning("could not close the temporary file after the failure: %s", exc)


def _fspath(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


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


def _writes(
    settings: Settings, path: str | os.PathLike[str] | None, digest: str | None
) -> list[Path]:
    """What a download writes that a lock guards: its destination (if named ahead) and, with
    a cache and a digest, the cache entry."""
    writes = [Path(path)] if path is not None else []
    if settings.cache_dir and digest:
        with contextlib.suppress(UsageError):  # said as the download starts
            writes.append(entry_path(Path(settings.cache_dir), parse_digest(digest)))
    return writes
