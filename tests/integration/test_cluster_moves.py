"""A cluster batch while its workers come and go: a worker retired gracefully
(``Client.retire_workers``) mid-item, one that joins mid-run. Each test has a cluster of its
own (``faultserver/dask_cluster.py``): they change its workers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from faultserver.dask_cluster import TEST_CONFIG, DaskCluster, start_cluster
from faultserver.registry import Registry, start_registry, start_relay
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, run_cli, sha256_file, spawn_cli
from tests.integration.test_cluster import KB, SMALL, _settled, json_lines, manifest, paced

if importlib.util.find_spec("distributed") is None:
    pytest.skip("distributed is not installed (pip install -e '.[dask]')", allow_module_level=True)

Make = Callable[..., Blob]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    handle = start_registry(tmp_path_factory.mktemp("registry"))
    yield handle
    handle.stop()


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    root = tmp_path_factory.mktemp("dask")
    # Each worker its own store, as on two nodes.
    stores = {name: {"OLLAMA_MODELS": str(root / f"models-{name}")} for name in ("w-a", "w-b")}
    handle = start_cluster(root, stores, threads=1)
    try:
        yield handle
        # Nothing blobdl started on a worker is still running, orphans included.
        assert _settled(handle) == []
    finally:
        handle.stop()


# Connected before the item starts, it retires the worker named on its stdin at once: a
# client started only then took seconds to import Dask, and the item had to be large enough
# (16 MiB, 24 s) to still run on the retired worker after that, on a loaded machine too.
RETIRE = """
import json, sys
from distributed import Client
with Client(sys.argv[1], timeout=30) as client:
    print("connected", flush=True)
    name = sys.stdin.readline().strip()
    found = [a for a, w in client.scheduler_info()["workers"].items() if str(w["name"]) == name]
    print(json.dumps(list(client.retire_workers(workers=found))), flush=True)
"""


def test_a_worker_retired_gracefully_mid_item_leaves_the_item_to_the_next_worker(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """Dask's graceful retirement (``Client.retire_workers``, as an adaptive cluster scales
    down) gives a running task to another worker at once, while the retiring worker waits
    up to 30 s for its threads: the item ends once, whole, from the partial, exit 0, never
    two downloads of it at once (the rerun failed, exit 5, 'process N is already
    downloading to this destination', and the file landed whole after the run had said so)."""
    blob = make(6 * 1024 * KB, 71)  # ~8 s: retired at 1 MiB, it runs on for seconds
    paced(server, 256 * KB)
    pipe = subprocess.PIPE
    retire = subprocess.Popen([sys.executable, "-c", RETIRE, cluster.address], text=True,
                              stdin=pipe, stdout=pipe, stderr=pipe,
                              env={**os.environ, **TEST_CONFIG})  # fmt: skip
    try:
        assert retire.stdin is not None and retire.stdout is not None
        assert retire.stdout.readline() == "connected\n"
        proc = spawn_cli("-i", manifest(tmp_path, [f"{blob.url} {tmp_path / 'big.bin'}"]),
                         "--scheduler", cluster.address, "--connections", "2",
                         "--checkpoint-interval", "0.2", "--json", *SMALL)  # fmt: skip
        assert proc.stdout is not None
        seen: list[dict[str, Any]] = []
        for line in proc.stdout:
            seen.append(json.loads(line))
            if seen[-1].get("event") == "progress" and seen[-1]["done"] >= 1024 * KB:
                retire.stdin.write(seen[-1]["worker"] + "\n")
                retire.stdin.flush()
                break
        retired, retire_err = retire.communicate(timeout=60)
    finally:
        if retire.poll() is None:
            retire.kill()
            retire.communicate()
    assert retire.returncode == 0, retire_err[-2000:]
    assert len(json.loads(retired)) == 1
    out, err = proc.communicate(timeout=120)
    events = seen + json_lines(out)
    told = [e for e in events if e.get("event") in ("finished", "failed")]
    assert proc.returncode == 0, (err, told)
    assert [e["event"] for e in told] == ["finished"]
    assert told[0]["worker"] != seen[-1]["worker"] and told[0]["resumed"] >= 1024 * KB
    assert sha256_file(tmp_path / "big.bin") == blob.sha256
    assert server.stats()["max_concurrent"] <= 2


def test_a_probe_redirected_to_another_host_counts_against_its_per_host_cap(
    cluster: DaskCluster, server: ServerHandle, other: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """127.0.0.1's items redirect to ``localhost`` (the other server), whose own items are
    probed meanwhile: with one connection per host, the other server never holds two at
    once, as on one machine (``test_a_small_item_redirected_to_another_host_counts_...``)."""
    moved = [make(64 * KB, 2800 + n) for n in range(3)]
    direct = [make(64 * KB, 2810 + n) for n in range(3)]
    elsewhere = other.route("/files").replace("127.0.0.1", "localhost")
    server.set_faults(*({"path": f"/files/{b.name}", "times": None, "action": "redirect",
                         "location": f"{elsewhere}/{b.name}"} for b in moved))  # fmt: skip
    other.set_faults({"path": "/files/*", "times": None, "action": "ttfb", "delay": 0.4})
    lines = [f"{b.url} {tmp_path / ('m-' + b.name)}" for b in moved]
    lines += [f"{other.url(b.name).replace('127.0.0.1', 'localhost')} {tmp_path / b.name}"
              for b in direct]  # fmt: skip
    done = run_cli("-i", manifest(tmp_path, lines), "--scheduler", cluster.address,
                   "--connections", "8", "--per-host", "1", "-q", *SMALL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for b in moved:
        assert sha256_file(tmp_path / ("m-" + b.name)) == b.sha256
    assert other.stats()["max_concurrent"] <= 1, other.stats()["ranges"]


def test_pull_on_every_worker_holds_the_connection_budget_across_its_stores(
    cluster: DaskCluster, registry: Registry, tmp_path: Path
) -> None:
    """--connections is never exceeded at the server however many workers run (as
    --limit-rate, one budget for all the stores' pulls): two stores' pulls held 4 lookups
    at once under --connections 2, each pull the whole budget."""
    model = registry.push_model("library/fleet-budget", "v1", (10 * KB, 20, 30, 40))
    relay = start_relay(tmp_path / "relay", registry.url)
    try:
        relay.set_faults([{"match": "/blobs/", "range": "bytes=0-0", "hold": 0.5}])
        where = relay.url.removeprefix("http://")
        done = run_cli("pull", f"http://{where}/{model.repo}:{model.tag}", "--scheduler",
                       cluster.address, "--every-worker", "--connections", "2", "-q")  # fmt: skip
        peak = relay.held_peak()
    finally:
        relay.stop()
    assert done.returncode == 0, done.stderr
    for name in ("w-a", "w-b"):
        store = cluster.root / f"models-{name}"
        for digest, data in model.blobs.items():
            assert (store / "blobs" / digest.replace(":", "-")).read_bytes() == data
    assert peak <= 2
