"""A cache entry's fill killed mid-body, then the same and a changed command: the entry
resumes only the missing bytes (from a mirror too: the digest admits its partial), and
nothing of the killed fill is left beside the entry or the destination."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from blobdl.store._resume import state_path
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, run_cli, sha256_file
from tests.integration.test_resume import BIG, CLI_FAST, cli, run_until, slow_down

Make = Callable[..., Blob]


@pytest.mark.parametrize("mirror", [False, True], ids=["same-url", "another-url"])
def test_a_cache_fill_killed_mid_body_resumes_only_the_missing_bytes(
    make: Make, server: ServerHandle, tmp_path: Path, mirror: bool
) -> None:
    blob = make(BIG, seed=2611)
    slow_down(server, blob)
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["--cache-dir", str(cache), "--digest", f"sha256:{blob.sha256}", *CLI_FAST]
    first = cli(blob.url, "-o", str(out), "--json", *args)
    run_until(first, 0.5, blob.size)
    workers = psutil.Process(first.pid).children(recursive=True)
    first.kill()
    first.wait()
    psutil.wait_procs(workers, timeout=5)
    assert first.stdout and first.stderr
    first.stdout.close()
    first.stderr.close()
    entry = cache / f"sha256-{blob.sha256}"
    claimed = json.loads(state_path(entry).read_text())["state"]
    on_disk = sum(p[2] - p[0] for p in claimed["parts"])
    assert 0 < on_disk < blob.size and not entry.exists() and not out.exists()

    server.reset()
    url = blob.url + "?mirror=1" if mirror else blob.url
    rerun = run_cli(url, "-o", str(out), *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert sha256_file(out) == blob.sha256 and sha256_file(entry) == blob.sha256
    assert server.stats()["bytes_sent"] == blob.size - on_disk + 1  # the probe's byte
    litter = [p.name for d in (cache, tmp_path) for p in d.iterdir() if ".blobdl-" in p.name]
    assert litter == []


@pytest.mark.parametrize("damage", ["truncate", "edit-same-size-mtime-kept"])
def test_a_cache_entry_damaged_on_disk_is_fetched_again_without_verify_cache(
    make: Make, server: ServerHandle, tmp_path: Path, damage: str
) -> None:
    blob = make(BIG, seed=2612)
    cache = tmp_path / "cache"
    args = ["--cache-dir", str(cache), "--digest", f"sha256:{blob.sha256}", *CLI_FAST]
    assert run_cli(blob.url, "-o", str(tmp_path / "a"), *args, cwd=tmp_path).returncode == 0
    entry = cache / f"sha256-{blob.sha256}"
    before = entry.stat()
    entry.chmod(0o644)
    with entry.open("r+b") as f:
        if damage == "truncate":
            f.truncate(blob.size // 2)
        else:
            f.seek(100)
            f.write(b"\0" * 10)
    os.utime(entry, ns=(before.st_atime_ns, before.st_mtime_ns))
    entry.chmod(0o444)
    server.reset()
    rerun = run_cli(blob.url, "-o", str(tmp_path / "b"), *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert sha256_file(tmp_path / "b") == blob.sha256
    assert server.stats()["bytes_sent"] >= blob.size


def test_a_run_waiting_for_a_cache_fill_that_is_killed_takes_it_over(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Two runs fill one entry: the second waits on its lock; the first SIGKILLed mid-body,
    the second resumes its partial, fetching only what the first had not."""
    blob = make(BIG, seed=2613)
    slow_down(server, blob, 100_000)  # ~5 s: the first is still filling when killed
    cache = tmp_path / "cache"
    # No steals: the server's paced 64 KiB bursts leave a lane quiet long enough to be cut,
    # and a cut wastes what it had in flight (design.md, step 5), not a resume's doing.
    args = ["--cache-dir", str(cache), "--digest", f"sha256:{blob.sha256}", "--json",
            *CLI_FAST, "--no-steal"]  # fmt: skip
    first = cli(blob.url, "-o", str(tmp_path / "a"), *args)
    run_until(first, 0.3, blob.size)
    second = cli(blob.url, "-o", str(tmp_path / "b"), *args)
    entry = cache / f"sha256-{blob.sha256}"
    time.sleep(0.5)  # the second has probed and waits on the entry's lock
    workers = psutil.Process(first.pid).children(recursive=True)
    first.kill()
    first.wait()
    psutil.wait_procs(workers, timeout=5)
    server.reset()  # what the second asks from here on: its probe was before
    for stream in (first.stdout, first.stderr):
        assert stream is not None
        stream.close()
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert sha256_file(tmp_path / "b") == blob.sha256 and sha256_file(entry) == blob.sha256
    finished = [json.loads(line) for line in out.splitlines() if '"finished"' in line]
    resumed = finished[0]["resumed"] if finished else 0
    assert resumed > 0, out
    assert finished[0]["bytes_fetched"] == blob.size - resumed
    # (it may have begun before the reset: the lock is free the moment the first dies)
    assert server.stats()["bytes_sent"] <= blob.size - resumed
    litter = [p.name for d in (cache, tmp_path) for p in d.iterdir() if ".blobdl-" in p.name]
    assert litter == []
