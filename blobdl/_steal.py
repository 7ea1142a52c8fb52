"""Work stealing: what an idle worker should take over. Pure decisions, no I/O.

The tail of a parallel download is set by its slowest lane. When a worker is free and no
part is waiting, it either takes over a lane that is clearly slow (or stalled) from that
lane's current offset — the lane is ended, so the bytes are fetched once — or it splits the
largest remaining range in two and takes the second half. Either way the victim's end moves
in to where the thief starts, so the parts still tile the blob and no byte is counted twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

# A lane this many times slower than the best one is worth replacing with a new connection.
SLOW_FACTOR = 4.0


class Lane(NamedTuple):
    slot: int  # the lane's slot in the counter table
    pos: int  # next byte it will write
    end: int  # one past its last byte
    rate: float  # bytes/s, smoothed over recent samples
    age: float  # seconds since its current attempt started
    replaceable: bool = True  # False for a lane that already replaced a slow one


class Steal(NamedTuple):
    victim: int  # slot that gives up the tail of its range
    at: int  # the thief takes [at, victim's end); the victim's end moves to ``at``
    takeover: bool  # True: ``at`` is the victim's position and the victim is ended


def choose(lanes: Sequence[Lane], best_rate: float, min_split: int, grace: float) -> Steal | None:
    """The steal an idle worker should make, or None if nothing is worth taking.

    ``best_rate`` is the rate of the best lane lately; ``grace`` is how long a new attempt
    may take to show its speed before it can be judged slow.
    """
    open_lanes = [lane for lane in lanes if lane.end > lane.pos]
    slow = [
        lane
        for lane in open_lanes
        if lane.replaceable and lane.age >= grace and lane.rate * SLOW_FACTOR < best_rate
    ]
    if slow:
        lane = min(slow, key=lambda lane: (lane.rate, -(lane.end - lane.pos)))
        return Steal(lane.slot, lane.pos, takeover=True)
    if not open_lanes:
        return None
    lane = max(open_lanes, key=lambda lane: lane.end - lane.pos)
    remaining = lane.end - lane.pos
    if remaining < 2 * min_split:
        return None
    return Steal(lane.slot, lane.pos + remaining // 2, takeover=False)
