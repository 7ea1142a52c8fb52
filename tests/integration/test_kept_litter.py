"""A seat of a batch keeps its lock file between two items, as ``.blobdl-kept-SEAT.blobdl-lock``
in the folder of its last destination (``store._lock.KeptLockFile``). A batch killed whole
leaves one per seat there, unheld. The next batch sweeps every folder it writes into, once,
before its pool starts: what nobody holds goes, whatever the seats and the manifest of the
killed batch were; a file another process holds, and anything not named as ours or not a
regular file, stays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle
from tests.conftest import REPO, Blob, fast_settings, sha256_file

Make = Callable[..., Blob]


def kept_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".blobdl-kept-*"))


def left_by_a_killed_seat(folder: Path, seat: int) -> Path:
    """What a seat of a batch killed whole leaves: its kept file, our process id in it,
    nobody holding it."""
    path = folder / f".blobdl-kept-{seat}.blobdl-lock"
    path.write_bytes(b"4242")
    return path


def fast(**overrides: Any) -> dict[str, Any]:
    return {"settings": fast_settings(**overrides)}


def test_a_rerun_into_a_folder_removes_the_kept_files_a_sigkilled_batch_left(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A batch SIGKILLed whole leaves one kept lock file per seat in the folder of its seat's
    last item. A later batch writing into that folder removes them, however few seats it
    has and whatever its manifest: nobody holds them."""
    data = tmp_path / "data"
    data.mkdir()
    fast_ones = [make(100, seed=2600 + n) for n in range(8)]
    # Named after their probe, which comes late: meanwhile each seat's kept file rests in
    # data/, where its previous item was written.
    waits = [make(101, seed=2620 + n) for n in range(4)]
    server.set_faults({"path": "/files/blob-101-*", "times": None, "action": "ttfb", "delay": 60})
    manifest = tmp_path / "manifest"
    manifest.write_text("".join(f"{b.url} o{n}\n" for n, b in enumerate(fast_ones))
                        + "".join(f"{b.url}\n" for b in waits))  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "blobdl", "-q", "-i", str(manifest), "--base-dir", str(data),
         "--connections", "4"],
        cwd=REPO, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        # Every fast item written, then every seat's kept file at rest: four kept files seen
        # while fast items remain may be a seat between two of them, about to move its kept
        # file to its next item's lock (a SIGKILL then leaves that name instead).
        deadline = time.monotonic() + 20
        while not all((data / f"o{n}").exists() for n in range(8)) or len(kept_files(data)) < 4:
            assert time.monotonic() < deadline, sorted(p.name for p in data.iterdir())
            time.sleep(0.02)
        tree = psutil.Process(proc.pid).children(recursive=True)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole batch at once, as a lost machine
        proc.wait()
    psutil.wait_procs(tree, timeout=10)
    assert len(kept_files(data)) == 4  # the killed batch's litter
    server.set_faults()  # answers come at once again

    again = [make(100, seed=2640 + n) for n in range(2)]
    manifest.write_text("".join(f"{b.url} p{n}\n" for n, b in enumerate(again)))
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", "-q", "-i", str(manifest), "--base-dir", str(data),
         "--connections", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert kept_files(data) == []
    written = {f"o{n}": b for n, b in enumerate(fast_ones)}
    written |= {f"p{n}": b for n, b in enumerate(again)}
    assert sorted(p.name for p in data.iterdir()) == sorted(written)  # no lock, no partial
    for name, blob in written.items():
        assert sha256_file(data / name) == blob.sha256, name


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """``holder(path)``: another process holds a lock on ``path`` until the test ends."""
    procs: list[subprocess.Popen[str]] = []

    def hold(path: Path) -> None:
        code = ("import fcntl, os, sys\n"
                f"fd = os.open({str(path)!r}, os.O_RDWR)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "print('held', flush=True)\n"
                "sys.stdin.read()\n")  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"

    yield hold
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def test_a_kept_file_another_process_holds_stays(
    make: Make, server: ServerHandle, tmp_path: Path, holder: Callable[[Path], None]
) -> None:
    """A live batch's seat holds its kept file while it moves it: a sweep never touches a
    held one (one that is unheld between two items may go: its keeper starts a new one)."""
    held = left_by_a_killed_seat(tmp_path, 0)
    holder(held)
    stale = left_by_a_killed_seat(tmp_path, 7)  # a seat number this batch has not
    blobs = [make(100, seed=2660 + n) for n in range(4)]
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    results = blobdl.download_many(items, max_connections=2, per_host=2, **fast())
    assert all(r.ok for r in results), results
    assert held.read_bytes() == b"4242" and not stale.exists()
    assert kept_files(tmp_path) == [held.name]
    assert [sha256_file(tmp_path / f"o{n}") for n in range(4)] == [b.sha256 for b in blobs]


def test_a_batch_sweeps_every_folder_it_writes_into_and_no_other(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The folders of the manifest's paths, the base folder where items given no path are
    named, and the cache its seats fill entries in; a folder it writes nothing into keeps
    what is there."""
    base, cache, aside = tmp_path / "base", tmp_path / "cache", tmp_path / "aside"
    for folder in (base / "a", base / "b", cache, aside):
        folder.mkdir(parents=True)
    stale = [left_by_a_killed_seat(f, 3) for f in (base / "a", base / "b", base, cache)]
    untouched = left_by_a_killed_seat(aside, 3)
    blobs = [make(100, seed=2680 + n) for n in range(4)]
    items = [
        Item(blobs[0].url, "a/one"),
        Item(blobs[1].url, "b/two"),
        Item(blobs[2].url),  # named after its probe, in base
        Item(blobs[3].url, "a/four", blobs[3].sha256),  # through the cache
    ]
    results = blobdl.download_many(
        items, max_connections=2, per_host=2, base_dir=base, **fast(cache_dir=str(cache))
    )
    assert all(r.ok for r in results), results
    assert [p for p in stale if p.exists()] == []
    assert untouched.exists()
    assert sha256_file(base / "a" / "four") == blobs[3].sha256


def test_an_item_whose_folder_cannot_be_swept_fails_alone(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The sweep is best-effort: a path no folder can have (a NUL byte) fails its own item,
    with the words a download gives it, and the batch goes on."""
    good = make(100, seed=2700)
    items = [Item(good.url, "nul\0byte/x"), Item(good.url, str(tmp_path / "ok"))]
    results = blobdl.download_many(items, **fast())
    assert not results[0].ok and "NUL byte" in str(results[0].error)
    assert results[1].ok, results[1]
    assert sha256_file(tmp_path / "ok") == good.sha256
