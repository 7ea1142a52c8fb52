"""A batch's item whose signed URL expires, resolved again at a server limiting the
connections of one client while another item of the batch receives from it: the refresh is
the item's probe asked again, and its refusals are the server being full, not failing."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file, spawn_cli
from tests.integration.test_trust_stops import wait_for

Make = Callable[..., Blob]


@pytest.mark.parametrize("said", ["large", "probed by a seat"])
def test_a_refresh_refused_by_a_full_server_waits_while_another_item_receives_there(
    said: str, make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """The large item is redirected to the other server (a CDN), where its URL expires
    (403) once a lane has had bytes; resolving it again, the first server refuses it 503
    six times, more than its retries, while a slow item of the batch receives from that
    server throughout. Waited for, uncounted, as its first probe's refusals would be."""
    large, slow = make(8 * PART, seed=3100), make(60_000, seed=3101)
    cdn = other.url(large.name)
    server.set_faults(
        {"path": f"/files/{large.name}", "times": 1, "action": "redirect", "location": cdn},
        {"path": f"/files/{large.name}", "times": 6, "action": "status", "status": 503},
        {"path": f"/files/{large.name}", "times": None, "action": "redirect", "location": cdn},
        {"path": f"/files/{slow.name}", "times": None, "action": "rate", "bps": 20_000,
         "step": 1000},
    )  # fmt: skip
    other.set_faults(
        {"path": f"/files/{large.name}", "skip": 2, "times": 1, "action": "status", "status": 403}
    )
    try:
        size = large.size if said == "large" else None
        items = [Item(slow.url, str(tmp_path / "slow")),
                 Item(large.url, str(tmp_path / "large"), size=size)]  # fmt: skip
        settings = fast_settings(retries=3, connections=1)
        results = blobdl.download_many(items, max_connections=8, per_host=8, settings=settings)
        assert all(r.ok for r in results), [r.error for r in results]
        assert sha256_file(tmp_path / "large") == large.sha256
        assert sha256_file(tmp_path / "slow") == slow.sha256
        assert server.stats()["per_path"][f"/files/{large.name}"] == 8  # probe, 6 503s, refresh
    finally:
        other.reset()


def test_a_batch_stopped_while_a_refresh_waits_for_a_full_server_ends_at_once(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """The same refresh refused for good, each refusal saying Retry-After: 20, while the
    slow item receives: Ctrl-C ends the batch at once, not after the wait it was in."""
    large, slow = make(8 * PART, seed=3102), make(400_000, seed=3103)
    cdn = other.url(large.name)
    server.set_faults(
        {"path": f"/files/{large.name}", "times": 1, "action": "redirect", "location": cdn},
        {"path": f"/files/{large.name}", "times": None, "action": "status", "status": 503,
         "headers": {"Retry-After": "20"}},
        {"path": f"/files/{slow.name}", "times": None, "action": "rate", "bps": 10_000,
         "step": 1000},
    )  # fmt: skip
    other.set_faults(
        {"path": f"/files/{large.name}", "skip": 2, "times": 1, "action": "status", "status": 403}
    )
    manifest = tmp_path / "manifest"
    said = f'{{"url": "{large.url}", "path": "{tmp_path / "large"}", "size": {large.size}}}'
    manifest.write_text(f"{slow.url} {tmp_path / 'slow'}\n{said}\n")
    parts = ("--min-part-size", str(PART), "--max-part-size", str(PART), "--connections", "1")
    batch = spawn_cli("-q", "-i", str(manifest), "--max-backoff", "30", *parts)
    try:
        path = f"/files/{large.name}"
        wait_for(lambda: server.stats()["per_path"].get(path, 0) >= 2, "the refresh refused")
        time.sleep(0.3)  # in its wait
        began = time.monotonic()
        batch.send_signal(signal.SIGINT)
        assert batch.wait(timeout=40) == 130
        assert time.monotonic() - began < 1.5  # not the refusal's Retry-After waited out
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
        other.reset()


def test_a_small_items_refresh_is_retried_as_its_probe_would_be(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """A seat's small item, redirected to a CDN that cuts its body and then says its URL
    expired (403): the item's URL resolved again meets one 503 from a server having a
    bad moment. One failure of a retried probe, not the item's end."""
    small = make(PART, seed=3104)
    cdn = other.url(small.name)
    server.set_faults(
        {"path": f"/files/{small.name}", "times": 1, "action": "redirect", "location": cdn},
        {"path": f"/files/{small.name}", "times": 1, "action": "status", "status": 503},
        {"path": f"/files/{small.name}", "times": None, "action": "redirect", "location": cdn},
    )  # fmt: skip
    other.set_faults(
        {"path": f"/files/{small.name}", "times": 1, "action": "close_after", "bytes": 1000},
        {"path": f"/files/{small.name}", "times": 1, "action": "status", "status": 403},
    )
    try:
        items = [Item(small.url, str(tmp_path / "small"))]
        results = blobdl.download_many(items, settings=fast_settings(retries=3))
        assert all(r.ok for r in results), [r.error for r in results]
        assert sha256_file(tmp_path / "small") == small.sha256
        assert server.stats()["per_path"][f"/files/{small.name}"] == 3  # probe, 503, refresh
    finally:
        other.reset()
