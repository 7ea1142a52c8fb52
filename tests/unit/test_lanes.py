"""The pure decisions behind lanes: chunk sizes, the slow-lane verdicts, where a steal cuts."""

from __future__ import annotations

import pytest

from blobdl.engine._chunk import MAX_CHUNK, TARGET_SECONDS, next_chunk
from blobdl.engine._failure import AGAIN, FULL, RETRY, Verdict
from blobdl.engine._lane import _Pacer
from blobdl.engine._parts import Counts, Parts
from blobdl.engine._pinned import Pinned
from blobdl.engine._rates import LAG_WINDOW
from blobdl.engine._steal import (
    CUT_LONG,
    LAG_SHARE,
    MAX_LANES,
    LaneView,
    Steal,
    answer_wait,
    choose,
    laggards,
    lagging,
    more_lanes,
)
from blobdl.errors import RemoteChanged
from blobdl.http._remote import Remote
from blobdl.http._retry import Retry
from blobdl.store._resume import PartRecord

MiB = 1024 * 1024
FIRST = 4 * MiB


@pytest.mark.parametrize(
    ("previous", "rate", "left", "expected"),
    [
        (0, 0.0, 100 * MiB, FIRST),  # the first chunk: the rate is unknown
        (0, 0.0, MiB, MiB),  # never past the lane's end
        (FIRST, 8 * MiB, 100 * MiB, 8 * MiB),  # grows at most twofold
        (8 * MiB, 8 * MiB, 100 * MiB, int(8 * MiB * TARGET_SECONDS)),  # ~TARGET_SECONDS' worth
        (FIRST, 100 * MiB, 100 * MiB, 8 * MiB),  # a fat link still grows gradually
        (64 * MiB, 10**10, 10**12, MAX_CHUNK),  # capped: overhead is nothing by then
        (8 * MiB, 1000.0, 100 * MiB, FIRST),  # a crawling lane still asks for the first size
        (8 * MiB, 8 * MiB, 3 * MiB, 3 * MiB),  # the lane's last bytes
        (8 * MiB, 0.0, 0, 1),  # degenerate: at least one byte (the caller stops before)
    ],
)
def test_chunk_sizes(previous: int, rate: float, left: int, expected: int) -> None:
    assert next_chunk(previous, rate, left, FIRST) == expected


@pytest.mark.parametrize(
    ("previous", "rate", "left", "overhead", "expected"),
    [
        # 50 ms to the status line: a chunk holds 5 s of rate (100 MiB), not 8 MiB ...
        (FIRST, 20 * MiB, 500 * MiB, 0.05, 100 * MiB),
        # ... and a remainder shorter than that comes with it, not in a request of its own
        (FIRST, 20 * MiB, 124 * MiB, 0.05, 124 * MiB),
        (FIRST, 20 * MiB, 201 * MiB, 0.05, 100 * MiB),
        # past MAX_CHUNK too: 10 s of 40 MiB/s
        (64 * MiB, 40 * MiB, 10 * 1024 * MiB, 0.1, 400 * MiB),
        # 10 ms is no reason: 1 s of overhead-free rate is under the 2 s target
        (FIRST, 20 * MiB, 500 * MiB, 0.01, 8 * MiB),
        # a chunk read in 2 ms (out of socket buffers) measured no rate worth 30 ms of trust
        (FIRST, 2000 * MiB, 1024 * MiB, 0.03, 8 * MiB),
        # the first chunk knows no overhead yet
        (0, 0.0, 500 * MiB, 0.05, FIRST),
    ],
)
def test_a_slow_to_answer_server_gets_longer_chunks(
    previous: int, rate: float, left: int, overhead: float, expected: int
) -> None:
    assert next_chunk(previous, rate, left, FIRST, overhead) == expected


@pytest.mark.parametrize(
    ("rate", "peers", "expected"),
    [
        (0.0, [0.0, 8e6, 8e6, 8e6], True),  # silent among moving peers
        (0.5e6, [0.5e6, 8e6, 8e6], True),  # far below the median
        (0.9e6, [0.9e6, 8e6, 8e6], False),  # slower, not lagging (>= 10 %)
        (0.0, [0.0, 0.0, 8e6], False),  # the median itself is 0: everyone is slow
        (0.0, [0.0], False),  # no peers to compare with
        (1.0, [1.0, 100.0], True),  # two lanes: the median is their mean
        (LAG_SHARE * 8e6, [LAG_SHARE * 8e6, 8e6, 8e6], False),  # exactly at the share
        (2.0, [100.0, 2.0, 50.0, 3.0], True),  # in any order: the median of 4 is 26.5
        (3.0, [100.0, 2.0, 50.0, 3.0], False),  # above a tenth of it
    ],
)
def test_lagging_verdict(rate: float, peers: list[float], expected: bool) -> None:
    assert lagging(rate, peers) is expected


def test_laggards_are_judged_among_the_lanes_past_their_grace() -> None:
    lanes = [
        LaneView(0, 0, 100, 8e6, 5.0, recent=8e6),
        LaneView(1, 100, 200, 8e6, 5.0, recent=0.1e6),  # far below the others
        LaneView(2, 200, 300, 0.0, 0.1, recent=0.0),  # still connecting: no peer, not judged
        LaneView(3, 300, 400, 8e6, 5.0, recent=8e6),
    ]
    assert [lane.slot for lane in laggards(lanes, grace=0.5, patience=0.9)] == [1]
    assert laggards(lanes[1:3], grace=0.5, patience=0.9) == []  # one past its grace: no peers


def test_a_lane_awaiting_its_answer_no_longer_than_the_server_takes_is_no_laggard() -> None:
    """Between two requests a lane waits for the next status line, silent, while its peers
    stream: the server's usual wait (past ``answer_wait``, twice the probe's answer time and
    the lag window, it is lag). Restarted sooner, its request was thrown away and asked for
    again on a new connection, to wait as long (a loaded CI saw it)."""
    streaming = [LaneView(n, 0, 100, 8e6, 5.0, recent=8e6) for n in (0, 2, 3)]
    waiting = LaneView(1, 100, 200, 4e6, 5.0, asked=200, quiet=0.6, recent=0.0, awaiting=True)
    assert laggards([*streaming, waiting], grace=0.5, patience=0.9) == []
    waited = waiting._replace(quiet=1.0)  # past the patience: lagging after all
    assert [lane.slot for lane in laggards([*streaming, waited], grace=0.5, patience=0.9)] == [1]
    slow = waiting._replace(recent=0.1e6, awaiting=False)  # a stream far below the others
    assert [lane.slot for lane in laggards([*streaming, slow], grace=0.5, patience=0.9)] == [1]


FAST = 8e6


@pytest.mark.parametrize(
    ("lanes", "expected"),
    [
        # A split starts at or past the end of the victim's request: [80, 100) is on its way.
        ([LaneView(0, 0, 200, FAST, 5.0, asked=100)], Steal(0, 150, False, False)),
        # Nothing asked (yet): the split is the middle of what is left.
        ([LaneView(0, 0, 200, FAST, 5.0)], Steal(0, 100, False, False)),
        # All that is left is on its way: nothing to split.
        ([LaneView(0, 0, 200, FAST, 5.0, asked=200)], None),
        # A slow lane that still moves keeps its request; the thief starts after it.
        (
            [
                LaneView(0, 0, 10**6, FAST / 8, 5.0, asked=500),
                LaneView(1, 10**6, 2 * 10**6, FAST, 5.0),
            ],
            Steal(0, 500, True, False),
        ),
        # A lane that has all but stopped (under LAG_SHARE of the best) is cut where it is.
        (
            [
                LaneView(0, 0, 10**6, 1000.0, 5.0, asked=10**5, quiet=1.0),
                LaneView(1, 10**6, 2 * 10**6, FAST, 5.0),
            ],
            Steal(0, 0, True, True),
        ),
        # ... but not one that has been quiet only briefly: its bytes may be on their way.
        (
            [
                LaneView(0, 0, 10**6, 0.0, 5.0, asked=10**5, quiet=0.1),
                LaneView(1, 10**6, 2 * 10**6, FAST, 5.0),
            ],
            Steal(0, 10**5, True, False),
        ),
        # A silent lane is cut at its position.
        (
            [
                LaneView(0, 10, 10**6, 0.0, 5.0, asked=10**5, quiet=1.0),
                LaneView(1, 10**6, 2 * 10**6, FAST, 5.0),
            ],
            Steal(0, 10, True, True),
        ),
    ],
)
def test_where_a_steal_cuts(lanes: list[LaneView], expected: Steal | None) -> None:
    assert choose(lanes, best_rate=FAST, min_split=10, grace=1.0) == expected


LONG = int(3 * FAST)  # bytes a lane moving at FAST needs 3 s for: over CUT_LONG
SHORT = int(FAST)  # ... and 1 s


@pytest.mark.parametrize(
    ("lanes", "expected"),
    [
        # Nothing left to split, and one request that would run 3 s more: cut where it is.
        (
            [LaneView(0, 100, 100 + LONG, FAST, 5.0, asked=100 + LONG, request_rate=FAST)],
            Steal(0, 100, True, True),
        ),
        # One that ends within CUT_LONG keeps its request.
        ([LaneView(0, 100, 100 + SHORT, FAST, 5.0, asked=100 + SHORT, request_rate=FAST)], None),
        # A range left to split goes first: a split wastes nothing.
        (
            [
                LaneView(0, 0, LONG, FAST, 5.0, asked=LONG, request_rate=FAST),
                LaneView(1, 0, 200, FAST, 5.0),
            ],
            Steal(1, 100, False, False),
        ),
        # Not a lane that already replaced another, nor one still in its grace.
        ([LaneView(0, 0, LONG, FAST, 5.0, False, asked=LONG, request_rate=FAST)], None),
        ([LaneView(0, 0, LONG, FAST, 0.5, asked=LONG, request_rate=FAST)], None),
        # Judged at its request's own rate, not the smoothed one that sagged while the lane
        # waited for the status line or a bursty server paused: 1 s left, not 8.
        (
            [LaneView(0, 100, 100 + SHORT, FAST / 8, 5.0, asked=100 + SHORT, request_rate=FAST)],
            None,
        ),
        # Nor a request not yet measured (still waiting for its first bytes): the quiet cut's.
        ([LaneView(0, 100, 100 + SHORT, 0.0, 5.0, asked=100 + SHORT)], None),
        # The longest of several.
        (
            [
                LaneView(0, 0, LONG, FAST, 5.0, asked=LONG, request_rate=FAST),
                LaneView(1, 0, 2 * LONG, FAST, 5.0, asked=2 * LONG, request_rate=FAST),
            ],
            Steal(1, 0, True, True),
        ),
    ],
)
def test_a_request_that_would_set_the_tail_is_cut_once_nothing_is_left_to_split(
    lanes: list[LaneView], expected: Steal | None
) -> None:
    assert CUT_LONG < 3.0
    assert choose(lanes, best_rate=FAST, min_split=10, grace=1.0) == expected


def test_a_slow_lane_whose_rest_is_in_flight_is_left_alone_and_others_split() -> None:
    lanes = [
        LaneView(0, 0, 500, FAST / 8, 5.0, asked=500),
        LaneView(1, 500, 1500, FAST, 5.0, asked=600),
    ]
    assert FAST / 8 >= LAG_SHARE * FAST  # slow, but it moves: its last bytes are on their way
    assert choose(lanes, best_rate=FAST, min_split=10, grace=1.0) == Steal(1, 1050, False)


def test_a_split_moves_up_to_what_the_victim_asked_for_meanwhile() -> None:
    """The victim may publish a longer request between the decision and the split (it had
    not seen its new end yet): the split moves up so that none of that is thrown away."""
    parts = Parts([PartRecord(start=0, end=1000, pos=100)], connections=2, retry=Retry())
    parts.table.set_asked(0, 700)
    thief = parts.split(Steal(0, 500, takeover=False))
    table = parts.table
    assert (table.end(0), table.start(thief.slot), table.end(thief.slot)) == (700, 700, 1000)


def test_a_cut_ignores_what_the_victim_asked_for() -> None:
    parts = Parts([PartRecord(start=0, end=1000, pos=100)], connections=2, retry=Retry())
    parts.table.set_asked(0, 700)
    thief = parts.split(Steal(0, 100, takeover=True, cut=True))
    assert (parts.table.end(0), parts.table.start(thief.slot)) == (100, 100)


def test_a_refresh_keeps_the_answer_time_the_probe_took_before_any_lane_ran() -> None:
    """A refresh probes while other lanes run: its late status line is this machine's load,
    not the server's, and must not make every later attempt ask for all of its range."""
    remote = Remote("u", "f", 9, True, '"e"', None, None, (), answer_time=0.001)
    pinned = Pinned(remote, lambda url: remote._replace(answer_time=0.2))
    pinned.refresh()
    assert pinned.generation == 1 and pinned.remote.answer_time == 0.001


def test_a_refresh_that_finds_another_blob_keeps_the_pinned_one() -> None:
    remote = Remote("u", "f", 9, True, '"e"', None, None, ())
    pinned = Pinned(remote, lambda url: remote._replace(etag='"other"'))
    with pytest.raises(RemoteChanged):
        pinned.refresh()
    assert pinned.generation == 0 and pinned.remote == remote


# --- the board: what a wake-up asks costs the lanes, not the parts (issue #20, item 9) -------


class _Lane:
    """A stand-in for a running lane's handle (the board only keeps it)."""

    sentinel = None


def _many(count: int) -> Parts:
    return Parts([PartRecord(i, i + 1, i) for i in range(count)], connections=4, retry=Retry())


def _no_walks(monkeypatch: pytest.MonkeyPatch) -> None:
    def walk(self: Parts) -> None:
        raise AssertionError("a wake-up walked every part")

    monkeypatch.setattr(Parts, "__iter__", walk)


def test_parts_start_in_order_then_retries_when_due(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _many(10)
    _no_walks(monkeypatch)
    first = [parts.next_ready(0.0) for _ in range(3)]
    assert [p.slot for p in first if p is not None] == [0, 1, 2]
    for part in first:
        assert part is not None
        part.start_attempt(0.0, Counts(part.start, 0), 0, _Lane())  # type: ignore[arg-type]
    assert parts.running() == 3 and [p.slot for p in parts.runners()] == [0, 1, 2]
    first[1].wait(Verdict(RETRY, Retry(), 5.0), now=0.0)  # part 1 backs off until t=5
    first[0].finish()
    assert parts.running() == 1 and parts.next_retry() == 5.0
    assert parts.next_ready(1.0).slot == 3  # type: ignore[union-attr]  # not due yet: in order
    assert parts.next_ready(6.0).slot == 1  # type: ignore[union-attr]  # due, and earlier
    assert parts.next_retry() is None and not parts.finished()


def test_a_part_asking_for_the_first_time_counts_as_receiving_for_the_others() -> None:
    """A refused part is waited for uncounted while another runs whose first request is
    under way (a server full at the start let it in, maybe), as while another receives;
    a part running again after a refusal or a failure asks for nobody."""
    parts = _many(3)
    a, b, c = (parts.next_ready(0.0) for _ in range(3))
    assert a is not None and b is not None and c is not None
    for part in (a, b):
        part.start_attempt(0.0, Counts(part.start, 0), 0, _Lane())  # type: ignore[arg-type]
    assert a.asking and parts.asking() and parts.others_receiving(b)
    assert not c.asking  # not running
    a.wait(Verdict(FULL, Retry().full(), 0.01), now=0.0)
    assert not parts.others_receiving(b) and parts.others_receiving(c)
    a.start_attempt(0.0, Counts(a.start, 0), 0, _Lane())  # type: ignore[arg-type]
    assert not a.asking and not parts.others_receiving(b)  # a retry asks for nobody
    b.wait(Verdict(RETRY, Retry().increment(0), 0.01), now=0.0)
    b.start_attempt(0.0, Counts(b.start, 0), 0, _Lane())  # type: ignore[arg-type]
    assert not parts.asking() and not parts.others_receiving(a)


def test_a_wait_for_a_full_server_is_a_retried_attempt_not_a_failure_of_the_policy() -> None:
    """A part refused by a server with no room for one more connection (``FULL``) tried
    again: the download's retries count it, as a user reads them, while its policy does not
    (``Retry.full``); a refresh (``AGAIN``) is neither."""
    parts = _many(3)
    part = parts.next_ready(0.0)
    assert part is not None
    part.start_attempt(0.0, Counts(part.start, 0), 0, _Lane())  # type: ignore[arg-type]
    part.wait(Verdict(FULL, Retry().full(), 0.01), now=0.0)
    assert part.retries == 1 and part.retry.failures == 0
    part.wait(Verdict(AGAIN, Retry(), 0.0), now=0.0)
    assert part.retries == 1


def test_done_parts_and_a_stop_keep_the_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = Parts([PartRecord(0, 5, 5), PartRecord(5, 9, 5)], connections=1, retry=Retry())
    _no_walks(monkeypatch)
    part = parts.next_ready(0.0)
    assert part is not None and part.slot == 1  # part 0 was done already (a resume)
    part.start_attempt(0.0, Counts(5, 0), 0, _Lane())  # type: ignore[arg-type]
    part.worker = None
    parts.stop()  # a running part is pending again, at the back of the queue
    assert parts.running() == 0 and parts.next_ready(0.0) is part
    part.finish()
    assert parts.finished() and parts.next_ready(0.0) is None


@pytest.mark.parametrize(("quiet", "cut"), [(0.6, False), (0.85, False), (1.0, True)])
def test_a_lane_is_quiet_only_past_what_the_server_takes_to_answer(quiet: float, cut: bool) -> None:
    """A server that takes 0.4 s to every status line (a long round trip, a slow origin):
    a lane waiting for its next one is not all but stopped until it has waited CUT_QUIET
    past that; before, a loaded machine's 0.1 s of lag cut every lane's next request."""
    lanes = [
        LaneView(0, 0, 10**6, 0.0, 5.0, asked=10**5, quiet=quiet),
        LaneView(1, 10**6, 2 * 10**6, FAST, 5.0),
    ]
    steal = choose(lanes, best_rate=FAST, min_split=10, grace=1.0, answer_time=0.4)
    assert steal == (Steal(0, 0, True, True) if cut else Steal(0, 10**5, True, False))


@pytest.mark.parametrize("cap", [1, 7, 50, 750, 10_240, 10**9])
def test_a_capped_read_takes_no_more_than_a_slice_of_the_cap(cap: int) -> None:
    """What one read may take under a cap: a tenth of a second's worth, or one byte, so the
    sleep after it (what the coordinator sees as no progress) is never longer than that."""
    took = _Pacer(lambda _: None).limit(1 << 20, cap)
    assert took >= 1 and took / cap <= max(_Pacer.SLICE, 1 / cap)


LIMIT = 100_000_000
PATIENCE = 1.0  # seconds a lane may await its first bytes and still be new


def _lane(
    steady: float, sleeping: float, age: float = 5.0, quiet: float = 0.0, measured: float = 1.0
) -> LaneView:
    return LaneView(
        0, 0, 100, steady, age, quiet=quiet, steady=steady, sleeping=sleeping, measured=measured
    )


@pytest.mark.parametrize(
    ("limit", "lanes", "expected"),
    [
        (None, [_lane(1e6, 0.0)], MAX_LANES),  # no limit: as many as there are connections
        (LIMIT, [], 1),  # the first lane
        (LIMIT, [_lane(1e6, 0.0), _lane(0.0, 0.0, age=0.1)], 0),  # one has not shown its rate
        (LIMIT, [_lane(0.8 * LIMIT, 0.9)], 0),  # its share holds it back: another adds nothing
        (LIMIT, [_lane(0.5 * LIMIT, 0.5), _lane(0.5 * LIMIT, 0.5)], 0),  # both held back
        (LIMIT, [_lane(0.98 * LIMIT, 0.0)], 0),  # the limit is filled
        (LIMIT, [_lane(0.6 * LIMIT, 0.0)], 1),  # the network holds it back: one more fills it
        (LIMIT, [_lane(0.4 * LIMIT, 0.0), _lane(0.4 * LIMIT, 0.5)], 1),  # one of them is free
        (LIMIT, [_lane(0.35 * LIMIT, 0.0)], 3),  # 1.2 × the limit at 35 %: four lanes
        (LIMIT, [_lane(0.1 * LIMIT, 0.0)], MAX_LANES),  # slow connections: as without a limit
        (LIMIT, [_lane(0.0, 0.0, quiet=5.0, measured=0.0)], MAX_LANES),  # nothing comes yet
        # a server slow to answer: no byte yet, but not for long (PATIENCE)
        (LIMIT, [_lane(0.0, 0.0, age=0.8, quiet=0.8, measured=0.0)], 0),
        (LIMIT, [_lane(0.1 * LIMIT, 0.0, age=0.9, measured=0.1)], 0),  # bytes since 0.1 s
        (LIMIT, [_lane(0.1 * LIMIT, 0.0, age=5.0, quiet=3.0, measured=0.1)], MAX_LANES),
    ],
)
def test_how_many_lanes_may_start_beside_the_running_ones(
    limit: int | None, lanes: list[LaneView], expected: int
) -> None:
    """Under a rate limit the running lanes fill, none (the blob then lands in order, from
    its start); where the network holds them back, enough to fill it."""
    assert more_lanes(limit, lanes, grace=0.3, patience=PATIENCE) == expected


def test_a_lane_is_waited_for_as_long_as_the_server_takes_to_answer() -> None:
    """On loopback (an answer in ~1 ms) a lost request is judged after about the lag window,
    as a silent lane always was; against a server that takes 0.4 s, after twice that."""
    assert answer_wait(0.001) == pytest.approx(LAG_WINDOW + 0.002)
    assert answer_wait(0.4) == pytest.approx(0.8 + LAG_WINDOW)
    assert answer_wait(60.0) == answer_wait(CUT_LONG)  # a probe answered slowly once
