"""Many downloads under one connection budget: ``download_many``.

The scheduler runs in the calling process and stays single-threaded. Before anything else
it forks the batch's pool (``_pool``): processes whose seats run one small download after
another over kept-alive connections. Every item goes to a seat first, in the order given,
as far as the budget (``_budget``: ``max_connections``, ``per_host``) allows: the seat's
first GET asks for as much as one request holds, and is the item's probe. A blob that fits
is done there and then, with no process of its own. A larger one comes back with what its
probe learned; the scheduler grants it lanes (as many as it can keep busy, up to its
``connections``, as far as the budget allows, letting idle seats' connections go for
room) and forks a child that runs it as its own coordinator. The lanes and the share of
``limit_rate`` of every running item are in shared memory (``Shares``): when an item ends,
what it held goes to the items still running. Children and seats report events and
results through pipes. One item failing does not stop the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NamedTuple

from .._redact import redact_url
from ..config import Settings, overridden
from ..engine._counter_table import CounterTable
from ..engine._download import Downloader
from ..engine._plan import one_request, useful_lanes
from ..engine._share import Share, Shares
from ..errors import BlobdlError, Interrupted, LocalFileError, UsageError
from ..events import DownloadResult, Event, Failed
from ..http._pool import prepare_tls
from ..http._remote import Remote
from ..processes import _clean_process
from ..processes._signals import Interrupts, interrupted
from ..processes._spawn import start
from ..store._names import default_name, name_from_url
from ._budget import Budget
from ._items import (
    BatchCallback,
    BatchEvent,
    Item,
    ItemResult,
    confine,
    first_of_each,
    host_of,
    inside,
    normalized,
)
from ._manifest import parse_manifest
from ._pool import STOP_GRACE, Pool, _Claim, _Done, _Job, _Large, _Told

__all__ = [
    "BatchCallback",
    "BatchEvent",
    "Item",
    "ItemResult",
    "confine",
    "download_many",
    "parse_manifest",
]


def download_many(
    items: Iterable[Item | str],
    *,
    max_connections: int = 16,
    per_host: int = 8,
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
    item), and an item without a path gets its name from the server inside it."""
    if max_connections < 1 or per_host < 1:
        raise UsageError("max_connections and per_host must be at least 1")
    base = overridden(settings, overrides)
    given = [Item(i) if isinstance(i, str) else i for i in items]
    batch, where = [normalized(item) for item in given], None
    if cluster is not None:
        from ._cluster import download_many_on  # only with a cluster: it needs distributed

        spread = download_many_on(cluster, batch, base, max_connections, per_host, on_event,
                                  None if base_dir is None else os.fspath(base_dir))  # fmt: skip
        return [r._replace(item=item) for r, item in zip(spread, given, strict=True)]
    if base_dir is not None:
        where = Path(base_dir)
        if not where.is_dir():
            raise UsageError(f"base directory {str(where)!r} is not a directory")
        batch = [inside(where, item, f"item {n}") for n, item in enumerate(batch)]
    if _clean_process.threaded():  # never fork a threaded process: a clean one schedules instead
        first_of_each(batch)  # usage errors from the calling thread, before any process
        args = (batch, base, max_connections, per_host, where)
        results = _clean_process.call(_many_here, args, on_event)
    else:
        results = _Scheduler(batch, base, max_connections, per_host, on_event, where).run()
    return [r._replace(item=item) for r, item in zip(results, given, strict=True)]


def _many_here(
    batch: list[Item],
    settings: Settings,
    max_connections: int,
    per_host: int,
    base_dir: Path | None,
    on_event: BatchCallback | None,
) -> list[ItemResult]:
    """``download_many`` in the clean process ``_clean_process`` started for a threaded caller."""
    return _Scheduler(batch, settings, max_connections, per_host, on_event, base_dir).run()


# A batch of this many items or fewer gets one pool process (a model's config and template
# beside its large layer, say). Measured: with 5 items, the 512 MiB one is 1.035x a plain
# download with one, 1.060x with two; with 3,000 small items, one is 1.4x slower than two.
FEW = 8


class _Running(NamedTuple):
    """A large item, fetched by a child of its own."""

    item: int
    proc: BaseProcess
    conn: Connection
    slot: int  # its slot in the batch's Shares


class _Waiting(NamedTuple):
    """A large item waiting for lanes: probed by its seat, or said to be large."""

    item: int
    remote: Remote | None  # what its seat's probe learned (None: its own child probes)
    host: str  # the host its lanes connect to (after redirects, once probed)


class _Scheduler:
    def __init__(
        self,
        items: list[Item],
        settings: Settings,
        max_connections: int,
        per_host: int,
        on_event: BatchCallback | None,
        base_dir: Path | None = None,
    ) -> None:
        self.items, self.settings, self.tell = items, settings, on_event
        self.base_dir = base_dir  # where items without a path are named
        self.first = first_of_each(items)
        firsts = [i for i in range(len(items)) if self.first[i] == i]
        # Every destination of the batch, and the item that writes it: the manifest's paths
        # first, then each name as it is given (a later item named alike fails).
        given = {i: path for i in firsts if (path := items[i].path) is not None}
        self.claimed = {os.path.abspath(path): i for i, path in given.items()}
        # Not yet started, per host, in order; each item's host is worked out once.
        self.queued: dict[str, deque[int]] = {}
        self.unfit: dict[int, BlobdlError] = {}  # items failed before anything (a bad URL)
        self.waiting: deque[_Waiting] = deque()  # large items waiting for lanes
        for index in firsts:
            try:
                host = host_of(items[index].url)
                self._name_by_url(index)
            except BlobdlError as exc:
                self.unfit[index] = exc
                continue
            if self._said_large(items[index]):  # no seat's probe: its own child's
                self.waiting.append(_Waiting(index, None, host))
            else:
                self.queued.setdefault(host, deque()).append(index)
        self.results: dict[int, ItemResult] = {}
        self.running: dict[int, _Running] = {}  # large items, by index
        self.on_seat: dict[int, int] = {}  # seat -> the item it runs
        self.limit = settings.limit_rate
        seats = min(
            max_connections, per_host * len(self.queued), sum(map(len, self.queued.values()))
        )
        self.budget = Budget(max_connections, per_host, seats)
        self.table = CounterTable(seats)  # the seats' slots: their share of the rate limit
        self.shares = Shares(max_connections)  # the large items' slots (at most one each)
        self.slots = list(range(max_connections))
        self.processes = min(settings.processes or max(2, os.cpu_count() or 1), max(1, seats))
        if sum(map(len, self.queued.values())) <= FEW:
            self.processes = 1  # a second process would cost more (its fork) than it brings
        self.pool: Pool | None = None
        self.selector = selectors.DefaultSelector()

    def run(self) -> list[ItemResult]:
        with Interrupts() as interrupts, self.selector:
            for waitable in interrupts.waitables():
                self.selector.register(waitable, selectors.EVENT_READ, None)
            try:
                for index, exc in self.unfit.items():
                    self._failed(index, exc)
                self._start_large()  # items said to be large first: they probe meanwhile
                if self.queued:
                    self._start_pool()
                while self.queued or self.waiting or self.on_seat or self.running:
                    interrupts.check()
                    self._launch()
                    self._wait()
                interrupts.check()  # a signal during the last item is not lost
                if self.pool is not None:
                    self.pool.close()
            except Interrupted as exc:
                self._stop(exc.signum)
                raise
            except BaseException:  # a raising callback, say: never leave children running
                self._stop(signal.SIGTERM)
                raise
        return [self._result_for(i) for i in range(len(self.items))]

    def _result_for(self, index: int) -> ItemResult:
        """A duplicate shares its first's outcome, but fetched nothing itself."""
        first = self.results[self.first[index]]
        result = first.result
        if index != self.first[index] and result is not None:
            result = dataclasses.replace(
                result, bytes_fetched=0, bytes_received=0, retries=0, steals=0
            )
        return ItemResult(self.items[index], result, first.error)

    # --- launching ------------------------------------------------------------------------

    def _start_pool(self) -> None:
        """Fork the pool now, while this process has no thread (and no other child). The
        TLS context an https item needs is built first: every seat inherits it, instead of
        loading the CA store again for its first connection."""
        for index in (i for queue in self.queued.values() for i in queue):
            with contextlib.suppress(BlobdlError):  # a bad CA bundle fails each item, as ever
                prepare_tls(self.settings, self.items[index].url)
        self.pool = Pool(self.budget.seats, self.processes, self.settings, self.table)
        for seat in range(self.budget.seats):
            self.selector.register(self.pool.pipes[seat], selectors.EVENT_READ, ("seat", seat))
        for number, proc in enumerate(self.pool.procs):
            self.selector.register(proc.sentinel, selectors.EVENT_READ, ("pool", number))

    def _launch(self) -> None:
        """Start what the budget allows: large items waiting for lanes first (they have been
        waiting longest), then queued items on idle seats; once nothing waits, running
        items get the lanes that ended items left."""
        self._start_large()
        self._start_small()
        if not self.queued and not self.waiting:
            self._grant_more()
        self._share()

    def _start_large(self) -> None:
        queued = sum(map(len, self.queued.values()))
        for waiting in list(self.waiting):
            item = self.items[waiting.item]
            settings = self._settings_for(item)
            wanted = self._wanted(waiting, settings)
            # Kept connections make room; while items are queued, just enough for one lane
            # (they would use those connections next), and what the seats they need would
            # hold is left to them (the lanes they free are granted to it later).
            self._drop(waiting.host, 1 if queued else wanted)
            leave = min(queued, self.budget.seats)
            granted = self.budget.grant(waiting.item, waiting.host, wanted, leave=leave)
            if granted:
                self.waiting.remove(waiting)
                self._fork(waiting, dataclasses.replace(settings, connections=wanted))

    def _wanted(self, waiting: _Waiting, settings: Settings) -> int:
        """Lanes a large item can keep busy: by what its probe learned, or by its size."""
        hashing = self.items[waiting.item].digest is not None
        if waiting.remote is None:
            size = self.items[waiting.item].size
            return useful_lanes(size, True, settings, hashing=hashing)
        remote = waiting.remote
        return useful_lanes(remote.size, remote.ranges, settings, hashing=hashing)

    def _said_large(self, item: Item) -> bool:
        """An item whose caller says it is larger than one request skips the seats: its own
        child probes it at once (unless it is to be named after the probe: a seat's probe,
        of one byte, gives the batch the name to check)."""
        if item.size is None or item.size <= one_request(self._settings_for(item)):
            return False
        return item.path is not None

    def _start_small(self) -> None:
        for host in list(self.queued):
            queue = self.queued[host]
            while queue and (seat := self.budget.seat_for(host)) is not None:
                self._dispatch(seat, queue.popleft(), host)
            if not queue:
                del self.queued[host]
            if not self.budget.idle_seat():
                return

    def _grant_more(self) -> None:
        for index in self.budget.wants_more():
            self._drop(self.budget.host_of(index), self.settings.connections)
            self.budget.more(index)

    def _drop(self, host: str, need: int) -> None:
        """Let idle seats' kept connections go, to make room for ``need`` more to ``host``."""
        if self.budget.free(host) >= need or self.pool is None:
            return
        for seat in self.budget.droppable(host, need):
            self.pool.drop(seat)
            self.budget.end(seat, None)

    def _dispatch(self, seat: int, index: int, host: str) -> None:
        assert self.pool is not None
        item = self.items[index]
        job = _Job(index, item, self._settings_for(item), self.base_dir, self.tell is not None)
        self.budget.start(seat, host)
        self.on_seat[seat] = index
        if self.limit is not None:
            self._share()  # its share of the rate in its slot before its first read
        self.pool.start(seat, job)

    def _fork(self, waiting: _Waiting, settings: Settings) -> None:
        """A child for a large item, its lanes and rate in its slot before it starts."""
        slot = self.slots.pop()
        self._share()
        _, rates = self.budget.rates(self.limit)
        self.shares.set(slot, rates.get(waiting.item), self.budget.granted(waiting.item))
        item = self.items[waiting.item]  # named by now, if it is to be named
        args = (item, waiting.remote, settings, self.shares.share(slot))
        # Not a daemon: it forks workers of its own.
        name = f"blobdl-item-{waiting.item}"
        proc, receiver = start(_item_main, args, name=name, daemon=False, coordinator=True)
        self.running[waiting.item] = _Running(waiting.item, proc, receiver, slot)
        self.selector.register(receiver, selectors.EVENT_READ, ("item", waiting.item))

    def _share(self) -> None:
        """Write what each running thing may use now: the seats' and the items' share of the
        rate limit, and the items' lanes."""
        seats, items = self.budget.rates(self.limit)
        for seat, rate in seats.items():
            self.table.set_cap(seat, rate)
        for index, running in self.running.items():
            self.shares.set(running.slot, items.get(index), self.budget.granted(index))

    # --- naming -------------------------------------------------------------------------

    def _name_by_url(self, index: int) -> None:
        """An item that comes through the cache without a path is named from its URL, as a
        download is (a hit asks the server nothing), and now: inside the base directory."""
        item = self.items[index]
        if item.path is None and item.digest is not None and self.settings.cache_dir:
            self._name(index, name_from_url(item.url))

    def _name_after_probe(self, index: int, remote: Remote) -> None:
        """A large item without a path is named once its seat has probed it (the name the
        server gives, as a download without a path would use)."""
        if self.items[index].path is None:
            self._name(index, default_name(remote))

    def _name(self, index: int, name: str) -> None:
        """Give item ``index`` the path ``name`` (inside the base directory, if any), if no
        other item of the batch writes there (else a LocalFileError)."""
        item = self.items[index]._replace(path=name)
        if self.base_dir is not None:
            item = inside(self.base_dir, item, f"item {index}")
        path = item.path or name
        holder = self._claim(index, path)
        if holder is not None:
            raise LocalFileError(path, f"item {holder} of the batch writes it too")
        self.items[index] = item

    def _claim(self, index: int, path: str) -> int | None:
        """Make ``path`` item ``index``'s destination; the item that has it already, if any."""
        holder = self.claimed.setdefault(os.path.abspath(path), index)
        return None if holder == index else holder

    def _settings_for(self, item: Item) -> Settings:
        if not item.headers:
            return self.settings
        return dataclasses.replace(self.settings, headers=self.settings.headers + item.headers)

    # --- collecting -----------------------------------------------------------------------

    def _wait(self) -> None:
        """Handle what seats and children said, once at least one said something (or a
        signal arrived)."""
        for key, _ in self.selector.select():
            if key.data is None:
                continue  # a signal: the loop checks for it
            if self.selector.get_map().get(key.fd) is not key:
                # Its registration is gone since the select (a pool process that died was
                # forked again: its old pipes and sentinel are not the ones there now).
                continue
            kind, which = key.data
            if kind == "seat":
                self._from_seat(which)
            elif kind == "item":
                self._from_item(self.running[which])
            else:
                self._pool_died(which)

    def _from_seat(self, seat: int) -> None:
        assert self.pool is not None
        answer = self.pool.answer(seat)
        if answer is None:  # its process is gone, or the seat failed: take it down
            self.selector.unregister(self.pool.pipes[seat])
            self.pool.kill(self.pool.process_of(seat))  # its sentinel says what of
            return
        self._from_answer(seat, answer)

    def _from_answer(self, seat: int, answer: object) -> None:
        index = self.on_seat.get(seat)
        if index is None:
            return  # a late answer to a drop
        if isinstance(answer, _Told):
            if self.tell is not None:
                self.tell(BatchEvent(index, answer.event))
        elif isinstance(answer, _Done):
            self._seat_free(seat, answer.kept)
            self._store(index, answer.outcome)
        elif isinstance(answer, _Large):
            self._seat_free(seat, answer.kept)
            self._large(index, answer.remote)
        elif isinstance(answer, _Claim):  # the seat names its item: is that path free?
            assert self.pool is not None
            self.pool.tell(seat, self._claim(index, answer.path))

    def _seat_free(self, seat: int, kept: str | None) -> None:
        del self.on_seat[seat]
        self.budget.end(seat, kept)

    def _large(self, index: int, remote: Remote) -> None:
        """A seat's probe found a blob larger than one request: it waits for lanes."""
        try:
            host = host_of(remote.final_url)
            self._name_after_probe(index, remote)  # a bad name fails it now
        except BlobdlError as exc:
            self._failed(index, exc)
            return
        self.waiting.append(_Waiting(index, remote, host))

    def _failed(self, index: int, exc: BlobdlError) -> None:
        """An item failed where no download of it could report it (before it started, or
        its process died under it): say so for it."""
        item = self.items[index]
        if self.tell is not None:
            failed = Failed(redact_url(item.url), item.path or "", str(exc), exc.exit_code)
            self.tell(BatchEvent(index, failed))
        self._store(index, exc)

    def _from_item(self, running: _Running) -> None:
        try:
            kind, payload = running.conn.recv()
        except (EOFError, OSError):
            kind, payload = "died", None
        if kind == "event":
            if self.tell is not None:
                self.tell(BatchEvent(running.item, payload))
            return
        running.proc.join()
        self.selector.unregister(running.conn)
        running.conn.close()
        del self.running[running.item]
        self.budget.finish(running.item)
        self.slots.append(running.slot)
        if kind == "died":
            self._failed(running.item, _died(running.proc))
        else:
            self._store(running.item, payload)

    def _pool_died(self, number: int) -> None:
        """A pool process died (a bug, or killed): its seats' items fail, and it is forked
        again for the items still to come."""
        assert self.pool is not None
        proc = self.pool.procs[number]
        proc.join()
        for seat in self.pool.ranges[number]:
            for answer in self.pool.answers(seat):  # what it said before it died
                if answer is not None:
                    self._from_answer(seat, answer)
            with contextlib.suppress(KeyError, ValueError):  # unregistered at its EOF
                self.selector.unregister(self.pool.pipes[seat])
            if seat in self.on_seat:
                self._failed(self.on_seat.pop(seat), _died(proc))
            self.budget.end(seat, None)
        self.selector.unregister(proc.sentinel)
        self.pool.restart(number)
        for seat in self.pool.ranges[number]:
            self.selector.register(self.pool.pipes[seat], selectors.EVENT_READ, ("seat", seat))
        sentinel = self.pool.procs[number].sentinel
        self.selector.register(sentinel, selectors.EVENT_READ, ("pool", number))

    def _store(self, index: int, outcome: DownloadResult | BlobdlError) -> None:
        item = self.items[index]
        if isinstance(outcome, DownloadResult):
            self.results[index] = ItemResult(item, outcome, None)
        else:
            self.results[index] = ItemResult(item, None, outcome)

    # --- stopping -------------------------------------------------------------------------

    def _stop(self, signum: int) -> None:
        """Pass the signal on: every seat's item ends (nothing of it is kept), every child
        saves its state and exits; wait for all, draining their pipes meanwhile (a child
        stopping sends a last Progress event, which for thousands of parts is more than a
        pipe holds, and a child blocked on a full pipe never exits; the events are dropped:
        the batch is being abandoned). A pool process that outlives its grace is killed."""
        pool = self.pool
        if pool is not None:
            pool.stop(signum)
        for running in self.running.values():
            if running.proc.pid is not None:
                os.kill(running.proc.pid, signum)
        pipes = {r.conn for r in self.running.values()}
        sentinels = {r.proc.sentinel for r in self.running.values()}
        if pool is not None:
            pipes |= {pipe for pipe in pool.pipes if not pipe.closed}
            sentinels |= {proc.sentinel for proc in pool.procs}
        deadline = time.monotonic() + 2 * STOP_GRACE
        while sentinels:
            for ready in wait([*pipes, *sentinels], timeout=STOP_GRACE / 4):
                if isinstance(ready, int):  # that child has exited
                    sentinels.discard(ready)
                elif isinstance(ready, Connection) and not _discard(ready):
                    pipes.discard(ready)
            if pool is not None and time.monotonic() > deadline:
                for proc in pool.procs:
                    if proc.exitcode is None:
                        proc.kill()
        for running in self.running.values():
            running.proc.join()
            running.conn.close()
        self.running.clear()
        if pool is not None:
            pool.reap()


def _died(proc: BaseProcess) -> BlobdlError:
    return BlobdlError(f"download process died (exit code {proc.exitcode})")


def _discard(conn: Connection) -> bool:
    """Read and drop one message; False at EOF."""
    try:
        conn.recv()
    except (EOFError, OSError):
        return False
    return True


def _tell_parent(conn: Connection) -> Callable[[Event], None]:
    def send(event: Event) -> None:
        conn.send(("event", event))

    return send


def _item_main(
    item: Item, remote: Remote | None, settings: Settings, share: Share, conn: Connection
) -> None:
    """One large download, in its own process: the coordinator of its own workers (started
    as one: it handles SIGINT/SIGTERM itself, saving its state), under the lanes and the
    rate its batch gives it (``share``, read as they change)."""
    outcome: DownloadResult | BlobdlError
    try:
        path = Path(item.path) if item.path else None
        tell = _tell_parent(conn)
        downloader = Downloader(settings)
        if remote is None:  # said to be large: probed here, as a download is
            outcome = downloader._run(item.url, None, path, item.digest, tell, share)
        else:
            outcome = downloader._download_resolved(
                remote, path, digest=item.digest, on_event=tell, share=share
            )
    except BlobdlError as exc:
        outcome = exc
    except KeyboardInterrupt as stop:  # before (or after) its download's own report
        outcome = interrupted(stop)
    conn.send(("done", outcome))
    conn.close()
