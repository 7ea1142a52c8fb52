"""A batch's large item whose signed URL expires, and whose URL, resolved again, redirects
to another host than the one its lanes were counted at: its refresh asks for room there
first, as its first probe did, so that host's ``--per-host`` holds while another item of
the batch holds its connections.

Three hostnames of two servers: the item's URL at ``127.0.0.1`` (the first server), its
first redirect to ``127.1`` (the first server again, as a CDN), its refreshed one to
``localhost`` (the other server, reached by no other name), where another item receives
meanwhile: the other server's ``max_concurrent`` is that one hostname's."""

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


def _expires_then_moves(
    server: ServerHandle, large: Blob, to: str, after: str = "", *more: dict[str, object]
) -> None:
    """The first server's rules (``more`` after them): ``large``'s URL redirects to
    ``127.1`` (the same server), where it expires (403) once its probe (answered once
    ``after`` was asked there, if given) and a lane's first request were answered; resolved
    again, it redirects to ``to``."""
    path = f"/files/{large.name}"
    cdn = large.url.replace("127.0.0.1", "127.1")
    probe: dict[str, object] = {"path": path, "times": 1, "action": "ttfb", "delay": 0}
    if after:
        probe["after"] = {"path": after, "requests": 1}
    server.set_faults(
        {"path": path, "times": 1, "action": "redirect", "location": cdn},
        probe,
        {"path": path, "skip": 1, "times": 1, "action": "status", "status": 403},
        {"path": path, "times": None, "action": "redirect", "location": to},
        *more,
    )


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


def test_large_items_refreshed_each_to_the_others_host_wait_for_room_and_all_finish(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """One connection per host. The first item's lanes are at ``127.1`` and its refresh
    leads to ``localhost``; the second's are at ``localhost`` and its refresh leads to
    ``127.1``; both URLs are at ``127.0.0.1`` (of either server). A refresh waiting for
    room holds nothing meanwhile, so neither waits on the other for good."""
    there, back = make(8 * PART, seed=3204), make(8 * PART, seed=3205)
    _expires_then_moves(server, there, other.url(there.name).replace("127.0.0.1", "localhost"))
    path = f"/files/{back.name}"
    other.set_faults(
        {"path": path, "times": 1, "action": "redirect",
         "location": other.url(back.name).replace("127.0.0.1", "localhost")},
        {"path": path, "skip": 2, "times": 1, "action": "status", "status": 403},
        {"path": path, "times": None, "action": "redirect",
         "location": server.url(back.name).replace("127.0.0.1", "127.1")},
    )  # fmt: skip
    try:
        urls = [there.url, other.url(back.name)]
        items = [Item(url, str(tmp_path / f"o{n}"), size=8 * PART) for n, url in enumerate(urls)]
        settings = fast_settings(retries=3, connections=1)
        results = blobdl.download_many(items, max_connections=8, per_host=1, settings=settings)
        assert all(r.ok for r in results), [r.error for r in results]
        for n, blob in enumerate([there, back]):
            assert sha256_file(tmp_path / f"o{n}") == blob.sha256
        assert server.stats()["per_path"][path] >= 2  # refreshed to 127.1: probe, lane
    finally:
        other.reset()


@pytest.mark.parametrize("said", ["large", "probed by a seat"])
def test_a_batch_stopped_while_a_refresh_waits_for_room_at_its_new_host_ends_at_once(
    said: str, make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """``localhost``'s one connection is held by an item that takes 30 s (of the first
    server, reached as ``localhost``: the large item's probe at ``127.1`` is answered once
    it was asked); the large item's refresh, redirected there, waits for room. Ctrl-C ends
    the batch at once."""
    large, held = make(8 * PART, seed=3206), make(PART // 2, seed=3207)
    to = other.url(large.name).replace("127.0.0.1", "localhost")
    asked = f"/files/{held.name}"
    slow = {"path": asked, "times": None, "action": "ttfb", "delay": 30}
    _expires_then_moves(server, large, to, asked, slow)
    manifest = tmp_path / "manifest"
    held_url = held.url.replace("127.0.0.1", "localhost")
    line = f"{large.url} {tmp_path / 'large'}"
    if said == "large":
        line = f'{{"url": "{large.url}", "path": "{tmp_path / "large"}", "size": {large.size}}}'
    manifest.write_text(f"{held_url} {tmp_path / 'held'}\n{line}\n")
    parts = ("--min-part-size", str(PART), "--max-part-size", str(PART))  # one lane a host
    batch = spawn_cli("-q", "-i", str(manifest), "--per-host", "1", *parts)
    try:
        path = f"/files/{large.name}"
        # its probe, the CDN's probe, a lane's request, the 403, the refresh's redirect
        wait_for(lambda: server.stats()["per_path"].get(path, 0) >= 5, "the refresh")
        time.sleep(0.3)  # the child asks for room at localhost, and waits
        assert other.stats()["per_path"].get(path, 0) == 0
        began = time.monotonic()
        batch.send_signal(signal.SIGINT)
        assert batch.wait(timeout=20) == 130
        assert time.monotonic() - began < 1.5  # not a stop grace waited out
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
        other.reset()
