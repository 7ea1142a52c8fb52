"""Against nginx as users run it: its own answers to blobdl's requests, not a script's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import blobdl
from blobdl import Downloader, Item, download_many
from blobdl.batch._items import BY_INDEX
from blobdl.batch._scheduler import download_numbered
from blobdl.http._probe import resolve
from faultserver.nginx import start_nginx
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import Blob, fast_settings, sha256_file

MiB = 1024 * 1024


@pytest.mark.parametrize("status", [503, 429])
def test_a_server_limiting_connections_per_client_is_waited_for_not_failed(
    status: int, tmp_path: Path
) -> None:
    """nginx's limit_conn (2 per address; past that its 503, or the 429 it is set to, with
    no Retry-After) under 8 connections: the lanes it lets in move, the others are refused
    again and again. A refusal while other lanes of the download receive is the server
    being full, not failing: waited for, uncounted, until a lane is free; the bytes exact.
    Each such wait is told as a retried attempt all the same: the download's count holds
    every refusal, and each event says how many failed in a row, itself included."""
    root = tmp_path / "www"
    root.mkdir()
    digest = make_blob(root, "blob.bin", 12 * MiB, seed=90)
    directives = f"limit_conn perip 2; limit_conn_status {status}; limit_rate 4m;"
    out = tmp_path / "out.bin"
    with start_nginx(tmp_path / "nginx", root, {"lc": directives}) as ngx:
        settings = fast_settings(connections=8, min_part_size=MiB, max_part_size=MiB,
                                 retries=3, trust_env=False)  # fmt: skip
        events: list[blobdl.Event] = []
        url = ngx.url("lc", "blob.bin")
        result = Downloader(settings).download(url, out, on_event=events.append)
        answers = ngx.statuses("lc")
    assert sha256_file(out) == digest and result.size == 12 * MiB
    assert status in answers and set(answers) == {206, status}, answers
    retried = [e for e in events if isinstance(e, blobdl.PartRetried)]
    assert result.retries == len(retried) == answers.count(status), (result, answers)
    assert retried and min(e.failures for e in retried) >= 1, retried


# Ollama's backoff (10 ms a step, the default), as users run: the tests' usual 1 ms spent
# three retries of an item in the moment a batch starts once (CI, at 2bbb6f7), before a
# first request under way counted (``test_a_batch_refused_before_its_first_answers_come_...``
# pins that moment with 1 ms); a lane started later is said at the coordinator's next look.
BATCH_BACKOFF = {"backoff_unit": 0.01, "max_backoff": 0.5}


def test_a_batch_at_a_server_limiting_connections_per_client_is_waited_for(
    tmp_path: Path,
) -> None:
    """The same limit_conn under a batch of 8 items of a few MiB, 8 seats at the host."""
    root = tmp_path / "www"
    root.mkdir()
    digests = [make_blob(root, f"m{n}.bin", 3 * MiB + n, seed=91 + n) for n in range(8)]
    with start_nginx(tmp_path / "nginx", root, {"lc": "limit_conn perip 2; limit_rate 4m;"}) as ngx:
        items = [Item(ngx.url("lc", f"m{n}.bin"), str(tmp_path / f"o{n}")) for n in range(8)]
        settings = fast_settings(retries=3, trust_env=False, **BATCH_BACKOFF)
        results = download_many(items, max_connections=8, per_host=8, settings=settings)
    assert all(r.ok for r in results), [r.error for r in results]
    assert [sha256_file(Path(i.path)) for i in items] == digests


def test_a_batch_of_small_items_at_a_server_limiting_connections_per_client_is_waited_for(
    tmp_path: Path,
) -> None:
    """The same limit_conn under a batch of small items, each whole in its seat's first GET
    (its probe) or its retries: a seat refused while another seat receives from the host
    waits, uncounted, as a large item's lanes do."""
    root = tmp_path / "www"
    root.mkdir()
    digests = [make_blob(root, f"s{n}.bin", 48 * 1024 + n, seed=60 + n) for n in range(16)]
    with start_nginx(
        tmp_path / "nginx", root, {"lc": "limit_conn perip 2; limit_rate 256k;"}
    ) as ngx:
        items = [Item(ngx.url("lc", f"s{n}.bin"), str(tmp_path / f"o{n}")) for n in range(16)]
        settings = fast_settings(retries=2, trust_env=False, **BATCH_BACKOFF)
        results = download_many(items, max_connections=8, per_host=8, settings=settings)
        answers = ngx.statuses("lc")
    assert all(r.ok for r in results), [r.error for r in results]
    assert [sha256_file(Path(i.path)) for i in items] == digests
    assert 503 in answers, answers  # the limit was met


def test_a_batch_at_a_server_refusing_everyone_fails_each_item_after_its_retries(
    tmp_path: Path,
) -> None:
    """A server that refuses every request (503) while nobody of the batch receives from it
    is failing, not full: each item's refusals count, and it fails after its retries,
    never waiting for a room that no one holds. Another server, where an item does receive
    meanwhile, is another origin: it lends the refused ones no patience. Only while the
    items' first requests are under way is a refusal waited for uncounted (one of them
    might have been let in): the item whose first refusal comes last is waited for by
    nobody, and from then on every refusal counts."""
    root = tmp_path / "www"
    root.mkdir()
    make_blob(root, "slow.bin", 2 * MiB, seed=70)
    for n in range(4):
        make_blob(root, f"d{n}.bin", 3 * MiB, seed=71 + n)
    with (
        start_nginx(tmp_path / "down", root, {"down": "return 503;"}) as down,
        start_nginx(tmp_path / "up", root, {"up": "limit_rate 1m;"}) as up,
    ):
        items = [Item(up.url("up", "slow.bin"), str(tmp_path / "slow"))]
        items += [Item(down.url("down", f"d{n}.bin"), str(tmp_path / f"d{n}")) for n in range(4)]
        settings = fast_settings(retries=2, trust_env=False)
        results = download_many(items, max_connections=8, per_host=8, settings=settings)
        refused, asked = down.statuses("down"), down.asked("down")
    assert results[0].ok, results[0].error
    assert not any(r.ok for r in results[1:]), results
    assert set(refused) == {503} and len(asked) == 4, (refused, asked)
    # each item's probe: its first try and 2 retries, counted; the last one's, no more
    assert min(asked.values()) == 3 and all(n >= 3 for n in asked.values()), asked


@pytest.mark.parametrize("how", ["sized", "probed"])
def test_a_batch_of_items_said_large_at_a_server_limiting_connections_is_waited_for(
    how: str, tmp_path: Path
) -> None:
    """Items that skip the seats, as a Hugging Face repository's files do (each with its
    size: its own child probes it) and a pull's layers (probed beforehand: its child's lanes
    start at once): their probes and lanes refused while another item receives from the
    host wait too."""
    root = tmp_path / "www"
    root.mkdir()
    sizes = [3 * MiB + n for n in range(8)]
    digests = [make_blob(root, f"l{n}.bin", size, seed=80 + n) for n, size in enumerate(sizes)]
    settings = fast_settings(retries=3, trust_env=False, **BATCH_BACKOFF)
    with start_nginx(tmp_path / "nginx", root, {"lc": "limit_conn perip 2; limit_rate 4m;"}) as ngx:
        urls = [ngx.url("lc", f"l{n}.bin") for n in range(8)]
        probed = (
            {n: resolve(url, settings) for n, url in enumerate(urls)} if how == "probed" else {}
        )
        items = [
            Item(url, str(tmp_path / f"o{n}"), size=size)
            for n, (url, size) in enumerate(zip(urls, sizes, strict=True))
        ]
        results = download_numbered(
            items, BY_INDEX, max_connections=8, per_host=8, settings=settings, probed=probed
        )
        answers = ngx.statuses("lc")
    assert all(r.ok for r in results), [r.error for r in results]
    assert [sha256_file(Path(i.path)) for i in items] == digests
    assert 503 in answers, answers  # the limit was met


@pytest.mark.parametrize("how", ["seats", "said large"])
def test_a_batch_refused_before_its_first_answers_come_waits_for_them(
    how: str, make: Callable[..., Blob], server: ServerHandle, tmp_path: Path
) -> None:
    """The moment a batch starts: nginx lets two of its first requests in (limit_conn) and
    refuses the rest at once, while the two wait for their answers (its upstream, our
    server, answers those two 0.4 s late). Nobody of the batch receives there yet, but two
    of its first requests are under way: the refused ones wait for their answers,
    uncounted, even with the tests' 1 ms backoff (two retries spent in 3 ms). Items on
    seats, and items said large (each child probing its own), all land exact."""
    blobs = [make(32 * 1024 + n, seed=3100 + n) for n in range(8)]
    server.set_faults({"path": "/files/*", "times": 2, "action": "ttfb", "delay": 0.4})
    upstream = blobs[0].url.rsplit("/", 1)[0] + "/"
    directives = f"limit_conn perip 2; limit_rate 64k; proxy_pass {upstream};"
    part = 64 * 1024 if how == "seats" else 16 * 1024  # else: two parts, 0.25 s each
    settings = fast_settings(retries=2, trust_env=False, min_part_size=part,
                             max_part_size=part, connections=8)  # fmt: skip
    with start_nginx(tmp_path / "nginx", tmp_path, {"lp": directives}) as ngx:
        items = [
            Item(ngx.url("lp", b.name), str(tmp_path / f"o{n}"),
                 size=b.size if how == "said large" else None)
            for n, b in enumerate(blobs)
        ]  # fmt: skip
        results = download_many(items, max_connections=8, per_host=8, settings=settings)
        answers = ngx.statuses("lp")
    assert all(r.ok for r in results), [r.error for r in results]
    assert [sha256_file(Path(i.path)) for i in items] == [b.sha256 for b in blobs]
    assert 503 in answers, answers  # the limit was met
