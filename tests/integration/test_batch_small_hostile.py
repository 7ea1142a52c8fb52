"""A batch's small items, their progress told, under a hostile hand: the pool process killed
while its items are mid-progress. Each of its items gets one last word, after every event of
its own, the others go on, and nothing of a failed small item is left (it starts over: a
partial without a record would only be litter)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, fast_settings, sha256_file

Make = Callable[..., Blob]
SLOW = 10_000  # bytes, a kilobyte at a time at 4 KB/s: about 2.5 s, one request


def _pool_processes(before: set[int]) -> list[psutil.Process]:
    """The batch's pool processes: children of ours, born since ``before``, forking nothing."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.pid not in before and not proc.children():
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_pool_process_killed_mid_progress_fails_its_items_once_and_leaves_nothing(
    make: Make, server: ServerHandle, tmp_path: Path, signum: int
) -> None:
    blobs = [make(SLOW, seed=4400 + n) for n in range(3)]
    server.set_faults({"path": "/files/*", "times": None, "action": "rate", "bps": 4000,
                       "step": 1000})  # fmt: skip
    quick = make(1000, seed=4410)  # listed last: it runs on the pool forked again
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # the test server
    told: dict[int, list[str]] = {}
    killed: list[int] = []

    def note(batch_event: blobdl.BatchEvent) -> None:
        told.setdefault(batch_event.item, []).append(type(batch_event.event).__name__)
        progressed = {i for i, names in told.items() if "Progress" in names}
        if not killed and progressed >= {0, 1, 2}:  # every slow item is mid-progress
            (pool,) = _pool_processes(before)
            killed.append(pool.pid)
            pool.send_signal(signum)

    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate([*blobs, quick])]
    settings = fast_settings(progress_interval=0.1, processes=1)
    results = blobdl.download_many(items, max_connections=3, on_event=note, settings=settings)
    assert killed
    for n in range(3):
        assert results[n].error is not None and "download process died" in str(results[n].error)
        names = told[n]
        assert names[0] == "Started" and names[-1] == "Failed", names
        assert set(names[1:-1]) == {"Progress"}, names
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f"o{n}")) == []
    assert results[3].ok, results[3]
    assert sha256_file(tmp_path / "o3") == quick.sha256
