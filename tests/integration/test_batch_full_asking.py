"""A batch's item refused by a server with no room for one more connection waits for it,
uncounted, while another item's first request is under way there: one the server let in
may wait long for its answer. A request asks for the first time once, however it fails."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, fast_settings, sha256_file
from tests.integration.test_trust_stops import wait_for


@pytest.mark.parametrize("said", ["small", "large"])
def test_a_first_request_that_failed_keeps_nobody_waiting_while_retried(
    said: str, make: Callable[..., Blob], server: ServerHandle, tmp_path: Path
) -> None:
    """The first item's first request fails (a 500, no refusal); its retry is held by the
    server until the other item has been asked ten times. The other is refused (503) at
    every request, the first of them once that retry is under way. The retry asks for
    nobody: the other's refusals count, and it fails after its retries (three requests);
    the held retry runs out its read timeout, and the first item's third request lands."""
    first, refused = make(40_000, seed=3200), make(20_000, seed=3201)
    asked, held = f"/files/{first.name}", f"/files/{refused.name}"
    server.set_faults(
        {"path": asked, "times": 1, "action": "status", "status": 500},
        {"path": asked, "times": 1, "action": "ttfb", "delay": 0,
         "after": {"path": held, "requests": 10}},
        {"path": held, "times": 1, "action": "status", "status": 503,
         "after": {"path": asked, "requests": 2}},
        {"path": held, "times": None, "action": "status", "status": 503},
    )  # fmt: skip
    items = [Item(first.url, str(tmp_path / "first"), size=first.size if said == "large" else None),
             Item(refused.url, str(tmp_path / "refused"))]  # fmt: skip
    # The read timeout is the stall timeout: the fast settings' 2 s, not less, for it is
    # the pool processes' too, and a loaded machine once left one silent for 0.5 s (then its
    # items run again, and the requests counted here would count one run more).
    settings = fast_settings(retries=2, min_part_size=16 * 1024, max_part_size=16 * 1024,
                             trust_env=False)  # fmt: skip
    results = blobdl.download_many(items, max_connections=8, per_host=8, settings=settings)
    assert results[0].ok, results[0].error
    assert sha256_file(tmp_path / "first") == first.sha256
    assert not results[1].ok and "503" in str(results[1].error), results[1].error
    assert server.stats()["per_path"][held] == 3  # its first try and two retries, counted


def test_an_item_whose_child_died_while_its_probe_asked_keeps_nobody_waiting(
    make: Callable[..., Blob], server: ServerHandle, tmp_path: Path
) -> None:
    """A large item's probe asks (the server holds it unanswered) when its child is killed
    (the OOM killer, say): nothing ends its ask but the batch, which hears the child die.
    The small item after it, at the same server, is refused there (503) ten times, then
    served: its refusals count, and it fails after its retries (three requests), not
    waiting for a probe that no longer runs. One connection: it starts once the child died."""
    large, refused = make(200_000, seed=3300), make(20_000, seed=3301)
    asked, held = f"/files/{large.name}", f"/files/{refused.name}"
    server.set_faults(
        {"path": asked, "times": None, "action": "no_response", "hold": 60},
        {"path": held, "times": 10, "action": "status", "status": 503},
    )
    items = [Item(large.url, str(tmp_path / "large"), size=large.size),
             Item(refused.url, str(tmp_path / "refused"))]  # fmt: skip
    settings = fast_settings(retries=2, stall_timeout=30, min_part_size=16 * 1024,
                             max_part_size=16 * 1024, trust_env=False)  # fmt: skip
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # the test server
    results: list[blobdl.ItemResult] = []
    batch = threading.Thread(target=lambda: results.extend(
        blobdl.download_many(items, max_connections=1, per_host=1, settings=settings)))  # fmt: skip
    batch.start()
    try:
        wait_for(lambda: server.stats()["per_path"].get(asked, 0) >= 1, "the probe")
        port = urlsplit(server.url("x")).port
        mine = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        asking = [p for p in mine if any(c.raddr and c.raddr.port == port
                                         for c in p.net_connections("tcp"))]  # fmt: skip
        assert len(asking) == 1, asking
        asking[0].kill()
    finally:
        batch.join(timeout=60)
    assert not batch.is_alive()
    assert not results[0].ok and not results[1].ok, results
    assert "503" in str(results[1].error), results[1].error
    assert server.stats()["per_path"][held] == 3  # its first try and two retries, counted
