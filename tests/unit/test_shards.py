"""How the suite is cut into sessions that run side by side (tests/shards.py)."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tests.shards import _merge_durations, sessions_of, weights

_WEIGHTS = st.lists(st.floats(min_value=0.0, max_value=60.0), min_size=1, max_size=300)


@given(_WEIGHTS, st.integers(min_value=1, max_value=8))
def test_each_session_runs_consecutive_tests_and_every_test_runs_once(
    took: list[float], count: int
) -> None:
    sessions = sessions_of(took, count)
    assert len(sessions) == len(took)
    assert all(0 <= s < count for s in sessions)
    assert sessions == sorted(sessions)  # consecutive: a module's tests stay together


@given(_WEIGHTS, st.integers(min_value=1, max_value=8))
def test_sessions_take_as_long_as_each_other_within_one_test(took: list[float], count: int) -> None:
    sessions = sessions_of(took, count)
    share = sum(took) / count
    for k in range(count):
        mine = sum(w for w, s in zip(took, sessions, strict=True) if s == k)
        assert abs(mine - share) <= max(took) + 1e-9 * sum(took)


def test_a_session_is_cut_by_time_not_by_count() -> None:
    # One test as long as the nine after it: it is a session's whole share.
    assert sessions_of([9.0] + [1.0] * 9, 2) == [0] + [1] * 9


def test_tests_with_no_time_recorded_are_shared_by_count() -> None:
    assert sessions_of([0.0] * 6, 3) == [0, 0, 1, 1, 2, 2]


def test_a_test_not_recorded_counts_as_a_typical_one(tmp_path: Path) -> None:
    durations = tmp_path / "durations.json"
    durations.write_text(json.dumps({"a": 1.0, "b": 3.0, "c": 20.0}))
    assert weights(["a", "new", "c"], durations) == [1.0, 3.0, 20.0]


def test_no_record_at_all_counts_every_test_alike(tmp_path: Path) -> None:
    assert weights(["a", "b"], tmp_path / "missing.json") == [1.0, 1.0]
    (tmp_path / "torn.json").write_text('{"a": 1.')
    assert weights(["a", "b"], tmp_path / "torn.json") == [1.0, 1.0]


def test_a_record_every_session_wrote_replaces_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "durations.json"
    target.write_text(json.dumps({"gone": 5.0, "a": 9.0}))
    for k, took in enumerate([{"a": 1.0}, {"b": 2.0}]):
        (tmp_path / f"durations.json.{k}").write_text(json.dumps(took))
    _merge_durations(target, 2)
    assert json.loads(target.read_text()) == {"a": 1.0, "b": 2.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["durations.json"]


def test_a_run_a_session_did_not_record_only_updates_the_tests_it_ran(tmp_path: Path) -> None:
    target = tmp_path / "durations.json"
    target.write_text(json.dumps({"a": 9.0, "c": 3.0}))
    (tmp_path / "durations.json.1").write_text(json.dumps({"a": 1.0}))
    _merge_durations(target, 2)
    assert json.loads(target.read_text()) == {"a": 1.0, "c": 3.0}
    _merge_durations(target, 2)  # nothing recorded at all: left as it was
    assert json.loads(target.read_text()) == {"a": 1.0, "c": 3.0}
