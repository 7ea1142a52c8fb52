"""The batch's connection budget (``blobdl/batch/_budget.py``): pure bookkeeping, no I/O."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from blobdl.batch._budget import Budget
from blobdl.batch._sizing import within_limit


def test_a_seat_kept_alive_to_the_host_is_taken_first_and_costs_nothing_more() -> None:
    budget = Budget(total=2, per_host=2, seats=2)
    budget.start(0, "a")
    budget.end(0, "a")  # idle, its connection to a kept alive
    budget.start(1, "b")
    assert budget.free("a") == 0  # both connections are held
    assert budget.seat_for("a") == 0  # ... but the kept one serves a again
    assert budget.seat_for("c") == 0  # and another host takes it over (it lets a go)


def test_a_seat_holding_nothing_needs_room() -> None:
    budget = Budget(total=2, per_host=1, seats=3)
    budget.start(0, "a")
    assert budget.seat_for("a") is None  # per host: one
    assert budget.seat_for("b") == 1
    budget.start(1, "b")
    assert budget.seat_for("c") is None  # in total: two


def test_switching_a_kept_connection_to_another_host_keeps_to_that_hosts_cap() -> None:
    budget = Budget(total=3, per_host=1, seats=3)
    budget.start(0, "a")
    budget.start(1, "b")
    budget.end(1, "b")
    assert budget.seat_for("a") is None  # a's one connection is busy, b's idle one may not switch


def test_a_seat_redirected_to_another_host_is_counted_there_or_holds_nothing_until_it_may() -> None:
    budget = Budget(total=4, per_host=1, seats=3)
    budget.start(0, "a")
    budget.start(1, "b")
    assert budget.hop(0, "a")  # its own host: nothing moves
    assert not budget.hop(0, "b")  # b's one connection is busy: seat 0 waits, holding none
    assert (budget.used(), budget.free("a"), budget.free("b")) == (1, 1, 0)
    budget.end(1, "b")  # b's seat is done: its kept connection still counts
    assert not budget.hop(0, "b")
    budget.end(1, None)  # let go
    assert budget.hop(0, "b") and (budget.used(), budget.free("b")) == (1, 0)
    budget.end(0, "b")
    assert (budget.used(), budget.free("a")) == (1, 1)


def test_idle_connections_make_room_for_a_large_item() -> None:
    budget = Budget(total=4, per_host=4, seats=3)
    for seat in range(3):
        budget.start(seat, "a")
        budget.end(seat, "a")
    assert budget.free("a") == 1
    assert budget.droppable("a", 1) == []  # room enough already
    chosen = budget.droppable("a", 3)
    assert len(chosen) == 2
    for seat in chosen:
        budget.end(seat, None)
    assert budget.grant(7, "a", wanted=8) == 3  # as much as there is, not more than wanted


def test_kept_connections_to_the_host_go_before_others() -> None:
    budget = Budget(total=3, per_host=1, seats=3)
    budget.start(0, "b")
    budget.end(0, "b")
    budget.start(1, "a")
    budget.end(1, "a")
    # a is at its cap: only its own idle connection makes room for a
    assert budget.droppable("a", 1) == [1]


def test_a_grant_rises_as_far_as_room_and_wants_go() -> None:
    budget = Budget(total=4, per_host=4, seats=2)
    budget.start(0, "a")
    budget.start(1, "a")
    assert budget.grant(5, "a", wanted=8) == 2
    assert budget.wants_more() == [5]
    budget.end(0, None)
    assert budget.more(5) == 3
    budget.end(1, None)
    assert budget.more(5) == 4 and budget.free("a") == 0
    budget.finish(5)
    assert budget.free("a") == 4 and budget.used() == 0


def test_the_rate_limit_is_shared_lane_by_lane_among_what_runs() -> None:
    budget = Budget(total=8, per_host=8, seats=2)
    assert budget.rates(1000) == ({}, {})
    budget.start(0, "a")
    budget.grant(9, "a", wanted=3)
    seats, items = budget.rates(1000)
    assert seats == {0: 250} and items == {9: 750}
    budget.end(0, "a")  # an idle seat gets none: its share goes to what still runs
    assert budget.rates(1000) == ({}, {9: 1000})
    assert budget.rates(None) == ({}, {})


@given(
    limit=st.integers(1, 40),
    total=st.integers(1, 24),
    busy=st.integers(0, 24),
    wanted=st.lists(st.integers(1, 8), max_size=4),
)
def test_shares_of_a_limit_never_add_up_past_it_when_the_budget_is_sized_for_it(
    limit: int, total: int, busy: int, wanted: list[int]
) -> None:
    """Each lane gets at least 1 byte/s: a budget of no more connections than the limit has
    bytes/s (``within_limit``) is what keeps their sum within the limit, however it fills."""
    total, per_host = within_limit(limit, total, total)
    assert 1 <= total <= limit and per_host <= total
    budget = Budget(total=total, per_host=per_host, seats=total)
    for seat in range(min(busy, total)):
        budget.start(seat, "a")
    for item, lanes in enumerate(wanted):
        if budget.free("a"):
            budget.grant(100 + item, "a", wanted=lanes)
    seats, items = budget.rates(limit)
    assert sum(seats.values()) + sum(items.values()) <= limit
    assert all(rate >= 1 for rate in [*seats.values(), *items.values()])
    assert within_limit(None, total, per_host) == (total, per_host)


def test_a_large_item_leaves_room_for_items_waiting_for_seats_but_gets_one_lane() -> None:
    budget = Budget(total=4, per_host=4, seats=4)
    assert budget.grant(1, "a", wanted=8, leave=3) == 1
    assert budget.grant(2, "a", wanted=8, leave=2) == 1  # 3 free, 2 left to others
    budget.finish(1)
    budget.finish(2)
    assert budget.grant(3, "a", wanted=2, leave=0) == 2
    budget.start(0, "a")
    budget.start(1, "a")
    assert budget.grant(4, "a", wanted=8, leave=5) == 0  # no room at all: none


def test_a_large_item_redirected_elsewhere_is_counted_there_or_holds_nothing_until_it_may() -> None:
    """Its own child's probe was redirected before any lane connected: its lanes go there."""
    budget = Budget(total=8, per_host=2, seats=2)
    assert budget.grant(5, "a", wanted=4) == 2
    budget.start(0, "b")
    budget.start(1, "b")
    assert budget.move(5, "a") == 2  # its own host: nothing moves
    assert budget.move(5, "b") == 0  # b is full: it waits, holding none
    assert (budget.used(), budget.free("a"), budget.free("b")) == (2, 2, 0)
    assert budget.wants_more() == []  # nothing more for it at b meanwhile (``more``)
    assert budget.rates(100) == ({0: 50, 1: 50}, {})  # no lane of it runs
    budget.end(0, None)
    assert budget.move(5, "b", leave=0) == 1 and budget.host_of(5) == "b"
    assert (budget.used(), budget.free("b"), budget.wants_more()) == (2, 0, [5])
    budget.end(1, None)
    assert budget.more(5) == 2
    budget.finish(5)
    assert budget.used() == 0
