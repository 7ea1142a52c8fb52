"""The ``parts`` scenario (issue #20, item 9): what a download's part count costs.

    python -m benchmarks.parts [--size 1MiB] [--counts 16,1000,10000,16000,1000000] [--repeat 1]

Serves a ``--size`` blob from the fault server on loopback and downloads it with the CLI
(``--parts N``, 16 connections, ``--quiet``, to a disk directory under /var/tmp unless
``--workdir``) for each N, timed from spawn to exit (a run past ``--timeout`` is killed,
with its workers, and shows exit -9). For each it prints the time to the first byte (spawn
to the server's first range request: the probe is the first request), the wall time, the
peak RSS and the CPU time of the coordinator itself (sampled every 50 ms), and the ratios to
the 16-part run of the same invocation. A count above the cap must be refused at once (exit 2).

The goal: the time to the first byte and the peak RSS stay within 2x of the 16-part run at
any accepted count (the coordinator's cost per wake-up does not grow with the parts); the
wall time grows with the parts, since each part is one request at least.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import psutil

from faultserver.serverctl import ServerHandle, make_blob, start_server

from .direct import go_direct

GOAL = 2.0
BASE = 16


class Run(NamedTuple):
    parts: int
    code: int
    ttfb: float | None  # seconds from spawn to the first range request
    wall: float
    rss_mib: float
    cpu: float  # the coordinator's own CPU seconds (its workers aside), at its last sample


def main(argv: list[str] | None = None) -> int:
    go_direct()  # no tool behind a proxy from the environment (benchmarks.direct)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parts", description=__doc__)
    parser.add_argument("--size", default="1MiB", help="the blob (default 1MiB)")
    parser.add_argument("--counts", default="16,1000,10000,16000,1000000")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (median)")
    parser.add_argument("--workdir", help="where the downloads go (default: /var/tmp)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    args = parser.parse_args(argv)
    size = _size(args.size)
    counts = [int(c) for c in args.counts.split(",")]
    if BASE not in counts:
        counts.insert(0, BASE)
    with contextlib.ExitStack() as stack:
        served = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work = Path(
            stack.enter_context(tempfile.TemporaryDirectory(dir=args.workdir or "/var/tmp"))
        )
        server = start_server(served)
        stack.callback(server.stop)
        make_blob(served, "blob", size, seed=1)
        print(f"{size} byte blob, 16 connections, on {work}", flush=True)
        results = {n: _median([_run(server, work, n, args.timeout) for _ in range(args.repeat)])
                   for n in counts}  # fmt: skip
    _report(results)
    return 0


def _run(server: ServerHandle, work: Path, parts: int, timeout: float) -> Run:
    out = work / f"out-{parts}"
    for leftover in work.glob(f"out-{parts}*"):
        leftover.unlink()
    server.reset()
    command = [sys.executable, "-m", "blobdl", server.url("blob"), "-o", str(out),
               "--parts", str(parts), "--connections", "16", "--quiet"]  # fmt: skip
    started = time.monotonic()
    # Its own session: a run that outlasts the timeout is killed with all its workers.
    proc = subprocess.Popen(command, start_new_session=True)
    cli, ttfb, peak, cpu = psutil.Process(proc.pid), None, 0, 0.0
    while proc.poll() is None and time.monotonic() - started < timeout:
        if ttfb is None and server.stats()["requests"] >= 2:
            ttfb = time.monotonic() - started
        with contextlib.suppress(psutil.Error):
            peak = max(peak, cli.memory_info().rss)  # the coordinator: the largest process
            times = cli.cpu_times()
            cpu = times.user + times.system
        time.sleep(0.01 if ttfb is None else 0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wall = time.monotonic() - started
    return Run(parts, proc.returncode, ttfb, wall, peak / (1 << 20), cpu)


def _median(runs: list[Run]) -> Run:
    ttfbs = [r.ttfb for r in runs if r.ttfb is not None]
    return Run(
        runs[0].parts,
        max(r.code for r in runs),
        statistics.median(ttfbs) if ttfbs else None,
        statistics.median(r.wall for r in runs),
        statistics.median(r.rss_mib for r in runs),
        statistics.median(r.cpu for r in runs),
    )


def _report(results: dict[int, Run]) -> None:
    base = results[BASE]
    print(f"{'parts':>9} {'exit':>4} {'first byte s':>12} {'wall s':>8} {'peak RSS MiB':>12}"
          f" {'coord. CPU s':>12}   {'first byte / 16':>15} {'RSS / 16':>8} {'wall / 16':>9}"
          f" {'CPU ms / part':>13}")  # fmt: skip
    for run in results.values():
        ttfb = f"{run.ttfb:.2f}" if run.ttfb is not None else "-"
        if run.code == 2:
            print(f"{run.parts:>9} {run.code:>4} {'refused (above the cap)':>36}")
            continue
        ratio = f"{run.ttfb / base.ttfb:.2f}" if run.ttfb and base.ttfb else "-"
        rss, wall = run.rss_mib / base.rss_mib, run.wall / base.wall
        per_part = 1000 * run.cpu / run.parts
        print(f"{run.parts:>9} {run.code:>4} {ttfb:>12} {run.wall:>8.2f} {run.rss_mib:>12.0f}"
              f" {run.cpu:>12.2f}   {ratio:>15} {rss:>8.2f} {wall:>9.1f}"
              f" {per_part:>13.2f}")  # fmt: skip
    accepted = [r for r in results.values() if r.code != 2]
    worst = max((r.ttfb or float("inf")) / (base.ttfb or 1) for r in accepted)
    heaviest = max(r.rss_mib / base.rss_mib for r in accepted)
    verdict = "meets" if worst <= GOAL and heaviest <= GOAL else "MISSES"
    print(f"worst first byte / 16 parts = {worst:.2f}, peak RSS / 16 parts = {heaviest:.2f} "
          f"({verdict} the goal <= {GOAL})")  # fmt: skip


def _size(text: str) -> int:
    number = text.strip().lower().rstrip("b").rstrip("i")
    for suffix, unit in (("k", 1 << 10), ("m", 1 << 20)):
        if number.endswith(suffix):
            return int(number[:-1]) * unit
    return int(number)


if __name__ == "__main__":
    sys.exit(main())
