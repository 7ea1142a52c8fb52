"""The goal verdicts of the benchmark harness (benchmarks/goals.py), on made-up rows: a goal
is "met" only when every run it stands on succeeded. No timing is asserted here."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from benchmarks import goals, report
from benchmarks.report import Goal, Row
from benchmarks.runner import Outcome, Plan, Run
from benchmarks.scenarios import SCENARIOS, MiB

SIZE = 256 * MiB


def row(scenario: str, tool: str = "blobdl", *, runs: int = 2, ok: int = 2, **kw: object) -> Row:
    base = Row(
        scenario=scenario, proto="http", tool=tool, parts=16, connections=16, runs=runs,
        ok_runs=ok, size_bytes=SIZE, bytes_ok=True, wall_s=2.0, tool_elapsed_s=1.9,
        throughput_mib_s=128.0, ideal_mib_s=128.0, efficiency=0.99, wall_ratio_vs_ref=None,
        cpu_s=1.0, cpu_s_per_gib=4.0, peak_uss_mb=20.0, peak_uss_mb_max=21.0, retries=0,
        steals=0, requests=20, server_cpu_s=0.5, wire_ratio=1.0, wire_ratio_max=1.0, sync_s=0.0,
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def judged(rows: list[Row], name: str) -> Goal:
    plan = Plan(SIZE, [16], [SCENARIOS[r.scenario] for r in rows], 2, [16], None, 60.0)
    found = goals.goals(rows, Outcome(dest="disk (ext4 at /var/tmp/x)"), plan)
    return next(g for g in found if g.name.startswith(name))


def test_a_silent_lane_that_failed_one_run_is_not_met() -> None:
    rows = [row("lane8"), row("lane8-silent", ok=1, wall_ratio_vs_ref=1.0)]
    goal = judged(rows, "silent lane, 256 MiB")
    assert goal.status == "NOT met" and "1 of 2 runs failed" in goal.measured, goal


def test_a_silent_lane_whose_plain_case_failed_a_run_is_not_met() -> None:
    rows = [row("lane8", ok=1), row("lane8-silent", wall_ratio_vs_ref=1.0)]
    assert judged(rows, "silent lane, 256 MiB").status == "NOT met"


def test_a_silent_lane_with_every_run_ok_is_judged_by_its_ratio() -> None:
    rows = [row("lane8"), row("lane8-silent", wall_ratio_vs_ref=1.05)]
    assert judged(rows, "silent lane, 256 MiB").status == "met"


def test_a_comparison_with_a_failed_blobdl_run_is_not_met() -> None:
    rows = [row("https-open", ok=1, wall_s=1.0), row("https-open", "curl", parts=1, wall_s=3.0)]
    goal = judged(rows, "HTTPS open loopback: wall")
    assert goal.status == "NOT met" and "1 of 2 runs failed" in goal.measured, goal


def test_wire_bytes_with_a_failed_run_in_a_swept_config_are_not_met() -> None:
    rows = [row("loopback"), row("loopback", parts=4, ok=1)]
    assert judged(rows, "wire bytes / size, no faults").status == "NOT met"
    assert judged(rows[:1], "wire bytes / size, no faults").status == "met"


def test_a_goal_whose_blobdl_runs_all_failed_is_not_met_rather_than_not_measured() -> None:
    dead: dict[str, Any] = {
        "ok": 0,
        "wall_s": None,
        "wall_ratio_vs_ref": None,
        "cpu_s_per_gib": None,
    }
    rows = [row("lane8"), row("lane8-silent", **dead)]
    goal = judged(rows, "silent lane, 256 MiB")
    assert goal.status == "NOT met" and "2 of 2 runs failed" in goal.measured, goal
    rows = [row("https-open", **dead), row("https-open", "curl", parts=1)]
    assert judged(rows, "HTTPS open loopback: wall").status == "NOT met"


def url_goals(rows: list[Row]) -> list[Goal]:
    plan = Plan(SIZE, [16], [], 1, [16], None, 60.0, url="https://example.com/big.bin")
    return goals.goals(rows, Outcome(dest="disk (ext4 at /var/tmp/x)"), plan)


def test_a_url_is_judged_by_the_goals_that_apply_to_any_server_only() -> None:
    found = url_goals([row("url"), row("url", "curl", parts=1)])
    assert [(g.name, g.status) for g in found] == [("peak USS of blobdl + workers, any run", "met")]


def test_memory_is_not_met_on_a_failed_run_whatever_its_peak() -> None:
    failed = Run(
        scenario="url", tool="blobdl", parts=2, connections=2, repeat=0, size=None, ok=False,
        exit_code=3, error="exit 3: Failed to connect", bytes_on_disk=0, verified=None,
        wall_s=1.1, cpu_s=0.1, peak_uss=18_200_000,
    )  # fmt: skip
    (goal,) = url_goals(report.summarise([failed]))
    assert goal.status == "NOT met" and "18.2" not in goal.measured, goal
    rows = [row("loopback"), row("loopback", parts=4, ok=1)]
    goal = judged(rows, "peak USS of blobdl + workers")
    assert goal.status == "NOT met" and "1 of 2 runs failed" in goal.measured, goal
