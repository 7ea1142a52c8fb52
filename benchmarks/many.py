"""The ``many`` preset (issue #23): many files, where a small item should cost what a request
costs, not what a download costs.

    python -m benchmarks --many [--repeat 3] [--pairs 9] [--workdir DIR]
                                                              (or python -m benchmarks.many)

A real nginx (plain HTTP, sendfile, keep-alive) serves generated files from tmpfs; every tool
writes onto a real disk under /var/tmp (checked: never tmpfs, else the goals say so). The
files cases run each tool ``--repeat`` times round-robin; the paired cases (beside, pull:
two blobdl runs of a 512 MiB blob, whose single runs vary up to 2× here) run one warm-up pair,
checked and not counted, then ``--pairs`` pairs; medians reported:

- ``files``: 400 × 1 MiB as one manifest: ``blobdl -i`` against ``aria2c -i -j16`` and
  ``xargs -P16 curl`` (25 URLs per curl, so it keeps its connection alive: the fastest way
  curl has; and one curl per file, for information).
- ``tiny``: 10,000 × 64 KiB: blobdl and aria2c; the tree's memory, open descriptors and
  processes are sampled every 0.1 s.
- ``beside``: a 512 MiB blob and four 1000-byte ones, each with a digest, as one manifest
  with ``--per-host 16`` (what ``pull`` does with a model's layers: every layer may use the
  whole budget), against a plain ``blobdl URL --digest`` of the 512 MiB one; taking turns
  at going first. nginx's log gives the bytes it sent (wire / size).
- ``limit``: ``--limit-rate 100MB`` over a manifest of 256 MiB and three 1000-byte blobs;
  the aggregate rate is the bytes over the span from the first ``started`` to the last
  ``finished`` event, stamped by the harness as the lines arrive.
- ``pull`` (when Debian's ``docker-registry`` is installed): ``blobdl pull`` of a model whose
  layer is 512 MiB against a plain download of that layer (``benchmarks.pull``), and the same
  pull at ``--limit-rate 100MB``.

The goals are ratios of measurements of the same run (``goals``); none is ever asserted in a
test. Results go to ``benchmarks/results/many/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .dest import DISK
from .direct import go_direct
from .many_runs import FILES, LIMIT, PAIRS, TINY_FILES, MiB, Outcome, Sample, run
from .report import Goal

RESULTS = Path(__file__).resolve().parent / "results" / "many"


def main(argv: list[str] | None = None) -> int:
    go_direct()  # no tool behind a proxy from the environment (benchmarks.direct)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.many", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each tool (default 3)")
    parser.add_argument(
        "--pairs", type=int, default=PAIRS,
        help=f"counted pairs of the beside and pull cases, after a warm-up pair (default {PAIRS})",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, help=f"where downloads go (default {DISK})")
    parser.add_argument(
        "--cases", default="files,tiny,beside,limit,pull", help="which cases to run"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run at most")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    started = time.monotonic()
    outcome = run(cases, max(1, args.repeat), args.workdir or DISK, args.timeout,
                  max(1, args.pairs))  # fmt: skip
    found = goals(outcome)
    args.out.mkdir(parents=True, exist_ok=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    seconds = round(time.monotonic() - started, 1)
    doc = {
        "meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load": load,
                 "cpus": os.cpu_count(), "seconds": seconds},
        "destination": outcome.dest,
        "skipped": outcome.skipped,
        "samples": [asdict(s) for s in outcome.samples],
        "pull": outcome.pull,
        "goals": [asdict(g) for g in found],
    }  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(doc, indent=2))
    print(f"destination: {outcome.dest}; machine: {os.cpu_count()} CPUs, load {load}")
    for name, why in outcome.skipped.items():
        print(f"skipped: {name} ({why})")
    print(table(outcome.samples))
    print()
    print("\n".join(f"[{g.status:^12}] {g.name}: {g.measured}  (goal {g.target})" for g in found))
    print(f"results: {args.out / 'results.json'}; took {seconds} s")
    return 0 if all(s.ok for s in outcome.samples) else 1


# --- the goals -----------------------------------------------------------------------------


def _median(samples: list[Sample], case: str, tool: str, attr: str) -> float | None:
    values = [getattr(s, attr) for s in samples if (s.case, s.tool) == (case, tool) and s.ok]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _runs(samples: list[Sample], case: str, tool: str, base: str, attr: str) -> str:
    """The ratio run by run (the k-th run of ``tool`` over the k-th of ``base``, measured
    one after the other): its range, so that a verdict inside the runs' own spread reads as
    such. Empty with fewer than two pairs."""

    def by_run(name: str) -> dict[int, float]:
        return {x.repeat: getattr(x, attr) for x in samples
                if (x.case, x.tool) == (case, name) and x.ok and getattr(x, attr)}  # fmt: skip

    ours, theirs = by_run(tool), by_run(base)
    ratios = [ours[k] / theirs[k] for k in sorted(ours.keys() & theirs.keys())]
    if len(ratios) < 2:
        return ""
    return f"; run by run {min(ratios):.2f}-{max(ratios):.2f}×"


def _durable(samples: list[Sample], case: str, tool: str, base: str) -> str:
    """Information beside a wall goal, not its verdict: the medians of wall plus the
    ``sync`` after it, the time until the files are on disk (blobdl fsyncs each file
    before it renames it; curl leaves its files to the kernel's writeback)."""

    def durable(name: str) -> float | None:
        runs = [x.wall_s + x.sync_s for x in samples
                if (x.case, x.tool) == (case, name) and x.ok and x.sync_s is not None]  # fmt: skip
        return statistics.median(runs) if runs else None

    ours, theirs = durable(tool), durable(base)
    if ours is None or theirs is None:
        return ""
    return f"; until on disk {ours / theirs:.2f}× ({ours:.2f} vs {theirs:.2f} s)"


def goals(outcome: Outcome) -> list[Goal]:
    s, found = outcome.samples, []
    on_disk = outcome.dest.startswith("disk")

    def judged(
        name: str, measured: str, target: str, met: bool, disk: bool = True, of: str = ""
    ) -> Goal:
        """``of``: "case/tool" of the blobdl runs behind the goal; one failed: NOT met."""
        case, _, tool = of.partition("/")
        runs = [x for x in s if (x.case, x.tool) == (case, tool)]
        if failed := [x for x in runs if not x.ok]:
            measured += f"; {len(failed)} of {len(runs)} runs failed ({of})"
            met = False
        if disk and not on_disk:
            return Goal(name, f"{measured}; destination was {outcome.dest}", target, "not measured")
        return Goal(name, measured, target, "met" if met else "NOT met")

    def missing(name: str, target: str, what: str) -> Goal:
        return Goal(name, f"{what} not run", target, "not measured")

    name = "400 × 1 MiB: wall, blobdl -i / xargs -P16 curl (keep-alive)"
    ours, curl = _median(s, "files", "blobdl", "wall_s"), _median(s, "files", "curl", "wall_s")
    if ours and curl:
        one = _median(s, "files", "curl-1", "wall_s")
        extra = f"; one curl per file {one:.2f} s" if one else ""
        extra += _durable(s, "files", "blobdl", "curl")
        extra += _runs(s, "files", "blobdl", "curl", "wall_s")
        found.append(judged(name, f"{ours / curl:.2f}× ({ours:.2f} vs {curl:.2f} s{extra})",
                            "≤ 1×", ours <= curl, of="files/blobdl"))  # fmt: skip
    else:
        found.append(missing(name, "≤ 1×", "files/blobdl or files/curl"))
    name = "400 × 1 MiB: CPU per file, blobdl / aria2c"
    ours, aria = _median(s, "files", "blobdl", "cpu_s"), _median(s, "files", "aria2c", "cpu_s")
    if ours and aria:
        per = f"{ours / FILES.count * 1e3:.2f} vs {aria / FILES.count * 1e3:.2f} ms"
        per += _runs(s, "files", "blobdl", "aria2c", "cpu_s")
        found.append(judged(name, f"{ours / aria:.2f}× ({per})", "≤ 1×", ours <= aria,
                            of="files/blobdl"))  # fmt: skip
    else:
        found.append(missing(name, "≤ 1×", "files/blobdl or files/aria2c"))
    found += _tiny_goals(s, judged, missing)
    name = "512 MiB beside 4 small blobs (manifest, digests) / plain download"
    ours = _median(s, "beside", "manifest", "wall_s")
    plain = _median(s, "beside", "plain", "wall_s")
    if ours and plain:
        wire = _median(s, "beside", "manifest", "wire")
        extra = f"; wire / size {wire:.4f}" if wire else ""
        extra += _runs(s, "beside", "manifest", "plain", "wall_s")
        pairs = len([x for x in s if (x.case, x.tool) == ("beside", "plain")])
        found.append(judged(name, f"{ours / plain:.3f}× ({ours:.2f} vs {plain:.2f} s, medians "
                                  f"of {pairs}{extra})",
                            "≤ 1.05×", ours <= 1.05 * plain, of="beside/manifest"))  # fmt: skip
    else:
        found.append(missing(name, "≤ 1.05×", "beside"))
    found += _limit_goals(s, outcome.pull, judged, missing)
    found.append(_pull_goal(outcome, judged))
    return found


def _tiny_goals(
    s: list[Sample], judged: Callable[..., Goal], missing: Callable[..., Goal]
) -> list[Goal]:
    out = []
    name = "10,000 × 64 KiB: files per second, blobdl / aria2c"
    ours, aria = _median(s, "tiny", "blobdl", "wall_s"), _median(s, "tiny", "aria2c", "wall_s")
    if ours and aria:
        rate, theirs = TINY_FILES.count / ours, TINY_FILES.count / aria
        spread = _runs(s, "tiny", "aria2c", "blobdl", "wall_s")  # files/s: their wall over ours
        measured = f"{rate / theirs:.2f}× ({rate:.0f} vs {theirs:.0f} files/s{spread})"
        out.append(judged(name, measured, "≥ 1×", rate >= theirs, of="tiny/blobdl"))
    else:
        out.append(missing(name, "≥ 1×", "tiny/blobdl or tiny/aria2c"))
    runs = [x for x in s if (x.case, x.tool) == ("tiny", "blobdl") and x.ok]
    name = "10,000 × 64 KiB: peak USS of blobdl's process tree (worst run)"
    if runs and all(x.peak_uss_mb is not None for x in runs):
        peak = max(x.peak_uss_mb for x in runs if x.peak_uss_mb is not None)
        out.append(judged(name, f"{peak:.1f} MB", "≤ 100 MB", peak <= 100, disk=False,
                          of="tiny/blobdl"))  # fmt: skip
        name = "10,000 × 64 KiB: descriptor and process growth, last third over middle third"
        fds = [x.fd_growth for x in runs if x.fd_growth is not None]
        procs = [x.proc_growth for x in runs if x.proc_growth is not None]
        if fds and procs:
            worst = (max(fds), max(procs))
            peaks = f"peak {max(x.peak_fds or 0 for x in runs)} fds, "
            peaks += f"{max(x.peak_procs or 0 for x in runs)} processes"
            measured = f"+{worst[0]} descriptors, +{worst[1]} processes (worst run; {peaks})"
            # Descriptors of the items in flight come and go; a leak grows by thousands.
            out.append(judged(name, measured, "≤ +16 fds, ≤ +0 processes",
                              worst[0] <= 16 and worst[1] <= 0, disk=False,
                              of="tiny/blobdl"))  # fmt: skip
        else:
            out.append(missing(name, "none", "a long enough tiny/blobdl run"))
    else:
        out.append(missing(name, "≤ 100 MB", "tiny/blobdl"))
    return out


def _limit_goals(
    s: list[Sample], pull: dict[str, Any], judged: Callable[..., Goal], missing: Callable[..., Goal]
) -> list[Goal]:
    out = []
    for tool, label in (("manifest", "manifest 256 MiB + 3 × 1000 B"),):
        name = f"--limit-rate 100MB, {label}: bytes / span of the items, / limit"
        runs = [x for x in s if (x.case, x.tool) == ("limit", tool) and x.ok and x.span_s]
        single = _median(s, "limit", "single", "span_s")
        if not runs:
            out.append(missing(name, LIMITED, "limit"))
            continue
        rate = statistics.median((x.bytes or 0) / (x.span_s or 1) for x in runs) / LIMIT
        extra = f"; one download alone {256 * MiB / single / LIMIT:.3f}" if single else ""
        out.append(_limited(judged, name, rate, extra, f"limit/{tool}"))
    name = "--limit-rate 100MB, blobdl pull of 512 MiB: bytes / span of the layers, / limit"
    spans = pull.get("limited_spans_s") or []
    if spans:
        rate = pull["size"] / statistics.median(spans) / LIMIT
        out.append(_limited(judged, name, rate, "", ""))
    else:
        out.append(missing(name, LIMITED, "pull"))
    return out


LIMITED = "0.9-1.05"  # the limit used, and kept: a limiter that lets more through is not met


def _limited(judged: Callable[..., Goal], name: str, rate: float, extra: str, of: str) -> Goal:
    above = "; above the limit" if rate > 1.05 else ""
    return judged(name, f"{rate:.3f}{extra}{above}", LIMITED, 0.9 <= rate <= 1.05, disk=False,
                  of=of)  # fmt: skip


def _pull_goal(outcome: Outcome, judged: Callable[..., Goal]) -> Goal:
    name = "blobdl pull of a 512 MiB layer (beside config and template) / plain download"
    pull = outcome.pull
    if not pull.get("pull_s"):
        why = outcome.skipped.get("pull", "pull not run")
        return Goal(name, why, "≤ 1.05×", "not measured")
    ours, plain = statistics.median(pull["pull_s"]), statistics.median(pull["plain_s"])
    pairs = [a / b for a, b in zip(pull["pull_s"], pull["plain_s"], strict=False) if b]
    spread = f"; run by run {min(pairs):.2f}-{max(pairs):.2f}×" if len(pairs) > 1 else ""
    measured = f"{ours / plain:.3f}× ({ours:.2f} vs {plain:.2f} s, medians of {len(pairs)}{spread})"
    return judged(name, measured, "≤ 1.05×", ours <= 1.05 * plain)


# --- output ---------------------------------------------------------------------------------


def table(samples: list[Sample]) -> str:
    keys = sorted({(x.case, x.tool) for x in samples}, key=lambda k: (k[0], k[1]))
    lines = [f"{'case':<8} {'tool':<9} {'ok':>5} {'wall s':>8} {'CPU s':>7} {'ms/file':>8} "
             f"{'files/s':>8} {'USS MB':>7} {'sync s':>7} {'span s':>7}"]  # fmt: skip
    for case, tool in keys:
        runs = [x for x in samples if (x.case, x.tool) == (case, tool)]
        good = [x for x in runs if x.ok]
        wall = _median(samples, case, tool, "wall_s")
        cpu = _median(samples, case, tool, "cpu_s")
        files = runs[0].files
        lines.append(
            f"{case:<8} {tool:<9} {len(good):>2}/{len(runs):<2} {_f(wall):>8} {_f(cpu):>7} "
            f"{_f(cpu and cpu / files * 1e3):>8} {_f(wall and files / wall, 0):>8} "
            f"{_f(_median(samples, case, tool, 'peak_uss_mb'), 1):>7} "
            f"{_f(_median(samples, case, tool, 'sync_s')):>7} "
            f"{_f(_median(samples, case, tool, 'span_s')):>7}"
        )
    return "\n".join(lines)


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
