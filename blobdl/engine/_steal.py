"""Work stealing: what an idle worker should take over. Pure decisions, no I/O.

The tail of a parallel download is set by its slowest lane. When a worker is free and no
part is waiting, it either takes over a lane that is clearly slow (or stalled) from that
lane's current offset — the lane is ended, so the bytes are fetched once — or it splits the
largest remaining range in two and takes the second half. Either way the victim's end moves
in to where the thief starts, so the parts still tile the blob and no byte is counted twice.

A lane's current request is cut into only as a last resort (each byte should cross the
wire once): a split starts at or past the end of what the victim asked for, and a slow lane
that still moves keeps what it asked for. Only a lane that has all but stopped (under
``LAG_SHARE`` of the best rate) is cut at its position, discarding what was in flight; or,
once nothing is left to split, a lane whose request would still run for over ``CUT_LONG``
at the rate its body has come in. The coordinator cuts only a lane whose thread waits on
the network: its socket holds nothing unread, so the waste is what was still on its way.
``laggards`` is the other verdict on slow lanes: one far below its peers is restarted even
when no worker is idle.

Both decide over ``LaneView``s: snapshots of the running lanes, taken by ``_parts`` from
the counter table and each attempt's ``_rates.Pace``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from ._rates import LAG_WINDOW

# A lane this many times slower than the best one is worth replacing with a new connection.
SLOW_FACTOR = 4.0
# A lane under this share of its peers' median rate, both over the last _rates.LAG_WINDOW,
# is restarted without waiting for an idle worker (Ollama restarts a stream below 10 %).
LAG_SHARE = 0.1
# A cut throws away what is in flight: only a lane quiet this long is cut (a new lane still
# waiting for its first bytes on a loaded machine is not; its request may be on its way),
# past what the server takes to answer a request (``choose``'s ``answer_time``, at most
# CUT_LONG of it: a probe answered slowly once must not shield a stopped lane for long).
CUT_QUIET = 0.5
# When nothing is left to split, a request that would still run this long (seconds at the
# rate its body has come in) is cut and started again on an idle connection, where idle
# workers can split it: a lane that slowed down inside one long request (see _chunk) does
# not set the tail.
CUT_LONG = 2.0
# Under a rate limit, no lane starts while the running ones move at this share of it or more.
FILLED = 0.97
# ... nor while each of them slept at least this share of its time to stay under its share.
HELD = 0.1
# Otherwise as many start as would fill this many times the limit at the running lanes' mean
# rate: a lane's first second overstates it where the server sends a burst first (nginx's
# limit_rate allows a second's worth at once).
SPARE = 1.2
# ... where those the network holds back move at this share of the limit each, or more; where
# they are slower, as many as without a limit (as many slow connections as it takes).
WIDE = 0.3
MAX_LANES = 1 << 30  # more_lanes' "any number"


class LaneView(NamedTuple):
    """A running lane as a decision sees it: read at one moment, never updated."""

    slot: int  # the lane's slot in the counter table
    pos: int  # next byte it will write
    end: int  # one past its last byte
    rate: float  # bytes/s, smoothed over recent samples
    age: float  # seconds since its current attempt started
    replaceable: bool = True  # False for a lane that already replaced a slow one
    asked: int = 0  # one past the last byte its current request asked for (<= pos: none)
    quiet: float = 0.0  # seconds since its position last moved (or its attempt started)
    # bytes/s of its current request's body, timed from the sample that first saw its bytes;
    # 0 until that is CUT_QUIET old (the smoothed ``rate`` sags while a lane waits for a
    # status line, and one sample of a bursty server says little about a request's rest)
    request_rate: float = 0.0
    recent: float = 0.0  # bytes/s over the last _rates.LAG_WINDOW seconds
    steady: float = 0.0  # bytes/s over the last _rates.STEADY_WINDOW seconds
    sleeping: float = 0.0  # share of those seconds it slept to stay under its cap
    measured: float = 0.0  # seconds those two are over (0: no byte yet in its attempt)
    awaiting: bool = False  # its current request has shown no byte yet: it waits for its answer


class Steal(NamedTuple):
    victim: int  # slot that gives up the tail of its range
    at: int  # the thief takes [at, victim's end); the victim's end moves to ``at``
    takeover: bool  # True: the victim is slow and the thief replaces it
    cut: bool = False  # True: ``at`` is the victim's position and the victim is ended now


def choose(
    lanes: Sequence[LaneView],
    best_rate: float,
    min_split: int,
    grace: float,
    answer_time: float = 0.0,
) -> Steal | None:
    """The steal an idle worker should make, or None if nothing is worth taking.

    ``best_rate`` is the rate of the best lane lately; ``grace`` is how long a new attempt
    may take to show its speed before it can be judged slow; ``answer_time``, how long the
    server takes to answer a request (the probe's time to its status line): a lane waiting
    that long for its next one is not quiet.
    """
    open_lanes = [lane for lane in lanes if lane.end > _committed(lane)]
    slow = [
        lane
        for lane in lanes
        if lane.end > lane.pos
        and lane.replaceable
        and lane.age >= grace
        and lane.rate * SLOW_FACTOR < best_rate
    ]
    if slow:
        lane = min(slow, key=lambda lane: (lane.rate, -(lane.end - lane.pos)))
        steal = _takeover(lane, best_rate, patience(answer_time))
        if steal is not None:
            return steal
    if open_lanes:
        lane = max(open_lanes, key=lambda lane: lane.end - _committed(lane))
        remaining = lane.end - _committed(lane)
        if remaining >= 2 * min_split:
            return Steal(lane.slot, _committed(lane) + remaining // 2, takeover=False)
    return _cut_long(lanes, grace)


def more_lanes(limit: int | None, lanes: Sequence[LaneView], grace: float, patience: float) -> int:
    """How many more lanes may start now (a pending part, a retry or a steal), beside the
    running ``lanes``: any number, unless a rate ``limit`` binds.

    Every lane's share of a limit is the limit over the lanes. Where each running lane's
    share holds it back (it slept at least ``HELD`` of its time to stay under its cap), or
    the lanes move at ``FILLED`` of the limit, another lane fetches nothing more: it only
    takes a share from the others, and lanes spread over the blob all end at about the same
    moment. A download whose digest is checked hashes the blob's contiguous start as it
    lands (``_hasher``), and would then hash nearly all of it after its last byte (measured:
    0.2-0.4 s of a 512 MiB pull at 100 MB/s). So no lane starts then: the parts run in their
    order and the blob lands from its start. Otherwise, where the lanes the network holds
    back move at ``WIDE`` of the limit or more, as many start as would fill ``SPARE`` times
    the limit at the running lanes' mean rate; where they are slower (a server that caps
    each connection well below the limit), any number, as without a limit. A lane has not
    shown its rate until it has been measured for ``grace`` from its first bytes: nothing
    starts until it has (a server slow to answer is no sign of a slow network), unless it
    waited ``patience`` for its first bytes, and shows 0; with none running, one starts."""
    if limit is None:
        return MAX_LANES
    if not lanes:
        return 1
    if any(_unshown(lane, grace, patience) for lane in lanes):
        return 0
    flow = sum(lane.steady for lane in lanes)
    free = [lane.steady for lane in lanes if lane.sleeping < HELD]
    if not free or flow >= FILLED * limit:
        return 0
    if sum(free) < WIDE * limit * len(free):
        return MAX_LANES
    return max(1, math.ceil(SPARE * limit * len(lanes) / flow) - len(lanes))


def _unshown(lane: LaneView, grace: float, patience: float) -> bool:
    """Whether ``lane`` has yet to show its rate (``more_lanes``)."""
    return lane.age < grace or (lane.measured < grace and lane.quiet < patience)


def _cut_long(lanes: Sequence[LaneView], grace: float) -> Steal | None:
    """Nothing left to split, and a request that would still run for over ``CUT_LONG`` at
    its own body's rate: that lane is cut where it is and the thief starts again from there.
    A request not yet measured (``request_rate`` 0) is not judged: one still waiting for its
    status line or its first bytes is the quiet cut's to judge (``_takeover``)."""
    long = [
        lane
        for lane in lanes
        if lane.replaceable and lane.age >= grace and _in_flight(lane) > CUT_LONG
    ]
    if not long:
        return None
    lane = max(long, key=_in_flight)
    return Steal(lane.slot, lane.pos, takeover=True, cut=True)


def _in_flight(lane: LaneView) -> float:
    """Seconds the lane's current request still has to run at that request's rate (0.0
    while the request is not timed yet)."""
    if lane.request_rate <= 0:
        return 0.0
    return max(0, _committed(lane) - lane.pos) / lane.request_rate


def _committed(lane: LaneView) -> int:
    """Where the lane's current request ends: the bytes up to there are on their way."""
    return min(lane.end, max(lane.pos, lane.asked))


def _takeover(lane: LaneView, best_rate: float, patience: float) -> Steal | None:
    """A slow lane that still moves keeps the request it is in (its bytes are on their way)
    and the thief starts after it; only a lane that has all but stopped (quiet for
    ``patience`` seconds) is cut."""
    committed = _committed(lane)
    if lane.rate < LAG_SHARE * best_rate and lane.quiet >= patience:
        return Steal(lane.slot, lane.pos, takeover=True, cut=True)
    if committed >= lane.end:
        return None  # all it has left is on its way
    return Steal(lane.slot, committed, takeover=True)


def patience(answer_time: float) -> float:
    """How long a lane may go without a byte before its silence is no longer the server's
    usual wait for an answer (``answer_time``: the probe's, at most ``CUT_LONG`` of it)."""
    return CUT_QUIET + min(answer_time, CUT_LONG)


def answer_wait(answer_time: float) -> float:
    """How long a lane awaiting its request's answer is not judged lagging: twice what the
    server took to answer the probe (at most ``CUT_LONG`` of it), and the lag window beside
    it. A server slow to answer makes every lane wait so between two requests; one quick to
    answer leaves a lane silent that long only if it is lost (on loopback: ~0.15 s, as a
    silent lane was always judged)."""
    return 2 * min(answer_time, CUT_LONG) + LAG_WINDOW


def laggards(lanes: Sequence[LaneView], grace: float, patience: float) -> list[LaneView]:
    """The lanes far below their peers' median, in the order given: the peers are the lanes
    that have run for ``grace`` (a new attempt is still connecting), each judged among them.
    A lane awaiting its current request's answer is silent as the server makes every lane
    wait, not lagging, until that wait is past ``patience`` (``answer_wait(answer_time)``):
    restarted sooner, its request was thrown away and asked for again, to wait as long."""
    peers = [lane for lane in lanes if lane.age >= grace]
    rates = [lane.recent for lane in peers]
    return [
        lane
        for lane in peers
        if lagging(lane.recent, rates) and not (lane.awaiting and lane.quiet < patience)
    ]


def lagging(rate: float, peers: Sequence[float]) -> bool:
    """Whether a lane moving at ``rate`` (bytes/s over the last _rates.LAG_WINDOW) is far below the
    median of its ``peers`` (the running lanes past their grace, itself included)."""
    if len(peers) < 2:
        return False
    return rate < LAG_SHARE * _median(peers)


def _median(values: Sequence[float]) -> float:
    """``statistics.median``'s answer, without its module (and ``fractions``, ``decimal``):
    ~3 ms of every run's start, for this one call."""
    ordered, mid = sorted(values), len(values) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
