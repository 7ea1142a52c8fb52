"""How fast a lane moves, measured from sampled positions: the rates the decisions read."""

from __future__ import annotations

import pytest

from blobdl.engine._rates import LAG_WINDOW, STEADY_WINDOW, BestRate, Pace


def test_the_first_sample_of_an_attempt_is_taken_as_it_is_later_ones_are_averaged_in() -> None:
    pace = Pace(10.0, 1000)
    pace.observe(11.0, 2000, asked=5000)
    assert pace.rate == 1000.0
    pace.observe(12.0, 4000, asked=5000)
    assert pace.rate == 1500.0  # half of 1000, half of 2000
    assert pace.overall(12.0, 4000) == 1500.0  # 3000 bytes in 2 s


def test_the_steady_rate_and_the_time_slept_for_a_cap_are_over_the_steady_window() -> None:
    """Whether the lanes fill a rate limit is read over STEADY_WINDOW: the bytes a lane took
    and the share of that time its pacer slept (a count of microseconds, in all)."""
    assert STEADY_WINDOW == 1.0
    pace = Pace(0.0, 0, slept=7_000_000)  # slept 7 s in earlier attempts: not this one's
    pace.observe(0.5, 500, asked=10**6, slept=7_250_000)
    assert pace.steady == pytest.approx(1000.0) and pace.sleeping == pytest.approx(0.5)
    for step in range(1, 11):  # then 2 s at 3000 bytes/s, never sleeping
        pace.observe(0.5 + 0.2 * step, 500 + 600 * step, asked=10**6, slept=7_250_000)
    assert pace.steady == pytest.approx(3000.0) and pace.sleeping == 0.0


def test_the_steady_rate_is_measured_from_the_first_bytes() -> None:
    """The wait for a server's answer is no rate: a lane whose first bytes came after 0.6 s
    reads its rate since then, not a fraction of it, and is measured over that time only."""
    pace = Pace(0.0, 100, slept=50)
    for step in range(1, 7):  # 0.6 s waiting for an answer
        pace.observe(0.1 * step, 100, asked=10**6, slept=50)
        assert pace.steady == 0.0 and pace.measured() == 0.0
    pace.observe(0.7, 1100, asked=10**6, slept=50_050)
    pace.observe(0.8, 2100, asked=10**6, slept=100_050)
    assert pace.steady == pytest.approx(10_000.0) and pace.sleeping == pytest.approx(0.5)
    assert pace.measured() == pytest.approx(0.2)


def test_the_recent_rate_forgets_what_is_older_than_the_lag_window() -> None:
    """A lane that went quiet reads 0 once LAG_WINDOW has passed, while its smoothed rate
    still remembers how fast it was."""
    assert LAG_WINDOW == 0.15
    pace = Pace(0.0, 0)
    for now, pos in ((0.1, 100), (0.2, 200)):
        pace.observe(now, pos, asked=1000)
    assert pace.recent == pytest.approx(1000.0)  # since the attempt started: under a window
    pace.observe(0.3, 200, asked=1000)
    assert pace.recent == pytest.approx(500.0)  # from the 0.1 s sample on
    pace.observe(0.4, 200, asked=1000)
    assert pace.recent == 0.0 and pace.rate > 0
    assert pace.quiet(0.4) == pytest.approx(0.2) and pace.age(0.4) == 0.4


def test_a_request_is_timed_from_its_first_bytes_and_trusted_once_settled() -> None:
    pace = Pace(0.0, 0)
    pace.observe(0.1, 0, asked=1000)  # asked, no bytes yet: the status line is on its way
    pace.observe(0.2, 0, asked=1000)
    pace.observe(0.3, 100, asked=1000)  # its first bytes: timed from here
    assert pace.request_rate(0.5, 300, settle=0.5) == 0.0  # not settled yet
    assert pace.request_rate(0.8, 600, settle=0.5) == pytest.approx(1000.0)
    pace.observe(0.9, 700, asked=2000)  # a new request: untimed again
    assert pace.request_rate(1.5, 900, settle=0.5) == 0.0


def test_the_best_rate_is_the_highest_seen_and_fades() -> None:
    best = BestRate()
    for rate in (5.0, 10.0, 7.0):
        best.saw(rate)
    assert best.value == 10.0
    best.fade()
    assert best.value == pytest.approx(8.0)
