"""The pool's seats, as the scheduler sees them: the pool (forked once, before any thread),
which item each seat runs, the seats' slots of the rate limit, and what a seat's answer
means for its item.

A seat answers with its item's events (``_Told``), then its outcome (``_Done``) or what its
probe learned of a blob too large for one request (``_Large``); it may ask first whether
the name its item got is free (``_Claim``, answered here from ``Destinations``), and
whether its connection may move to another host (``_Hop``, answered by ``hops`` once the
budget has room there). ``heard``
and ``died`` give the scheduler what concerns an item as ``(index, said)``: a ``_Told``,
``_Done`` or ``_Large``, or the error of an item whose process died under it. By then a seat
that ended its item is free, and the connection it keeps is counted in the budget. A seat
whose thread the machine refused (a task limit) is retired: its items go to the seats that
started; if none did, each fails with the refusal (``refused``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from ..config import Settings
from ..engine._counter_table import CounterTable
from ..engine._share import Share
from ..errors import BlobdlError, OutOfResources
from ..events import DownloadResult, Finished
from ..http._pool import prepare_tls
from ..processes._signals import held
from ..processes._spawn import threaded
from ..store._destination import sync_dir_quietly
from ..store._lock import LOCK_SUFFIX, locked_destination, remove_stale
from ..store._resume import drop_unrecorded
from ._budget import Budget
from ._destinations import Destinations
from ._outcomes import died
from ._pool import Answer, Pool, _Claim, _Done, _Hop, _Job, _Large, _Told
from ._watch import Watch

log = logging.getLogger("blobdl")
Said = _Told | _Done | _Large | BlobdlError


class Seats:
    """The scheduler's handle on the pool: ``budget.seats`` seats in ``processes``
    processes, and the item each busy seat runs."""

    def __init__(
        self,
        budget: Budget,
        processes: int,
        settings: Settings,
        destinations: Destinations,
        shares: Sequence[Share] = (),
    ) -> None:
        self.budget, self.processes, self.settings = budget, processes, settings
        self.destinations = destinations  # answers the seats' claims
        self.table = CounterTable(budget.seats)  # the seats' slots: their share of the rate limit
        # their slots of the batch's Shares: whom each receives from (``engine._small.Seat``)
        self.shares = shares
        self.pool: Pool | None = None
        self.on_seat: dict[int, int] = {}  # seat -> the item it runs
        # seat -> the lock files its process may leave if it dies: the one it keeps between
        # items (its last answer says which), and its item's own
        self.locks: dict[int, set[str]] = {}
        # seat -> the folders of the items it said were done: its process fsyncs them only
        # as it ends (``_pool``), so one that dies first leaves them to us (``_made_durable``)
        self.renamed: dict[int, set[Path]] = {}
        self.refused: OutOfResources | None = None  # why a seat's thread could not start
        self.hopping: dict[int, str] = {}  # seat -> the host its item waits for room at

    @property
    def busy(self) -> bool:
        return bool(self.on_seat)

    def start(self, urls: Iterable[str], watch: Watch) -> None:
        """Fork the pool now, while this process has no thread (and no other child). The
        TLS context an https item needs is built first: every seat inherits it, instead of
        loading the CA store again for its first connection. If a callback has started a
        thread already (told of an item that failed at once), there is no pool: every seat
        is retired (see ``died``)."""
        if threaded():
            for seat in range(self.budget.seats):
                self.budget.retire(seat)
            return
        # What it builds depends on a URL's scheme alone: once a scheme, not once an item
        # (each call checks the CA variables' files: 89 ms of 10,000 items' start, now 29).
        firsts = {urlsplit(url).scheme: url for url in urls}
        for url in firsts.values():
            with contextlib.suppress(BlobdlError):  # a bad CA bundle fails each item, as ever
                prepare_tls(self.settings, url)
        self.pool = Pool(self.budget.seats, self.processes, self.settings, self.table, self.shares)
        watch.pool(self.pool)
        self._retire_unstarted(range(self.budget.seats))

    def cap(self, rates: dict[int, int]) -> None:
        """Write each busy seat's share of the rate limit in its slot."""
        for seat, rate in rates.items():
            self.table.set_cap(seat, rate)

    def run(self, seat: int, job: _Job) -> None:
        """Give ``seat`` (started in the budget) its item."""
        assert self.pool is not None
        self.on_seat[seat] = job.number
        if job.item.path is not None:
            self.locks.setdefault(seat, set()).add(job.item.path + LOCK_SUFFIX)
        self.pool.start(seat, job)

    def drop(self, seat: int) -> None:
        """Have idle ``seat`` let its kept connection go."""
        assert self.pool is not None
        self.pool.drop(seat)
        self.budget.end(seat, None)

    @property
    def closing(self) -> bool:
        """Whether the pool is told to end and has not yet (``close``, ``ended``)."""
        return self.pool is not None and self.pool.closing

    def close(self, watch: Watch) -> None:
        """Tell the pool to end: no small item is left (the batch is done, or only large
        items run). Returns at once: the scheduler goes on serving the items still running
        while the pool's processes make their seats' renames durable, however long a slow
        disk takes; their seats' pipes are watched no more (idle, they have nothing to say),
        their sentinels still are (``ended``)."""
        pool = self.pool
        if pool is None or pool.closing:
            return
        watch.forget_seats(pool)
        pool.end()

    def ended(self, number: int, watch: Watch) -> None:
        """Pool process ``number``, told to end, has (or died meanwhile): reaped. One killed
        could not remove its seats' lock files: swept here. Its seats' kept connections
        were closed with it, and only now does the budget count them no more (until then
        they were open, and counted: a large item needing the room has them dropped). Once
        every process has ended, so has the pool: its renames are durable."""
        assert self.pool is not None
        proc = self.pool.procs[number]
        watch.forget(proc.sentinel)
        ranges = self.pool.ranges[number]
        self._reaped(number)
        # Killed (or ended where nobody can say how: SIGCHLD ignored), it may not have
        # removed its seats' lock files: swept (only those nobody holds go).
        if proc.exitcode != 0:
            self._sweep(ranges)
            self._made_durable(ranges)
        for seat in ranges:
            self.renamed.pop(seat, None)  # its process fsynced them, or we just did
            self.budget.end(seat, None)

    def heard(self, seat: int, watch: Watch) -> tuple[int, Said] | None:
        """What ``seat`` said of its item, if anything. If its process is gone, or the seat
        failed, the seat is taken down (its process's sentinel says what of)."""
        assert self.pool is not None
        answer = self.pool.answer(seat)
        if answer is None:
            watch.forget(self.pool.pipes[seat])
            self.pool.kill(self.pool.process_of(seat))
            return None
        return self._said(seat, answer)

    def died(
        self, number: int, watch: Watch, silent: float | None = None
    ) -> Iterator[tuple[int, Said]]:
        """Pool process ``number`` died (a bug, or killed; ``silent``: killed by the batch,
        quiet that many seconds, ``_stalls.Stalls``): what its seats said before it
        died, and their items' failures, each handled by the caller as it comes; once all
        are, the process is forked again for the items still to come. Unless this process
        has a thread by now (a callback started one), and forks no more: then its seats
        are retired (``Budget.retire``), and once every seat is, the items still queued go
        elsewhere (the scheduler's ``_off_the_seats``)."""
        assert self.pool is not None
        proc = self.pool.procs[number]
        proc.join()
        for seat in self.pool.ranges[number]:
            for answer in self.pool.answers(seat):  # what it said before it died
                if answer is not None and (said := self._said(seat, answer)) is not None:
                    yield said
            watch.forget_seat(self.pool.pipes[seat])
            self.hopping.pop(seat, None)
            if self.shares:  # it may have died reading a body: it receives no more
                self.shares[seat].clear()
            if seat in self.on_seat:
                yield self.on_seat.pop(seat), died(proc, silent)
            self.budget.end(seat, None)
        watch.forget(proc.sentinel)
        self._sweep(self.pool.ranges[number])
        self._made_durable(self.pool.ranges[number])
        if threaded():
            for seat in self.pool.ranges[number]:
                self.budget.retire(seat)
            self._reaped(number)  # for good: the pool's end does not wait for it
            return
        self.pool.restart(number)
        watch.process(self.pool, number)
        self._retire_unstarted(self.pool.ranges[number])

    def stopped(self) -> None:
        """The pool was stopped and each of its processes reaped (``_stop.stop``). A seat may
        have outlasted the grace, blocked where no cut reaches (a ``connect`` that is never
        answered, a hung ``fsync``): its process then ended without it, or was killed. Either
        way what every seat may have left goes, as after a process that died (``_sweep``)."""
        if self.pool is None:
            return
        with held(drop=True):  # the batch stops already: a second Ctrl-C must not cut this
            self._sweep(range(self.budget.seats))

    def _retire_unstarted(self, seats: range) -> None:
        """Retire those of ``seats`` whose thread the machine refused: the budget counts on
        them no more. The first time some seats did start, the user is told why the batch
        runs on fewer (if none did, its items say so)."""
        assert self.pool is not None
        refused = [seat for seat in seats if seat in self.pool.unstarted]
        for seat in refused:
            self.budget.retire(seat)
        if not refused or self.refused is not None:
            return
        self.refused = self.pool.refused
        left = self.budget.seats - len(self.pool.unstarted)
        if left:
            log.warning("the batch runs on %d of %d seats: %s", left, self.budget.seats,
                        self.refused)  # fmt: skip

    def _reaped(self, number: int) -> None:
        """Pool process ``number`` reaped for good; once every one is, the pool is over."""
        assert self.pool is not None
        self.pool.reaped(number)
        if self.pool.over:
            self.pool = None

    def _sweep(self, seats: range) -> None:
        """The lock files the seats of a process that died may have left, removed if nobody
        holds them (``store._lock.remove_stale``), and the partials of the items it was
        writing: a small item starts over, so nothing of one that failed is kept
        (``store._resume.drop_unrecorded``)."""
        with held():  # a Ctrl-C now comes once all is swept: what is popped is swept whole
            for seat in seats:
                for lock in self.locks.pop(seat, ()):
                    remove_stale(Path(lock))
                    if (dest := locked_destination(Path(lock))) is not None:
                        drop_unrecorded(dest)

    def _made_durable(self, seats: range) -> None:
        """The renames of the items that ``seats`` said were done, made durable: their
        process died before its own fsyncs, and the batch returns only once they are. Here,
        on the scheduler's thread: a process dies rarely, and a folder fsync is short on any
        disk but one that hangs, where the pool's own would have hung too. (A stopped pool's
        are not: Ctrl-C must not wait for a disk, and the batch fails anyway.)"""
        for folder in set().union(*(self.renamed.pop(seat, set()) for seat in seats)):
            sync_dir_quietly(folder)

    def _said(self, seat: int, answer: Answer) -> tuple[int, Said] | None:
        index = self.on_seat.get(seat)
        if index is None:
            return None  # a late answer to a drop
        if isinstance(answer, _Done | _Large):  # the seat is free
            del self.on_seat[seat]
            self.hopping.pop(seat, None)
            self.locks[seat] = {answer.lock} if answer.lock is not None else set()
            if isinstance(answer, _Done) and isinstance(answer.outcome, DownloadResult):
                self.renamed.setdefault(seat, set()).add(Path(answer.outcome.path).parent)
            self.budget.end(seat, answer.kept)
            return index, answer
        if isinstance(answer, _Told):
            if isinstance(answer.event, Finished):  # renamed: its process may die before _Done
                self.renamed.setdefault(seat, set()).add(Path(answer.event.result.path).parent)
            return index, answer
        if isinstance(answer, _Claim):  # the seat names its item: is that path free?
            assert self.pool is not None
            holder = self.destinations.claim(index, answer.path)
            if holder is None:  # its item's lock file is there now
                self.locks.setdefault(seat, set()).add(answer.path + LOCK_SUFFIX)
            self.pool.tell(seat, None if holder is None else self.destinations.writes_too(holder))
        if isinstance(answer, _Hop):  # a redirect leads its item to another host
            self.hopping[seat] = answer.host
            self.hops()
        return None

    def hops(self) -> None:
        """Let each seat waiting to go on at another host (``_Hop``) go, once that host has
        room (idle seats' kept connections there let go for it): before anything new starts,
        or a host kept busy by others would keep it waiting for good."""
        assert self.pool is not None or not self.hopping
        for seat, host in list(self.hopping.items()):
            if self.budget.free(host) <= 0:
                for idle in self.budget.droppable(host, 1):
                    self.drop(idle)
            if self.budget.hop(seat, host):
                del self.hopping[seat]
                assert self.pool is not None
                self.pool.tell(seat, None)
