"""Small items of a batch whose first GET is redirected to another host: the connection a
seat opens there counts against that host's ``--per-host`` at the server, as a large
item's lanes do once its probe says where they go."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import blobdl
from blobdl import Item
from faultserver.proxy import ForwardProxy
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file, spawn_cli
from tests.integration.test_trust_stops import wait_for

Make = Callable[..., Blob]
SMALL = PART // 2


def test_a_small_item_redirected_to_another_host_counts_against_its_per_host_cap(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """127.0.0.1's items redirect to ``localhost`` (the other server), whose own items come
    late: with one connection per host, the other server never holds two at once."""
    moved = [make(SMALL, seed=2700 + n) for n in range(3)]
    direct = [make(SMALL, seed=2710 + n) for n in range(3)]
    elsewhere = other.route("/files").replace("127.0.0.1", "localhost")
    server.set_faults(*({"path": f"/files/{b.name}", "times": None, "action": "redirect",
                         "location": f"{elsewhere}/{b.name}"} for b in moved))  # fmt: skip
    other.set_faults({"path": "/files/*", "times": None, "action": "ttfb", "delay": 0.4})
    try:
        urls = [b.url for b in moved]
        urls += [other.url(b.name).replace("127.0.0.1", "localhost") for b in direct]
        order = [0, 3, 1, 4, 2, 5]
        items = [Item(urls[n], str(tmp_path / f"o{n}")) for n in order]
        results = blobdl.download_many(
            items, max_connections=8, per_host=1, settings=fast_settings()
        )
        assert all(r.ok for r in results), results
        blobs = [*moved, *direct]
        for n in order:
            assert sha256_file(tmp_path / f"o{n}") == blobs[n].sha256
        assert other.stats()["max_concurrent"] <= 1, other.stats()
    finally:
        other.reset()


def test_small_items_redirected_each_to_the_others_host_wait_for_room_and_all_finish(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """Each host's items redirect to the other, one connection per host: a seat waiting for
    room at the other host holds none meanwhile, so neither waits on the other for good."""
    there = [make(SMALL, seed=2720 + n) for n in range(4)]  # 127.0.0.1 -> localhost
    back = [make(SMALL, seed=2730 + n) for n in range(4)]  # localhost -> 127.0.0.1
    to_other = other.route("/files").replace("127.0.0.1", "localhost")

    def moved(blobs: list[Blob], to: str) -> list[dict[str, object]]:
        return [{"path": f"/files/{b.name}", "times": None, "action": "redirect",
                 "location": f"{to}/{b.name}"} for b in blobs]  # fmt: skip

    slowly = {"path": "/files/*", "times": None, "action": "ttfb", "delay": 0.3}
    server.set_faults(*moved(there, to_other), slowly)
    other.set_faults(*moved(back, server.route("/files")), slowly)
    try:
        urls = [b.url for b in there]
        urls += [other.url(b.name).replace("127.0.0.1", "localhost") for b in back]
        items = [Item(url, str(tmp_path / f"o{n}")) for n, url in enumerate(urls)]
        results = blobdl.download_many(
            items, max_connections=8, per_host=1, settings=fast_settings()
        )
        assert all(r.ok for r in results), results
        for n, blob in enumerate([*there, *back]):
            assert sha256_file(tmp_path / f"o{n}") == blob.sha256
        assert server.stats()["max_concurrent"] <= 1, server.stats()
        assert other.stats()["max_concurrent"] <= 1, other.stats()
    finally:
        other.reset()


def test_a_large_item_said_large_and_redirected_to_another_host_counts_its_lanes_there(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """A size hint sends an item to lanes of its own without a seat's probe: its lanes go
    where its URL redirects (the other server), and count against that host."""
    large = make(8 * PART, seed=2740)
    small = [make(SMALL, seed=2750 + n) for n in range(6)]
    to_other = other.route("/files").replace("127.0.0.1", "localhost")
    server.set_faults({"path": f"/files/{large.name}", "times": None, "action": "redirect",
                       "location": f"{to_other}/{large.name}"})  # fmt: skip
    other.set_faults({"path": "/files/*", "times": None, "action": "ttfb", "delay": 0.3})
    try:
        items = [Item(large.url, str(tmp_path / "large"), size=large.size)]
        items += [
            Item(other.url(b.name).replace("127.0.0.1", "localhost"), str(tmp_path / f"o{n}"))
            for n, b in enumerate(small)
        ]
        results = blobdl.download_many(
            items, max_connections=8, per_host=2, settings=fast_settings()
        )
        assert all(r.ok for r in results), results
        assert sha256_file(tmp_path / "large") == large.sha256
        assert other.stats()["max_concurrent"] <= 2, other.stats()
    finally:
        other.reset()


def test_large_items_said_large_redirected_each_to_the_others_host_wait_and_all_finish(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """Each host's large item redirects to the other, one connection per host: a child
    whose probe waits for room at the other host holds none at its own meanwhile, so
    neither waits on the other for good."""
    there, back = make(4 * PART, seed=2770), make(4 * PART, seed=2771)
    to_other = other.route("/files").replace("127.0.0.1", "localhost")
    server.set_faults({"path": f"/files/{there.name}", "times": None, "action": "redirect",
                       "location": f"{to_other}/{there.name}"})  # fmt: skip
    other.set_faults({"path": f"/files/{back.name}", "times": None, "action": "redirect",
                      "location": server.url(back.name)})  # fmt: skip
    try:
        urls = [there.url, other.url(back.name).replace("127.0.0.1", "localhost")]
        items = [Item(url, str(tmp_path / f"o{n}"), size=4 * PART) for n, url in enumerate(urls)]
        results = blobdl.download_many(
            items, max_connections=8, per_host=1, settings=fast_settings()
        )
        assert all(r.ok for r in results), results
        for n, blob in enumerate([there, back]):
            assert sha256_file(tmp_path / f"o{n}") == blob.sha256
        assert server.stats()["max_concurrent"] <= 1, server.stats()
        assert other.stats()["max_concurrent"] <= 1, other.stats()
    finally:
        other.reset()


def test_a_large_item_redirected_elsewhere_counts_there_when_the_batch_has_a_thread(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """A callback that starts a thread (told of an item that failed at once) leaves the
    scheduler forking no more: every item runs in a child started by exec, each probing
    itself. The one its redirect leads elsewhere counts its lanes there too."""
    large = make(8 * PART, seed=2780)
    small = [make(SMALL, seed=2790 + n) for n in range(4)]
    to_other = other.route("/files").replace("127.0.0.1", "localhost")
    server.set_faults({"path": f"/files/{large.name}", "times": None, "action": "redirect",
                       "location": f"{to_other}/{large.name}"})  # fmt: skip
    other.set_faults({"path": "/files/*", "times": None, "action": "ttfb", "delay": 0.3})
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def note(_event: object) -> None:
        if not threads:
            threads.append(threading.Thread(target=stop.wait, daemon=True))
            threads[0].start()

    try:
        items = [Item("http://[bad", str(tmp_path / "bad"))]
        items += [Item(large.url, str(tmp_path / "large"), size=large.size)]
        items += [
            Item(other.url(b.name).replace("127.0.0.1", "localhost"), str(tmp_path / f"o{n}"))
            for n, b in enumerate(small)
        ]
        results = blobdl.download_many(
            items, max_connections=8, per_host=2, settings=fast_settings(), on_event=note
        )
        assert threads and not results[0].ok
        assert all(r.ok for r in results[1:]), results
        assert sha256_file(tmp_path / "large") == large.sha256
        for n, blob in enumerate(small):
            assert sha256_file(tmp_path / f"o{n}") == blob.sha256
        assert other.stats()["max_concurrent"] <= 2, other.stats()
    finally:
        stop.set()
        other.reset()


@contextlib.contextmanager
def _then_ctrl_c_ends_it_at_once(
    batch: subprocess.Popen[str], other: ServerHandle
) -> Iterator[None]:
    """The body runs with ``batch`` under way; then Ctrl-C ends it (exit 130) within 1.5 s,
    not after a stop grace waited out. Whatever happens, it is killed if it still runs,
    and ``other`` reset (its held answer let go)."""
    try:
        yield
        began = time.monotonic()
        batch.send_signal(signal.SIGINT)
        assert batch.wait(timeout=20) == 130
        assert time.monotonic() - began < 1.5  # not a stop grace waited out
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
        other.reset()


def test_a_batch_stopped_while_a_large_items_probe_waits_for_room_at_its_redirect_ends_at_once(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """The other host's one connection is held by an item that takes 30 s; the first host's
    large item (said large), redirected there, waits for room. Ctrl-C ends both at once."""
    moved, held = make(4 * PART, seed=2800), make(SMALL, seed=2801)
    to_other = other.route("/files").replace("127.0.0.1", "localhost")
    server.set_faults({"path": f"/files/{moved.name}", "times": None, "action": "redirect",
                       "location": f"{to_other}/{moved.name}"})  # fmt: skip
    other.set_faults({"path": f"/files/{held.name}", "times": None, "action": "ttfb",
                      "delay": 30})  # fmt: skip
    manifest = tmp_path / "manifest"
    held_url = other.url(held.name).replace("127.0.0.1", "localhost")
    large = f'{{"url": "{moved.url}", "path": "{tmp_path / "o1"}", "size": {moved.size}}}'
    manifest.write_text(f"{held_url} {tmp_path / 'o0'}\n{large}\n")
    parts = ("--min-part-size", str(PART), "--max-part-size", str(PART))  # 4 PART is large
    batch = spawn_cli("-q", "-i", str(manifest), "--per-host", "1", *parts)
    with _then_ctrl_c_ends_it_at_once(batch, other):
        wait_for(lambda: server.stats()["requests"] == 1, "the redirect")
        wait_for(lambda: other.stats()["requests"] >= 1, "the held item's request")
        time.sleep(0.3)  # the child asks for room, and waits
        assert other.stats()["requests"] == 1  # the held item's only
    assert other.stats()["requests"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest"]


def test_a_batch_stopped_while_a_seat_waits_for_room_at_a_redirects_host_ends_at_once(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """The other host's one connection is held by an item that takes 30 s; the first host's
    item, redirected there, waits for room. Ctrl-C ends both at once, and leaves nothing."""
    moved, held = make(SMALL, seed=2760), make(SMALL, seed=2761)
    to_other = other.route("/files").replace("127.0.0.1", "localhost")
    server.set_faults({"path": f"/files/{moved.name}", "times": None, "action": "redirect",
                       "location": f"{to_other}/{moved.name}"})  # fmt: skip
    other.set_faults({"path": f"/files/{held.name}", "times": None, "action": "ttfb",
                      "delay": 30})  # fmt: skip
    manifest = tmp_path / "manifest"
    held_url = other.url(held.name).replace("127.0.0.1", "localhost")
    manifest.write_text(f"{held_url} {tmp_path / 'o0'}\n{moved.url} {tmp_path / 'o1'}\n")
    batch = spawn_cli("-q", "-i", str(manifest), "--per-host", "1")
    with _then_ctrl_c_ends_it_at_once(batch, other):
        wait_for(lambda: server.stats()["requests"] == 1, "the redirect")
        time.sleep(0.3)  # the seat asks for room, and waits
        assert other.stats()["requests"] == 1  # the held item's only
    assert other.stats()["requests"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest"]


def test_a_seat_going_from_a_direct_host_to_a_proxied_one_keeps_one_connection(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One connection in all: the seat's items of ``localhost`` go direct (NO_PROXY), those
    of 127.0.0.1 through the proxy, to the same server. The connection kept alive direct
    must go before one through the proxy opens (they were in two managers of the pool)."""
    blobs = [make(SMALL, seed=2900 + n) for n in range(4)]
    monkeypatch.setenv("NO_PROXY", "localhost")
    server.set_faults({"path": "/files/*", "times": None, "action": "ttfb", "delay": 0.2})
    with ForwardProxy() as proxy:
        urls = [b.url if n % 2 else b.url.replace("127.0.0.1", "localhost")
                for n, b in enumerate(blobs)]  # fmt: skip
        items = [Item(url, str(tmp_path / f"o{n}")) for n, url in enumerate(urls)]
        settings = fast_settings(proxy=proxy.url)
        results = blobdl.download_many(items, max_connections=1, settings=settings)
        assert all(r.ok for r in results), results
        assert proxy.forwarded == 2
    for n, blob in enumerate(blobs):
        assert sha256_file(tmp_path / f"o{n}") == blob.sha256
    assert server.stats()["max_concurrent"] <= 1, server.stats()
