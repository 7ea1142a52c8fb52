"""No tail: idle workers take over slow or stuck lanes and split large ranges."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from blobdl import Downloader, Progress
from blobdl.engine._counter_table import CounterTable
from blobdl.engine._steal import SLOW_FACTOR, LaneView, choose
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file

Make = Callable[..., Blob]
BIG_PART = 4 * PART  # 256 KiB


def tail_settings(**overrides: object):  # type: ignore[no-untyped-def]
    base: dict[str, object] = {
        "min_part_size": BIG_PART,
        "max_part_size": BIG_PART,
        "min_steal_size": 16 * 1024,
        "progress_interval": 0.05,
    }
    base.update(overrides)
    return fast_settings(**base)


def part_ranges(server: ServerHandle) -> list[tuple[int, int]]:
    spans = []
    for text in server.stats()["ranges"]:
        if text and text != "bytes=0-0":
            first, last = text.removeprefix("bytes=").split("-")
            spans.append((int(first), int(last) + 1))
    return spans


def test_slow_lane_is_taken_over(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    blob = make(8 * BIG_PART, seed=61)
    # The first part's connection crawls at 20 KB/s (it would need 13 s); the rest are fast.
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": 1,
                       "action": "slow_conn", "bps": 20_000})  # fmt: skip
    result = Downloader(tail_settings()).download(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert result.steals >= 1 and result.retries == 0
    # Some request started inside a planned part: the slow lane's tail went elsewhere.
    assert any(start % BIG_PART for start, _ in part_ranges(server))


def test_lane_stuck_forever_is_taken_over_long_before_the_stall_timeout(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(8 * BIG_PART, seed=62)
    server.set_faults({"path": f"/files/{blob.name}", "times": 1, "action": "stall_at",
                       "offset": BIG_PART // 20, "hold": 120})  # fmt: skip
    # Were the stuck lane left to the stall timeout, it would be retried after 60 s.
    result = Downloader(tail_settings(stall_timeout=60)).download(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert result.retries == 0 and result.steals >= 1


def test_idle_connections_split_the_largest_ranges(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(2 * BIG_PART, seed=63)
    # Steps of 4 KiB: a lane's requests (16-64 KiB) are paced, not sent as one step at once.
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None,
                       "action": "rate", "bps": 400_000, "step": 4096})  # fmt: skip
    seen: list[Progress] = []
    result = Downloader(tail_settings(connections=4)).download(
        blob.url, tmp_path / "out", on_progress=seen.append
    )
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert result.parts == 2 and result.steals >= 2
    assert max(p.active for p in seen) > 2  # more lanes than planned parts were busy
    # Accounting never counts a byte twice: progress never passes the total.
    assert all(p.done <= blob.size for p in seen) and seen[-1].done == blob.size


def test_a_short_last_part_ending_first_makes_no_healthy_lane_look_slow(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    # Every request is paced alike; the last part is 1 KiB and ends first. Its lane's rate
    # is the bytes it received over its time: read as its position instead (the whole first
    # part ahead of its count), the best rate would dwarf the first lane's for a second,
    # and that lane would be taken over as slow. Neither a split (128 KiB left past its
    # first request, under two steal sizes) nor a long cut (a second's request) is due.
    # Samples a progress interval apart (0.1 s) keep a healthy lane's rate steady.
    blob = make(BIG_PART + 1024, seed=64)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None,
                       "action": "rate", "bps": 128 * 1024, "step": 512})  # fmt: skip
    settings = tail_settings(connections=2, min_steal_size=BIG_PART // 2, progress_interval=0.1)
    result = Downloader(settings).download(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert result.parts == 2 and result.steals == 0, part_ranges(server)


def test_stealing_can_be_turned_off(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    blob = make(2 * BIG_PART, seed=63)
    result = Downloader(tail_settings(connections=4, steal=False)).download(
        blob.url, tmp_path / "out"
    )
    assert result.steals == 0 and len(part_ranges(server)) == 2


# --- the decision, for any set of lanes -----------------------------------------------------


@st.composite
def lane_sets(draw: st.DrawFn) -> list[LaneView]:
    """Lanes that tile a blob: consecutive [start, end) with a position inside each."""
    lanes, start = [], 0
    for slot in range(draw(st.integers(1, 12))):
        end = start + draw(st.integers(1, 10**7))
        pos = draw(st.integers(start, end))
        rate = draw(st.floats(0, 10**8, allow_nan=False))
        lanes.append(LaneView(slot, pos, end, rate, draw(st.floats(0, 10, allow_nan=False))))
        start = end
    return lanes


@given(lanes=lane_sets(), best=st.floats(0, 10**8), min_split=st.integers(1, 10**6))
def test_a_steal_keeps_the_tiling_and_the_byte_count(
    lanes: list[LaneView], best: float, min_split: int
) -> None:
    table = CounterTable(len(lanes) + 1)
    starts = [0] + [lane.end for lane in lanes[:-1]]
    for lane, start in zip(lanes, starts, strict=True):
        table.set_start(lane.slot, start)
        table.set_pos(lane.slot, lane.pos)
        table.set_end(lane.slot, lane.end)
    before = sum(table.done(s) for s in range(len(lanes)))
    prefix = table.prefix()
    decision = choose(lanes, best, min_split, grace=1.0)
    if decision is None:
        return
    victim = lanes[decision.victim]
    assert victim.pos <= decision.at < victim.end
    if decision.cut:
        assert decision.at == victim.pos
    if decision.takeover:
        assert victim.age >= 1.0 and victim.rate * SLOW_FACTOR < best
    else:
        assert victim.end - decision.at >= min_split and decision.at - victim.pos >= min_split
    thief = len(lanes)
    table.set_start(thief, decision.at)
    table.set_pos(thief, decision.at)
    table.set_end(thief, victim.end)
    table.set_end(victim.slot, decision.at)
    assert sum(table.done(s) for s in range(len(lanes) + 1)) == before
    assert table.prefix() == prefix  # the hasher's view of what is on disk is unchanged


def test_nothing_is_stolen_from_healthy_lanes_with_little_left() -> None:
    lanes = [LaneView(0, 90, 100, 1e6, 5.0), LaneView(1, 195, 200, 1e6, 5.0)]
    assert choose(lanes, best_rate=1e6, min_split=10, grace=1.0) is None


def test_the_slowest_lane_is_taken_over_first() -> None:
    lanes = [
        LaneView(0, 0, 100, 5.0, 5.0),
        LaneView(1, 100, 200, 0.0, 5.0, quiet=1),
        LaneView(2, 200, 300, 1e6, 5),
    ]
    assert choose(lanes, best_rate=1e6, min_split=10, grace=1.0) == (1, 100, True, True)


def test_a_new_lane_gets_time_to_show_its_speed() -> None:
    lanes = [LaneView(0, 0, 100, 0.0, 0.5)]
    assert choose(lanes, best_rate=1e6, min_split=60, grace=1.0) is None


def test_a_lane_that_replaced_a_slow_one_is_not_replaced_in_turn() -> None:
    """If a range is slow for every connection, taking it over again and again only costs
    new connections; the replacement may still be split."""
    slow_again = LaneView(0, 0, 100, 1.0, 5.0, replaceable=False)
    assert choose([slow_again], best_rate=1e6, min_split=60, grace=1.0) is None
    assert choose([slow_again], best_rate=1e6, min_split=10, grace=1.0) == (0, 50, False, False)


def test_a_silent_lane_is_restarted_without_waiting_for_an_idle_worker(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """No worker is ever idle here (stealing is off), and the stall timeout is a minute:
    only the lag verdict (far below its peers' median) can rescue the silent lane in time.
    The restart is no failure: the retry budget is untouched."""
    part = 4 * BIG_PART  # 1 MiB, 2 s at the lanes' rate: the peers are busy throughout
    blob = make(4 * part, seed=64)
    server.set_faults(
        {"path": f"/files/{blob.name}", "times": 1, "action": "stall_at",
         "offset": part + part // 8, "hold": 120},
        {"path": f"/files/{blob.name}", "times": None, "action": "rate", "bps": 500_000},
    )  # fmt: skip
    settings = tail_settings(
        min_part_size=part, max_part_size=part, connections=4, steal=False, stall_timeout=60
    )
    result = Downloader(settings).download(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    # Rescued by the lag verdict, not by the stall timeout (which would count a retry). On
    # a loaded machine a busy lane may fall far enough behind to be restarted too: a second
    # steal, no failure.
    assert result.retries == 0 and result.steals >= 1
    # The second part was asked for again from where it went silent.
    assert (part + part // 8, 2 * part) in part_ranges(server)
