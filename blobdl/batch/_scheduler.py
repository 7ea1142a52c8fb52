"""Many downloads under one connection budget: ``download_many``.

The scheduler runs in the calling process and stays single-threaded. Before anything else
it forks the batch's pool (``_pool``): processes whose seats run one small download after
another over kept-alive connections. Every item goes to a seat first, in the order given,
as far as the budget (``_budget``: ``max_connections``, ``per_host``) allows: the seat's
first GET asks for as much as one request holds, and is the item's probe. A blob that fits
is done there and then, with no process of its own; once no small item is left, the pool
is told to end, and heard ending (its fsyncs may take a slow disk seconds) while the items
still running are served: its connections go to them as each of its processes ends, and the
batch returns once it has ended. A larger one comes back with what its
probe learned; the scheduler grants it lanes (as many as it can keep busy, up to its
``connections``, as far as the budget allows, letting idle seats' connections go for
room) and forks a child that runs it as its own coordinator (one that probes it itself,
said to be large, asks before its probe goes to another host: its grant moves there,
``_lanes``). The lanes and the share of
``limit_rate`` of every running item are in shared memory (``Shares``): when an item ends,
what it held goes to the items still running. Children and seats report events and
results through pipes. One item failing does not stop the others. A small item whose pool
process dies under it before its last word runs again (``_again``), first at its host, under
the name it was given, its callback told it started again: a process dies for what is
seldom its item's doing (killed as stalled on a machine too loaded to run it, the OOM
killer's pick, another seat's crash), as a download's dead worker's parts are taken up by
another. Once: a second death fails it, so an item that kills its process each time ends.

``_Scheduler`` tells one run in order; each part it hands off has a module of its own:
``_sizing`` (how large: pool, lanes, which items skip the seats; pure), ``_destinations``
(which item writes each path, names given after a probe, the folders written into: swept
first of the lock files a killed batch's seats kept, ``store._lock.sweep_kept``), ``_seats``
(the pool and what its seats answer), ``_lanes`` (which large item is granted lanes, when,
and the room made for them), ``_item_process`` (a large item's child, both ends of its
pipe), ``_watch`` (the one selector the run waits on), ``_outcomes`` (events passed on,
results) and ``_stop`` (everything ended on a signal).
"""

from __future__ import annotations

import logging
import os
import signal
from collections import deque
from collections.abc import Iterable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from ..config import (
    MAX_CONNECTIONS,
    Settings,
    check_callback,
    check_int,
    check_path,
    plain,
)
from ..engine._download import Downloader
from ..errors import BlobdlError, Interrupted, OutOfResources
from ..events import DownloadResult
from ..http._remote import Remote
from ..processes import _clean_process
from ..processes._clean_child import relay_log
from ..processes._signals import Interrupts, Stop, called, callers, held, interrupted
from ..processes._stack_writes import BatchRecord, batch_writes
from ..store._cache import entry_path
from ..store._digest import parse_digest
from ..store._files import directory_problem
from ..store._lock import sweep_kept
from ._budget import Budget
from ._destinations import Destinations
from ._item_process import LargeItems, Running, receive
from ._items import (
    BY_INDEX,
    BatchCallback,
    BatchEvent,
    Item,
    ItemResult,
    Numbering,
    confine,
    first_of_each,
    given,
    host_of,
    inside,
    normalized,
    same_file,
)
from ._lanes import Lanes, Waiting
from ._manifest import parse_manifest
from ._outcomes import Outcomes, died
from ._pool import _Done, _Job, _Large, _Told
from ._seats import Said, Seats
from ._sizing import pool_size, said_large, seats_that_fit, settings_for, within_limit
from ._stalls import Stalls
from ._stop import stop_batch
from ._watch import Watch

__all__ = [
    "BatchCallback",
    "BatchEvent",
    "Item",
    "ItemResult",
    "confine",
    "download_many",
    "parse_manifest",
]


log = logging.getLogger("blobdl")

BUDGET = Settings.connections  # connections of a batch in all, unless told: as one download's
PER_HOST = 8  # connections to any one host, unless told


def download_many(
    items: Iterable[Item | str],
    *,
    max_connections: int = BUDGET,
    per_host: int = PER_HOST,
    on_event: BatchCallback | None = None,
    settings: Settings | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    cluster: Any = None,
    **overrides: Any,
) -> list[ItemResult]:
    """Download every item sharing ``max_connections`` connections (at most ``per_host``
    to one host); return one result per item, in order. The same URL and destination
    listed twice is downloaded once.

    With ``base_dir`` every item's path is taken relative to it and must stay inside it
    (no absolute path, no ``..``, no symbolic link leading out: a UsageError names the
    item), and an item without a path gets its name from the server inside it.

    An error names an item by its index in ``items``, written as one: ``items[3]``."""
    return download_numbered(items, BY_INDEX, max_connections=max_connections,
                             per_host=per_host, on_event=on_event, settings=settings,
                             base_dir=base_dir, cluster=cluster, **overrides)  # fmt: skip


def download_numbered(
    items: Iterable[Item | str],
    numbering: Numbering,
    *,
    max_connections: int = BUDGET,
    per_host: int = PER_HOST,
    on_event: BatchCallback | None = None,
    settings: Settings | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    cluster: Any = None,
    probed: Mapping[int, Remote] | None = None,
    **overrides: Any,
) -> list[ItemResult]:
    """``download_many``, its errors naming an item as ``numbering`` does (``blobdl -i``:
    by the manifest line it came from). ``probed``: what an earlier request of its caller
    learned of an item (by index; a pull's look-up), as its probe would (``_placed``)."""
    check_int("max_connections", max_connections, 1, MAX_CONNECTIONS)
    check_int("per_host", per_host, 1, MAX_CONNECTIONS)
    check_path("base_dir", base_dir)
    check_callback("on_event", on_event)
    max_connections, per_host = plain(max_connections), plain(per_host)  # see ``plain``
    base = Downloader(settings, **overrides).settings
    listed = given(items, numbering)
    on_event = callers(on_event)  # a signal stops the caller's callback, even as it waits
    with called():  # in the main thread, SIGTERM is Ctrl-C, wherever the batch runs
        return _many(listed, numbering, base, max_connections, per_host, on_event, base_dir,
                     cluster, dict(probed or {}))  # fmt: skip


def _many(
    listed: list[Item],
    numbering: Numbering,
    base: Settings,
    max_connections: int,
    per_host: int,
    on_event: BatchCallback | None,
    base_dir: str | os.PathLike[str] | None,
    cluster: Any,
    probed: dict[int, Remote],
) -> list[ItemResult]:
    """``download_many``, its arguments checked."""
    batch, where = [normalized(item) for item in listed], None
    max_connections, per_host = within_limit(base.limit_rate, max_connections, per_host)
    if cluster is not None:
        from ._cluster import download_many_on  # only with a cluster: it needs distributed

        spread = download_many_on(cluster, batch, base, max_connections, per_host, on_event,
                                  None if base_dir is None else os.fspath(base_dir),
                                  numbering)  # fmt: skip
        return [r._replace(item=item) for r, item in zip(spread, listed, strict=True)]
    if base_dir is not None:
        where = Path(base_dir)
        if (problem := directory_problem(where)) is not None:
            raise problem  # as a destination's missing folder is: exit 5, not usage
        batch = [inside(where, item, numbering.one(n)) for n, item in enumerate(batch)]
    if _clean_process.needs_clean():  # never fork here: a clean process schedules instead
        # Usage errors from the calling thread, before any process.
        first_of_each(batch, numbering=numbering)
        args = (batch, base, max_connections, per_host, where, numbering, probed)
        written = _written(batch, base)  # its callbacks' calls', refused
        results = _clean_process.call(_many_here, args, on_event, written)
    else:
        scheduler = _Scheduler(batch, base, max_connections, per_host, on_event, where, numbering,
                               probed)  # fmt: skip
        results = scheduler.run()
    return [r._replace(item=item) for r, item in zip(results, listed, strict=True)]


def _many_here(
    batch: list[Item],
    settings: Settings,
    max_connections: int,
    per_host: int,
    base_dir: Path | None,
    numbering: Numbering,
    probed: dict[int, Remote],
    on_event: BatchCallback | None,
) -> list[ItemResult]:
    """``download_many`` in the clean process ``_clean_process`` started for a threaded caller."""
    scheduler = _Scheduler(batch, settings, max_connections, per_host, on_event, base_dir,
                           numbering, probed)  # fmt: skip
    return scheduler.run()


def _written(items: list[Item], settings: Settings) -> list[Path]:
    """What the batch's items write that a lock guards: their destinations, and the cache
    entries of those with a digest (an item named once probed is added as it is named, ``run``)."""
    paths = [Path(item.path) for item in items if item.path]
    if settings.cache_dir:
        cache = Path(settings.cache_dir)
        paths += [entry_path(cache, parse_digest(i.digest)) for i in items if i.digest]
    return paths


def _no_seat() -> OutOfResources:
    """A path-less item's name comes from its probe on a seat: without seats, this."""
    return OutOfResources(
        "name an item without a path",
        "the batch has no pool process left, and none may start in a process with threads "
        "(a callback started one); give the item a path",
    )


def _placed(
    items: list[Item],
    firsts: list[int],
    settings: Settings,
    destinations: Destinations,
    probed: dict[int, Remote],
) -> tuple[dict[str, deque[int]], deque[Waiting], dict[int, BlobdlError]]:
    """Each item (``firsts``: one of each) where it starts: queued for a seat, per host, in
    order (each item's host worked out once); waiting for lanes, a large one (its own child
    probes it, unless ``probed`` holds what a probe of its URL would learn); or failed
    before anything (a bad URL, a clashing name). ``items`` are named as they come
    (``Destinations.by_url``)."""
    queued: dict[str, deque[int]] = {}
    waiting: deque[Waiting] = deque()
    unfit: dict[int, BlobdlError] = {}
    for index in firsts:
        try:
            host = host_of(items[index].url)
            items[index] = destinations.by_url(index, items[index])
        except BlobdlError as exc:
            unfit[index] = exc
            continue
        if said_large(items[index], settings_for(settings, items[index])):
            remote = probed.get(index)
            assert remote is None or remote.url == remote.final_url == items[index].url
            waiting.append(Waiting(index, remote, host))
        else:
            queued.setdefault(host, deque()).append(index)
    return queued, waiting, unfit


class _Scheduler:
    """One batch run, in the order it happens: each item named now or queued by host (or
    waiting for lanes), the pool started, what the budget allows launched (large items on
    children of their own, small ones on seats), what seats and children say handled as it
    comes, one result per item; on a signal, everything stopped."""

    def __init__(
        self,
        items: list[Item],
        settings: Settings,
        max_connections: int,
        per_host: int,
        on_event: BatchCallback | None,
        base_dir: Path | None = None,
        numbering: Numbering = BY_INDEX,  # how errors name an item: manifest line, or index
        probed: dict[int, Remote] | None = None,  # see ``download_numbered``
    ) -> None:
        self.items, self.settings = items, settings
        self.numbering = numbering
        self.base_dir = base_dir  # where items without a path are named
        self.outcomes = Outcomes(on_event)
        where_to = same_file()
        self.first = first_of_each(items, where_to, numbering)
        firsts = [i for i in range(len(items)) if self.first[i] == i]
        # Every destination of the batch, and the item that writes it: the manifest's paths
        # first, then each name as it is given (a later item named alike fails).
        given = {i: path for i in firsts if (path := items[i].path) is not None}
        cached = bool(settings.cache_dir)
        self.destinations = Destinations(given, base_dir, cached, where_to, numbering)
        self.queued, waiting, self.unfit = _placed(
            items, firsts, settings, self.destinations, probed or {}
        )
        # Where a batch killed whole may have left its seats' kept lock files, swept once
        # before the pool starts (then none of ours is there yet), not per item.
        fit = (i for i in firsts if i not in self.unfit)
        self.folders = self.destinations.folders(items, fit, settings.cache_dir)
        lengths = {host: len(queue) for host, queue in self.queued.items()}
        seats, processes = pool_size(settings, max_connections, per_host, lengths, seats_that_fit())
        self.budget = Budget(max_connections, per_host, seats)
        self.large = LargeItems(max_connections, seats)
        self.seats = Seats(self.budget, processes, settings, self.destinations,
                           self.large.seat_shares)  # fmt: skip
        self.watch = Watch()
        self.written: BatchRecord | None = None  # what the batch writes, while it runs
        self.stalls = Stalls(settings)  # the pool's processes that stopped running
        self.rerun: set[int] = set()  # items run again once their pool process died (``_again``)
        self.lanes = Lanes(items, settings, self.budget, self.seats, self.large, self.watch,
                           self.queued, waiting)  # fmt: skip

    def run(self) -> list[ItemResult]:
        written = batch_writes(_written(self.items, self.settings))  # a callback's own, to it
        with written as record, Interrupts() as interrupts, self.watch, closing(self.large):
            # An item named once probed is as much the batch's own from then on.
            self.written, self.destinations.on_named = record, lambda p: record.add(Path(p))
            self.watch.signals(interrupts)
            try:
                for folder in sorted(self.folders):
                    sweep_kept(folder)
                for index, exc in self.unfit.items():
                    self._failed(index, exc)
                self.lanes.start()  # items said to be large first: they probe meanwhile
                if self.queued:
                    urls = [self.items[i].url for queue in self.queued.values() for i in queue]
                    self.seats.start(urls, self.watch)
                    if self.budget.retired():
                        self._off_the_seats()
                while self._under_way():
                    interrupts.check()
                    self._launch()
                    self._wait()
                interrupts.check()  # a signal during the last item is not lost
            except (Interrupted, Stop) as caught:  # Stop: the signal, in the caller's callback
                exc = interrupted(caught)
                cut = self._running()
                finished = stop_batch(self.seats, self.large, exc.signum)
                named = {i: self.destinations.named(i, self.items[i]) for i in cut}
                with held(drop=True):  # a second Ctrl-C must not cut the last words short
                    self.outcomes.cut(named, finished, exc)
                raise exc from None
            except BaseException:  # a raising callback, say: never leave children running
                stop_batch(self.seats, self.large, signal.SIGTERM)
                raise
        return self.outcomes.of(self.items, self.first)

    def _under_way(self) -> bool:
        """Whether an item is not done yet, or the pool has not ended (its processes' fsyncs
        not done: the batch's renames are not yet durable)."""
        busy = self.seats.busy or self.large.busy
        return bool(self.queued or self.lanes.waiting or busy or self.seats.pool is not None)

    # --- launching ------------------------------------------------------------------------

    def _launch(self) -> None:
        """Start what the budget allows: large items waiting for lanes first (they have been
        waiting longest), then queued items on idle seats; once nothing waits, running
        items get the lanes that ended items left."""
        self.seats.hops()  # items already running first
        self.lanes.hops()
        self.lanes.start()
        self._start_small()
        if not self.queued and not self.seats.busy:
            # Nothing can need it again: told to end, heard ending while the rest runs.
            self.seats.close(self.watch)
        if not self.queued and not self.lanes.waiting:
            self.lanes.more()
        self.lanes.share()

    def _start_small(self) -> None:
        for host in list(self.queued):
            queue = self.queued[host]
            while queue and (seat := self.budget.seat_for(host)) is not None:
                self._dispatch(seat, queue.popleft(), host)
            if not queue:
                del self.queued[host]
            if not self.budget.idle_seat():
                return

    def _dispatch(self, seat: int, index: int, host: str) -> None:
        item = self.items[index]
        settings = settings_for(self.settings, item)
        label = self.numbering.one(index)
        job = _Job(index, label, item, settings, self.base_dir, self.outcomes.heard)
        self.budget.start(seat, host)
        if self.settings.limit_rate is not None:
            self.lanes.share()  # its share of the rate in its slot before its first read
        self.seats.run(seat, job)

    # --- collecting -----------------------------------------------------------------------

    def _wait(self) -> None:
        """Handle what seats and children said, once at least one said something (or a
        signal arrived, or, while the pool runs items, a quarter of the stall timeout
        passed); then kill a pool process that has stalled (``_stalls.Stalls``)."""
        seats = self.seats
        for kind, which in self.watch.ready(self.stalls.listen_for(seats.pool, seats.on_seat)):
            if kind == "seat":
                if (heard := self.seats.heard(which, self.watch)) is not None:
                    self._from_seat(*heard)
            elif kind == "item":
                self._from_item(self.large.running[which])
            elif self.seats.closing:  # a pool process told to end has
                self.seats.ended(which, self.watch)
            else:  # a pool process died
                for index, said in self.seats.died(which, self.watch, self.stalls.silent(which)):
                    self._from_seat(index, said)
                if self.budget.retired():
                    self._off_the_seats()
        self.stalls.look(seats.pool, seats.on_seat, self.watch.waited)

    def _from_seat(self, index: int, said: Said) -> None:
        """What a seat said of its item (a seat that ended its item is free by now)."""
        if isinstance(said, _Told):
            self.outcomes.event(index, said.event)
        elif isinstance(said, _Done):
            self._store(index, said.outcome)
        elif isinstance(said, _Large):
            self._large(index, said.remote)
        elif not self._again(index, said):  # its process died under it
            self._died(index, said)

    def _again(self, index: int, exc: BlobdlError) -> bool:
        """Queue again an item whose pool process died under it (see the module's note;
        what that process left is gone, ``Seats.died``), unless it ran again already or
        told its last word (``_died`` keeps that)."""
        if index in self.rerun or index in self.outcomes.ended:
            return False
        self.rerun.add(index)
        item = self.items[index] = self.destinations.named(index, self.items[index])
        log.warning("%s: %s; run again", self.numbering.one(index), exc)
        self.queued.setdefault(host_of(item.url), deque()).appendleft(index)
        return True

    def _off_the_seats(self) -> None:
        """Every seat is gone for good (``Seats.start``, ``Seats.died``): each item still
        queued runs on a child of its own, which probes it; one to be named after its probe
        fails (its name would go unchecked against the others), and all do if the machine
        refused the seats' threads (a child needs a process and its lanes' threads)."""
        for host, queue in self.queued.items():
            for index in queue:
                if self.seats.refused is not None:
                    self._failed(index, self.seats.refused)
                elif self.items[index].path is None:
                    self._failed(index, _no_seat())
                else:
                    self.lanes.wait(Waiting(index, None, host))
        self.queued.clear()

    def _large(self, index: int, remote: Remote) -> None:
        """A seat's probe found a blob larger than one request: it waits for lanes."""
        try:
            host = host_of(remote.final_url)
            # A bad name fails it now.
            self.items[index] = self.destinations.after_probe(index, self.items[index], remote)
        except BlobdlError as exc:
            self._failed(index, exc)
            return
        self.lanes.wait(Waiting(index, remote, host))

    def _from_item(self, running: Running) -> None:
        kind, payload = receive(running)
        if kind == "event":
            self.outcomes.event(running.item, payload)
            return
        if kind == "log":  # an exec'd child's: to the caller's logging, as a forked one's
            relay_log(payload)
            return
        if kind == "hop":  # its probe or refresh goes to another host: lanes count there
            self.lanes.hop(running.item, payload)
            return
        running.proc.join()
        self.watch.forget(running.conn)
        self.large.end(running)
        self.lanes.ended(running.item)
        if kind == "died":
            self._died(running.item, died(running.proc))
        else:
            self._store(running.item, payload)

    def _failed(self, index: int, exc: BlobdlError) -> None:
        """Say the item failed; one named after its probe (on a seat) says where."""
        self._ended(index)
        self.outcomes.failed(index, self.destinations.named(index, self.items[index]), exc)

    def _died(self, index: int, exc: BlobdlError) -> None:
        """Its process died under it: it failed, unless its last word came first (its
        outcome, which follows that word in a message of its own, was cut off): then it
        ended as it said, finished (its file is in place) or failed on its own."""
        told = self.outcomes.told_end(index)
        if told is None:
            self._failed(index, exc)
        else:
            self._store(index, told)

    def _store(self, index: int, outcome: DownloadResult | BlobdlError) -> None:
        self._ended(index)
        self.outcomes.store(index, self.items[index], outcome)

    def _ended(self, index: int) -> None:
        """The item has ended, its lock let go: its destination is no longer the batch's
        (a callback's download of it waits for whoever holds it now), before it is told."""
        path = self.destinations.named(index, self.items[index]).path
        if path is not None and self.written is not None:
            self.written.ended(Path(path))

    # --- stopping -------------------------------------------------------------------------

    def _running(self) -> list[int]:
        """The items under way: on a seat, in a child of their own, or started and queued again."""
        again = (index for index in self.rerun if not self.outcomes.said_last(index))
        return sorted({*self.seats.on_seat.values(), *self.large.running, *again})
