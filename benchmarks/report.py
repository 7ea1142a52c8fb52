"""Medians per configuration, and the output: the table, CSV and JSON (goals: goals.py)."""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Iterable
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
    proto: str  # "http" or "https"
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
    #: Issue #14: bytes the server wrote to sockets / blob size (median, and worst run).
    wire_ratio: float | None = None
    wire_ratio_max: float | None = None
    sync_s: float | None = None  # median os.sync() after the tool exited


@dataclass(frozen=True)
class Goal:
    name: str
    measured: str
    target: str
    status: str  # "met", "NOT met", "info" or "not measured" (measured says why)


Key = tuple[str, str, int, int]  # scenario, tool, parts, connections


def summarise(runs: list[Run]) -> list[Row]:
    groups: dict[Key, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.scenario, run.tool, run.parts, run.connections), []).append(run)
    rows = [_row(key, group) for key, group in groups.items()]
    walls = {(r.scenario, r.tool, r.parts, r.connections): r.wall_s for r in rows}
    return [_with_ratio(row, walls) for row in rows]


def _row(key: Key, group: list[Run]) -> Row:
    scenario, tool, parts, connections = key
    ok = [r for r in group if r.ok]
    size = group[0].size
    rates = [(r.size or r.bytes_on_disk) / r.wall_s for r in ok]
    cpu = _median(r.cpu_s for r in ok)
    sc = SCENARIOS.get(scenario)
    ideal = sc.ideal_bps(connections) if sc else None
    throughput = statistics.median(rates) / MiB if rates else None
    wire = [r.bytes_sent / r.size for r in ok if r.bytes_sent is not None and r.size]
    return Row(
        scenario=scenario,
        proto=group[0].proto,
        tool=tool,
        parts=parts,
        connections=connections,
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
        peak_uss_mb=_median(_peaks(ok)),
        peak_uss_mb_max=max(_peaks(ok), default=None),  # a failed run's peak judges nothing
        retries=_median(r.retries for r in ok),
        steals=_median(r.steals for r in ok),
        requests=_median(r.requests for r in ok),
        server_cpu_s=_median(r.server_cpu_s for r in ok),
        wire_ratio=_median(wire),
        wire_ratio_max=max(wire, default=None),
        sync_s=_median(r.sync_s for r in ok),
    )


def _with_ratio(row: Row, walls: dict[Key, float | None]) -> Row:
    sc = SCENARIOS.get(row.scenario)
    key = (sc.reference, row.tool, row.parts, row.connections) if sc and sc.reference else None
    ref = walls.get(key) if key else None
    if ref and row.wall_s is not None:
        return Row(**(asdict(row) | {"wall_ratio_vs_ref": row.wall_s / ref}))
    return row


def _peaks(runs: Iterable[Run]) -> list[float]:
    """The runs' peak USS in MB, where a sample found the tool alive."""
    return [r.peak_uss / MB for r in runs if r.peak_uss is not None]


def _median(values: Iterable[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# --------------------------------------------------------------------------- output

_COLUMNS = (
    ("scenario", "scenario", "{}"),
    ("proto", "proto", "{}"),
    ("tool", "tool", "{}"),
    ("parts", "parts", "{}"),
    ("conns", "connections", "{}"),
    ("ok", "ok_runs", "{}"),
    ("wall s", "wall_s", "{:.2f}"),
    ("MiB/s", "throughput_mib_s", "{:.1f}"),
    ("ideal", "ideal_mib_s", "{:.0f}"),
    ("eff", "efficiency", "{:.1%}"),
    ("vs ref", "wall_ratio_vs_ref", "{:.2f}×"),
    ("CPU s", "cpu_s", "{:.2f}"),
    ("CPU s/GiB", "cpu_s_per_gib", "{:.2f}"),
    ("USS MB", "peak_uss_mb", "{:.1f}"),
    ("wire/size", "wire_ratio", "{:.3f}"),
    ("req", "requests", "{:g}"),
    ("retries", "retries", "{:g}"),
    ("steals", "steals", "{:g}"),
)
_OK = 5  # the "ok" column shows ok/runs
_LEFT = 3  # scenario, proto and tool are left-aligned


def table(rows: list[Row]) -> str:
    cells = [[h for h, _, _ in _COLUMNS]]
    for row in rows:
        values = [getattr(row, attr) for _, attr, _ in _COLUMNS]
        values[_OK] = f"{row.ok_runs}/{row.runs}"
        cells.append(
            [
                "-" if v is None else (fmt.format(v) if i != _OK else v)
                for i, (v, (_, _, fmt)) in enumerate(zip(values, _COLUMNS, strict=True))
            ]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < _LEFT else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in cells
    )


def failures(rows: list[Row], runs: list[Run]) -> list[str]:
    """One line per configuration with a failed run: how many, and the last run's reason."""
    lines = []
    for row in rows:
        key = (row.scenario, row.tool, row.parts, row.connections)
        failed = [r for r in runs if (r.scenario, r.tool, r.parts, r.connections) == key]
        failed = [r for r in failed if not r.ok]
        if failed:
            every = "every run" if not row.ok_runs else f"{len(failed)} of {row.runs} runs"
            lines.append(
                f"FAILED: {row.scenario} {row.tool} {row.parts} parts × {row.connections} "
                f"conns, {every} ({failed[-1].error})"
            )
    return lines


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
        "destination": outcome.dest,
        "skipped": outcome.skipped,
        "reference": outcome.reference,
        "baselines_installed": outcome.baselines,
        "pacing_check": outcome.pacing.as_dict() if outcome.pacing else None,
        "nginx_pacing_check": outcome.nginx_pacing.as_dict() if outcome.nginx_pacing else None,
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
            # the first harness swept one connection count
            "connections": _as_list(raw.get("connections", 16)),
        }
    )
    pacing, ngx = doc.get("pacing_check"), doc.get("nginx_pacing_check")
    run_fields = {f.name for f in fields(Run)}
    outcome = Outcome(
        runs=[Run(**{k: v for k, v in r.items() if k in run_fields}) for r in doc["runs"]],
        pacing=PacingCheck(**{k: v for k, v in pacing.items() if k != "ratio"}) if pacing else None,
        nginx_pacing=PacingCheck(**{k: v for k, v in ngx.items() if k != "ratio"}) if ngx else None,
        workdir=raw.get("workdir", ""),
        baselines=doc.get("baselines_installed", {}),
        dest=doc.get("destination", ""),
        skipped=doc.get("skipped", {}),
        reference=doc.get("reference"),
    )
    return plan, outcome


def _as_list(value: int | list[int]) -> list[int]:
    return value if isinstance(value, list) else [value]
