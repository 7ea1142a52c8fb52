"""Against nginx as users run it: its own answers to blobdl's requests, not a script's."""

from __future__ import annotations

from pathlib import Path

import pytest

from blobdl import Downloader
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
    being full, not failing: waited for, uncounted, until a lane is free; the bytes exact."""
    root = tmp_path / "www"
    root.mkdir()
    digest = make_blob(root, "blob.bin", 12 * MiB, seed=90)
    directives = f"limit_conn perip 2; limit_conn_status {status}; limit_rate 4m;"
    out = tmp_path / "out.bin"
    with start_nginx(tmp_path / "nginx", root, {"lc": directives}) as ngx:
        settings = fast_settings(connections=8, min_part_size=MiB, max_part_size=MiB,
                                 retries=3, trust_env=False)  # fmt: skip
        result = Downloader(settings).download(ngx.url("lc", "blob.bin"), out)
        answers = ngx.statuses("lc")
    assert sha256_file(out) == digest and result.size == 12 * MiB
    assert status in answers and set(answers) == {206, status}, answers
