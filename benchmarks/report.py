"""Medians per configuration, the goals (as ratios against this run's own baselines), output.

Nothing here is a hard-coded performance figure: every goal compares two measurements of
the same run, or a measurement with the ideal the simulated server's caps allow.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .pacing import PacingCheck
from .runner import Outcome, Plan, Run
from .scenarios import SCENARIOS, GiB, MiB, Scenario

MB = 1e6


@dataclass(frozen=True)
class Row:
    """One configuration (scenario × tool × part count): medians over its successful runs."""

    scenario: str
    tool: str
    parts: int
    connections: int
    runs: int
    ok_runs: int
    size_bytes: int | None
    bytes_ok: bool  # every successful run left exactly size_bytes on disk
    wall_s: float | None
    tool_elapsed_s: float | None  # blobdl's own clock: no interpreter start-up
    throughput_mib_s: float | None
    ideal_mib_s: float | None
    efficiency: float | None  # throughput / ideal
    wall_ratio_vs_ref: float | None  # wall / the reference scenario's wall (same tool, parts)
    cpu_s: float | None
    cpu_s_per_gib: float | None
    peak_uss_mb: float | None  # median of the runs' peaks
    peak_uss_mb_max: float | None
    retries: float | None
    steals: float | None
    requests: float | None
    server_cpu_s: float | None


@dataclass(frozen=True)
class Goal:
    name: str
    measured: str
    target: str
    status: str  # "met", "NOT met", "info" or "n/a"


def summarise(runs: list[Run]) -> list[Row]:
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.scenario, run.tool, run.parts), []).append(run)
    rows = [_row(key, group) for key, group in groups.items()]
    walls = {(r.scenario, r.tool, r.parts): r.wall_s for r in rows}
    return [_with_ratio(row, walls) for row in rows]


def _row(key: tuple[str, str, int], group: list[Run]) -> Row:
    scenario, tool, parts = key
    ok = [r for r in group if r.ok]
    size = group[0].size
    rates = [(r.size or r.bytes_on_disk) / r.wall_s for r in ok]
    cpu = _median(r.cpu_s for r in ok)
    sc = SCENARIOS.get(scenario)
    ideal = sc.ideal_bps(group[0].connections) if sc else None
    throughput = statistics.median(rates) / MiB if rates else None
    return Row(
        scenario=scenario,
        tool=tool,
        parts=parts,
        connections=group[0].connections,
        runs=len(group),
        ok_runs=len(ok),
        size_bytes=size,
        bytes_ok=bool(ok) and all(size is None or r.bytes_on_disk == size for r in ok),
        wall_s=_median(r.wall_s for r in ok),
        tool_elapsed_s=_median(r.tool_elapsed_s for r in ok),
        throughput_mib_s=throughput,
        ideal_mib_s=ideal / MiB if ideal else None,
        efficiency=throughput * MiB / ideal if ideal and throughput else None,
        wall_ratio_vs_ref=None,
        cpu_s=cpu,
        cpu_s_per_gib=cpu / (size / GiB) if cpu is not None and size else None,
        peak_uss_mb=_median(r.peak_uss / MB for r in ok),
        peak_uss_mb_max=max((r.peak_uss / MB for r in group), default=None),
        retries=_median(r.retries for r in ok),
        steals=_median(r.steals for r in ok),
        requests=_median(r.requests for r in ok),
        server_cpu_s=_median(r.server_cpu_s for r in ok),
    )


def _with_ratio(row: Row, walls: dict[tuple[str, str, int], float | None]) -> Row:
    sc = SCENARIOS.get(row.scenario)
    ref = walls.get((sc.reference, row.tool, row.parts)) if sc and sc.reference else None
    if ref and row.wall_s is not None:
        return Row(**(asdict(row) | {"wall_ratio_vs_ref": row.wall_s / ref}))
    return row


def _median(values: Iterable[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# --------------------------------------------------------------------------- goals


def goals(rows: list[Row], outcome: Outcome, plan: Plan) -> list[Goal]:
    find = _finder(rows)
    focus = _focus_parts(rows, plan.connections)
    return [
        _cdn_rate(find("cdn", "blobdl", focus), outcome, focus),
        _ratio_goal("one slow lane", find("cdn-slow-lane", "blobdl", focus), focus),
        _ratio_goal("one stalled lane", find("cdn-stall", "blobdl", focus), focus),
        _ratio_goal("random resets", find("cdn-resets", "blobdl", focus), focus, info=True),
        *_loopback(rows, find("loopback", "curl", 1), outcome),
        _cpu_vs_aria2c(find("cdn", "blobdl", focus), rows, outcome, plan),
        _memory(rows),
    ]


def _finder(rows: list[Row]) -> Callable[[str, str, int | None], Row | None]:
    index = {(r.scenario, r.tool, r.parts): r for r in rows}

    def find(scenario: str, tool: str, parts: int | None) -> Row | None:
        if parts is None:  # a baseline: whatever part count it used
            return next((r for r in rows if (r.scenario, r.tool) == (scenario, tool)), None)
        return index.get((scenario, tool, parts))

    return find


def _focus_parts(rows: list[Row], connections: int) -> int:
    """The part count the goals are judged at: one part per connection if it was run."""
    counts = sorted({r.parts for r in rows if r.tool == "blobdl"})
    return connections if connections in counts else (counts[-1] if counts else connections)


def _cdn_rate(row: Row | None, outcome: Outcome, parts: int) -> Goal:
    name = f"CDN aggregate rate, {parts} parts (achieved / ideal)"
    if row is None or row.efficiency is None or row.ideal_mib_s is None:
        return Goal(name, "not run", "≥ 97 %", "n/a")
    pacing = outcome.pacing
    server = f"; the server alone paces {pacing.ratio:.1%} of its ideal" if pacing else ""
    if row.tool_elapsed_s and row.size_bytes and row.ideal_mib_s:
        own = row.size_bytes / row.tool_elapsed_s / (row.ideal_mib_s * MiB)
        server = f"; {own:.1%} by blobdl's own clock (no interpreter start-up){server}"
    measured = (
        f"{row.throughput_mib_s:.1f} / {row.ideal_mib_s:.0f} MiB/s = {row.efficiency:.1%}{server}"
    )
    return Goal(name, measured, "≥ 97 %", "met" if row.efficiency >= 0.97 else "NOT met")


def _ratio_goal(label: str, row: Row | None, parts: int, info: bool = False) -> Goal:
    name = f"{label}, {parts} parts: wall time / plain CDN wall time"
    target = "none set; shown for information" if info else "≤ 1.10"
    if row is None or row.wall_ratio_vs_ref is None:
        return Goal(name, "not run", target, "n/a")
    measured = f"{row.wall_ratio_vs_ref:.2f}× ({row.wall_s:.1f} s)"
    if info:
        return Goal(name, measured, target, "info")
    return Goal(name, measured, target, "met" if row.wall_ratio_vs_ref <= 1.10 else "NOT met")


def _loopback(rows: list[Row], curl: Row | None, outcome: Outcome) -> list[Goal]:
    ours = [r for r in rows if (r.scenario, r.tool) == ("loopback", "blobdl") and r.wall_s]
    rate_name, curl_name = "loopback rate (best part count)", "loopback: blobdl / one curl -o"
    if not ours:
        return [Goal(rate_name, "not run", "≥ 1 GB/s", "n/a")]
    best = max(ours, key=lambda r: r.throughput_mib_s or 0.0)
    gbps = (best.throughput_mib_s or 0.0) * MiB / 1e9
    measured = f"{gbps:.2f} GB/s at {best.parts} parts"
    rate = Goal(rate_name, measured, "≥ 1 GB/s", "met" if gbps >= 1 else "NOT met")
    if curl is None or not curl.throughput_mib_s:
        why = "curl not installed" if not outcome.baselines.get("curl") else "not run (--baselines)"
        return [rate, Goal(curl_name, why, "> 1.0×", "n/a")]
    ratio = (best.throughput_mib_s or 0.0) / curl.throughput_mib_s
    measured = f"{ratio:.2f}× (curl {curl.throughput_mib_s * MiB / 1e9:.2f} GB/s)"
    return [rate, Goal(curl_name, measured, "> 1.0×", "met" if ratio > 1 else "NOT met")]


def _cpu_vs_aria2c(row: Row | None, rows: list[Row], outcome: Outcome, plan: Plan) -> Goal:
    name = "CPU seconds per GiB, CDN case: blobdl / aria2c"
    if row is None or row.cpu_s_per_gib is None:
        return Goal(name, "not run", "(comparison)", "n/a")
    ours = f"blobdl {row.cpu_s_per_gib:.2f} s/GiB at {row.parts} parts"
    aria = next((r for r in rows if (r.scenario, r.tool) == ("cdn", "aria2c")), None)
    if aria is None or not aria.cpu_s_per_gib:
        why = "aria2c not installed" if not outcome.baselines.get("aria2c") else "aria2c not run"
        return Goal(name, f"{ours}; {why}", "(comparison)", "n/a")
    ratio = row.cpu_s_per_gib / aria.cpu_s_per_gib
    return Goal(name, f"{ours}; {ratio:.2f}× aria2c", "(comparison)", "info")


def _memory(rows: list[Row]) -> Goal:
    peaks = [r.peak_uss_mb_max for r in rows if r.tool == "blobdl" and r.peak_uss_mb_max]
    name = "peak memory of blobdl + workers (sum of USS, worst run)"
    if not peaks:
        return Goal(name, "not run", "≤ 100 MB", "n/a")
    peak = max(peaks)
    return Goal(name, f"{peak:.1f} MB", "≤ 100 MB", "met" if peak <= 100 else "NOT met")


# --------------------------------------------------------------------------- output

_COLUMNS = (
    ("scenario", "scenario", "{}"),
    ("tool", "tool", "{}"),
    ("parts", "parts", "{}"),
    ("ok", "ok_runs", "{}"),
    ("wall s", "wall_s", "{:.2f}"),
    ("MiB/s", "throughput_mib_s", "{:.1f}"),
    ("ideal", "ideal_mib_s", "{:.0f}"),
    ("eff", "efficiency", "{:.1%}"),
    ("vs ref", "wall_ratio_vs_ref", "{:.2f}×"),
    ("CPU s", "cpu_s", "{:.2f}"),
    ("CPU s/GiB", "cpu_s_per_gib", "{:.2f}"),
    ("USS MB", "peak_uss_mb", "{:.1f}"),
    ("retries", "retries", "{:g}"),
    ("steals", "steals", "{:g}"),
)


def table(rows: list[Row]) -> str:
    cells = [[h for h, _, _ in _COLUMNS]]
    for row in rows:
        values = [getattr(row, attr) for _, attr, _ in _COLUMNS]
        values[3] = f"{row.ok_runs}/{row.runs}"
        cells.append(
            [
                "-" if v is None else (fmt.format(v) if i != 3 else v)
                for i, (v, (_, _, fmt)) in enumerate(zip(values, _COLUMNS, strict=True))
            ]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in cells
    )


def goals_text(found: list[Goal]) -> str:
    return "\n".join(f"[{g.status:^7}] {g.name}: {g.measured}  (goal {g.target})" for g in found)


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Row)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def write_json(
    path: Path,
    plan: Plan,
    outcome: Outcome,
    rows: list[Row],
    found: list[Goal],
    meta: dict[str, Any],
) -> None:
    doc = {
        "meta": meta,
        "plan": {k: v for k, v in asdict(plan).items() if k != "scenarios"}
        | {"scenarios": [s.name for s in plan.scenarios], "workdir": outcome.workdir},
        "baselines_installed": outcome.baselines,
        "pacing_check": outcome.pacing.as_dict() if outcome.pacing else None,
        "goals": [asdict(g) for g in found],
        "configs": [asdict(r) for r in rows],
        "runs": [asdict(r) for r in outcome.runs],
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def load_json(path: Path) -> tuple[Plan, Outcome]:
    """The plan and runs of an earlier results.json, to redo the report without rerunning."""
    doc = json.loads(path.read_text())
    raw = doc["plan"]
    known = {f.name for f in fields(Plan)}
    plan = Plan(
        **{k: v for k, v in raw.items() if k in known}
        | {
            "scenarios": [SCENARIOS.get(n) or Scenario(n, n) for n in raw["scenarios"]],
            "workdir": Path(raw["workdir"]) if raw.get("workdir") else None,
            "extra": tuple(raw.get("extra", ())),
        }
    )
    pacing = doc.get("pacing_check")
    run_fields = {f.name for f in fields(Run)}
    outcome = Outcome(
        runs=[Run(**{k: v for k, v in r.items() if k in run_fields}) for r in doc["runs"]],
        pacing=PacingCheck(**{k: v for k, v in pacing.items() if k != "ratio"}) if pacing else None,
        workdir=raw.get("workdir", ""),
        baselines=doc.get("baselines_installed", {}),
    )
    return plan, outcome
