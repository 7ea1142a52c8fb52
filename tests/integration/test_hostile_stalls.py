"""A hostile server and a hostile OS against stall detection and reassignment: a lane that
trickles just fast enough never to stall, a coordinator held still for longer than the stall
timeout. Real fault servers, forked workers, real files, sha256."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import blobdl
from blobdl import Downloader, PartRetried, PartStalled, Settings
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file

Make = Callable[..., Blob]
LANE = 4 * PART  # 256 KiB parts


def stealing(stall_timeout: float) -> Settings:
    """Parts of one lane's size, split down to 16 KiB by idle lanes, the coordinator looking
    every 50 ms: settings under which a slow range is taken over within a second."""
    return fast_settings(min_part_size=LANE, max_part_size=LANE, min_steal_size=16 * 1024,
                         stall_timeout=stall_timeout, progress_interval=0.05)  # fmt: skip


def test_a_lane_that_trickles_just_under_the_stall_timeout_is_rescued_by_stealing(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """One byte every 0.4 s on the first part's first request: never quiet for the stall
    timeout (1 s) nor for a cut's patience (0.5 s), its 256 KiB would take 29 hours. Idle
    lanes must take its range over, so the download ends with the fast parts (1 s here).
    (With ``steal=False`` it is not rescued: once it runs alone no laggard is judged.)"""
    blob = make(8 * LANE, seed=2301)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": 1,
                       "action": "rate", "bps": 2.5, "step": 1})  # fmt: skip
    settings = stealing(stall_timeout=1.0)
    result = Downloader(settings).download(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert result.steals >= 1 and result.retries == 0  # taken over, never a stall


def test_a_coordinator_held_still_past_the_stall_timeout_ends_no_healthy_lane(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The coordinator does nothing for twice the stall timeout (a callback that blocks, as
    a SIGSTOP of the calling process would) while its lanes keep moving: when it looks again,
    none of them has been quiet, so none is ended as stalled."""
    blob = make(4 * LANE, seed=2302)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None,
                       "action": "rate", "bps": 100_000, "step": 4096})  # fmt: skip
    held: list[float] = []
    events: list[Any] = []

    def hold(event: Any) -> None:
        events.append(event)
        if not held and isinstance(event, blobdl.Progress) and event.active == 4:
            held.append(time.monotonic())
            time.sleep(1.0)  # 2 x the stall timeout

    settings = fast_settings(min_part_size=LANE, max_part_size=LANE, stall_timeout=0.5, steal=False)
    result = Downloader(settings).download(blob.url, tmp_path / "out", on_event=hold)
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert held
    assert not [e for e in events if isinstance(e, (PartStalled, PartRetried))]
    assert result.retries == 0


def test_a_stolen_half_that_stalls_is_taken_again_from_where_it_stopped(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Two parts for four connections: the idle two split them at once. The server goes
    silent inside the stolen half of the first part; that lane is ended (stall or cut) and
    its range fetched again from where it stopped: exact bytes, bounded time."""
    blob = make(2 * LANE, seed=2303)
    offset = LANE - 1_000  # past any first split of part 0 (at most half-way + a chunk)
    server.set_faults({"path": f"/files/{blob.name}", "times": 1, "action": "stall_at",
                       "offset": offset, "hold": 60})  # fmt: skip
    settings = stealing(stall_timeout=0.5)
    result = Downloader(settings).download(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert result.steals >= 1
    ranges = server.stats()["ranges"]
    stalled = [r for r in ranges if _holds(r, offset)]
    assert len(stalled) >= 2  # the one that went silent, then its successor
    # Two idle connections split both parts first, each at or below half-way and a chunk:
    # the offset lies in a stolen range, and the request that went silent started there.
    first = int(stalled[0].removeprefix("bytes=").split("-")[0])
    assert LANE // 2 <= first < LANE


def _holds(text: str, offset: int) -> bool:
    if not text.startswith("bytes=") or text == "bytes=0-0":
        return False
    first, last = text.removeprefix("bytes=").split("-")
    return int(first) <= offset <= int(last)


def workers() -> set[int]:
    """The worker processes of a download running in this process (the servers excluded)."""
    me = psutil.Process()
    return {p.pid for p in me.children() if "faultserver" not in " ".join(p.cmdline())}


@pytest.mark.parametrize("resumed", [False, True], ids=["left stopped", "continued in its grace"])
def test_every_worker_stopped_at_once_is_replaced_and_its_late_bytes_land_nowhere(
    make: Make,
    server: ServerHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    resumed: bool,
) -> None:
    """SIGSTOP every worker (four, a lane each) past the stall timeout. Left stopped, each
    is killed once its stop goes unanswered and its part runs elsewhere; continued while the
    coordinator waits for its answer, it reads on and writes late bytes before it sees the
    stop. Either way the file is exact: nothing of an old lane writes once its part moved."""
    monkeypatch.setattr(blobdl.processes._clean_process, "threaded", lambda: False)
    monkeypatch.setattr(blobdl.engine._worker, "STOP_GRACE", 3.0 if resumed else 0.2)
    blob = make(4 * LANE, seed=2304 + resumed)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None,
                       "action": "rate", "bps": 200_000, "step": 4096})  # fmt: skip
    frozen: list[int] = []  # the workers stopped
    helpers: list[subprocess.Popen[bytes]] = []

    def freeze(event: Any) -> None:
        if not frozen and isinstance(event, blobdl.Progress) and event.active == 4:
            frozen.extend(workers())
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            if resumed:  # a second later: the first stall is declared, its stop unanswered
                pids = " ".join(map(str, frozen))
                helpers.append(subprocess.Popen(["sh", "-c", f"sleep 1; kill -CONT {pids}"]))

    settings = fast_settings(
        processes=4, connections=4, min_part_size=LANE, max_part_size=LANE,
        stall_timeout=0.5, steal=False,
    )  # fmt: skip
    try:
        result = Downloader(settings).download(blob.url, tmp_path / "out", on_event=freeze)
    finally:
        for helper in helpers:
            helper.wait()
        for pid in frozen:  # whatever happened, nothing of ours stays stopped
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGCONT)
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert len(frozen) == 4
    assert not any(psutil.pid_exists(pid) for pid in frozen)
    if not resumed:
        assert result.retries >= 4
