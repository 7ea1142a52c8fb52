"""Batch jobs: many downloads under one connection budget, and the shared blob cache."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import blobdl
from blobdl import Item, parse_manifest
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, REPO, Blob, fast_settings, sha256_file

Make = Callable[..., Blob]
BPART = 4 * PART  # 256 KiB parts: several paced chunks each, so transfers really overlap
SIZES = [1, 1000, BPART - 1, BPART, 3 * BPART + 5, 100_000, 2 * BPART, 5, 2 * BPART - 1, 4 * BPART]


def slow_everything(server: ServerHandle, bps: int = 400_000) -> None:
    server.set_faults({"path": "/files/*", "times": None, "action": "rate", "bps": bps,
                       "method": "GET"})  # fmt: skip


def fast(**overrides: object) -> dict[str, object]:
    """download_many keywords: small parts, 4 connections per blob, plus ``overrides``."""
    return {"settings": fast_settings(connections=4, min_part_size=BPART, max_part_size=BPART),
            **overrides}  # fmt: skip


def test_manifest_of_mixed_blobs_respects_the_connection_budget(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blobs = [make(size, seed=100 + i) for i, size in enumerate(SIZES)]
    slow_everything(server)
    items = [Item(b.url, str(tmp_path / f"out-{i}")) for i, b in enumerate(blobs)]
    results = blobdl.download_many(items, max_connections=5, per_host=8, **fast())
    assert [r.ok for r in results] == [True] * len(blobs)
    for blob, result in zip(blobs, results, strict=True):
        assert result.result is not None and sha256_file(result.result.path) == blob.sha256
    stats = server.stats()
    assert 2 <= stats["max_concurrent"] <= 5  # the budget was shared, and never exceeded


def test_per_host_cap_binds_below_the_budget(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blobs = [make(size, seed=120 + i) for i, size in enumerate(SIZES[:6])]
    slow_everything(server)
    items = [Item(b.url, str(tmp_path / f"out-{i}")) for i, b in enumerate(blobs)]
    results = blobdl.download_many(items, max_connections=16, per_host=2, **fast())
    assert all(r.ok for r in results)
    assert server.stats()["max_concurrent"] <= 2


def test_one_failing_item_does_not_stop_the_others(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    good = [make(2 * PART, seed=130), make(PART, seed=131)]
    items = [
        Item(good[0].url, str(tmp_path / "a")),
        Item(server.route("/status/404"), str(tmp_path / "b")),
        Item(good[1].url, str(tmp_path / "c")),
    ]
    results = blobdl.download_many(items, **fast())
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, blobdl.HTTPStatusError)
    assert sha256_file(tmp_path / "c") == good[1].sha256 and not (tmp_path / "b").exists()


def test_the_same_url_and_destination_twice_is_fetched_once(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(3 * PART, seed=132)
    item = Item(blob.url, str(tmp_path / "same"))
    results = blobdl.download_many([item, item._replace(path=f"{tmp_path}/./same")], **fast())
    first, second = (r.result for r in results)
    assert first and second and first.path == second.path and results[1].ok
    # The blob once: one GET, its probe too (it fits in one request).
    assert server.stats()["bytes_sent"] == blob.size and server.stats()["requests"] == 1


def test_events_name_their_item(make: Make, tmp_path: Path) -> None:
    blobs = [make(PART, seed=133), make(2 * PART, seed=134)]
    events: list[blobdl.BatchEvent] = []
    items = [Item(b.url, str(tmp_path / f"o{i}")) for i, b in enumerate(blobs)]
    blobdl.download_many(items, on_event=events.append, **fast())
    finished = {e.item for e in events if isinstance(e.event, blobdl.Finished)}
    started = {e.item for e in events if isinstance(e.event, blobdl.Started)}
    assert finished == started == {0, 1}


# --- the cache ------------------------------------------------------------------------------


def test_cache_hit_costs_no_network(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    blob = make(4 * PART, seed=140)
    cache = tmp_path / "cache"
    first = blobdl.download(blob.url, tmp_path / "a", digest=blob.sha256, cache_dir=str(cache))
    assert not first.cached and first.verified
    entry = cache / f"sha256-{blob.sha256}"
    assert sha256_file(entry) == blob.sha256
    server.reset()
    second = blobdl.download(blob.url, tmp_path / "b", digest=f"sha256:{blob.sha256}",
                             cache_dir=str(cache))  # fmt: skip
    assert second.cached and second.bytes_fetched == 0
    assert server.stats()["requests"] == 0
    assert os.path.samefile(tmp_path / "b", entry)  # a hard link to the entry
    assert sha256_file(tmp_path / "b") == blob.sha256


def test_batch_cache_hits_cost_no_network(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    blobs = [make(PART, seed=141), make(3 * PART, seed=142)]
    cache = str(tmp_path / "cache")
    items = [Item(b.url, str(tmp_path / f"x{i}"), b.sha256) for i, b in enumerate(blobs)]
    assert all(r.ok for r in blobdl.download_many(items, **fast(cache_dir=cache)))
    server.reset()
    again = [i._replace(path=str(tmp_path / f"y{n}")) for n, i in enumerate(items)]
    results = blobdl.download_many(again, **fast(cache_dir=cache))
    assert all(r.ok and r.result and r.result.cached for r in results)
    assert server.stats()["requests"] == 0


def test_rotten_cache_entry_is_refetched_when_verifying(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(2 * PART, seed=143)
    cache = tmp_path / "cache"
    blobdl.download(blob.url, tmp_path / "a", digest=blob.sha256, cache_dir=str(cache))
    entry = cache / f"sha256-{blob.sha256}"
    os.unlink(tmp_path / "a")
    with entry.open("r+b") as f:
        f.write(b"rot")
    result = blobdl.download(blob.url, tmp_path / "b", digest=blob.sha256,
                             cache_dir=str(cache), verify_cache=True)  # fmt: skip
    assert not result.cached and sha256_file(tmp_path / "b") == blob.sha256


def test_two_processes_share_one_cache_and_fetch_once(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(16 * PART, seed=144)
    slow_everything(server, bps=300_000)
    cache = tmp_path / "cache"
    code = (
        "import sys, blobdl; r = blobdl.download(sys.argv[1], sys.argv[2], digest=sys.argv[3],"
        " cache_dir=sys.argv[4], lock_timeout=0, min_part_size=65536, max_part_size=65536,"
        " connections=4); print(r.cached)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, blob.url, str(tmp_path / name), blob.sha256, str(cache)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("one", "two")
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for name in ("one", "two"):
        assert sha256_file(tmp_path / name) == blob.sha256
    assert sorted(out.strip() for out, _ in outputs) == ["False", "True"]  # one waited, then hit
    assert server.stats()["bytes_sent"] <= blob.size + 2  # the blob crossed the wire once
    entry = f"sha256-{blob.sha256}"
    assert [p.name for p in cache.iterdir()] == [entry]  # seals live in a private directory


# --- manifests ------------------------------------------------------------------------------


def test_manifest_lines_plain_and_json() -> None:
    digest = "sha256:" + "a" * 64
    text = f"""
    # a comment, then a blank line

    http://h/one
    http://h/two out/two.bin
    http://h/three {digest}
    http://h/four four.bin {digest}
    {{"url": "http://h/five", "path": "5", "digest": "{digest}", "headers": {{"X-A": "b"}}}}
    """
    assert parse_manifest(text) == [
        Item("http://h/one"),
        Item("http://h/two", "out/two.bin"),
        Item("http://h/three", None, digest),
        Item("http://h/four", "four.bin", digest),
        Item("http://h/five", "5", digest, (("X-A", "b"),)),
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("http://h/x a b c", "line 1"),
        ("http://h/ok out\nhttp://h/y sha256:zz", "line 2"),
        ('{"path": "x"}', "line 1"),
        ("{not json", "line 1"),
    ],
)
def test_bad_manifest_lines_are_named(text: str, problem: str) -> None:
    with pytest.raises(blobdl.UsageError, match=problem):
        parse_manifest(text)


# --- found in review ------------------------------------------------------------------------


def test_an_edit_through_a_hard_linked_destination_does_not_poison_the_cache(
    make: Make, tmp_path: Path
) -> None:
    blob = make(2 * BPART, seed=160)
    cache = str(tmp_path / "cache")
    blobdl.download(blob.url, tmp_path / "a", digest=blob.sha256, cache_dir=cache)
    with (tmp_path / "a").open("r+b") as f:  # the user edits their copy in place (as root)
        f.write(b"edited!")
    result = blobdl.download(blob.url, tmp_path / "b", digest=blob.sha256, cache_dir=cache)
    assert sha256_file(tmp_path / "b") == blob.sha256
    assert not result.cached  # the edited entry was caught, dropped and fetched again


def test_same_destination_with_another_digest_is_refused(make: Make, tmp_path: Path) -> None:
    blob = make(PART, seed=161)
    items = [Item(blob.url, str(tmp_path / "a"), blob.sha256),
             Item(blob.url, str(tmp_path / "a"), "sha256:" + "0" * 64)]  # fmt: skip
    with pytest.raises(blobdl.UsageError, match="both write"):
        blobdl.download_many(items, **fast())


def test_a_duplicate_reports_no_bytes_of_its_own(make: Make, tmp_path: Path) -> None:
    blob = make(PART, seed=162)
    item = Item(blob.url, str(tmp_path / "a"), blob.sha256)
    first, second = blobdl.download_many([item, item], **fast())
    assert first.result and second.result and first.result.bytes_fetched == blob.size
    assert second.result.bytes_fetched == 0 and second.result.verified


def test_a_raising_callback_leaves_no_download_running(make: Make, tmp_path: Path) -> None:
    blob = make(4 * BPART, seed=163)

    def explode(event: blobdl.BatchEvent) -> None:
        raise RuntimeError("the caller's bug")

    with pytest.raises(RuntimeError, match="the caller's bug"):
        blobdl.download_many([Item(blob.url, str(tmp_path / "a"))], on_event=explode, **fast())
    # (the autouse fixture asserts that no child process is left alive)


def test_limit_rate_is_shared_by_the_whole_batch(make: Make, tmp_path: Path) -> None:
    import time

    blobs = [make(2 * BPART, seed=164 + i) for i in range(3)]
    items = [Item(b.url, str(tmp_path / f"r{i}")) for i, b in enumerate(blobs)]
    limit = 1_500_000
    started = time.monotonic()
    results = blobdl.download_many(items, max_connections=6, limit_rate=limit, **fast())
    elapsed = time.monotonic() - started
    assert all(r.ok for r in results)
    total = sum(b.size for b in blobs)
    # A lower bound only: each worker may read one slice before it first paces.
    assert elapsed >= 0.8 * total / limit


def test_a_limit_of_a_few_bytes_a_second_runs_no_more_connections_than_it_has_bytes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Each running connection gets at least 1 byte/s of the limit, so a batch running more
    connections than the limit has bytes/s took more than the limit together (four seats
    at a 2 B/s limit: 4 B/s). It runs at most that many at once; every item still lands."""
    blobs = [make(1, seed=170 + i) for i in range(4)]
    items = [Item(b.url, str(tmp_path / f"t{i}")) for i, b in enumerate(blobs)]
    server.reset()
    results = blobdl.download_many(items, max_connections=4, per_host=4, limit_rate=2, **fast())
    assert all(r.ok for r in results), results
    assert [sha256_file(tmp_path / f"t{i}") for i in range(4)] == [b.sha256 for b in blobs]
    assert server.stats()["max_concurrent"] <= 2, server.stats()
