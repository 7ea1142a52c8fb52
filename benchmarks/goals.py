"""The goals of issues #12 and #14, judged as ratios within one run; never asserted in tests.

Nothing here is a hard-coded performance figure: every goal compares two measurements of the
same run, or a measurement with the ideal the server's caps allow. A goal whose scenario or
baseline did not run says "not measured" and why. A goal stands on blobdl's successful runs
only; if any run of a row it judges failed, it is "NOT met" and says so (a run that hung on the
silent lane must not vanish into the median of the runs that did not).
"""

from __future__ import annotations

from collections.abc import Callable

from .report import Goal, Row
from .runner import Outcome, Plan
from .scenarios import SCENARIOS, MiB

NOT = "not measured"
WIRE_GOAL = 1.01


def goals(rows: list[Row], outcome: Outcome, plan: Plan) -> list[Goal]:
    if plan.url is not None:  # the others judge the harness's own servers and scenarios
        return [_memory(rows)]
    f = plan.focus
    find = _finder(rows, f)
    return [
        # issue #12
        _vs(
            "HTTPS open loopback: wall, blobdl / curl -o",
            "https-open",
            "curl",
            find,
            outcome,
            "wall_s",
            1.0,
        ),
        _vs(
            "HTTPS open loopback: CPU per GiB, blobdl / curl",
            "https-open",
            "curl",
            find,
            outcome,
            "cpu_s_per_gib",
            1.2,
        ),
        _uss(find("https-open", "blobdl"), f),
        _vs(
            "capped (nginx limit_rate): wall, blobdl / hf_transfer",
            "https-capped",
            "hf_transfer",
            find,
            outcome,
            "wall_s",
            1.0,
            disk=True,
        ),
        _own_clock(find("https-capped", "blobdl"), outcome),
        _ratio("silent lane, 256 MiB at 16 × 8 MiB/s: wall / plain", *_pair(find, "lane8-silent")),
        _ratio("silent lane, 2 GiB at 16 × 8 MiB/s: wall / plain", *_pair(find, "lane8-2g-silent")),
        _vs(
            "capped: CPU per GiB, blobdl / aria2c",
            "https-capped",
            "aria2c",
            find,
            outcome,
            "cpu_s_per_gib",
            1.0,
        ),
        # issue #14
        _wire(rows, faults=False),
        _wire(rows, faults=True),
        _wire_baselines(rows),
        # the fault-server CDN goals of the first harness
        _cdn_rate(find("cdn", "blobdl"), outcome),
        _ratio("CDN, one slow lane: wall / plain CDN", *_pair(find, "cdn-slow-lane")),
        _ratio("CDN, one stalled lane (5 %): wall / plain CDN", *_pair(find, "cdn-stall")),
        _ratio("CDN, random resets: wall / plain CDN", *_pair(find, "cdn-resets"), info=True),
        _memory(rows),
    ]


def text(found: list[Goal]) -> str:
    return "\n".join(f"[{g.status:^12}] {g.name}: {g.measured}  (goal {g.target})" for g in found)


def _finder(rows: list[Row], focus: int) -> Callable[[str, str], Row | None]:
    """The focus row of a scenario for a tool: blobdl at one part per connection at the widest
    connection count, even if every run of it failed (its goals are then NOT met, not "not
    measured"); a baseline at whatever split it used, if one of its runs succeeded."""

    def find(scenario: str, tool: str) -> Row | None:
        mine = [r for r in rows if (r.scenario, r.tool) == (scenario, tool)]
        if tool == "blobdl":
            mine = [r for r in mine if (r.parts, r.connections) == (focus, focus)]
        else:
            mine = [r for r in mine if r.ok_runs]
        return mine[0] if mine else None

    return find


def _pair(find: Callable[[str, str], Row | None], scenario: str) -> tuple[Row | None, Row | None]:
    """blobdl's row of a heterogeneous scenario, and of the plain one it is compared with."""
    ref = SCENARIOS[scenario].reference
    return find(scenario, "blobdl"), find(ref, "blobdl") if ref else None


def _judge(name: str, measured: str, target: str, met: bool, rows: list[Row | None]) -> Goal:
    """The verdict: NOT met, whatever the figure, when a blobdl run behind it failed."""
    failed = [r for r in rows if r is not None and r.tool == "blobdl" and r.ok_runs < r.runs]
    for r in failed:
        where = f"{r.scenario}, {r.parts} parts, {r.connections} conns"
        measured += f"; {r.runs - r.ok_runs} of {r.runs} runs failed ({where})"
    return Goal(name, measured, target, "met" if met and not failed else "NOT met")


def _dead(name: str, target: str, rows: list[Row | None]) -> Goal | None:
    """NOT met when every run of a blobdl row the goal needs failed: nothing to judge by."""
    for r in rows:
        if r is not None and r.tool == "blobdl" and r.runs and not r.ok_runs:
            return _judge(name, f"no successful run of {r.scenario}", target, False, [r])
    return None


def _why_missing(scenario: str, tool: str, outcome: Outcome) -> str:
    if scenario in outcome.skipped:
        return f"{scenario} skipped: {outcome.skipped[scenario]}"
    if tool != "blobdl" and not outcome.baselines.get(tool):
        return f"{tool} not installed"
    return f"{scenario} / {tool} not run (see --scenarios, --baselines)"


def _vs(
    name: str,
    scenario: str,
    other: str,
    find: Callable[[str, str], Row | None],
    outcome: Outcome,
    attr: str,
    limit: float,
    disk: bool = False,
) -> Goal:
    target = f"≤ {limit:g}×"
    ours, theirs = find(scenario, "blobdl"), find(scenario, other)
    if dead := _dead(name, target, [ours]):
        return dead
    if ours is None or theirs is None:
        missing = "blobdl" if ours is None else other
        return Goal(name, _why_missing(scenario, missing, outcome), target, NOT)
    a, b = getattr(ours, attr), getattr(theirs, attr)
    if not a or not b:
        return Goal(name, f"no {attr} figure", target, NOT)
    ratio = a / b
    measured = f"{ratio:.2f}× ({a:.2f} vs {b:.2f} {_unit(attr)})"
    if attr == "wall_s" and ours.sync_s is not None and theirs.sync_s is not None:
        # blobdl fsyncs before it exits; most baselines leave dirty pages behind
        measured += f"; sync after exit {ours.sync_s:.2f} vs {theirs.sync_s:.2f} s"
    if disk and not outcome.dest.startswith("disk"):
        return Goal(
            name, f"{measured}; destination was {outcome.dest}, goal is on disk", target, NOT
        )
    return _judge(name, measured, target, ratio <= limit, [ours])


def _unit(attr: str) -> str:
    return {"wall_s": "s", "cpu_s_per_gib": "CPU s/GiB"}.get(attr, "")


def _uss(row: Row | None, focus: int) -> Goal:
    name = f"HTTPS at {focus} connections: peak USS of the whole tree"
    if dead := _dead(name, "≤ 100 MB", [row]):
        return dead
    if row is None or row.peak_uss_mb_max is None:
        return Goal(name, "https-open not run", "≤ 100 MB", NOT)
    peak = row.peak_uss_mb_max
    return _judge(name, f"{peak:.1f} MB (worst run)", "≤ 100 MB", peak <= 100, [row])


def _own_clock(row: Row | None, outcome: Outcome) -> Goal:
    name = "capped: rate by blobdl's own clock / ideal (connections × limit_rate)"
    if dead := _dead(name, "≥ 97 %", [row]):
        return dead
    if row is None or not (row.tool_elapsed_s and row.size_bytes and row.ideal_mib_s):
        return Goal(name, "https-capped not run", "≥ 97 %", NOT)
    own = row.size_bytes / row.tool_elapsed_s / (row.ideal_mib_s * MiB)
    measured = f"{own:.1%} ({row.tool_elapsed_s:.2f} s; wall incl. start-up {row.efficiency:.1%})"
    if outcome.nginx_pacing is not None:
        measured += f"; nginx alone paces {outcome.nginx_pacing.ratio:.1%} to curl readers"
    if not outcome.dest.startswith("disk"):
        return Goal(name, f"{measured}; destination was tmpfs, goal is on disk", "≥ 97 %", NOT)
    return _judge(name, measured, "≥ 97 %", own >= 0.97, [row])


def _ratio(name: str, row: Row | None, ref: Row | None, info: bool = False) -> Goal:
    target = "none set; shown for information" if info else "≤ 1.10×"
    if dead := _dead(name, target, [row, ref]):
        return dead
    if row is None or row.wall_ratio_vs_ref is None:
        return Goal(name, "not run (it and its plain case must both run)", target, NOT)
    measured = f"{row.wall_ratio_vs_ref:.2f}× ({row.wall_s:.2f} s)"
    if info:
        return Goal(name, measured, target, "info")
    return _judge(name, measured, target, row.wall_ratio_vs_ref <= 1.10, [row, ref])


def _wire(rows: list[Row], faults: bool) -> Goal:
    def faulty(r: Row) -> bool:
        sc = SCENARIOS.get(r.scenario)
        return bool(sc and sc.faults)

    mine = [r for r in rows if r.tool == "blobdl" and faulty(r) == faults]
    measured_rows = [r for r in mine if r.wire_ratio_max is not None]
    if faults:
        name, target = "wire bytes / size with faults (stalls, resets), blobdl", "info"
    else:
        name, target = "wire bytes / size, no faults, every swept config, blobdl", "≤ 1.01"
    if not measured_rows:
        return Goal(name, "no run with a server-side byte count", target, NOT)
    worst = max(measured_rows, key=lambda r: r.wire_ratio_max or 0.0)
    over = [r for r in measured_rows if (r.wire_ratio_max or 0.0) > WIRE_GOAL]
    measured = (
        f"worst {worst.wire_ratio_max:.3f} ({worst.scenario}, {worst.parts} parts, "
        f"{worst.connections} conns); {len(over)} of {len(measured_rows)} configs above 1.01"
    )
    if faults:
        return Goal(name, measured, "at most the faults' own cost", "info")
    return _judge(name, measured, target, not over, list(mine))


def _wire_baselines(rows: list[Row]) -> Goal:
    name = "wire bytes / size of the baselines (worst run per tool)"
    worst: dict[str, float] = {}
    for r in rows:
        if r.tool != "blobdl" and r.wire_ratio_max is not None:
            worst[r.tool] = max(worst.get(r.tool, 0.0), r.wire_ratio_max)
    if not worst:
        return Goal(name, "no baseline run", "(comparison)", NOT)
    return Goal(name, ", ".join(f"{t} {v:.3f}" for t, v in worst.items()), "(comparison)", "info")


def _cdn_rate(row: Row | None, outcome: Outcome) -> Goal:
    name = "fault-server CDN rate (achieved / ideal)"
    if dead := _dead(name, "≥ 97 %", [row]):
        return dead
    if row is None or row.efficiency is None or row.ideal_mib_s is None:
        return Goal(name, "cdn not run", "≥ 97 %", NOT)
    pacing = outcome.pacing
    extra = f"; the server alone paces {pacing.ratio:.1%} of its ideal" if pacing else ""
    if row.tool_elapsed_s and row.size_bytes:
        own = row.size_bytes / row.tool_elapsed_s / (row.ideal_mib_s * MiB)
        extra = f"; {own:.1%} by blobdl's own clock{extra}"
    measured = f"{row.throughput_mib_s:.1f} / {row.ideal_mib_s:.0f} MiB/s = {row.efficiency:.1%}"
    return _judge(name, measured + extra, "≥ 97 %", row.efficiency >= 0.97, [row])


def _memory(rows: list[Row]) -> Goal:
    mine: list[Row | None] = [r for r in rows if r.tool == "blobdl"]
    peaks = [(r.peak_uss_mb_max, r) for r in rows if r.tool == "blobdl" and r.peak_uss_mb_max]
    name = "peak USS of blobdl + workers, any run"
    if not peaks:
        if dead := _dead(name, "≤ 100 MB", mine):
            return dead
        return Goal(name, "not run", "≤ 100 MB", NOT)
    peak, row = max(peaks, key=lambda p: p[0])
    where = f"{row.scenario}, {row.parts} parts, {row.connections} conns"
    return _judge(name, f"{peak:.1f} MB ({where})", "≤ 100 MB", peak <= 100, mine)
