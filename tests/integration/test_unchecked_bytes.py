"""Bytes whose framing is not checked yet are nobody's to trust.

A chunked body hands out a chunk's bytes before the line end after them is read. A chunk
that states more than its data hands out, as its own, the CRLF after its data, the next
size line and the next chunk's first bytes: written into the file, they are the blob's only
once the chunk's end is checked. Until then no one may count them as done: not the resume
record (a run killed then resumed past them: exit 0, wrong bytes), not the hasher following
the prefix (a retry that fetches them again then ends in a digest mismatch), not the retry
of a lane whose worker died (it would start past them).

Each test holds the bad chunk's end back from the wire (the fault server's ``hold``) while
the client holds every byte sent before it, and acts then.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from blobdl import Downloader, Progress
from blobdl.engine._counter_table import CounterTable
from blobdl.engine._lane import Attempt, Cancel, run_attempt
from blobdl.errors import BlobdlError, TruncatedBody
from blobdl.http._probe import resolve
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, REPO, Blob, fast_settings, run_cli, sha256_file

Make = Callable[..., Blob]
SIZE = 200_003  # four 64 KiB parts, fetched one after the other (one connection)
CHECKED = 1_000  # the first chunk's bytes: checked once the next size line is read
# Three chunks of the first part's answer, the second stating 20 bytes more than it holds:
# its end, held back from the wire, falls 20 bytes into what follows its data.
BAD_CHUNK = {"body": "chunked", "cuts": [CHECKED, 5_000], "off": {"chunk": 1, "by": 20}}
CLI = ["--min-part-size", "64KiB", "--max-part-size", "64KiB", "--connections", "1",
       "--checkpoint-interval", "0.05", "--max-backoff", "0.01", "-q"]  # fmt: skip


def held_bad_chunk(server: ServerHandle, seconds: float) -> None:
    """The first part's answer (the request after the probe): ``BAD_CHUNK``, sent up to the
    bad chunk's stated end, then silent for ``seconds``, then the rest."""
    spec = {**BAD_CHUNK, "hold": {"chunk": 1, "seconds": seconds}}
    server.set_faults({"path": "/files/*", "skip": 1, "action": "framing", "spec": spec})


def unread(port: int) -> int:
    """Bytes the server at ``port`` sent that wait in a client's socket, unread."""
    waiting = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:
                    waiting += int(fields[4].split(":")[1], 16)
    return waiting


def port_of(server: ServerHandle) -> int:
    port = urlsplit(server.url("x")).port
    assert port is not None
    return port


def first_part_pos(record: Path) -> int:
    """Where the record says the first part is (-1: no record yet)."""
    try:
        parts = json.loads(record.read_text())["state"]["parts"]
    except (OSError, ValueError):
        return -1
    return int(min(parts)[2])


def rewritten(record: Path) -> int:
    """The record's inode: a checkpoint replaces the file (a new inode each time)."""
    try:
        return record.stat().st_ino
    except OSError:
        return 0


def wait_until_held_and_checkpointed(record: Path, port: int, deadline: float = 20.0) -> None:
    """Until the first part's answer is held back with the client holding every byte sent
    before the hold (its first chunk checked, nothing unread in its socket), and the record
    was replaced twice since: a checkpoint saw the part as it is during the hold."""
    give_up = time.monotonic() + deadline
    while first_part_pos(record) < CHECKED or unread(port):
        assert time.monotonic() < give_up, "the download never reached the held chunk"
        time.sleep(0.01)
    seen = [rewritten(record)]
    while len(seen) < 3:
        assert time.monotonic() < give_up, "no checkpoint during the hold"
        if (ino := rewritten(record)) != seen[-1]:
            seen.append(ino)
        time.sleep(0.005)


@pytest.mark.parametrize("digest", [False, True], ids=["no digest", "a digest"])
def test_a_run_killed_while_a_chunk_end_is_held_resumes_to_the_exact_blob(
    make: Make, server: ServerHandle, tmp_path: Path, digest: bool
) -> None:
    """The run is SIGKILLed (a power cut, the OOM killer) while the bad chunk's end is held
    back, after a checkpoint: the record counted the chunk's bytes, 20 bytes of framing
    among them. The rerun trusted them: exit 0 with wrong bytes (a digest: a mismatch)."""
    blob = make(SIZE, seed=2700 + digest)
    out = tmp_path / "blob"
    args = [blob.url, "-o", str(out), *CLI, *(["--digest", f"sha256:{blob.sha256}"] * digest)]
    held_bad_chunk(server, seconds=60)
    killed = subprocess.Popen([sys.executable, "-m", "blobdl", *args], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        wait_until_held_and_checkpointed(tmp_path / "blob.blobdl-state", port_of(server))
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    server.reset()

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert sha256_file(out) == blob.sha256


def test_a_chunk_refused_after_the_hasher_caught_up_is_fetched_again_without_a_mismatch(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The bad chunk's end is held back long enough for the hasher to follow the first
    part; then it comes, is refused, and the retry fetches the bytes again. The hasher had
    hashed them as they were first written: a digest mismatch for a file that was right."""
    blob = make(SIZE, seed=2702)
    held_bad_chunk(server, seconds=1.0)
    settings = fast_settings(connections=1, stall_timeout=10.0)
    result = Downloader(settings).download(
        blob.url, tmp_path / "blob", digest=f"sha256:{blob.sha256}"
    )
    assert result.retries == 1
    assert sha256_file(tmp_path / "blob") == blob.sha256


def test_a_worker_killed_while_a_chunk_end_is_held_is_retried_from_checked_bytes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The worker process running the lane is SIGKILLed (the OOM killer) while the chunk's
    end is held back: no lane is left to take back what it counted. Its retry started past
    the 20 bytes of framing it had written as the blob's: exit 0, wrong bytes."""
    blob = make(SIZE, seed=2703)
    held_bad_chunk(server, seconds=60)
    port, ticks, killed = port_of(server), [], []

    def kill_the_worker(progress: Progress) -> None:
        """Once the client holds all that was sent, two progress ticks later."""
        if killed or progress.parts[0].done < CHECKED or unread(port):
            return
        ticks.append(progress)
        if len(ticks) < 3:
            return
        children = psutil.Process().children()
        for worker in [p for p in children if "faultserver" not in " ".join(p.cmdline())]:
            os.kill(worker.pid, signal.SIGKILL)
            killed.append(worker.pid)

    settings = fast_settings(connections=1, progress_interval=0.05)
    result = Downloader(settings).download(blob.url, tmp_path / "blob", on_progress=kill_the_worker)
    assert killed and result.retries == 1
    assert sha256_file(tmp_path / "blob") == blob.sha256


def test_a_lane_inside_a_long_chunk_is_not_a_stall(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Each part's answer one chunk, sent slower than a stall timeout lasts: none of it
    counts as done until its end is read, but its bytes keep coming; a lane is judged
    (stalled, lagging, all but stopped) by the bytes it receives, not by those checked."""
    blob = make(100_000, seed=2704)
    server.set_faults({"path": "/files/*", "skip": 1, "times": None, "action": "framing",
                       "spec": {"body": "chunked"}, "bps": 64_000})  # fmt: skip
    settings = fast_settings(connections=2, stall_timeout=0.5)
    result = Downloader(settings).download(blob.url, tmp_path / "blob")
    assert result.retries == 0
    assert sha256_file(tmp_path / "blob") == blob.sha256


def test_a_lane_cut_while_a_chunk_end_is_held_leaves_its_part_at_checked_bytes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The other part done, its connection idle takes over from the lane that went quiet
    while the bad chunk's end is held back: the lane is cut where it is, and its part ends
    there. Where it was counted its unchecked bytes, 20 bytes of framing among them: the
    part ended past them, and no one fetched them again (exit 0, wrong bytes)."""
    blob = make(2 * PART, seed=2705)
    held_bad_chunk(server, seconds=60)
    settings = fast_settings(connections=2, stall_timeout=30.0)
    result = Downloader(settings).download(blob.url, tmp_path / "blob")
    assert result.steals >= 1
    assert sha256_file(tmp_path / "blob") == blob.sha256


def test_a_lane_whose_end_moves_into_a_chunk_counts_none_of_its_unchecked_bytes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A steal's cut moves a lane's end in while its request runs: the lane stops there,
    inside a chunk whose end it has not read. Here the end falls 10 bytes past the bad
    chunk's data, in its CRLF and the next size line. The lane keeps the bytes it checked
    (the first chunk's) and counts none of the rest: counted, they were done, 10 bytes of
    framing among them, and no one would fetch them again. The part's answer waits (a
    barrier in the server) until the end has moved."""
    blob = make(SIZE, seed=2706)
    cut = CHECKED + 4_000 + 10  # the bad chunk's data, then 10 bytes of what follows it
    server.set_faults({"path": "/files/*", "skip": 1, "action": "framing", "spec": BAD_CHUNK,
                       "after": {"path": "/status/204", "requests": 1}})  # fmt: skip
    settings = fast_settings()
    remote = resolve(blob.url, settings)
    table = CounterTable(1)
    table.set_start(0, 0)
    table.set_pos(0, 0)
    table.set_end(0, PART)
    out = tmp_path / "blob"
    fd = os.open(out, os.O_RDWR | os.O_CREAT)
    outcome: list[BlobdlError | None] = []
    lane = threading.Thread(target=lambda: outcome.append(run_attempt(
        Attempt(0, True, PART, fd, str(out)), remote, settings, table, Cancel())))  # fmt: skip
    try:
        lane.start()
        give_up = time.monotonic() + 20
        while table.asked(0) < PART:  # the lane has asked for its part
            assert time.monotonic() < give_up, "the lane never asked for its part"
            time.sleep(0.005)
        table.set_end(0, cut)
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        direct.open(server.route("/status/204")).close()  # the answer may go now
        lane.join(20)
    finally:
        os.close(fd)
    assert not lane.is_alive()
    assert table.pos(0) == CHECKED
    assert isinstance(outcome[0], TruncatedBody)  # short of its end: a retry goes on from there
