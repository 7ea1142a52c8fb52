"""A batch's item refused by a server with no room for one more connection waits for it,
uncounted, while another item's first request is under way there: one the server let in
may wait long for its answer. A request asks for the first time once, however it fails."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, fast_settings, sha256_file


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
    settings = fast_settings(retries=2, stall_timeout=0.5, min_part_size=16 * 1024,
                             max_part_size=16 * 1024, trust_env=False)  # fmt: skip
    results = blobdl.download_many(items, max_connections=8, per_host=8, settings=settings)
    assert results[0].ok, results[0].error
    assert sha256_file(tmp_path / "first") == first.sha256
    assert not results[1].ok and "503" in str(results[1].error), results[1].error
    assert server.stats()["per_path"][held] == 3  # its first try and two retries, counted
