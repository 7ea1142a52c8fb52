"""The parts of one download, as the coordinator keeps them beside the counter table.

Each part is one slot of the shared counter table (where it starts, how far it got, where
it ends) plus what only the coordinator needs to know about it: its state, attempts, retry
policy, running worker and the running attempt's ``_rates.Pace``. A ``Part`` changes only
through its own methods, one for each thing that happens to it (an attempt starts, is
sampled, ends; the part fails, waits, is done). ``Parts`` reads and writes the table and
the parts together: the slot a new attempt starts from, the samples, the records a
checkpoint saves, the progress a caller sees, the lanes a steal chooses among, and the
split a steal makes. When to launch, retry or steal is the coordinator's to decide.

The coordinator wakes often (every lane that ends, every 0.1 s), so nothing it asks on a
wake-up may cost in proportion to the number of parts (up to ``MAX_PARTS``): the ``_Board``
keeps the parts by state as they change (the pending ones in order, the waiting ones by
when they may start, the running ones, how many are not done). Only what runs once a
checkpoint or a progress interval (every part's position) reads them all.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from ..events import PartProgress, Progress
from ..http._retry import Retry
from ..store._resume import PartRecord
from ._counter_table import CounterTable
from ._failure import FULL, RETRY, Failure, Verdict
from ._plan import STEAL_SLOTS_PER_CONNECTION
from ._rates import Pace, RateWindow
from ._steal import CUT_QUIET, LaneView, Steal
from ._worker import Running

PENDING, RUNNING, WAITING, DONE = "pending", "running", "waiting", "done"


class _Board:
    """The parts by state, kept as each changes (``Part._become``), so that what the
    coordinator asks on a wake-up costs in proportion to the lanes, not to the parts."""

    def __init__(self) -> None:
        self.pending: deque[Part] = deque()  # in the order they became pending (slot order)
        self.waiting: list[tuple[float, int, Part]] = []  # heap: (not_before, slot, part)
        self.running: dict[int, Part] = {}  # by slot
        self.unfinished = 0

    def moved(self, part: Part, old: str | None, new: str) -> None:
        if old == RUNNING:
            del self.running[part.slot]
        if new == RUNNING:
            self.running[part.slot] = part
        elif new == PENDING:
            self.pending.append(part)
        elif new == WAITING:
            heapq.heappush(self.waiting, (part.not_before, part.slot, part))
        if old in (None, DONE) and new != DONE:
            self.unfinished += 1
        elif new == DONE and old != DONE:
            self.unfinished -= 1
        # A part leaving PENDING or WAITING leaves its entry behind: ``ready`` and
        # ``next_retry`` drop stale entries as they meet them (each once).

    def ready(self, now: float) -> Part | None:
        """The next part that may start now, taken off the board's queues: of the first
        pending part and the first waiting one whose backoff is over, the lower slot (the
        one earlier in the blob, which the hasher waits for)."""
        pending, waiting = self._first_pending(), self._first_waiting()
        if (
            waiting is not None
            and waiting.not_before <= now
            and (pending is None or waiting.slot < pending.slot)
        ):
            heapq.heappop(self.waiting)
            return waiting
        if pending is not None:
            self.pending.popleft()
        return pending

    def next_retry(self) -> float | None:
        """When the first waiting part may start (None: none waits)."""
        waiting = self._first_waiting()
        return None if waiting is None else waiting.not_before

    def _first_pending(self) -> Part | None:
        while self.pending and self.pending[0].state != PENDING:
            self.pending.popleft()
        return self.pending[0] if self.pending else None

    def _first_waiting(self) -> Part | None:
        heap = self.waiting
        while heap and (heap[0][2].state != WAITING or heap[0][2].not_before != heap[0][0]):
            heapq.heappop(heap)
        return heap[0][2] if heap else None


class Part:
    """The coordinator's private bookkeeping for one slot of the counter table."""

    def __init__(
        self,
        slot: int,
        start: int,
        retry: Retry,
        stolen: bool = False,
        took_over: bool = False,
        board: _Board | None = None,
    ) -> None:
        self._board = board or _Board()  # the board of the parts it belongs to
        self.slot, self.start = slot, start
        self.retry = retry  # the part's policy, as far as its failures have taken it
        self.stolen = stolen  # created by a steal rather than by the plan
        # Created to replace a slow lane: never replaced in turn (the range itself may be
        # slow for everyone; the lane can still be split).
        self.took_over = took_over
        self.state = ""
        self._become(PENDING)
        self.attempts = 0
        self.generation = 0  # the remote's generation when the running attempt started
        self.refreshed_at: int | None = None  # position when it last had the URL refreshed
        self.not_before = 0.0  # earliest time of the next attempt (backoff)
        self.worker: Running | None = None  # the running attempt (a lane in a worker process)
        self.pace = Pace(0.0, 0)  # how fast the running (or last) attempt moves
        self.fetched = 0  # bytes written over all its ended attempts (refetches included)
        self.retries = 0  # failed attempts that were retried
        self.restarts = 0  # attempts ended for lagging and started again on a new connection
        self.restarted_at = -1  # position when the part was last restarted for lagging

    # --- an attempt -------------------------------------------------------------------------

    def start_attempt(self, now: float, counts: Counts, generation: int, worker: Running) -> None:
        """An attempt runs on ``worker``, measured afresh from ``now`` and the slot's
        ``counts`` then."""
        self.worker, self.generation = worker, generation
        self._become(RUNNING)
        self.attempts += 1
        self.pace = Pace(now, counts.received, counts.slept)

    def observe(self, now: float, counts: Counts, asked: int) -> None:
        """A sample of the running attempt (see ``Pace.observe``)."""
        self.pace.observe(now, counts.received, asked, counts.slept)

    def view(self, now: float, pos: int, received: int, end: int, asked: int) -> LaneView:
        """The running attempt as a steal or lag decision sees it: where its checked bytes
        end (``pos``: a cut splits there), how fast it receives."""
        pace = self.pace
        return LaneView(
            self.slot,
            pos,
            end,
            pace.rate,
            pace.age(now),
            not self.took_over,
            asked,
            pace.quiet(now),
            pace.request_rate(now, received, settle=CUT_QUIET),
            pace.recent,
            pace.steady,
            pace.sleeping,
            pace.measured(),
            pace.awaiting(),
        )

    @property
    def asking(self) -> bool:
        """Whether it is running a first request that nothing refused yet: no attempt of
        it has failed, nor waited for a full server. A refused part's retry is not: parts
        a server refuses all along never keep each other waiting, and each part asks for
        the first time once."""
        return self.state == RUNNING and self.retry.failures == 0 and self.retry.waits == 0

    def waits_on_network(self) -> bool:
        """Whether its worker thread waits on the network (not starved of CPU): only such a
        lane is cut, so what is thrown away is what was still on its way."""
        return self.worker is not None and self.worker.waiting()

    def end_attempt(self, received: int) -> None:
        """The attempt ended (or was ended) with the slot's ``received`` count there: count
        its bytes, forget its worker."""
        self.fetched += max(0, received - self.pace.origin)
        self.worker = None

    def restarting(self, pos: int) -> bool:
        """Note a restart for lagging at ``pos``; False (nothing noted) if the part has not
        moved since its last one: slow again at once, its range may be slow for everyone."""
        if pos <= self.restarted_at:
            return False
        self.restarted_at = pos
        self.restarts += 1
        return True

    # --- the part ---------------------------------------------------------------------------

    def failure(
        self,
        error: BaseException,
        pos: int,
        end: int,
        redirected: bool,
        generation: int,
        others_receiving: bool,
    ) -> Failure:
        """The facts about its failed attempt, given the remote's state now."""
        stale = self.generation < generation  # the URL was refreshed since the attempt began
        return Failure(
            error, pos, end, self.retry, redirected, stale, self.refreshed_at, others_receiving
        )

    def refreshed(self, pos: int) -> None:
        """Its failure had the remote's URL refreshed, at ``pos``."""
        self.refreshed_at = pos

    def wait(self, verdict: Verdict, now: float) -> None:
        """Wait out ``verdict``'s delay from ``now`` for the next attempt, under its policy
        from now on; a retry counts, as does a wait for a full server (its policy counts it
        not: ``Retry.full``); a refresh is no failure of the part's."""
        self.not_before, self.retry = now + verdict.delay, verdict.retry
        self._become(WAITING)
        if verdict.action in (RETRY, FULL):
            self.retries += 1

    def finish(self) -> None:
        """All its bytes are on disk (or a steal cut it where it was)."""
        self._become(DONE)

    def stop(self) -> None:
        """The download stops: a running part is pending again (its checkpoint says where)."""
        if self.state == RUNNING:
            self._become(PENDING)

    def _become(self, state: str) -> None:
        old, self.state = self.state or None, state
        self._board.moved(self, old, state)


class Counts(NamedTuple):
    """A slot's counts that only grow, which an attempt is measured by (``_rates.Pace``)."""

    received: int  # body bytes its lanes read off the wire
    slept: int  # µs its lanes slept to stay under their caps


class Tally(NamedTuple):
    """What one download's parts did, all told."""

    bytes_fetched: int  # bytes written over all attempts (refetches included)
    bytes_received: int  # body bytes read off the wire over all attempts, kept or not
    retries: int  # failed attempts that were retried
    parts: int  # parts the blob was cut into
    steals: int  # ranges taken over from slow lanes or split off large ones
    final_size: int  # bytes in the file (the size learned at EOF when unknown upfront)


class Parts:
    """Every part of one download and the counter table their workers share."""

    def __init__(self, records: Sequence[PartRecord], connections: int, retry: Retry) -> None:
        self.table = CounterTable(len(records) + STEAL_SLOTS_PER_CONNECTION * connections)
        self.retry = retry  # the policy a new part starts with
        self._parts: list[Part] = []
        self._board = _Board()
        for record in records:
            part = self._add(record.start, record.pos, record.end)
            if record.end >= 0 and record.pos >= record.end:
                part.finish()  # already on disk (a resumed download)

    def __iter__(self) -> Iterator[Part]:
        return iter(self._parts)

    def __getitem__(self, slot: int) -> Part:
        return self._parts[slot]

    def full(self) -> bool:
        """No slot left for another steal."""
        return len(self._parts) >= self.table.slots

    def running(self) -> int:
        return len(self._board.running)

    def runners(self) -> list[Part]:
        """The running parts (a list: acting on one may end it)."""
        return list(self._board.running.values())

    def others_receiving(self, part: Part) -> bool:
        """Whether a running part other than ``part`` has received bytes in its attempt, or
        asks for the first time (``Part.asking``): a server full at the start let some of
        the first requests in, and their answers may be slow to come."""
        return any(
            p is not part and (p.asking or self.table.received(p.slot) > p.pace.origin)
            for p in self._board.running.values()
        )

    def asking(self) -> bool:
        """Whether a running part asks for the first time (see ``others_receiving``)."""
        return any(p.asking for p in self._board.running.values())

    def received(self) -> int:
        """Body bytes every lane read off the wire so far, all told (it only grows)."""
        return self.table.received_total(len(self._parts))

    def finished(self) -> bool:
        return self._board.unfinished == 0

    def next_ready(self, now: float) -> Part | None:
        """The next part that may start now (pending, or waiting with its backoff over),
        taken: the caller starts it."""
        return self._board.ready(now)

    def next_retry(self) -> float | None:
        """When the first waiting part may start (None: none waits)."""
        return self._board.next_retry()

    def done(self) -> int:
        """Bytes on disk over all parts."""
        return sum(done for _, done in self.table.dones(len(self._parts)))

    def tally(self, size: int | None) -> Tally:
        """What the parts did, once they are done; ``size`` is the blob's, if known."""
        parts, table = self._parts, self.table
        planned = sum(1 for p in parts if not p.stolen)
        return Tally(
            sum(p.fetched for p in parts),
            sum(table.received(p.slot) for p in parts),
            sum(p.retries for p in parts),
            planned,
            len(parts) - planned + sum(p.restarts for p in parts),  # a restart takes over too
            # Without a known size, the blob ends where the single stream reached EOF.
            size if size is not None else table.pos(0),
        )

    def complete(self, part: Part) -> bool:
        end = self.table.end(part.slot)
        return end < 0 or self.table.pos(part.slot) >= end

    def records(self) -> tuple[PartRecord, ...]:
        """The positions a checkpoint saves (read now, before the caller flushes)."""
        count = len(self._parts)
        ends = self.table.ends(count)
        dones = self.table.dones(count)
        return tuple(sorted(PartRecord(a, e, a + d) for (a, d), e in zip(dones, ends, strict=True)))

    def progress(self, now: float, window: RateWindow, size: int | None) -> Progress:
        """The download's progress now: each part's, and the whole's rate over ``window``."""
        count = len(self._parts)
        ends, dones = self.table.ends(count), self.table.dones(count)
        parts = tuple(
            PartProgress(p.slot, p.start, end, done, p.state, p.attempts)
            for p, end, (_, done) in zip(self._parts, ends, dones, strict=True)
        )
        done = sum(p.done for p in parts)
        rate, elapsed = window.rate(now, done), now - window.started
        retries = sum(p.retries for p in self._parts)
        return Progress(done, size, rate, elapsed, self.running(), retries, parts)

    def ready(self, part: Part, over: bool) -> Counts:
        """Ready ``part``'s slot for a new attempt: from 0 if ``over`` (a whole-body stream
        starts over), nothing asked yet. The slot's counts, which the attempt's pace is
        measured from: read before it is launched, since its lane may read its first bytes
        before the launch returns."""
        if over:
            self.table.set_pos(part.slot, 0)
        self.table.set_asked(part.slot, self.table.pos(part.slot))
        return self._counts(part.slot)

    def _counts(self, slot: int) -> Counts:
        return Counts(self.table.received(slot), self.table.slept(slot))

    def sample(self, part: Part, now: float) -> None:
        """Sample the running ``part``: how many bytes its lane has received by now (bytes
        that move, checked or not: a lane inside a long chunk is not quiet)."""
        part.observe(now, self._counts(part.slot), self.table.asked(part.slot))

    def release(self, part: Part) -> None:
        """Forget the part's ended attempt: count its bytes."""
        part.end_attempt(self.table.received(part.slot))

    def kill(self, part: Part) -> None:
        """End the part's lane now, even one blocked on its socket; its bytes stay written."""
        if part.worker is not None:
            part.worker.kill()
        self.release(part)

    def stop(self) -> None:
        """End every lane; a running part is pending again (its checkpoint says where)."""
        for part in self.runners():
            if part.worker is not None:
                self.kill(part)
            part.stop()

    def lanes(self, now: float) -> list[LaneView]:
        """The running parts, as a steal or lag decision sees them."""
        return [self._view(p, now) for p in self._board.running.values()]

    def _view(self, p: Part, now: float) -> LaneView:
        table, pos = self.table, self.table.pos(p.slot)  # one read: the lane moves meanwhile
        return p.view(now, pos, table.received(p.slot), table.end(p.slot), table.asked(p.slot))

    def split(self, steal: Steal) -> Part:
        """Carry out ``steal``: a new part takes ``[at, victim's end)``; the victim stops there."""
        victim, table = self._parts[steal.victim], self.table
        end, at = table.end(victim.slot), steal.at
        table.set_end(victim.slot, at)
        if not steal.cut:
            # The victim may have asked for more just before it could see its new end: then
            # the split moves up to what it asked for, so none of that is thrown away.
            asked = table.asked(victim.slot)
            if asked > at:
                at = min(asked, end)
                table.set_end(victim.slot, at)
        return self._add(at, at, end, stolen=True, took_over=steal.takeover)

    def share(self, limit_rate: int | None, joining: Part | None = None) -> None:
        """Split ``limit_rate`` evenly among the running workers and ``joining``, about to
        start (they pace themselves)."""
        if limit_rate is None:
            return
        running = self.runners()
        if joining is not None and joining.state != RUNNING:  # a restart runs already
            running.append(joining)
        for part in running:
            self.table.set_cap(part.slot, max(1, limit_rate // len(running)))

    def _add(
        self, start: int, pos: int, end: int, stolen: bool = False, took_over: bool = False
    ) -> Part:
        part = Part(len(self._parts), start, self.retry, stolen, took_over, self._board)
        self.table.set_start(part.slot, start)
        self.table.set_pos(part.slot, pos)
        self.table.set_end(part.slot, end)
        self._parts.append(part)
        return part
