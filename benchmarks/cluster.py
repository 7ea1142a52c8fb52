"""The ``cluster`` preset: a manifest on a real Dask cluster of 1, 2 and 4 workers, and the
same manifest on ``local:1`` against plain ``download_many``, in one run.

    python -m benchmarks.cluster [--items 8] [--size 48MiB] [--cap 16MB] [--workers 1,2,4]
    python -m benchmarks --cluster            # the same

One machine stands for N nodes: each ``dask worker`` (started with Dask's own command line,
one thread each, so one item at a time) gets a share of the batch's ``--limit-rate`` equal to
``--cap``, as if each node had a NIC of that speed. blobdl splits ``--limit-rate`` by
connections granted, so the batch runs with ``--connections N*c --limit-rate N*cap`` and
each item takes its ``c`` connections: one worker's item moves at ``cap``. The fault server
serves plain HTTP from the page cache; downloads land on a real disk (/var/tmp).

Goals (issue #21), as ratios within the run:
- aggregate throughput with N workers >= 0.9 x N x cap, measured from the first item's
  ``started`` event to the last one's ``finished`` (the transfer; the wall time from the
  command's start to its exit, client start-up included, is shown beside it);
- the same manifest on ``local:1`` costs <= 1.1 x plain ``download_many`` (wall time of the
  whole call, each in a fresh process, the same --limit-rate, alternating which goes first).

Writes results.json and cluster.png (when matplotlib is installed) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from blobdl import parse_size
from faultserver.dask_cluster import start_cluster
from faultserver.serverctl import make_blob, start_server

from .direct import go_direct

RESULTS = Path(__file__).resolve().parent / "results" / "cluster"
SCALE_GOAL, LOCAL_GOAL = 0.9, 1.1
CONNECTIONS = 4  # each item's connections: parts of a quarter of an item, so it uses them all
PARTS = ("--min-part-size", "{part}", "--max-part-size", "{part}")

LIBRARY = """
import sys, time, blobdl
if __name__ == "__main__":
    items = [blobdl.Item(url, path) for url, path in zip(sys.argv[3::2], sys.argv[4::2])]
    cluster = None if sys.argv[1] == "plain" else sys.argv[1]
    connections, rate, part = (int(n) for n in sys.argv[2].split(","))
    results = blobdl.download_many(items, cluster=cluster, max_connections=connections,
                                   per_host=connections, limit_rate=rate, force=True,
                                   min_part_size=part, max_part_size=part)
    assert all(r.ok for r in results), [r.error for r in results]
"""


def main(argv: list[str] | None = None) -> int:
    go_direct()  # no tool behind a proxy from the environment (benchmarks.direct)
    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    p.add_argument("--items", type=int, default=8)
    p.add_argument("--size", default="48MiB", help="each item (default 48MiB)")
    p.add_argument("--cap", default="16MB", help="each worker's share, bytes/s (default 16MB)")
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    size, cap = parse_size(args.size), parse_size(args.cap)
    counts = [int(n) for n in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="blobdl-cluster-", dir="/var/tmp"))
    try:
        results = _run(work, args.items, size, cap, counts, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _report(results, args.out)
    return 0


def _run(
    work: Path, items: int, size: int, cap: int, counts: list[int], repeat: int
) -> dict[str, Any]:
    served = work / "served"
    served.mkdir()
    names = [f"item-{n}.bin" for n in range(items)]
    for n, name in enumerate(names):
        make_blob(served, name, size, n)
    total = items * size
    scaling, local = [], {}
    with start_server(served) as server:
        urls = [server.url(name) for name in names]
        for count in counts:
            runs = [_on_cluster(work, urls, size, count, cap) for _ in range(repeat)]
            transfer = statistics.median(r["transfer"] for r in runs)
            wall = statistics.median(r["wall"] for r in runs)
            rate = total / transfer
            scaling.append({"workers": count, "transfer_s": transfer, "wall_s": wall,
                            "aggregate_Bps": rate, "ideal_Bps": count * cap,
                            "ratio": rate / (count * cap), "runs": runs})  # fmt: skip
            print(f"{count} worker(s): {rate / 1e6:.1f} MB/s = {rate / (count * cap):.2f} x "
                  f"{count} x cap (transfer {transfer:.2f} s, wall {wall:.2f} s)")  # fmt: skip
        local = _local_vs_plain(work, urls, size, cap, repeat)
    print(f"local:1 {local['local_s']:.2f} s vs plain download_many {local['plain_s']:.2f} s: "
          f"{local['ratio']:.3f} x (goal <= {LOCAL_GOAL})")  # fmt: skip
    return {"items": items, "size": size, "cap_Bps": cap, "scaling": scaling, "local": local,
            "load": os.getloadavg()}  # fmt: skip


def _on_cluster(work: Path, urls: list[str], size: int, count: int, cap: int) -> dict[str, float]:
    dest = work / "dest"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    # Dask's diagnostics on, as users run it: the tests' quiet cluster would be an easier one.
    workers = {f"w-{n}": {} for n in range(count)}
    cluster = start_cluster(work / f"dask-{count}", workers, 1, quiet=False)
    try:
        manifest = work / "manifest.txt"
        manifest.write_text("".join(f"{u} {dest / Path(u).name}\n" for u in urls))
        budget = str(count * CONNECTIONS)
        command = [sys.executable, "-m", "blobdl", "-i", str(manifest), "--json",
                   "--scheduler", cluster.address, "--connections", budget,
                   "--per-host", budget, "--limit-rate", str(count * cap),
                   *(a.format(part=size // CONNECTIONS) for a in PARTS)]  # fmt: skip
        t0 = time.monotonic()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        first = last = None
        assert proc.stdout is not None
        for line in proc.stdout:  # each event timed as it arrives at the client
            kind = json.loads(line).get("event")
            if kind == "started" and first is None:
                first = time.monotonic()
            elif kind == "finished":
                last = time.monotonic()
        err = proc.communicate(timeout=1800)[1]
        wall = time.monotonic() - t0
        if proc.returncode != 0 or first is None or last is None:
            raise RuntimeError(f"the cluster run failed: {err[-2000:]}")
        transfer = last - first
    finally:
        cluster.stop()
    return {"wall": wall, "transfer": transfer}


def _local_vs_plain(
    work: Path, urls: list[str], size: int, cap: int, repeat: int
) -> dict[str, float]:
    """The whole call, interpreter start-up and (for local:1) the embedded cluster included,
    each kind in a fresh process, at the batch rate of one worker, taking turns at going first."""
    script = work / "client.py"
    script.write_text(LIBRARY)
    dest = work / "dest-local"
    times: dict[str, list[float]] = {"local:1": [], "plain": []}
    for n in range(repeat * 2):
        kind = ("local:1", "plain")[n % 2]
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        pairs = [a for u in urls for a in (u, str(dest / Path(u).name))]
        t0 = time.monotonic()
        numbers = f"{CONNECTIONS},{cap},{size // CONNECTIONS}"
        subprocess.run([sys.executable, str(script), kind, numbers, *pairs],
                       check=True, timeout=1800, cwd=work)  # fmt: skip
        times[kind].append(time.monotonic() - t0)
    local, plain = statistics.median(times["local:1"]), statistics.median(times["plain"])
    return {"local_s": local, "plain_s": plain, "ratio": local / plain}


def _report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    for row in results["scaling"]:
        verdict = "met" if row["ratio"] >= SCALE_GOAL else "NOT met"
        print(f"goal: {row['workers']} worker(s) >= {SCALE_GOAL} x N x cap: "
              f"{row['ratio']:.2f} ({verdict})")  # fmt: skip
    local = results["local"]["ratio"]
    print(f"goal: local:1 <= {LOCAL_GOAL} x plain: {local:.3f} "
          f"({'met' if local <= LOCAL_GOAL else 'NOT met'})")  # fmt: skip
    print(f"load average: {results['load']}; results in {out}")
    _chart(results, out / "cluster.png")


def _chart(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart skipped: matplotlib not installed (pip install -e '.[bench]')")
        return
    rows = results["scaling"]
    workers = [r["workers"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(workers, [r["aggregate_Bps"] / 1e6 for r in rows], "o-", label="blobdl on Dask")
    ax.plot(workers, [r["ideal_Bps"] / 1e6 for r in rows], "k--", label="N x per-worker cap")
    ax.plot(workers, [SCALE_GOAL * r["ideal_Bps"] / 1e6 for r in rows], ":", label="goal (0.9x)")
    ax.set_xlabel("workers (each capped: one node's NIC)")
    ax.set_ylabel("aggregate MB/s")
    ax.set_xticks(workers)
    ax.legend()
    ax.set_title(f"{results['items']} items x {results['size'] >> 20} MiB")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"chart: {path}")


if __name__ == "__main__":
    sys.exit(main())
