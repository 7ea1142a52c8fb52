"""``python -m benchmarks``: blobdl against curl, aria2c, axel and hf_transfer, on nginx and a
scriptable fault server, sweeping connections and parts; or against a real URL.

See benchmarks/README.md. Prints a table and the goals; writes results.csv, results.json and
throughput.png under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blobdl
from blobdl import UsageError, parse_size

from . import chart, goals, report
from .direct import go_direct
from .runner import Plan, run_plan
from .scenarios import DEFAULT_SCENARIOS, QUICK_SCENARIOS, SCENARIOS, Scenario

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Preset:
    size: str
    parts: str
    connections: str
    repeat: int
    scenarios: tuple[str, ...]
    baselines: bool


# The README's figures: every scenario, 2 GiB, parts swept at 16 connections and connections
# swept at one part each (not the grid: with work stealing the part count barely matters).
FULL = Preset("2GiB", "1,4,16,32", "1,2,4,8,16", 2, tuple(DEFAULT_SCENARIOS), True)
# The key goals of issues #12 and #14 in about a minute: the engine's before/after check.
QUICK = Preset("1GiB", "16", "16", 1, tuple(QUICK_SCENARIOS), True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK.size}, 16 parts × 16 connections, one repeat, {','.join(QUICK.scenarios)}",
    )
    p.add_argument(
        "--many",
        action="store_true",
        help="the many-files preset instead (issue #23; options: python -m benchmarks.many -h)",
    )
    p.add_argument("--size", help=f"blob size (default {FULL.size}; quick {QUICK.size})")
    p.add_argument(
        "--parts", help=f"part counts swept at the widest connection count ({FULL.parts})"
    )
    p.add_argument("--connections", help=f"connection counts swept ({FULL.connections})")
    p.add_argument("--repeat", type=int, help="runs per configuration; medians are reported")
    p.add_argument("--scenarios", help="comma-separated, from: " + ", ".join(SCENARIOS))
    p.add_argument(
        "--dest",
        choices=("disk", "tmpfs"),
        default="disk",
        help="where downloads are written: a real disk (default, /var/tmp) or tmpfs (/dev/shm)",
    )
    p.add_argument(
        "--stall-timeout", type=float, help="blobdl --stall-timeout (default: blobdl's own)"
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is killed")
    p.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        help="also run curl/aria2c/axel/hf_transfer where installed (default: on in the presets)",
    )
    p.add_argument("--url", help="benchmark this real URL instead of the local servers")
    p.add_argument(
        "--sha256",
        help="with --url: the blob's sha256, every run is checked against it (default: the "
        "first successful run's bytes)",
    )
    p.add_argument(
        "--ca-bundle",
        help="with --url: a PEM file of CAs every tool is given to trust (curl --cacert, "
        "aria2c --ca-certificate, blobdl --ca-bundle, SSL_CERT_FILE for axel and hf_transfer)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help=f"results directory (default {RESULTS.name}/, quick {RESULTS.name}/quick/: a quick "
        "run never overwrites the full preset's results)",
    )
    p.add_argument(
        "--workdir", type=Path, help="base directory of the downloads (overrides --dest)"
    )
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of each run")
    p.add_argument(
        "--from-json", type=Path, help="redo table, CSV and chart from an earlier results.json"
    )
    p.add_argument(
        "--blobdl-arg", action="append", default=[], help="extra blobdl argument (repeatable)"
    )
    p.add_argument(
        "--hf",
        action="store_true",
        help="the hf preset instead: blobdl hf against huggingface_hub's snapshot_download "
        "(defaults of python -m benchmarks.hf, which takes the options)",
    )
    return p


def _ints(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


def plan_from(args: argparse.Namespace, p: argparse.ArgumentParser) -> Plan:
    preset = QUICK if args.quick else FULL
    try:
        # blobdl's own sizes: "1MB" is 10**6, "1MiB" is 2**20 (a bare "1m" is decimal too).
        size = parse_size(args.size or preset.size)
        parts = _ints(args.parts or preset.parts)
        connections = _ints(args.connections or preset.connections)
    except (ValueError, UsageError) as exc:
        p.error(str(exc))
    names = [n.strip() for n in (args.scenarios or ",".join(preset.scenarios)).split(",")]
    names = [n for n in names if n]
    if unknown := [n for n in names if n not in SCENARIOS]:
        p.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    if not parts or not connections or min(parts + connections) < 1 or size < max(parts):
        p.error("part and connection counts must be >= 1 and parts no more than the size")
    scenarios: list[Scenario] = [SCENARIOS[n] for n in names]
    if not args.url and (args.sha256 or args.ca_bundle):
        p.error("--sha256 and --ca-bundle go with --url (the harness's own servers need neither)")
    if args.sha256 and not _is_sha256(args.sha256):
        p.error(f"--sha256 takes 64 hex digits, not {args.sha256!r}")
    if args.url:
        scenarios = [Scenario("url", f"real URL {args.url}")]
    repeat = args.repeat if args.repeat is not None else preset.repeat
    return Plan(
        size=size,
        parts=parts,
        scenarios=scenarios,
        repeat=max(1, repeat),
        connections=connections,
        stall_timeout=args.stall_timeout,
        timeout=args.timeout,
        baselines=preset.baselines if args.baselines is None else args.baselines,
        url=args.url,
        workdir=args.workdir,
        verify=not args.no_verify,
        extra=tuple(args.blobdl_arg),
        dest=args.dest,
        sha256=args.sha256,
        ca_bundle=args.ca_bundle,
    )


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def meta() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "blobdl_version": blobdl.__version__,
        "git": commit,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        # the machine may be shared: the 1-minute load average when the report was written
        "load": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    go_direct()  # no tool behind a proxy from the environment (benchmarks.direct)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cluster"]:  # the cluster preset is a harness of its own
        from . import cluster

        return cluster.main(argv[1:])
    if "--many" in argv:  # issue #23's preset: many files (benchmarks/many.py)
        from . import many

        return many.main([a for a in argv if a != "--many"])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.hf:
        from . import hf

        return hf.main([])
    started = time.monotonic()
    if args.from_json:
        plan, outcome = report.load_json(args.from_json)
    else:
        plan = plan_from(args, parser)
        outcome = run_plan(plan)
    rows = report.summarise(outcome.runs)
    found = goals.goals(rows, outcome, plan)
    if args.out is None:
        args.out = RESULTS / "quick" if args.quick else RESULTS
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_csv(rows, args.out / "results.csv")
    info = meta() | {"seconds": round(time.monotonic() - started, 1)}
    if args.from_json:  # keep when and where the runs were measured
        info = json.loads(args.from_json.read_text())["meta"] | {"reported": info["date"]}
    report.write_json(args.out / "results.json", plan, outcome, rows, found, info)
    size = f"{plan.size / 2**20:g} MiB" if not plan.url else plan.url
    why_not = chart.draw(rows, args.out / "throughput.png", f"blobdl, {size}, medians")
    print(
        f"destination: {outcome.dest or 'unknown'}; proto per row; machine: {info['cpus']} CPUs, "
        f"load {info.get('load', '?')}"
    )
    for name, why in outcome.skipped.items():
        print(f"skipped: {name} ({why})")
    print(report.table(rows))
    if outcome.reference is not None:
        ref = outcome.reference
        if ref["sha256"] is None:
            print("no run succeeded: nothing to check bytes against, no figure to show")
        else:
            print(f"bytes checked against {ref['source']}: sha256 {ref['sha256']}")
    for line in report.failures(rows, outcome.runs):
        print(line)
    print()
    print(goals.text(found))
    print()
    installed = [name for name, ok in outcome.baselines.items() if ok]
    missing = [name for name, ok in outcome.baselines.items() if not ok]
    print(f"baselines installed: {', '.join(installed) or 'none'}", end="")
    print(f"; not installed: {', '.join(missing)}" if missing else "")
    print(f"results: {args.out / 'results.csv'}, {args.out / 'results.json'}", end="")
    print(f", {args.out / 'throughput.png'}" if why_not is None else f" (no chart: {why_not})")
    print(f"took {info['seconds']} s")
    failed = [r for r in outcome.runs if not r.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
