"""A batch's large item whose signed URL expires, and whose URL, resolved again, redirects
to another host than the one its lanes were counted at: its refresh asks for room there
first, as its first probe did, so that host's ``--per-host`` holds while another item of
the batch holds its connections.

Three hostnames of two servers: the item's URL at ``127.0.0.1`` (the first server), its
first redirect to ``127.1`` (the first server again, as a CDN), its refreshed one to
``localhost`` (the other server, reached by no other name), where another item receives
meanwhile: the other server's ``max_concurrent`` is that one hostname's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file

Make = Callable[..., Blob]


def _expires_then_moves(server: ServerHandle, large: Blob, to: str) -> None:
    """``large``'s URL redirects to ``127.1`` (the same server), where it expires (403) once
    its probe and a lane's first request were answered; resolved again, it redirects to
    ``to``."""
    path = f"/files/{large.name}"
    cdn = large.url.replace("127.0.0.1", "127.1")
    server.set_faults(
        {"path": path, "times": 1, "action": "redirect", "location": cdn},
        {"path": path, "skip": 2, "times": 1, "action": "status", "status": 403},
        {"path": path, "times": None, "action": "redirect", "location": to},
    )


@pytest.mark.xfail(strict=True, reason="the refresh's probe does not ask to move its lanes")
@pytest.mark.parametrize("said", ["large", "probed by a seat"])
def test_a_refresh_redirected_to_another_host_counts_the_lanes_there_before_they_open(
    said: str, make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """One connection per host; a slow item holds ``localhost``'s for 3 s when the large
    item's URL, resolved again, leads there: its lanes wait for room, and the other server
    never has two connections at once."""
    large, slow = make(8 * PART, seed=3200), make(60_000, seed=3201)
    _expires_then_moves(server, large, other.url(large.name).replace("127.0.0.1", "localhost"))
    other.set_faults({"path": f"/files/{slow.name}", "times": None, "action": "rate",
                      "bps": 20_000, "step": 1000})  # fmt: skip
    try:
        size = large.size if said == "large" else None
        slow_url = other.url(slow.name).replace("127.0.0.1", "localhost")
        items = [Item(slow_url, str(tmp_path / "slow")),
                 Item(large.url, str(tmp_path / "large"), size=size)]  # fmt: skip
        settings = fast_settings(retries=3, connections=1)
        results = blobdl.download_many(items, max_connections=8, per_host=1, settings=settings)
        assert all(r.ok for r in results), [r.error for r in results]
        assert other.stats()["per_path"][f"/files/{large.name}"] >= 2  # refreshed: probe, lane
        assert sha256_file(tmp_path / "large") == large.sha256
        assert sha256_file(tmp_path / "slow") == slow.sha256
        assert other.stats()["max_concurrent"] <= 1, other.stats()
    finally:
        other.reset()
