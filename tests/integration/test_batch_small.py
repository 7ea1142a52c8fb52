"""Small items of a batch (issue #23): a blob no larger than one request is fetched whole by
its first GET, which is its probe too, on a seat of the batch's pool over a connection kept
alive from the seat's previous item. Every promise still holds for them: exact bytes or a
clean failure, the retry policy, the budget counted at the server, the lock, Ctrl-C."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import blobdl
from blobdl import Item
from blobdl.errors import EXIT_INTERRUPTED
from blobdl.store._lock import DestinationLock
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, REPO, Blob, fast_settings, opened_by, sha256_file, spawn_cli
from tests.held_sync import HeldSync
from tests.integration.test_trust_stops import Cli, one_error, wait_for

Make = Callable[..., Blob]
SMALL = PART // 2  # fast_settings: parts of PART bytes, so a blob of PART or less is small


def fast(**overrides: Any) -> dict[str, Any]:
    return {"settings": fast_settings(**overrides)}


def slow(server: ServerHandle, bps: int, path: str = "/files/*") -> None:
    """Pace bodies (the server paces 64 KiB at a time: a smaller body comes at once)."""
    server.set_faults({"path": path, "times": None, "action": "rate", "bps": bps})


def late(server: ServerHandle, seconds: float, path: str = "/files/*") -> dict[str, Any]:
    """A rule: every answer comes ``seconds`` late."""
    return {"path": path, "times": None, "action": "ttfb", "delay": seconds}


def test_small_items_are_one_request_each_over_kept_connections(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blobs = [make(size, seed=2300 + n) for n, size in enumerate([1, 17, PART, 1000] * 6)]
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    results = blobdl.download_many(items, max_connections=3, per_host=3, **fast())
    assert all(r.ok for r in results), results
    for blob, result in zip(blobs, results, strict=True):
        assert result.result is not None and result.result.parts == 1
        assert sha256_file(result.result.path) == blob.sha256
    stats = server.stats()
    assert stats["requests"] == len(blobs)  # the probe brought each whole blob
    assert stats["bytes_sent"] == sum(b.size for b in blobs)
    # One connection kept per seat (and the one asking for these stats).
    assert stats["connections"] <= 3 + 1 and stats["max_concurrent"] <= 3


def test_a_rerun_over_finished_items_checks_each_over_the_seats_kept_connections(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A manifest run again once its items are in place: each item's record is checked
    against the server's validators with a one-byte GET, whose byte is read so that the
    seat keeps its connection for the next item (a rerun of thousands of shards opened as
    many connections, a TLS handshake each over HTTPS)."""
    blobs = [make(1000 + n, seed=2360 + n) for n in range(12)]
    for blob in blobs:  # modified an hour ago: validators a record keeps
        os.utime(server.root / blob.name, (time.time() - 3600,) * 2)
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    assert all(r.ok for r in blobdl.download_many(items, max_connections=3, per_host=3, **fast()))
    before = server.stats()
    results = blobdl.download_many(items, max_connections=3, per_host=3, **fast())
    assert all(r.ok and r.result and r.result.bytes_fetched == 0 for r in results), results
    after = server.stats()
    assert after["requests"] - before["requests"] == len(blobs)
    assert after["bytes_sent"] - before["bytes_sent"] == len(blobs)  # a byte each
    # A seat's connection each (and the one that looked at the stats before).
    assert after["connections"] - before["connections"] <= 3 + 1, (before, after)


def test_kept_connections_count_against_the_budget_of_large_items(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    small = [make(SMALL, seed=2320 + n) for n in range(10)]
    large = [make(8 * PART, seed=2340 + n) for n in range(2)]
    slow(server, 2_000_000)
    blobs = [*small[:5], large[0], *small[5:], large[1]]
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    results = blobdl.download_many(items, max_connections=4, per_host=4, **fast())
    assert all(r.ok for r in results), results
    assert [sha256_file(tmp_path / f"o{n}") for n in range(len(blobs))] == [b.sha256 for b in blobs]
    assert server.stats()["max_concurrent"] <= 4
    assert all(r.result and r.result.parts == 8 for r in (results[5], results[11]))


def test_a_seat_kept_alive_to_one_host_is_not_switched_past_anothers_cap(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """The first host's items come late, the second's at once: its seat is soon idle, kept
    alive to the second host, while the next item of the first host waits for its one
    connection. Switching that seat over would open a second connection to the first host."""
    first = [make(SMALL, seed=2345 + n) for n in range(4)]
    second = [make(SMALL, seed=2349 + n) for n in range(2)]
    # Another origin by name: localhost is another host than 127.0.0.1.
    urls = [b.url for b in first] + [
        other.url(b.name).replace("127.0.0.1", "localhost") for b in second
    ]
    order = [0, 4, 1, 2, 5, 3]  # first, second, first, first, second, first
    items = [Item(urls[n], str(tmp_path / f"o{n}")) for n in order]
    server.set_faults(late(server, 0.5))
    other.reset()
    try:
        results = blobdl.download_many(items, max_connections=4, per_host=1, **fast())
        assert all(r.ok for r in results), results
        blobs = [*first, *second]
        for n in order:
            assert sha256_file(tmp_path / f"o{n}") == blobs[n].sha256
        assert server.stats()["max_concurrent"] <= 1, server.stats()
        assert other.stats()["max_concurrent"] <= 1, other.stats()
    finally:
        other.reset()


def test_a_large_item_gets_the_lanes_that_small_items_free(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Three small items hold three of four connections when the large one is probed, so it
    starts with one lane; once they are done it runs four (its grant is raised live)."""
    small = [make(PART // 4, seed=2350 + n) for n in range(3)]
    large = make(16 * PART, seed=2355)
    # The small ones take 1.5 s; the large one's 16 parts 0.25 s each, one after another.
    server.set_faults(*(late(server, 1.5, f"/files/{b.name}") for b in small),
                      late(server, 0.25, f"/files/{large.name}"))  # fmt: skip
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate([*small, large])]
    active: list[int] = []

    def note(event: blobdl.BatchEvent) -> None:
        if event.item == 3 and isinstance(event.event, blobdl.Progress):
            active.append(event.event.active)

    settings = fast_settings(connections=4, progress_interval=0.05)
    results = blobdl.download_many(items, max_connections=4, per_host=4, on_event=note,
                                   settings=settings)  # fmt: skip
    assert all(r.ok for r in results), results
    assert sha256_file(tmp_path / "o3") == large.sha256
    assert active and active[0] == 1 and max(active) == 4, active
    assert server.stats()["max_concurrent"] <= 4


def test_the_pool_ends_once_no_small_item_is_left_while_a_large_one_runs(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A model's config and template beside its large layer: once they are done, nothing
    can need the pool again; it ends then (its processes, its kept connections), not when
    the layer does."""
    small = [make(SMALL, seed=2360 + n) for n in range(2)]
    large = make(16 * PART, seed=2365)
    # Every answer about the layer 0.4 s late: its 16 parts on 4 connections take 2 s, so
    # that its last events come long after the small items' even on a loaded machine (the
    # pool ends as the scheduler next looks, after their results; paced at 1 MB/s, whose
    # 64 KiB parts came at once, a loaded run saw the layer end first).
    server.set_faults(late(server, 0.4, f"/files/{large.name}"))
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate([*small, large])]
    done: set[int] = set()
    ours: list[int] = []  # the batch's processes while the layer runs, the others done
    before = {child.pid for child in psutil.Process().children()}  # the server's, say

    def note(event: blobdl.BatchEvent) -> None:
        if isinstance(event.event, blobdl.Finished):
            done.add(event.item)
        elif event.item == 2 and isinstance(event.event, blobdl.Progress) and {0, 1} <= done:
            alive = [c for c in psutil.Process().children() if c.pid not in before]
            ours.append(sum(c.status() != psutil.STATUS_ZOMBIE for c in alive))

    settings = fast_settings(progress_interval=0.05)
    results = blobdl.download_many(items, on_event=note, settings=settings)
    assert all(r.ok for r in results), results
    blobs = [*small, large]
    assert [sha256_file(tmp_path / f"o{n}") for n in range(3)] == [b.sha256 for b in blobs]
    # The layer's own process alone at some event of the layer's after the small items'
    # (the last event may come after the layer's process has ended: 0 then).
    assert 1 in ours, ours
    assert list(tmp_path.glob("*.blobdl-*")) == []


# --- faults on a small item: each is retried, from where the bytes stopped --------------------

FAULTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # rule on the small blob's first GET (its probe); settings
    "truncated": ({"action": "close_after", "bytes": 1000}, {}),
    "reset": ({"action": "reset_after", "bytes": 1000}, {}),
    "wrong content-range": ({"action": "headers", "set": {"Content-Range": "bytes 0-99/99"}}, {}),
    "503 then ok": ({"action": "status", "status": 503, "headers": {"Retry-After": "0"}}, {}),
    # (read timeout: the stall timeout, the fast settings' 2 s: it is the pool processes'
    # too, and a loaded machine once left one silent for 0.5 s; its item would run again)
    "stalled": ({"action": "stall_after", "bytes": 1000, "hold": 30}, {}),
    "no status line": ({"action": "no_response", "hold": 30}, {}),
    "wrong length": ({"action": "wrong_length", "by": -10}, {}),
    "compressed": ({"action": "encoding", "value": "gzip"}, {}),
    "200 to a range": ({"action": "full_200"}, {}),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_fault_on_a_small_item_is_retried_and_the_bytes_are_exact(
    make: Make, server: ServerHandle, tmp_path: Path, fault: str
) -> None:
    others = [make(SMALL, seed=2360 + n) for n in range(3)]
    victim = make(PART, seed=2365)
    rule, overrides = FAULTS[fault]
    server.set_faults({"path": f"/files/{victim.name}", "times": 1, **rule})
    blobs = [others[0], victim, *others[1:]]
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    results = blobdl.download_many(items, max_connections=2, **fast(**overrides))
    assert all(r.ok for r in results), results
    for n, blob in enumerate(blobs):
        assert sha256_file(tmp_path / f"o{n}") == blob.sha256
    ranges = [r for r in server.stats()["ranges"] if r]
    if fault in ("truncated", "reset", "stalled"):  # the retry asks for the rest only
        assert f"bytes=1000-{PART - 1}" in ranges, ranges
    assert list(tmp_path.glob("*.blobdl-*")) == []  # no temp, state or lock file left


def test_a_small_item_that_keeps_failing_fails_alone_with_its_exit_code(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    good, bad = make(SMALL, seed=2370), make(SMALL, seed=2371)
    server.set_faults({"path": f"/files/{bad.name}", "times": None, "action": "headers",
                       "set": {"Content-Range": f"bytes 1-{SMALL}/{SMALL + 1}"}})  # fmt: skip
    items = [Item(bad.url, str(tmp_path / "bad")), Item(good.url, str(tmp_path / "good"))]
    results = blobdl.download_many(items, **fast(retries=2))
    assert isinstance(results[0].error, blobdl.BadResponse) and results[1].ok
    assert results[0].error.exit_code == 4
    assert server.stats()["per_path"][f"/files/{bad.name}"] == 3  # the first and two retries
    assert not (tmp_path / "bad").exists() and sha256_file(tmp_path / "good") == good.sha256
    assert list(tmp_path.glob("*.blobdl-*")) == []


def test_a_server_closing_kept_connections_between_items_costs_nothing_but_connections(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blobs = [make(SMALL + n, seed=2375 + n) for n in range(12)]
    # An ordinary response, after which the server hangs up without a word (its keep-alive
    # timeout, say): the seat's kept connection is dead when its next item comes.
    server.set_faults({"path": "/files/*", "times": None, "action": "headers",
                       "set": {"X-Then": "hang up"}})  # fmt: skip
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    results = blobdl.download_many(items, max_connections=2, **fast(retries=0))
    assert all(r.ok and r.result and r.result.retries == 0 for r in results), results
    assert [sha256_file(tmp_path / f"o{n}") for n in range(12)] == [b.sha256 for b in blobs]
    stats = server.stats()
    assert stats["requests"] == 12 and stats["max_concurrent"] <= 2


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_kept_connection_the_server_closed_as_the_next_request_came_costs_a_new_one(
    make: Make, server: ServerHandle, tmp_path: Path, reset: bool
) -> None:
    blobs = [make(SMALL + n, seed=2390 + n) for n in range(12)]
    # The race no client can see coming: a server closes its idle connection just as our next
    # request on it arrives (its keep-alive timeout, its restart). Nothing of an answer
    # came, so the request is asked again on a new connection: not a failed attempt.
    server.set_faults({"path": "/files/*", "times": None, "kept": True,
                       "action": "no_response", "hold": 0, "reset": reset})  # fmt: skip
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    results = blobdl.download_many(items, max_connections=2, **fast(retries=0))
    assert all(r.ok and r.result and r.result.retries == 0 for r in results), results
    assert [sha256_file(tmp_path / f"o{n}") for n in range(12)] == [b.sha256 for b in blobs]
    stats = server.stats()
    lost = stats["rule_hits"][0]
    assert lost > 0  # the seats did carry items over kept connections
    assert stats["requests"] == 12 + lost and stats["max_concurrent"] <= 2


def test_a_batch_stopped_while_an_item_waits_on_a_kept_connection_asks_nothing_more(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blobs = [make(1000, seed=2395 + n) for n in range(2)]
    # The second item's GET goes on the connection the first kept, and gets no answer; the
    # batch is stopped meanwhile. The stop cuts the seat's connection, and the seat meets
    # that as a close: it is no server's close of a kept connection to ask again past.
    server.set_faults({"path": "/files/*", "times": None, "kept": True,
                       "action": "no_response", "hold": 30})  # fmt: skip
    manifest = tmp_path / "manifest"
    manifest.write_text("".join(f"{b.url} {tmp_path / f'o{n}'}\n" for n, b in enumerate(blobs)))
    batch = spawn_cli("-q", "-i", str(manifest), "--connections", "1")
    try:
        wait_for(lambda: server.stats()["requests"] == 2, "the second item's GET")
        batch.send_signal(signal.SIGINT)
        assert batch.wait(timeout=20) == EXIT_INTERRUPTED
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
    assert server.stats()["requests"] == 2
    assert not (tmp_path / "o1").exists()


def test_a_small_items_digest_is_checked_before_the_rename(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(SMALL, seed=2380)
    wrong = "sha256:" + "0" * 64
    items = [Item(blob.url, str(tmp_path / "bad"), wrong),
             Item(blob.url, str(tmp_path / "good"), blob.sha256)]  # fmt: skip
    results = blobdl.download_many(items, **fast())
    assert isinstance(results[0].error, blobdl.DigestMismatch) and results[1].ok
    assert not (tmp_path / "bad").exists() and list(tmp_path.glob("bad.blobdl-*")) == []
    assert results[1].result is not None and results[1].result.verified
    server.reset()  # a destination its digest vouches for costs no request
    again = blobdl.download_many(items[1:], **fast())
    assert again[0].ok and server.stats()["requests"] == 0


def test_an_empty_blob_and_a_server_without_ranges(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    empty, whole, large = make(0, seed=2385), make(SMALL, seed=2386), make(4 * PART, seed=2387)
    server.set_faults(
        *({"path": f"/files/{b.name}", "times": None, "action": "ignore_range"}
          for b in (whole, large))
    )  # fmt: skip
    blobs = [empty, whole, large]
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    results = blobdl.download_many(items, **fast())
    assert all(r.ok for r in results), results
    assert (tmp_path / "o0").stat().st_size == 0
    assert [sha256_file(tmp_path / f"o{n}") for n in (1, 2)] == [whole.sha256, large.sha256]


def test_a_locked_small_item_fails_alone(make: Make, tmp_path: Path) -> None:
    blobs = [make(SMALL, seed=2390), make(SMALL, seed=2391)]
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    with DestinationLock(tmp_path / "o0", 0):  # another writer holds it
        results = blobdl.download_many(items, **fast())
    assert isinstance(results[0].error, blobdl.DestinationLocked) and results[1].ok
    assert results[0].error.exit_code == 5 and not (tmp_path / "o0").exists()


def test_a_seat_locks_each_of_its_items_with_the_one_lock_file_it_keeps(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    # 192 KiB at 1 MB/s, small for parts of 256 KiB: each item lasts long enough for its
    # Started to be seen while it runs.
    blobs = [make(3 * PART, seed=2396 + n) for n in range(3)]
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    slow(server, 1_000_000)
    locks: list[int] = []  # each item's lock file, held open: its inode is never reused

    def seen(event: blobdl.BatchEvent) -> None:
        if isinstance(event.event, blobdl.Started):  # the item holds its lock now
            dest = Path(event.event.path)
            locks.append(os.open(f"{dest}.blobdl-lock", os.O_RDONLY))
            with pytest.raises(blobdl.DestinationLocked), DestinationLock(dest, 0):
                pass  # and it is locked for any other writer

    try:
        parts = {"min_part_size": 4 * PART, "max_part_size": 4 * PART}
        results = blobdl.download_many(items, max_connections=1, on_event=seen, **fast(**parts))
        inodes = {os.fstat(fd).st_ino for fd in locks}
    finally:
        for fd in locks:
            os.close(fd)
    assert all(r.ok for r in results), results
    assert [r.result.parts for r in results if r.result] == [1, 1, 1]  # small, on a seat
    assert len(locks) == 3 and len(inodes) == 1  # one file: none made (nor removed) per item
    assert [sha256_file(tmp_path / f"o{n}") for n in range(3)] == [b.sha256 for b in blobs]
    assert list(tmp_path.glob("*.blobdl-*")) == []  # the pool's end removed it


def locked_by_anyone(path: Path) -> bool:
    """Whether some process holds a flock on the file at ``path`` (``/proc/locks``)."""
    try:
        inode = os.lstat(path).st_ino
    except FileNotFoundError:
        return False
    return any(line.split()[5].endswith(f":{inode}") for line in Path("/proc/locks").open())


def test_a_writer_waiting_for_a_batchs_item_gets_it_when_the_item_is_done(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Another blobdl, given --lock-timeout, waits for an item of a batch running beside it;
    once that item is done, it writes, while the batch's seat goes on with its next item."""
    first, second, other = (make(100, seed=2470 + n) for n in range(3))
    server.set_faults(late(server, 3, f"/files/{first.name}"),
                      late(server, 5, f"/files/{second.name}"))  # fmt: skip
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{first.url} {tmp_path / 'o0'}\n{second.url} {tmp_path / 'o1'}\n")
    batch = spawn_cli("-q", "-i", str(manifest), "--connections", "1")
    writer = None
    try:
        deadline = time.monotonic() + 10
        while not locked_by_anyone(tmp_path / "o0.blobdl-lock"):  # the seat writes o0
            assert time.monotonic() < deadline and batch.poll() is None
            time.sleep(0.02)
        writer = spawn_cli("-q", other.url, "-o", str(tmp_path / "o0"), "--lock-timeout", "30",
                           "--force")  # fmt: skip
        while not opened_by(writer.pid, tmp_path / "o0.blobdl-lock"):  # and waits for it
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.02)
        assert writer.wait(30) == 0, writer.communicate()
        assert not (tmp_path / "o1").exists()  # not after the seat's next item
        assert batch.wait(30) == 0
    finally:
        for proc in (batch, writer):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sha256_file(tmp_path / "o0") == other.sha256
    assert sha256_file(tmp_path / "o1") == second.sha256
    assert list(tmp_path.glob("*.blobdl-*")) == []


def test_a_small_item_redirected_to_another_origin_carries_no_secret_header(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(SMALL, seed=2395)
    # localhost redirects to 127.0.0.1: another origin, the same server
    url = server.route(f"/redirect-abs/1/{blob.name}").replace("127.0.0.1", "localhost")
    item = Item(url, str(tmp_path / "o"), headers=(("Authorization", "Bearer secret"),))
    [result] = blobdl.download_many([item], **fast())
    assert result.ok and sha256_file(tmp_path / "o") == blob.sha256
    stats = server.stats()
    sent = dict(zip(stats["ranges"], stats["headers"], strict=True))
    assert any("Authorization" in h for h in stats["headers"])  # the first hop has it
    assert all("Authorization" not in h for h in stats["headers"][1:]), sent


def test_a_size_hint_spares_a_large_items_first_bytes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    large, small = make(4 * PART, seed=2420), make(SMALL, seed=2421)
    items = [Item(large.url, str(tmp_path / "a")), Item(small.url, str(tmp_path / "b"))]
    blobdl.download_many(items, max_connections=1, **fast())
    thrown_away = server.stats()["bytes_sent"] - large.size - small.size
    assert 0 < thrown_away <= PART  # its first GET asked for one request's worth
    server.reset()
    hinted = [items[0]._replace(path=str(tmp_path / "c"), size=large.size),
              items[1]._replace(path=str(tmp_path / "d"), size=1 << 40)]  # fmt: skip
    results = blobdl.download_many(hinted, max_connections=1, **fast())
    assert all(r.ok for r in results) and results[1].item.size == 1 << 40
    assert (
        sha256_file(tmp_path / "c") == large.sha256 and sha256_file(tmp_path / "d") == small.sha256
    )
    ranges = server.stats()["ranges"]
    assert ranges.count("bytes=0-0") == 2  # a hint is one: the server's answer decides
    assert server.stats()["bytes_sent"] == large.size + small.size + 2


# --- processes and descriptors -------------------------------------------------------------


def test_many_small_items_keep_their_processes_and_descriptors(make: Make, tmp_path: Path) -> None:
    blobs = [make(100 + n, seed=2400 + n) for n in range(150)]
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}  # the session's test server
    pids: set[int] = set()  # every process started under us while items finished
    fds: list[int] = []  # descriptors we hold, as each item finishes

    def note(event: blobdl.BatchEvent) -> None:
        if isinstance(event.event, blobdl.Finished):
            pids.update(p.pid for p in me.children(recursive=True) if p.pid not in before)
            fds.append(me.num_fds())

    results = blobdl.download_many(items, max_connections=8, on_event=note,
                                   **fast(processes=2))  # fmt: skip
    assert all(r.ok for r in results)
    assert len(fds) == 150
    # The pool, forked once (and the clean coordinator a threaded caller gets): the same
    # few processes for 150 items, none started per item.
    assert 1 <= len(pids) <= 2 + 1, pids
    assert max(fds[-50:]) <= max(fds[:20])  # no descriptor leaks per item


def test_a_batch_fits_its_pool_to_the_open_file_limit(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """128 open files hold 64 connections, but not 32 seats in one pool process (a seat
    holds its socket, splice pipe, temporary and lock files, and its pipe): dozens of items
    failed mid-batch with "Too many open files". The pool takes more processes instead."""
    blobs = [make(100 + n, seed=2700 + n) for n in range(200)]
    manifest = tmp_path / "manifest"
    manifest.write_text("".join(f"{b.url} {tmp_path / f'o{n}'}\n" for n, b in enumerate(blobs)))
    server.set_faults(late(server, 0.05))  # the seats all hold their items at once
    args = ("-i", str(manifest), "-q", "--connections", "64", "--per-host", "64")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    done = subprocess.run([sys.executable, "-m", "blobdl", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, preexec_fn=limit)  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert [sha256_file(tmp_path / f"o{n}") for n in range(200)] == [b.sha256 for b in blobs]


def test_a_killed_pool_process_has_its_items_run_again_and_the_batch_goes_on(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    # Half their bytes at once, the rest after 0.65 s: items are in flight when it dies.
    blobs = [make(2 * PART, seed=2450 + n) for n in range(12)]
    slow(server, 100_000)
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    killed: list[int] = []
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # the test server

    def kill_one(event: blobdl.BatchEvent) -> None:
        if isinstance(event.event, blobdl.Started) and not killed:
            # A pool process: one of ours that forked nothing (not the clean coordinator a
            # threaded caller gets, whose children the pool then is).
            mine = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
            pool = next(p for p in mine if _forks_nothing(p))
            killed.append(pool.pid)
            pool.kill()

    results = blobdl.download_many(items, max_connections=4, on_event=kill_one,
                                   **fast(processes=2, min_part_size=4 * PART,
                                          max_part_size=4 * PART))  # fmt: skip
    assert killed and all(r.ok for r in results), results
    assert [sha256_file(tmp_path / f"o{n}") for n in range(12)] == [b.sha256 for b in blobs]
    assert sum(r.ok for r in results) >= len(blobs) - 4  # only what it held failed


@pytest.mark.parametrize("other", ["small", "large"])
def test_a_killed_pool_process_leaves_no_lock_file_beside_an_item_it_finished(
    make: Make, server: ServerHandle, tmp_path: Path, other: str
) -> None:
    """The pool process dies just after its item o0 is done, while o1 runs: small, on the
    pool's other seat (the process is forked again), or large, in a child of its own (the
    pool then ends, nothing else being small)."""
    done, running = make(100, seed=2460), make(2 * PART, seed=2461)
    slow(server, 100_000, f"/files/{running.name}")  # still running when it dies
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate([done, running])]
    killed: list[int] = []
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # the test server

    def kill_after_the_first(event: blobdl.BatchEvent) -> None:
        if event.item == 0 and isinstance(event.event, blobdl.Finished):
            mine = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
            # Forked first, and forks nothing (unlike the clean coordinator of a threaded
            # caller): the pool's process, not o1's own.
            pool = min((p for p in mine if _forks_nothing(p)), key=lambda p: p.create_time())
            killed.append(pool.pid)
            pool.kill()

    parts = 4 * PART if other == "small" else PART
    results = blobdl.download_many(items, max_connections=2, on_event=kill_after_the_first,
                                   **fast(processes=1, min_part_size=parts,
                                          max_part_size=parts))  # fmt: skip
    assert killed and sha256_file(tmp_path / "o0") == done.sha256
    for result in results:  # o0 may have died after its rename, before it could say so
        assert result.ok or "download process died" in str(result.error)
    assert not (tmp_path / "o0.blobdl-lock").exists()  # o0 is done: nobody's lock is there


def test_a_killed_pool_process_leaves_no_lock_file_of_an_item_it_was_naming(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """An item given no path is named by its seat (the server's name, claimed from the
    scheduler): its process killed mid-item (in its run and in the run again under that
    name), that name's lock file is swept too."""
    blob = make(2 * PART, seed=2465)
    # Its body stops after 1000 bytes: still running when it dies, however long that takes.
    server.set_faults({"path": "/files/*", "times": None, "action": "stall_after",
                       "bytes": 1000, "hold": 30})  # fmt: skip
    killed: list[int] = []
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # the test server

    def kill_the_pool(event: blobdl.BatchEvent) -> None:
        if isinstance(event.event, blobdl.Started):  # named, its first bytes in
            mine = [p for p in psutil.Process().children(recursive=True)
                    if p.pid not in before and p.pid not in killed]  # fmt: skip
            killed.extend(p.pid for p in mine)
            for p in mine:
                p.kill()

    results = blobdl.download_many([Item(blob.url)], max_connections=2, on_event=kill_the_pool,
                                   base_dir=tmp_path, **fast(processes=1, min_part_size=4 * PART,
                                                             max_part_size=4 * PART))  # fmt: skip
    assert len(killed) == 2 and "download process died" in str(results[0].error), results
    assert list(tmp_path.glob("*.blobdl-lock")) == []


def test_the_pool_is_never_killed_while_it_makes_its_items_renames_durable(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seat's renames are made durable as the pool ends (one fsync per directory): a slow
    disk's fsync outlasting the grace a stopped pool gets must not be cut short, or the
    batch returns with renames no fsync covered."""
    from blobdl.batch import _pool

    synced = tmp_path / "synced"

    def slow_sync(directory: Path) -> None:  # inherited by the pool's forked processes
        time.sleep(0.6)
        with open(synced, "a") as note:
            note.write(f"{directory}\n")

    monkeypatch.setattr(_pool, "STOP_GRACE", 0.2)
    monkeypatch.setattr(_pool, "sync_dir_quietly", slow_sync)
    blobs = [make(SMALL, seed=2470 + n) for n in range(2)]
    out = tmp_path / "out"
    out.mkdir()
    items = [Item(b.url, str(out / f"o{n}")) for n, b in enumerate(blobs)]
    results = blobdl.download_many(items, max_connections=2, **fast(processes=1))
    assert all(r.ok for r in results), results
    assert synced.read_text() == f"{out}\n"


def test_running_items_are_heard_while_the_pool_makes_its_renames_durable(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once no small item is left the pool ends, fsyncing the directories its seats renamed
    files in; a large item still running goes on being heard meanwhile (its progress, its
    end), and the batch returns only once that fsync is done."""
    from blobdl.batch import _pool

    sync = HeldSync(tmp_path)
    monkeypatch.setattr(_pool, "sync_dir_quietly", sync)
    small = [make(SMALL, seed=2490 + n) for n in range(3)]
    large = make(16 * PART, seed=2495)
    server.set_faults(late(server, 0.2, path=f"/files/{large.name}"))  # a few seconds
    out = tmp_path / "out"
    out.mkdir()
    blobs = [*small, large]
    items = [Item(b.url, str(out / f"o{n}")) for n, b in enumerate(blobs)]
    heard_while_held: list[object] = []

    def on_event(said: blobdl.BatchEvent) -> None:  # in the scheduler's process
        if said.item != len(small):
            return
        if sync.held.exists():
            heard_while_held.append(said.event)
        if isinstance(said.event, blobdl.Finished):
            sync.release.touch()

    results = blobdl.download_many(items, max_connections=2, on_event=on_event,
                                   **fast(processes=1))  # fmt: skip
    assert all(r.ok for r in results), results
    assert [sha256_file(out / f"o{n}") for n in range(len(blobs))] == [b.sha256 for b in blobs]
    progress = [e for e in heard_while_held if isinstance(e, blobdl.Progress)]
    assert progress and isinstance(heard_while_held[-1], blobdl.Finished), heard_while_held
    assert sync.synced.read_text() == f"{out} released\n"  # returned after the fsync


class _Hung(Exception):
    pass


def test_ctrl_c_while_the_pool_makes_its_renames_durable_stops_the_batch(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's closing fsync may wait on a disk that stopped answering (a hung NFS mount):
    a close that waits for it unbounded must still heed Ctrl-C, or nothing but SIGKILL ends
    the batch. A Ctrl-C then is a stop, and a stopped pool is killed after its grace."""
    from blobdl.batch import _pool

    def hung_sync(directory: Path) -> None:  # in the pool process: the user gives up
        os.kill(os.getppid(), signal.SIGINT)
        time.sleep(3600)

    def too_long(signum: int, frame: Any) -> None:  # not an OSError: waitpid's callers eat those
        raise _Hung("Ctrl-C was not heeded while the pool closed")

    monkeypatch.setattr(_pool, "STOP_GRACE", 0.2)
    monkeypatch.setattr(_pool, "sync_dir_quietly", hung_sync)
    blobs = [make(SMALL, seed=2480 + n) for n in range(2)]
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # the test server
    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(15)
    try:
        with pytest.raises(blobdl.Interrupted):
            blobdl.download_many(items, max_connections=2, **fast(processes=1))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert left == [], left
    for n, blob in enumerate(blobs):  # renamed before the close: whole
        assert sha256_file(tmp_path / f"o{n}") == blob.sha256
    # Killed in its fsync, it had removed its seats' kept lock files: none is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o0", "o1"]


def test_ctrl_c_while_the_pool_makes_its_renames_durable_stops_the_items_still_running(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The scheduler hears a Ctrl-C while its pool's fsync is held (a disk that does not
    answer) and a large item still runs: exit 130, the large item cut, the small items
    whole, nothing left running."""
    small = [make(SMALL, seed=2496 + n) for n in range(3)]
    large = make(32 * PART, seed=2499)
    server.set_faults(late(server, 0.3, path=f"/files/{large.name}"))  # seconds of it
    out = tmp_path / "out"
    out.mkdir()
    blobs = [*small, large]
    manifest = tmp_path / "manifest"
    manifest.write_text("".join(f"{b.url} {out / f'o{n}'}\n" for n, b in enumerate(blobs)))
    args = ["-i", str(manifest), "--connections", "2", "--min-part-size", str(PART),
            "--max-part-size", str(PART)]  # fmt: skip
    cli = Cli([sys.executable, "-m", "tests.held_sync", str(tmp_path), *args])
    sync = HeldSync(tmp_path)
    partial = out / "o3.blobdl-tmp"
    wait_for(lambda: sync.held.exists() and partial.exists(), "the fsync held, o3 under way")
    cli.signal(signal.SIGINT)
    code, lines = cli.finish()
    assert code == EXIT_INTERRUPTED, lines
    assert f"signal {int(signal.SIGINT)}" in one_error(lines), lines
    for n, blob in enumerate(small):  # renamed before the pool ended
        assert sha256_file(out / f"o{n}") == blob.sha256
    assert not (out / "o3").exists()  # cut while it ran


def _forks_nothing(proc: psutil.Process) -> bool:
    """Whether ``proc`` has no child; False if it has ended since it was listed (it is not
    the one to kill)."""
    try:
        return not proc.children()
    except psutil.NoSuchProcess:
        return False


# --- Ctrl-C --------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stopping_a_batch_of_small_items_leaves_nothing_half_written(
    make: Make, server: ServerHandle, tmp_path: Path, signum: int
) -> None:
    # Four come at once; the others are 256 KiB at 100 KB/s: stopped half-way.
    blobs = [make(100, seed=2500 + n) for n in range(4)]
    blobs += [make(4 * PART, seed=2510 + n) for n in range(12)]
    manifest = tmp_path / "manifest"
    out = tmp_path / "out"
    out.mkdir()
    manifest.write_text("".join(f"{b.url} {out / f'o{n}'}\n" for n, b in enumerate(blobs)))
    slow(server, 100_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "blobdl", "-q", "-i", str(manifest), "--min-part-size", "1MB",
         "--connections", "4"],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def finished() -> list[Path]:
        return sorted(p for p in out.iterdir() if ".blobdl-" not in p.name)

    try:
        deadline = time.monotonic() + 20
        while len(finished()) < 3 or not list(out.glob("*.blobdl-tmp")):  # some half-way
            assert time.monotonic() < deadline, "no item finished"
            time.sleep(0.02)
        tree = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for child in tree:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    done = finished()
    assert 3 <= len(done) < len(blobs)
    for path in done:  # what is there is complete; nothing else is
        n = int(path.name[1:])
        assert sha256_file(path) == blobs[n].sha256, path
    assert list(out.glob("*.blobdl-*")) == []  # no partial, record or lock of a small item


def test_a_sigkilled_batch_leaves_no_pool_process(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blobs = [make(4 * PART, seed=2550 + n) for n in range(8)]
    manifest = tmp_path / "manifest"
    manifest.write_text("".join(f"{b.url} {tmp_path / f'o{n}'}\n" for n, b in enumerate(blobs)))
    slow(server, 20_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "blobdl", "-q", "-i", str(manifest), "--connections", "4",
         "--min-part-size", "1MB"],
        cwd=REPO, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        tree: list[psutil.Process] = []
        while not tree:
            assert time.monotonic() < deadline, "no pool started"
            tree = psutil.Process(proc.pid).children(recursive=True)
            time.sleep(0.02)
        time.sleep(0.2)  # items are running
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, alive


@pytest.mark.parametrize("size", [SMALL, 4 * PART], ids=["small", "large"])
def test_an_items_own_header_replaces_the_batchs_of_that_name(
    make: Make, server: ServerHandle, tmp_path: Path, size: int
) -> None:
    """A batch-wide ``-H "Authorization: Bearer A"`` and an item's own ``authorization``:
    the item's is sent, alone (both went out, and the server picked one). Other headers of
    the batch's still go."""
    blob = make(size, seed=2397)
    item = Item(blob.url, str(tmp_path / "o"), headers=(("authorization", "Bearer item"),))
    batch = (("Authorization", "Bearer batch"), ("X-Batch", "yes"))
    [result] = blobdl.download_many([item], **fast(headers=batch))
    assert result.ok and sha256_file(tmp_path / "o") == blob.sha256
    for sent in server.stats()["headers"]:
        named = {k.lower(): v for k, v in sent.items()}
        assert [v for k, v in sent.items() if k.lower() == "authorization"] == ["Bearer item"]
        assert named["x-batch"] == "yes"
