"""The ``hf`` preset: ``blobdl hf`` against huggingface_hub's own ``snapshot_download``, from
the same stand-in Hub (``faultserver/hub.py``), in the same run.

    python -m benchmarks.hf [--shards 4] [--shard-size 256MiB] [--rate 8MiB] [--many 1000]
                            [--repeat 1] [--workdir DIR]      (or: make bench BENCH_ARGS=--hf)

Two repositories: ``bench/shards`` (``--shards`` LFS shards of ``--shard-size`` plus a dozen
small git files; the storage origin paces every connection at ``--rate`` bytes/s, as a CDN
caps each connection) and ``bench/many`` (``--many`` small git files of 2 KiB, no cap). Each
is fetched into an empty cache on disk, taking turns at going first, by:

- ``python -m blobdl hf REPO --cache-dir D -q`` (its default settings: 16 connections);
- huggingface_hub's ``snapshot_download(REPO, cache_dir=D)`` (its default, 8 workers), and
  for the shards again with ``max_workers=16`` (plain HTTP: ``HF_HUB_DISABLE_XET=1``).

All are real child processes timed from spawn to exit; after each run the cache's tree (every
path, link target and file size) must equal the first huggingface_hub run's. The goals (issue
#22): shards, blobdl <= 0.8 x snapshot_download's default wall and <= 1.0 x with 16 workers;
many small files, blobdl <= 1.0 x snapshot_download. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blobdl import UsageError, parse_size
from faultserver.hub import HubHandle, HubRepo, start_hub

from .direct import go_direct

REPO_ROOT = Path(__file__).resolve().parent.parent
GOALS = {"shards/hf": 0.8, "shards/hf16": 1.0, "many/hf": 1.0}
SMALL = 2048


def main(argv: list[str] | None = None) -> int:
    go_direct()  # no tool behind a proxy from the environment (benchmarks.direct)
    p = argparse.ArgumentParser(prog="python -m benchmarks.hf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--shard-size", default="256MiB", help="each LFS shard (default 256MiB)")
    p.add_argument("--rate", default="8MiB", help="storage bytes/s per connection (8MiB)")
    p.add_argument("--many", type=int, default=1000, help="files of the small-file repository")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--workdir", help="where the caches go (default /var/tmp: a real disk)")
    args = p.parse_args(argv)
    try:
        shard, rate = parse_size(args.shard_size), parse_size(args.rate)
    except UsageError as exc:
        p.error(str(exc))
    with contextlib.ExitStack() as stack:
        served = Path(
            stack.enter_context(tempfile.TemporaryDirectory(dir=_shm(args.shards * shard)))
        )
        work = Path(
            stack.enter_context(tempfile.TemporaryDirectory(dir=args.workdir or "/var/tmp"))
        )
        print(f"building {args.shards} x {shard} byte shards and {args.many} small files ...",
              flush=True)  # fmt: skip
        hub = start_hub(served, [_shards(args.shards, shard), _many(args.many)])
        stack.callback(hub.stop)
        times = _measure(hub, work, rate, args.repeat)
    return _report(times, args)


def _shards(count: int, size: int) -> HubRepo:
    rng = random.Random(0)
    files = {
        f"model-{i + 1:05d}-of-{count:05d}.safetensors": os.urandom(size) for i in range(count)
    }
    files.update({f"config-{i}.json": rng.randbytes(SMALL) for i in range(12)})
    repo = HubRepo("bench/shards")
    repo.commit(files)
    return repo


def _many(count: int) -> HubRepo:
    rng = random.Random(1)
    repo = HubRepo("bench/many")
    repo.commit(
        {f"data/{i // 100:02d}/file-{i:04d}.json": rng.randbytes(SMALL) for i in range(count)}
    )
    return repo


def _measure(hub: HubHandle, work: Path, rate: int, repeat: int) -> dict[str, list[float]]:
    runs = {
        "shards/blobdl": ("bench/shards", None),
        "shards/hf": ("bench/shards", 8),
        "shards/hf16": ("bench/shards", 16),
        "many/blobdl": ("bench/many", None),
        "many/hf": ("bench/many", 8),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    layouts: dict[str, dict[str, tuple[str, int]]] = {}
    for turn in range(repeat):
        order = list(runs) if turn % 2 == 0 else list(reversed(runs))
        for name in order:  # taking turns: neither always runs on a warmer machine
            repo, workers = runs[name]
            hub.reset()
            if repo == "bench/shards":  # a CDN caps each connection, not the link
                hub.storage.set_faults({"path": "/files/*", "action": "slow_conn", "bps": rate,
                                        "times": None})  # fmt: skip
            cache = work / f"cache-{turn}-{name.replace('/', '-')}"
            times[name].append(_timed(hub, repo, cache, workers))
            layout = _layout(cache)
            first = layouts.setdefault(repo, layout)
            if layout != first:
                raise SystemExit(f"{name}: the cache differs from the first run's")
            shutil.rmtree(cache)
            print(f"run {turn + 1}: {name} {times[name][-1]:.2f} s", flush=True)
    return times


def _timed(hub: HubHandle, repo: str, cache: Path, workers: int | None) -> float:
    # Neither client inherits an offline switch (TRANSFORMERS_OFFLINE counts for both).
    ours = ("HF_", "HUGGING", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(cache.parent / "hf-home"), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")  # fmt: skip
    if workers is None:
        cmd = [sys.executable, "-m", "blobdl", "hf", repo, "--cache-dir", str(cache), "-q"]
    else:
        code = ("import sys, huggingface_hub as h; h.snapshot_download(sys.argv[1], "
                "cache_dir=sys.argv[2], max_workers=int(sys.argv[3]))")  # fmt: skip
        cmd = [sys.executable, "-c", code, repo, str(cache), str(workers)]
    subprocess.run(["sync"], check=False)
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:5])} exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed


def _layout(cache: Path) -> dict[str, tuple[str, int]]:
    """Every path of the cache with its link target or its size."""
    found = {}
    for path in cache.rglob("*"):
        name = path.relative_to(cache).as_posix()
        if path.is_symlink():
            found[name] = (os.readlink(path), 0)
        elif path.is_file():
            found[name] = ("file", path.stat().st_size)
    return found


def _report(times: dict[str, list[float]], args: argparse.Namespace) -> int:
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"\nmedians of {args.repeat} ({args.shards} x {args.shard_size} shards at {args.rate}/s "
          f"per connection; {args.many} files of {SMALL} bytes):")  # fmt: skip
    for name, value in medians.items():
        print(f"  {name:<14} {value:7.2f} s")
    for name, goal in GOALS.items():
        kind = name.split("/")[0]
        ratio = medians[f"{kind}/blobdl"] / medians[name]
        verdict = "met" if ratio <= goal else "NOT met"
        print(f"  blobdl / {name:<12} = {ratio:.3f}  (goal <= {goal}: {verdict})")
    return 0


def _shm(needed: int) -> str | None:
    """The served blobs on tmpfs when there is room: the server never waits for a disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 2 * needed:
        return str(shm)
    return None


if __name__ == "__main__":
    sys.exit(main())
