"""A rerun that is not quite the same run: other options, a server that changed its ways.

A partial left by one run is continued by the next, or started over on proof that the blob
changed; whatever the rerun does, it ends with the blob's exact bytes at the destination
and nothing of ours beside it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from blobdl import Downloader
from blobdl.store._resume import state_path
from faultserver.server import make_etag
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, REPO, Blob, fast_settings, run_cli, sha256_file
from tests.integration.test_trust_keep import temp_of
from tests.integration.test_trust_resume import partial

Make = Callable[..., Blob]


def beside(out: Path) -> list[str]:
    """What is in the destination's folder."""
    return sorted(p.name for p in out.parent.iterdir())


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """``hold(dest)``: another process holds the destination's lock (a live run writing it)
    until the test ends."""
    procs: list[subprocess.Popen[str]] = []

    def hold(dest: Path) -> None:
        code = (
            "import fcntl, sys, os\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n"
        )
        lock = dest.with_name(dest.name + ".blobdl-lock")
        proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"

    yield hold
    for proc in procs:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(5)
        proc.stdout.close()


# --- the rerun changes its options ------------------------------------------------------


def test_a_rerun_through_a_cache_leaves_nothing_of_the_partial_beside_the_destination(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The first run had no cache; the rerun adds --cache-dir (and so fills the cache entry,
    not the destination's partial). Once the verified blob is placed, the partial and its
    record beside the destination claim nothing: they go, as after any finished run."""
    blob = make(8 * PART, seed=3101)
    out = tmp_path / "out"
    assert partial(blob, server, out) > 0
    cache = tmp_path / "cache"
    settings = fast_settings(cache_dir=str(cache))
    Downloader(settings).download(blob.url, out, digest=f"sha256:{blob.sha256}")
    assert sha256_file(out) == blob.sha256
    assert beside(out) == ["cache", "out"]


def test_a_cache_hit_leaves_nothing_of_the_partial_beside_the_destination(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Another destination filled the cache meanwhile: the rerun is a hit, and the partial
    its first run left beside the destination goes too."""
    blob = make(8 * PART, seed=3102)
    out = tmp_path / "out"
    assert partial(blob, server, out) > 0
    settings = fast_settings(cache_dir=str(tmp_path / "cache"))
    digest = f"sha256:{blob.sha256}"
    Downloader(settings).download(blob.url, tmp_path / "elsewhere", digest=digest)
    result = Downloader(settings).download(blob.url, out, digest=digest)
    assert result.cached and sha256_file(out) == blob.sha256
    assert beside(out) == ["cache", "elsewhere", "out"]


def test_a_partial_another_run_is_writing_is_left_to_it(
    make: Make, server: ServerHandle, tmp_path: Path, holder: Callable[[Path], None]
) -> None:
    """A run through the cache places the destination, but another run holds its lock (it
    is writing the partial there): that partial is its own, and stays."""
    blob = make(8 * PART, seed=3103)
    out = tmp_path / "out"
    kept = partial(blob, server, out)
    holder(out)
    settings = fast_settings(cache_dir=str(tmp_path / "cache"))
    Downloader(settings).download(blob.url, out, digest=f"sha256:{blob.sha256}")
    assert sha256_file(out) == blob.sha256
    assert temp_of(out).exists() and state_path(out).exists() and kept > 0


# --- the whole tree SIGKILLed anywhere, again and again ---------------------------------

KILLS = 20
BIG = 32 * PART  # 2 MiB


def killed_run(url: str, out: Path, args: list[str], after: float) -> None:
    """The CLI started in a session of its own, and that whole session SIGKILLed ``after``
    seconds on (at its start, mid-probe, mid-part, mid-checkpoint, mid-rename: anywhere)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "blobdl", url, "-o", str(out), "-q", *args],
        cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        proc.wait(after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Nothing of the tree lives on to write into the partial the next run resumes (its
    # orphans are zombies until init reaps them: dead, they write nothing).
    tree = [p for p in psutil.process_iter() if _session(p) == proc.pid]
    deadline = time.monotonic() + 5
    while not all(_dead(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(_dead(p) for p in tree), tree


def _session(proc: psutil.Process) -> int | None:
    try:
        return os.getsid(proc.pid)
    except OSError:
        return None


def _dead(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def options(rng: random.Random, sha256: str) -> list[str]:
    """A rerun's options, chosen anew each time: the parts, the connections, a digest or
    none, a rate limit or none."""
    size = rng.choice(["64KiB", "128KiB", "256KiB"])
    args = ["--min-part-size", "64KiB", "--max-part-size", size,
            "--connections", str(rng.randint(1, 4)), "--checkpoint-interval", "0.05",
            "--max-backoff", "0.05"]  # fmt: skip
    if rng.random() < 0.5:
        args += ["--digest", f"sha256:{sha256}"]
    if rng.random() < 0.3:
        args += ["--limit-rate", "400KB"]
    return args


def test_sigkill_of_the_whole_tree_anywhere_then_a_rerun_gives_the_exact_blob(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Twenty runs, each with other options, each SIGKILLed whole at a moment of its own
    (seeded), each resuming what the one before left; then a run to the end. The bytes are
    the blob's, and nothing of ours is left beside them."""
    blob = make(BIG, seed=3110)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None,
                       "action": "rate", "bps": 60_000, "step": 8192})  # fmt: skip
    out = tmp_path / "out"
    rng = random.Random(3110)
    for _ in range(KILLS):
        killed_run(blob.url, out, options(rng, blob.sha256), rng.uniform(0.1, 0.9))
        assert not out.exists() or sha256_file(out) == blob.sha256
    server.reset()
    done = run_cli(blob.url, "-o", str(out), "-q", *options(rng, blob.sha256))
    assert done.returncode == 0, done.stderr
    assert sha256_file(out) == blob.sha256
    assert beside(out) == ["out"]


# --- the server changes its ways between runs -------------------------------------------


def weak(server: ServerHandle, blob: Blob) -> str:
    """The blob's ETag as an edge that weakens it sends it (W/ and the same opaque tag, as
    nginx or a CDN does once it may transform the body)."""
    return "W/" + make_etag((server.root / blob.name).stat())


def test_a_strong_etag_that_turns_weak_keeps_the_partial(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The rerun's server sends W/"x" where the first run's sent "x": the same tag, no
    longer vouching for every byte. That proves no change (they match weakly, RFC 9110
    8.8.3.2), as a validator that disappears proves none: the bytes are kept."""
    blob = make(8 * PART, seed=3121)
    out = tmp_path / "out"
    kept = partial(blob, server, out)
    server.set_faults({"path": "/files/*", "times": None, "action": "headers",
                       "set": {"ETag": weak(server, blob)}})  # fmt: skip
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == kept
    assert server.stats()["bytes_sent"] == blob.size - kept + 1  # only what was missing


def test_a_weak_etag_that_turns_strong_keeps_the_partial(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(8 * PART, seed=3122)
    out = tmp_path / "out"
    kept = partial(blob, server, out, {"action": "headers", "set": {"ETag": weak(server, blob)}})
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == kept


def test_edges_that_weaken_the_etag_of_some_ranges_do_not_end_the_download(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Mid-download, as between runs: a range answered under W/"x" by one edge of a CDN is
    the blob pinned as "x"."""
    blob = make(8 * PART, seed=3123)
    out = tmp_path / "out"
    server.set_faults({"path": f"/files/{blob.name}", "skip": 2, "times": 3, "action": "headers",
                       "set": {"ETag": weak(server, blob)}})  # fmt: skip
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.retries == 0


def test_another_weak_etag_still_discards_the_partial(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(8 * PART, seed=3124)
    out = tmp_path / "out"
    assert partial(blob, server, out) > 0
    server.set_faults({"path": "/files/*", "times": None, "action": "headers",
                       "set": {"ETag": 'W/"another"'}})  # fmt: skip
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == 0


def test_a_weak_etag_that_turns_another_weak_one_discards_the_partial(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Recorded under W/"x", resumed under W/"another": two weak tags that differ are
    another blob (weak comparison still compares the tags), whatever makes the first one
    weak."""
    blob = make(8 * PART, seed=3125)
    out = tmp_path / "out"
    kept = partial(blob, server, out, {"action": "headers", "set": {"ETag": weak(server, blob)}})
    assert kept > 0
    server.set_faults({"path": "/files/*", "times": None, "action": "headers",
                       "set": {"ETag": 'W/"another"'}})  # fmt: skip
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == 0
