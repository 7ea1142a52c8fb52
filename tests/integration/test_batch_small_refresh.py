"""A seat's small item whose signed URL expired asks it again, retried as its probe was:
a stop in that backoff ends the batch at once; with ``--retries 0`` it is one attempt."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, spawn_cli
from tests.integration.test_trust_stops import wait_for

Make = Callable[..., Blob]


def _expiring(server: ServerHandle, other: ServerHandle, small: Blob, retry_after: str) -> None:
    cdn = other.url(small.name)
    server.set_faults(
        {"path": f"/files/{small.name}", "times": 1, "action": "redirect", "location": cdn},
        {"path": f"/files/{small.name}", "times": None, "action": "status", "status": 503,
         "headers": {"Retry-After": retry_after}},
    )  # fmt: skip
    other.set_faults(
        {"path": f"/files/{small.name}", "times": 1, "action": "close_after", "bytes": 1000},
        {"path": f"/files/{small.name}", "times": 1, "action": "status", "status": 403},
    )


def test_a_stop_in_a_small_items_refresh_backoff_ends_at_once(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    small = make(PART, seed=9801)
    _expiring(server, other, small, "20")
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{small.url} {tmp_path / 'small'}\n")
    batch = spawn_cli("-q", "-i", str(manifest), "--max-backoff", "30")
    try:
        path = f"/files/{small.name}"
        wait_for(lambda: server.stats()["per_path"].get(path, 0) >= 2, "the refresh refused")
        time.sleep(0.3)
        began = time.monotonic()
        batch.send_signal(signal.SIGINT)
        assert batch.wait(timeout=40) == 130
        assert time.monotonic() - began < 1.5
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
        other.reset()
        server.set_faults()


def test_a_small_items_refresh_with_no_retries_is_one_attempt(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    small = make(PART, seed=9802)
    _expiring(server, other, small, "0")
    try:
        began = time.monotonic()
        results = blobdl.download_many([Item(small.url, str(tmp_path / "small"))],
                                       settings=fast_settings(retries=0))  # fmt: skip
        assert time.monotonic() - began < 5
        assert not results[0].ok
        assert server.stats()["per_path"][f"/files/{small.name}"] <= 2
    finally:
        other.reset()
        server.set_faults()
