"""The verdicts of the many-files preset (benchmarks/many.py), on made-up samples: a goal is
"met" only when every blobdl run behind it succeeded, and a rate limit is met only when the
rate stayed under it. No timing is asserted here."""

from __future__ import annotations

from benchmarks.many import goals
from benchmarks.many_runs import WARM_UP, MiB, Outcome, Sample, _rotated, paired_runs
from benchmarks.report import Goal


def sample(case: str, tool: str, n: int, *, ok: bool = True, wall: float = 1.0) -> Sample:
    return Sample(case, tool, n, ok, wall, 1.0, 20.0, 400)


def judged(samples: list[Sample], name: str) -> Goal:
    found = goals(Outcome(samples=samples, dest="disk (ext4 at /var/tmp/x)"))
    return next(g for g in found if g.name.startswith(name))


def test_a_failed_blobdl_run_makes_the_wall_goal_not_met() -> None:
    curl = [sample("files", "curl", n, wall=2.0) for n in range(3)]
    ours = [sample("files", "blobdl", n, ok=n != 1) for n in range(3)]
    goal = judged(curl + ours, "400 × 1 MiB: wall")
    assert goal.status == "NOT met" and "1 of 3 runs failed" in goal.measured, goal
    ours = [sample("files", "blobdl", n) for n in range(3)]
    assert judged(curl + ours, "400 × 1 MiB: wall").status == "met"


def limited(rate: float) -> list[Sample]:
    size = 256 * MiB
    span = size / (rate * 100e6)
    return [
        Sample("limit", "manifest", n, True, span, 0.0, 0.0, 4, span_s=span, bytes=size)
        for n in range(3)
    ]


def test_a_rate_limit_is_met_near_the_limit_and_not_above_it() -> None:
    assert judged(limited(0.95), "--limit-rate 100MB, manifest").status == "met"
    assert judged(limited(0.5), "--limit-rate 100MB, manifest").status == "NOT met"
    over = judged(limited(1.5), "--limit-rate 100MB, manifest")
    assert over.status == "NOT met" and "above the limit" in over.measured, over


def test_a_ratio_goal_shows_its_spread_run_by_run() -> None:
    curl = [sample("files", "curl", n, wall=w) for n, w in enumerate((1.0, 2.0, 1.0))]
    ours = [sample("files", "blobdl", n, wall=w) for n, w in enumerate((1.5, 1.0, 0.9))]
    goal = judged(curl + ours, "400 × 1 MiB: wall")
    # runs: 1.5/1.0, 1.0/2.0, 0.9/1.0; the verdict stays on the medians (1.0 vs 1.0)
    assert "run by run 0.50-1.50×" in goal.measured and goal.status == "met", goal


def test_a_ratio_goal_with_one_run_shows_no_spread() -> None:
    goal = judged([sample("files", "curl", 0), sample("files", "blobdl", 0)], "400 × 1 MiB: wall")
    assert "run by run" not in goal.measured, goal


def test_each_run_starts_the_tools_one_further() -> None:
    tools = {"blobdl": 1, "aria2c": 2, "curl": 3}
    orders = [[name for name, _ in _rotated(tools, run)] for run in range(4)]
    assert orders == [
        ["blobdl", "aria2c", "curl"],
        ["aria2c", "curl", "blobdl"],
        ["curl", "blobdl", "aria2c"],
        ["blobdl", "aria2c", "curl"],
    ]


def test_a_paired_case_warms_up_once_before_the_pairs_it_counts() -> None:
    assert paired_runs(3) == [WARM_UP, 0, 1, 2]
    assert WARM_UP not in range(3)  # never the number of a counted pair


def test_a_paired_goal_says_how_many_pairs_its_medians_are_of() -> None:
    beside = [sample("beside", tool, n) for n in range(5) for tool in ("manifest", "plain")]
    goal = judged(beside, "512 MiB beside 4 small blobs")
    assert "medians of 5" in goal.measured, goal
    pull = {"pull_s": [1.0, 1.1, 0.9], "plain_s": [1.0, 1.0, 1.0], "size": 1}
    found = goals(Outcome(samples=[], dest="disk (ext4 at /var/tmp/x)", pull=pull))
    goal = next(g for g in found if g.name.startswith("blobdl pull of a 512 MiB layer"))
    assert "medians of 3" in goal.measured and goal.status == "met", goal


def test_the_wall_goal_says_the_time_until_on_disk_beside_its_verdict() -> None:
    curl = [sample("files", "curl", n, wall=0.5) for n in range(3)]
    ours = [sample("files", "blobdl", n, wall=0.75) for n in range(3)]
    for x in curl:
        x.sync_s = 0.25  # the kernel writes curl's files back after it ends
    for x in ours:
        x.sync_s = 0.0  # blobdl fsynced each one
    goal = judged(curl + ours, "400 × 1 MiB: wall")
    # the verdict stays on the wall alone (0.75 vs 0.5); until on disk is information
    assert goal.status == "NOT met" and "until on disk 1.00× (0.75 vs 0.75 s)" in goal.measured
