"""The parts of one download, as the coordinator keeps them beside the counter table.

Each part is one slot of the shared counter table (where it starts, how far it got, where
it ends) plus what only the coordinator needs to know about it: its state, attempts, retry
policy, running worker and rate. ``Parts`` reads and writes both together: the records a
checkpoint saves, the progress a caller sees, the lanes a steal chooses among, and the
split a steal makes. When to launch, retry or steal is the coordinator's to decide.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..events import PartProgress
from ..http._retry import Retry
from ..store._resume import PartRecord
from ._counter_table import CounterTable
from ._steal import CUT_QUIET, LAG_WINDOW, LaneView, Steal
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
    attempt_pos: int = 0  # position when the running attempt started
    last_pos: int = 0  # position at the last sample
    last_change: float = 0.0  # when the position last moved (or the attempt started)
    launched: float = 0.0  # when the running attempt started
    rate: float = 0.0  # bytes/s of the running attempt, smoothed over samples
    sampled_at: float = 0.0  # when ``rate`` was last updated
    moved: float = 0.0  # bytes/s over the last LAG_WINDOW seconds
    history: deque[tuple[float, int]] = field(default_factory=deque)  # (time, pos) samples
    restarted_at: int = -1  # position when the part was last restarted for lagging
    request_end: int = -1  # the current request's end (``asked``) as last sampled; -1: none
    body_at: float = -1.0  # when a sample first saw that request's bytes; -1: not yet
    body_pos: int = 0  # position at the request's first sample, then at ``body_at``


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

    def lanes(self, now: float) -> list[LaneView]:
        """The running parts, as a steal sees them."""
        return [self._lane(p, now) for p in self if p.state == RUNNING]

    def _lane(self, p: Part, now: float) -> LaneView:
        table, pos = self.table, self.table.pos(p.slot)  # one read: the lane moves meanwhile
        return LaneView(
            p.slot,
            pos,
            table.end(p.slot),
            p.rate,
            now - p.launched,
            not p.took_over,
            table.asked(p.slot),
            now - p.last_change,
            _request_rate(p, pos, now),
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

    def sample(self, part: Part, now: float, pos: int) -> None:
        """Remember where the lane is now; ``moved`` becomes its rate over the last
        ``LAG_WINDOW`` seconds (or since the attempt started, when that is shorter)."""
        asked = self.table.asked(part.slot)
        if asked != part.request_end:  # a new request: time its body from its first bytes
            part.request_end, part.body_at, part.body_pos = asked, -1.0, pos
        elif part.body_at < 0 and pos > part.body_pos:
            part.body_at, part.body_pos = now, pos
        history = part.history
        history.append((now, pos))
        while len(history) > 2 and now - history[1][0] >= LAG_WINDOW:
            history.popleft()
        then, before = history[0]
        part.moved = (pos - before) / (now - then) if now > then else 0.0

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


def _request_rate(part: Part, pos: int, now: float) -> float:
    """Bytes/s of the current request's body since a sample first saw it move; 0 until
    that was ``CUT_QUIET`` ago."""
    if part.body_at < 0 or now - part.body_at < CUT_QUIET:
        return 0.0
    return (pos - part.body_pos) / (now - part.body_at)
