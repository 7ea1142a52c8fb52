"""The parts of one download, as the coordinator keeps them beside the counter table.

Each part is one slot of the shared counter table (where it starts, how far it got, where
it ends) plus what only the coordinator needs to know about it: its state, attempts, retry
policy, running worker and the running attempt's ``_rates.Pace``. A ``Part`` changes only
through its own methods, one for each thing that happens to it (an attempt starts, is
sampled, ends; the part fails, waits, is done). ``Parts`` reads and writes the table and
the parts together: the slot a new attempt starts from, the samples, the records a
checkpoint saves, the progress a caller sees, the lanes a steal chooses among, and the
split a steal makes. When to launch, retry or steal is the coordinator's to decide.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

from ..events import PartProgress, Progress
from ..http._retry import Retry
from ..store._resume import PartRecord
from ._counter_table import CounterTable
from ._failure import RETRY, Failure, Verdict
from ._rates import Pace, RateWindow
from ._steal import CUT_QUIET, LaneView, Steal
from ._worker import Running

PENDING, RUNNING, WAITING, DONE = "pending", "running", "waiting", "done"
STEAL_SLOTS_PER_CONNECTION = 32  # room in the table for the slots that steals create


class Part:
    """The coordinator's private bookkeeping for one slot of the counter table."""

    def __init__(
        self, slot: int, start: int, retry: Retry, stolen: bool = False, took_over: bool = False
    ) -> None:
        self.slot, self.start = slot, start
        self.retry = retry  # the part's policy, as far as its failures have taken it
        self.stolen = stolen  # created by a steal rather than by the plan
        # Created to replace a slow lane: never replaced in turn (the range itself may be
        # slow for everyone; the lane can still be split).
        self.took_over = took_over
        self.state = PENDING
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

    def start_attempt(self, now: float, pos: int, generation: int, worker: Running) -> None:
        """An attempt from ``pos`` runs on ``worker``, measured afresh from ``now``."""
        self.state, self.worker, self.generation = RUNNING, worker, generation
        self.attempts += 1
        self.pace = Pace(now, pos)

    def observe(self, now: float, pos: int, asked: int) -> None:
        """A sample of the running attempt (see ``Pace.observe``)."""
        self.pace.observe(now, pos, asked)

    def view(self, now: float, pos: int, end: int, asked: int) -> LaneView:
        """The running attempt as a steal or lag decision sees it."""
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
            pace.request_rate(now, pos, settle=CUT_QUIET),
            pace.recent,
        )

    def waits_on_network(self) -> bool:
        """Whether its worker thread waits on the network (not starved of CPU): only such a
        lane is cut, so what is thrown away is what was still on its way."""
        return self.worker is not None and self.worker.waiting()

    def end_attempt(self, pos: int) -> None:
        """The attempt ended (or was ended) at ``pos``: count its bytes, forget its worker."""
        self.fetched += max(0, pos - self.pace.origin)
        self.worker = None

    def may_start(self, now: float) -> bool:
        """Pending, or waiting and its backoff is over."""
        return self.state == PENDING or (self.state == WAITING and self.not_before <= now)

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
        self, error: BaseException, pos: int, end: int, redirected: bool, generation: int
    ) -> Failure:
        """The facts about its failed attempt, given the remote's state now."""
        stale = self.generation < generation  # the URL was refreshed since the attempt began
        return Failure(error, pos, end, self.retry, redirected, stale, self.refreshed_at)

    def refreshed(self, pos: int) -> None:
        """Its failure had the remote's URL refreshed, at ``pos``."""
        self.refreshed_at = pos

    def wait(self, verdict: Verdict, now: float) -> None:
        """Wait out ``verdict``'s delay from ``now`` for the next attempt, under its policy
        from now on; a retry counts (a refresh is no failure of the part's)."""
        self.state, self.not_before, self.retry = WAITING, now + verdict.delay, verdict.retry
        if verdict.action == RETRY:
            self.retries += 1

    def finish(self) -> None:
        """All its bytes are on disk (or a steal cut it where it was)."""
        self.state = DONE

    def stop(self) -> None:
        """The download stops: a running part is pending again (its checkpoint says where)."""
        if self.state == RUNNING:
            self.state = PENDING


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
        return sum(1 for p in self._parts if p.state == RUNNING)

    def finished(self) -> bool:
        return all(p.state == DONE for p in self._parts)

    def done(self) -> int:
        """Bytes on disk over all parts."""
        return sum(self.table.done(p.slot) for p in self._parts)

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
        table = self.table
        return tuple(
            sorted(
                PartRecord(p.start, table.end(p.slot), p.start + table.done(p.slot)) for p in self
            )
        )

    def progress(self, now: float, window: RateWindow, size: int | None) -> Progress:
        """The download's progress now: each part's, and the whole's rate over ``window``."""
        table = self.table
        parts = tuple(
            PartProgress(
                p.slot, p.start, table.end(p.slot), table.done(p.slot), p.state, p.attempts
            )
            for p in self
        )
        done = sum(p.done for p in parts)
        rate, elapsed = window.rate(now, done), now - window.started
        retries = sum(p.retries for p in self._parts)
        return Progress(done, size, rate, elapsed, self.running(), retries, parts)

    def ready(self, part: Part, over: bool) -> int:
        """Ready ``part``'s slot for a new attempt: from 0 if ``over`` (a whole-body stream
        starts over), nothing asked yet. Where the attempt starts: read before it is
        launched, since its lane may write its first bytes before the launch returns."""
        if over:
            self.table.set_pos(part.slot, 0)
        pos = self.table.pos(part.slot)
        self.table.set_asked(part.slot, pos)
        return pos

    def sample(self, part: Part, now: float) -> None:
        """Sample the running ``part`` where its lane is now."""
        part.observe(now, self.table.pos(part.slot), self.table.asked(part.slot))

    def release(self, part: Part) -> None:
        """Forget the part's ended attempt: count its bytes."""
        part.end_attempt(self.table.pos(part.slot))

    def kill(self, part: Part) -> None:
        """End the part's lane now, even one blocked on its socket; its bytes stay written."""
        if part.worker is not None:
            part.worker.kill()
        self.release(part)

    def stop(self) -> None:
        """End every lane; a running part is pending again (its checkpoint says where)."""
        for part in self._parts:
            if part.worker is not None:
                self.kill(part)
                part.stop()

    def lanes(self, now: float) -> list[LaneView]:
        """The running parts, as a steal or lag decision sees them."""
        return [self._view(p, now) for p in self if p.state == RUNNING]

    def _view(self, p: Part, now: float) -> LaneView:
        table, pos = self.table, self.table.pos(p.slot)  # one read: the lane moves meanwhile
        return p.view(now, pos, table.end(p.slot), table.asked(p.slot))

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
        running = [p for p in self._parts if p.state == RUNNING or p is joining]
        for part in running:
            self.table.set_cap(part.slot, max(1, limit_rate // len(running)))

    def _add(
        self, start: int, pos: int, end: int, stolen: bool = False, took_over: bool = False
    ) -> Part:
        part = Part(len(self._parts), start, self.retry, stolen, took_over)
        self.table.set_start(part.slot, start)
        self.table.set_pos(part.slot, pos)
        self.table.set_end(part.slot, end)
        self._parts.append(part)
        return part
