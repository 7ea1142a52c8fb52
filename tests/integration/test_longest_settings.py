"""A time setting at the longest value blobdl accepts (``config.MAX_SECONDS``) is honoured
wherever blobdl waits on it: a socket read, a batch's pool waiting for its next word while
it tells its items' progress, a lock, a checkpoint, a backoff.

The case that showed it: ``--progress-interval 1e7`` (accepted) killed every batch's pool
process (poll(2) takes milliseconds as a C int: 24.8 days at most), so each small item
failed as "download process died"; ``--stall-timeout 1e7`` failed every read that had to
wait, a small item's and a large item's lane's alike ("failed unexpectedly")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import blobdl
from blobdl import Item
from blobdl.config import _SECONDS, MAX_SECONDS
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file

Make = Callable[..., Blob]

# Every time setting at its longest, but the backoff's unit: a retry would wait it out.
LONGEST = {name: MAX_SECONDS for name, _ in _SECONDS if name != "backoff_unit"}


def test_every_time_setting_at_its_longest_still_downloads(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    small, large = make(10_000, seed=4300), make(4 * PART, seed=4301)
    # Paced a kilobyte at a time: every read of the small item waits for its bytes.
    server.set_faults({"path": f"/files/{small.name}", "times": None, "action": "rate",
                       "bps": 20_000, "step": 1000},
                      {"path": f"/files/{large.name}", "times": None, "action": "rate",
                       "bps": 2_000_000, "step": 16_384})  # fmt: skip
    settings = fast_settings(**LONGEST)
    told: list[blobdl.BatchEvent] = []  # a callback: the pool tells progress
    items = [Item(small.url, str(tmp_path / "small")), Item(large.url, str(tmp_path / "large"))]
    results = blobdl.download_many(items, on_event=told.append, settings=settings)
    assert all(r.ok for r in results), results
    assert sha256_file(tmp_path / "small") == small.sha256
    assert sha256_file(tmp_path / "large") == large.sha256
    one = blobdl.download(small.url, str(tmp_path / "one"), settings=settings)
    assert sha256_file(one.path) == small.sha256
