"""The parts of one download, as the coordinator keeps them beside the counter table.

Each part is one slot of the shared counter table (where it starts, how far it got, where
it ends) plus what only the coordinator needs to know about it: its state, attempts, retry
policy, running worker, and how fast its running attempt moves (a ``_rates.Pace``).
``Parts`` reads and writes both together: the samples, the records a checkpoint saves, the
progress a caller sees, the lanes a steal chooses among, and the split a steal makes. When to launch, retry or steal is the coordinator's to decide.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..events import PartProgress
from ..http._retry import Retry
from ..store._resume import PartRecord
from ._counter_table import CounterTable
from ._rates import Pace
from ._steal import CUT_QUIET, LaneView, Steal
from ._worker import Running

PENDING, RUNNING, WAITING, DONE = "pending", "running", "waiting", "done"
STEAL_SLOTS_PER_CONNECTION = 32  # room in the table for the slots that steals create


@dataclass
class Part:
    """The coordinator's private bookkeeping for one slot of the counter table."""

    slot: int
    start: int
    retry: Retry  # the part's policy, as far as its failures have taken it
    stolen: bool = False  # created by a steal rather than by the plan
    took_over: bool = False  # created to replace a slow lane: never replaced in turn (the
    # range itself may be slow for everyone; the lane can still be split)
    state: str = PENDING
    attempts: int = 0
    generation: int = 0  # the remote's generation when the running attempt started
    refreshed_at: int | None = None  # position when this part last had the URL refreshed
    not_before: float = 0.0  # earliest time of the next attempt (backoff)
    worker: Running | None = None  # the running attempt (a lane in a worker process)
    pace: Pace = field(default_factory=lambda: Pace(0.0, 0))  # the running attempt's
    restarted_at: int = -1  # position when the part was last restarted for lagging


class Parts:
    """Every part of one download and the counter table their workers share."""

    def __init__(self, records: Sequence[PartRecord], connections: int, retry: Retry) -> None:
        self.table = CounterTable(len(records) + STEAL_SLOTS_PER_CONNECTION * connections)
        self.retry = retry  # the policy a new part starts with
        self._parts: list[Part] = []
        for record in records:
            part = self._add(record.start, record.pos, record.end)
            if record.end >= 0 and record.pos >= record.end:
                part.state = DONE  # already on disk (a resumed download)

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

    def planned(self) -> int:
        """Parts the plan made (steals not counted)."""
        return sum(1 for p in self._parts if not p.stolen)

    def done(self) -> int:
        """Bytes on disk over all parts."""
        return sum(self.table.done(p.slot) for p in self._parts)

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

    def progress(self) -> tuple[PartProgress, ...]:
        table = self.table
        return tuple(
            PartProgress(
                p.slot, p.start, table.end(p.slot), table.done(p.slot), p.state, p.attempts
            )
            for p in self
        )

    def observe(self, part: Part, now: float) -> None:
        """Sample the running ``part`` where its lane is now."""
        part.pace.observe(now, self.table.pos(part.slot), self.table.asked(part.slot))

    def lanes(self, now: float) -> list[LaneView]:
        """The running parts, as a steal or lag decision sees them."""
        return [self._view(p, now) for p in self if p.state == RUNNING]

    def _view(self, p: Part, now: float) -> LaneView:
        table, pos, pace = self.table, self.table.pos(p.slot), p.pace  # one read of pos
        return LaneView(
            p.slot,
            pos,
            table.end(p.slot),
            pace.rate,
            pace.age(now),
            not p.took_over,
            table.asked(p.slot),
            pace.quiet(now),
            pace.request_rate(now, pos, settle=CUT_QUIET),
            pace.recent,
        )

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
        thief = self._add(at, at, end)
        thief.stolen, thief.took_over = True, steal.takeover
        return thief

    def share(self, limit_rate: int | None) -> None:
        """Split ``limit_rate`` evenly among the running workers (they pace themselves)."""
        if limit_rate is None:
            return
        running = [p for p in self._parts if p.state == RUNNING]
        for part in running:
            self.table.set_cap(part.slot, max(1, limit_rate // len(running)))

    def _add(self, start: int, pos: int, end: int) -> Part:
        part = Part(slot=len(self._parts), start=start, retry=self.retry)
        self.table.set_start(part.slot, start)
        self.table.set_pos(part.slot, pos)
        self.table.set_end(part.slot, end)
        self._parts.append(part)
        return part
