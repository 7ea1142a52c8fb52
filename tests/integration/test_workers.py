"""Lanes share worker processes (``_worker``): ending one lane leaves the lanes beside it
running; a lane that does not answer its stop costs its whole worker, and only then are
its siblings retried. A lane is ended by cutting its sockets (``_sockets``): that must wake
it wherever it waits on the network, the TLS handshake included.

Real fault servers, forked workers, real files, sha256; the socket tests use real
connections to listeners that accept and then say nothing."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import urllib3

import blobdl
from blobdl import Downloader, PartRetried
from blobdl._http import make_pool
from blobdl._sockets import Sockets, noted_in
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file
from tests.integration.conftest import PKI

Make = Callable[..., Blob]
LANE = 4 * PART  # 256 KiB parts: four lanes on one worker process


def workers() -> set[int]:
    """The worker processes of a download running in this process (the servers excluded)."""
    me = psutil.Process()
    return {p.pid for p in me.children() if "faultserver" not in " ".join(p.cmdline())}


def fetch_watching(
    blob: Blob, dest: Path, **overrides: Any
) -> tuple[blobdl.DownloadResult, list[Any], set[int]]:
    """Download with one worker process for four lanes; return the result, the events and
    every worker process seen while it ran."""
    seen: set[int] = set()
    events: list[Any] = []

    def look(event: Any) -> None:
        events.append(event)
        seen.update(workers())

    settings = fast_settings(
        processes=1, connections=4, min_part_size=LANE, max_part_size=LANE, **overrides
    )
    result = Downloader(settings).download(blob.url, dest, on_event=look)
    return result, events, seen


@pytest.fixture(autouse=True)
def in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The coordinator runs here, whatever native threads this process may have."""
    monkeypatch.setattr(blobdl._isolate, "threaded", lambda: False)


def test_a_silent_lane_is_ended_and_the_lanes_beside_it_carry_on(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(4 * LANE, seed=401)
    # The second part goes silent half-way; the others are slow enough to be running then.
    server.set_faults(
        {"path": f"/files/{blob.name}", "times": 1,
         "action": "stall_at", "offset": LANE + LANE // 2, "hold": 30},
        {"path": f"/files/{blob.name}", "times": None, "action": "rate", "bps": 400_000},
    )  # fmt: skip
    _, events, seen = fetch_watching(blob, tmp_path / "out", stall_timeout=0.5, steal=False)
    assert sha256_file(tmp_path / "out") == blob.sha256
    again = [r for r in server.stats()["ranges"][5:]]  # after the probe and the four parts
    assert again and all(r.startswith(f"bytes={LANE + LANE // 2}") for r in again), again
    retried = {e.part for e in events if isinstance(e, PartRetried)}
    assert retried <= {1}  # ended as a stall (a retry) or as a lagging lane (no retry)
    assert len(seen) == 1  # in the one worker process, which lived on


def test_a_worker_that_cannot_answer_a_stop_is_killed_and_its_lanes_retried(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobdl._worker, "STOP_GRACE", 0.2)
    blob = make(4 * LANE, seed=402)
    slow = {"path": f"/files/{blob.name}", "times": None, "action": "rate", "bps": 400_000}
    server.set_faults(slow)
    frozen: list[int] = []

    def freeze(event: Any) -> None:
        """Stop the worker process (SIGSTOP): its lanes stall, and it answers nothing."""
        if not frozen and isinstance(event, blobdl.Progress) and event.active == 4:
            frozen.extend(workers())
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)

    settings = fast_settings(
        processes=1, connections=4, min_part_size=LANE, max_part_size=LANE, stall_timeout=0.5
    )
    result = Downloader(settings).download(blob.url, tmp_path / "out", on_event=freeze)
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert len(frozen) == 1 and not psutil.pid_exists(frozen[0])  # killed, and reaped
    assert result.retries >= 4  # the lane that stalled first, and the three that died with it


# --- cutting a lane's sockets -----------------------------------------------------------------


@pytest.fixture
def mute() -> Iterator[str]:
    """A listener that accepts connections and never says a word: host:port."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    host, port = listener.getsockname()
    try:
        yield f"{host}:{port}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize("scheme", ["http", "https"], ids=["status line", "tls handshake"])
def test_a_cut_wakes_a_lane_wherever_it_waits_on_the_network(
    mute: str, pki: PKI, scheme: str
) -> None:
    """Over https the wait is the handshake, before urllib3 has a socket to show for it."""
    sockets = Sockets()
    outcome: list[BaseException | None] = []
    settings = fast_settings(stall_timeout=30.0, ca_bundle=pki.ca_pem)  # read timeout: 60 s

    def lane() -> None:
        pool = make_pool(settings)
        with noted_in(sockets):
            try:
                pool.request("GET", f"{scheme}://{mute}/x", retries=False)
                outcome.append(None)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                outcome.append(exc)
            finally:
                pool.clear()

    thread = threading.Thread(target=lane)
    thread.start()
    time.sleep(0.3)  # connected, and waiting
    assert thread.is_alive() and not outcome
    began = time.monotonic()
    sockets.cut()
    thread.join(timeout=5)
    assert not thread.is_alive() and outcome and outcome[0] is not None
    assert time.monotonic() - began < 5  # woken by the cut, not by a timeout


def test_a_lane_keeps_no_duplicate_of_its_sockets_after_it_ends(mute: str) -> None:
    port = int(mute.rpartition(":")[2])

    def ours_to_mute() -> int:
        return sum(1 for c in psutil.Process().net_connections() if c.raddr and c.raddr[1] == port)

    with noted_in(Sockets()):
        pool = make_pool(fast_settings())
        with pytest.raises(urllib3.exceptions.HTTPError):
            pool.request("GET", f"http://{mute}/x", retries=False, timeout=0.2)
        pool.clear()
    assert ours_to_mute() == 0
