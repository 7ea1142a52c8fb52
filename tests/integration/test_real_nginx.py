"""Against nginx as users run it: its own answers to blobdl's requests, not a script's."""

from __future__ import annotations

from pathlib import Path

import pytest

import blobdl
from blobdl import Downloader, Item, download_many
from faultserver.nginx import start_nginx
from faultserver.serverctl import make_blob
from tests.conftest import fast_settings, sha256_file

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


@pytest.mark.xfail(
    strict=True,
    reason="an item's probe and parts see only their own download's lanes: an item whose "
    "every request is refused counts it, while other items receive from the same host",
)
def test_a_batch_at_a_server_limiting_connections_per_client_is_waited_for(
    tmp_path: Path,
) -> None:
    """The same limit_conn under a batch of 8 items of a few MiB, 8 seats at the host."""
    root = tmp_path / "www"
    root.mkdir()
    digests = [make_blob(root, f"m{n}.bin", 3 * MiB + n, seed=91 + n) for n in range(8)]
    with start_nginx(tmp_path / "nginx", root, {"lc": "limit_conn perip 2; limit_rate 4m;"}) as ngx:
        items = [Item(ngx.url("lc", f"m{n}.bin"), str(tmp_path / f"o{n}")) for n in range(8)]
        settings = fast_settings(retries=3, trust_env=False)
        results = download_many(items, max_connections=8, per_host=8, settings=settings)
    assert all(r.ok for r in results), [r.error for r in results]
    assert [sha256_file(Path(i.path)) for i in items] == digests
