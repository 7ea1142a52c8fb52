"""What a Dask worker runs for one item of a batch: its probe, then its download.

Both are plain functions the client submits as tasks. They hold their connections from the
batch's budget (``_cluster_budget``) while they talk to the server, and never raise for an
item's own failure: the error comes back as a value, so Dask never retries an item that
failed on its merits (a 404, a digest mismatch). Only a worker's death reruns a task, on
another worker; the rerun finds the partial (on a filesystem the workers share) and resumes.

The download runs in blobdl's clean coordinator process (``_clean_process``), as for any
threaded caller: a Dask worker always has threads, and its processes may be daemonic. Dask
cannot cancel a running task, so the task itself looks, between the events its download
sends, whether it should stop (the batch's stop flag is set, or its future was cancelled or
released); then it raises from the event callback, which makes the coordinator save its
state and exit. So does a task whose worker is closing (retired gracefully, told to close),
and asks to be rescheduled: another worker resumes it from the partial. The scheduler silent
is no stop: a download holds all it needs and goes on to its end, never waiting for the
scheduler's answers (``_cluster_worker``). A worker that
dies takes the coordinator with it (it dies with the thread that started it, saving its
state first).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from ..config import Settings
from ..engine._download import Downloader
from ..engine._plan import download_part_count
from ..engine._share import Shares
from ..engine._tell import failed
from ..errors import BlobdlError, Interrupted, UsageError
from ..events import DownloadResult, Event
from ..http._probe import resolve
from ..http._remote import Remote
from ..processes import _spare
from ..store._cache import entry_path as cache_entry
from ..store._files import absolute
from ..store._names import default_name, name_from_url
from ._cluster_budget import Budget, Held, leases
from ._cluster_worker import (
    Channel,
    Leaving,
    Relay,
    Sent,
    StopCheck,
    Stopped,
    rescheduled,
    worker_name,
)
from ._items import Item, inside
from ._share_folder import ShareFolder

#: A rerun waits this long for the destination lock: the attempt on the worker that died
#: may still be saving its state (it was sent SIGTERM by the kernel as its worker died).
RERUN_LOCK_WAIT = 10.0


class Job(NamedTuple):
    """One item as its tasks carry it to a worker."""

    place: int  # the item's place in the caller's list
    label: str  # how its errors name it (``Numbering.one``): its manifest line, or its index
    item: Item  # normalized: digest bare hex, userinfo lifted into a header
    settings: Settings  # the batch's, with the item's headers
    budget: Budget
    base_dir: str | None  # as the workers see it; checked on the worker that writes
    channel: Channel  # the batch's events and stop flag


class Probed(NamedTuple):
    worker: str  # its name
    remote: Remote | None  # None: a cache hit, or the probe failed
    error: BlobdlError | None


class Outcome(NamedTuple):
    sent: Sent  # the client waits for all the events this attempt sent
    result: DownloadResult | None
    error: BlobdlError | None


def probe(job: Job) -> Probed:
    """The item's remote, probed under one connection of its host (None for a cache hit)."""
    worker = worker_name()
    if _cached(job.item, job.settings):
        return Probed(worker, None, None)
    watch = StopCheck(job.channel)
    try:
        with _Moving(job, watch.check) as moving:
            return Probed(worker, resolve(job.item.url, job.settings, to_host=moving.to), None)
    except BlobdlError as exc:
        return Probed(worker, None, exc)
    except Leaving:
        raise rescheduled() from None
    except Stopped:
        return Probed(worker, None, Interrupted(signal.SIGTERM))


class _Moving:
    """A probe's one connection, counted at the host each of its requests goes to: a
    redirect to another host gives its leases back before it waits for that host's (as
    any task waits: no deadlock), and its connection to the last host is closed first."""

    def __init__(self, job: Job, stop: Callable[[], None]) -> None:
        self.job, self.stop = job, stop
        self.held = contextlib.ExitStack()

    def __enter__(self) -> _Moving:
        return self

    def __exit__(self, *exc: object) -> None:
        self.held.close()

    def to(self, host: str) -> None:
        self.held.close()
        job = self.job
        self.held.enter_context(leases(job.budget, host, 1, self.stop, job.channel.within))


def fetch(job: Job, remote: Remote | None) -> Outcome:
    """The item's download on this worker, holding its connections while it runs."""
    relay = Relay(job.channel, job.place)
    try:
        result = _fetch(job, remote, relay)
    except BlobdlError as exc:
        return Outcome(relay.summary(), None, exc)
    except Leaving:  # its download saved its state: the next worker resumes it
        _spare.drop_own()
        raise rescheduled() from None
    except Stopped:
        # The run is over (stopped, or its client gone: SIGKILLed, it drops no spare).
        _spare.drop_own()
        error = Interrupted(signal.SIGTERM)
        _tell_failed(relay, job, error)
        return Outcome(relay.summary(), None, error)
    return Outcome(relay.summary(), result, None)


def _tell_failed(relay: Relay, job: Job, error: BlobdlError) -> None:
    """A failure before the download could tell it itself (it tells its own)."""
    relay.send(failed(job.item.url, job.item.path, error))


def _fetch(job: Job, remote: Remote | None, relay: Relay) -> DownloadResult:
    item = _where(job, remote, relay)
    settings = dataclasses.replace(
        job.settings, lock_timeout=max(job.settings.lock_timeout, RERUN_LOCK_WAIT)
    )
    host = host_of(job, remote)
    wanted = wanted_by(job, remote)
    with leases(job.budget, host, wanted, relay.watch.check, job.channel.within) as held:
        path = Path(item.path) if item.path else None
        if remote is None:  # a cache hit: no probe, no network
            settings = dataclasses.replace(settings, connections=held.granted)
            return Downloader(settings).download(item.url, path, digest=item.digest, on_event=relay)
        with _Grant(job, settings, held, wanted) as grant, _spare.kept():
            downloader = Downloader(dataclasses.replace(settings, connections=wanted))
            return downloader._download_resolved(
                remote, path, digest=item.digest, on_event=grant.relaying(relay), share=grant.share
            )


class _Grant:
    """What the item may use now, in a file its download (in a clean process) reads at every
    look at its lanes: the connections it holds and their share of ``--limit-rate``. It
    grows, at each event the download sends, by the leases that finished items gave back,
    up to what the item can use: as on one machine, what is freed goes to what still runs."""

    def __init__(self, job: Job, settings: Settings, held: Held, wanted: int) -> None:
        self.job, self.settings, self.held, self.wanted = job, settings, held, wanted
        # Swept by a later task if this one is killed (SIGKILL skips __exit__).
        self.folder = ShareFolder()
        try:
            self.shares = Shares(1, os.path.join(self.folder.path, "share"))  # written here only
            self.share = self.shares.share(0)
            self._write()
        except BaseException:
            self.folder.close()
            raise

    def __enter__(self) -> _Grant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.folder.close()

    def relaying(self, relay: Relay) -> Callable[[Event], None]:
        def tell(event: Event) -> None:
            relay(event)
            if self.held.granted < self.wanted and self.held.grow():
                self._write()

        return tell

    def _write(self) -> None:
        granted = self.held.granted
        self.shares.set(0, _rate_share(self.job, self.settings, granted), granted)


def _where(job: Job, remote: Remote | None, relay: Relay) -> Item:
    """The item's destination on this worker, absolute: a relative one is resolved in this
    worker's working directory, which the caller does not share, so the path its events
    and its result give back is where its bytes are."""
    try:
        item = _confined(job, remote)
        return item if item.path is None else item._replace(path=absolute(item.path))
    except BlobdlError as exc:  # a UsageError; a LocalFileError: the directory was removed
        _tell_failed(relay, job, exc)
        raise


def _confined(job: Job, remote: Remote | None) -> Item:
    """The item's destination as this worker sees it, inside ``base_dir`` if one is given
    (an item without a path is named there, as a download without a path would be)."""
    item = job.item
    if job.base_dir is None:
        return item
    base = Path(job.base_dir)
    if not base.is_dir():
        raise UsageError(f"base directory {job.base_dir!r} is not a directory on this worker")
    if item.path is None:
        name = default_name(remote) if remote is not None else name_from_url(item.url)
        item = item._replace(path=name)
    return inside(base, item, job.label)


def wanted_by(job: Job, remote: Remote | None) -> int:
    """Connections the item can use: one per part, up to its ``connections``."""
    settings = job.settings
    if remote is None:
        return settings.connections
    hashing = job.item.digest is not None
    parts = download_part_count(remote.size, remote.ranges, settings, hashing=hashing)
    return max(1, min(parts, settings.connections))


def host_of(job: Job, remote: Remote | None) -> str:
    """The host whose leases the item's download holds."""
    return _host(remote.final_url if remote is not None else job.item.url)


def _rate_share(job: Job, settings: Settings, granted: int) -> int | None:
    """--limit-rate is for the whole batch: an item gets the share of its connections
    among all that the batch's downloads can hold at once (as on one machine, a share of
    what runs, not of connections no item can take)."""
    if settings.limit_rate is None:
        return None
    return max(1, settings.limit_rate * granted // job.budget.held_at_most)


def _cached(item: Item, settings: Settings) -> bool:
    if not (settings.cache_dir and item.digest):
        return False
    return cache_entry(Path(settings.cache_dir), item.digest).is_file()


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""
