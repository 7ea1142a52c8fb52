"""A rerun's one-byte check of a file in place reads its byte to keep the seat's
connection (``Session.first`` -> ``finish``). Hostile servers for that byte."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import Blob, fast_settings, sha256_file
from tests.integration.conftest import PKI

Make = Callable[..., Blob]


def _placed(make: Make, server: ServerHandle, tmp_path: Path, n: int, seed: int,
            size: int = 1000, **kw: Any) -> list[Item]:  # fmt: skip
    blobs = [make(size + k, seed=seed + k) for k in range(n)]
    for blob in blobs:
        os.utime(server.root / blob.name, (time.time() - 3600,) * 2)
    items = [Item(b.url, str(tmp_path / f"o{k}")) for k, b in enumerate(blobs)]
    server.set_faults()
    done = blobdl.download_many(items, max_connections=3, per_host=3,
                                settings=fast_settings(**kw))  # fmt: skip
    assert all(r.ok for r in done), done
    return items


def _rerun(items: list[Item], **kw: Any) -> tuple[list[Any], float]:
    t = time.monotonic()
    results = blobdl.download_many(items, max_connections=3, per_host=3,
                                   settings=fast_settings(**kw))  # fmt: skip
    return results, time.monotonic() - t


def test_a_check_whose_byte_never_comes_waits_about_a_second(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    items = _placed(make, server, tmp_path, 6, 9100)
    server.set_faults({"path": "/files/*", "times": None, "action": "stall_after", "bytes": 0,
                       "hold": 30})  # fmt: skip
    results, took = _rerun(items)
    server.set_faults()
    assert all(r.ok and r.result and r.result.bytes_fetched == 0 for r in results), results
    assert took < 6, took  # 6 items over 3 seats: at most about 1 s each


def test_a_check_answered_200_ignoring_range_keeps_the_connection(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    items = _placed(make, server, tmp_path, 9, 9200)
    server.set_faults({"path": "/files/*", "times": None, "action": "ignore_range"})
    before = server.stats()
    results, _ = _rerun(items)
    after = server.stats()
    server.set_faults()
    assert all(r.ok for r in results), results
    assert after["connections"] - before["connections"] <= 3 + 1, (before, after)


def test_a_check_answered_chunked(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    items = _placed(make, server, tmp_path, 4, 9300)
    server.set_faults({"path": "/files/*", "times": None, "action": "transfer_encoding",
                       "value": "chunked", "chunked": True})  # fmt: skip
    results, took = _rerun(items)
    server.set_faults()
    assert all(r.ok for r in results), results
    assert took < 5


def test_empty_blobs_rerun_416(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    items = _placed(make, server, tmp_path, 3, 9400, size=0)
    before = server.stats()
    results, _ = _rerun(items)
    after = server.stats()
    assert all(r.ok for r in results), results
    assert after["connections"] - before["connections"] <= 3 + 1, (before, after)


def test_a_check_over_https_keeps_the_connection(
    tls_server: ServerHandle, pki: PKI, tmp_path: Path
) -> None:
    items = []
    for k in range(9):
        name = f"r4-{k}.bin"
        make_blob(tls_server.root, name, 1000 + k, 9500 + k)
        os.utime(tls_server.root / name, (time.time() - 3600,) * 2)
        items.append(Item(tls_server.url(name), str(tmp_path / f"o{k}")))
    results, _ = _rerun(items, ca_bundle=pki.ca_pem)
    assert all(r.ok for r in results), results
    before = tls_server.stats()
    results, _ = _rerun(items, ca_bundle=pki.ca_pem)
    after = tls_server.stats()
    assert all(r.ok and r.result and r.result.bytes_fetched == 0 for r in results), results
    assert after["connections"] - before["connections"] <= 3 + 1, (before, after)


def test_kept_check_connection_then_another_hosts_items(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    blobs = [make(1000 + k, seed=9600 + k) for k in range(8)]
    for blob in blobs:
        os.utime(server.root / blob.name, (time.time() - 3600,) * 2)
    items = [Item((server if k % 2 else other).url(b.name), str(tmp_path / f"o{k}"))
             for k, b in enumerate(blobs)]  # fmt: skip
    server.set_faults()
    r1 = blobdl.download_many(items, max_connections=2, per_host=2, settings=fast_settings())
    assert all(r.ok for r in r1), r1
    server.reset()
    other.reset()
    r2 = blobdl.download_many(items, max_connections=2, per_host=2, settings=fast_settings())
    assert all(r.ok for r in r2), r2
    b2, o2 = server.stats(), other.stats()
    assert b2["max_concurrent"] <= 2 + 1 and o2["max_concurrent"] <= 2 + 1, (b2, o2)
    for blob, it in zip(blobs, items, strict=True):
        assert sha256_file(Path(it.path or "")) == blob.sha256


@pytest.mark.parametrize("budget", [2, 3])
def test_large_items_probed_on_seats_keep_the_budget(
    make: Make, server: ServerHandle, tmp_path: Path, budget: int
) -> None:
    """A large item's probe on a seat: its 206 of one request's bytes (64 KiB, within
    finish's limit) is now read and the connection kept while the item's lanes run."""
    blobs = [make(700_000 + k, seed=9700 + k) for k in range(4)]
    items = [Item(b.url, str(tmp_path / f"o{k}")) for k, b in enumerate(blobs)]
    server.reset()
    server.set_faults({"path": "/files/*", "times": None, "action": "rate", "bps": 2_000_000})
    results = blobdl.download_many(items, max_connections=budget, per_host=budget,
                                   settings=fast_settings())  # fmt: skip
    stats = server.stats()
    server.set_faults()
    assert all(r.ok for r in results), results
    for blob, it in zip(blobs, items, strict=True):
        assert sha256_file(Path(it.path or "")) == blob.sha256
    assert stats["max_concurrent"] <= budget, stats
