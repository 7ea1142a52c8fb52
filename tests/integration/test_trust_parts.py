"""Many parts cost the coordinator a constant per wake-up (trust issue #20, item 9).

The coordinator wakes for every lane that ends and ten times a second; what it asks then
(which part may start, when the next retry is due, which lanes run, is everything done)
is answered by the parts' board, never by walking every part. A blob is never cut into
more than ``MAX_PARTS`` parts, and ``--help`` says so. The time and memory are measured,
not asserted: ``python -m benchmarks.parts``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl import Downloader
from blobdl.config import MAX_PARTS
from blobdl.engine._parts import Parts
from blobdl.errors import EXIT_USAGE
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, fast_settings, run_cli, sha256_file

Make = Callable[..., Blob]


def test_a_download_of_many_parts_never_walks_every_part_on_a_wake_up(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a checkpoint or a progress report reads every part (in bulk, from the table);
    iterating the parts would be a walk on a wake-up: it fails the download here."""

    def walk(self: Parts) -> None:
        raise AssertionError("the coordinator walked every part")

    monkeypatch.setattr(Parts, "__iter__", walk)
    blob = make(600_000, seed=2401)
    settings = fast_settings(parts=600, connections=8, checkpoint_interval=0.05,
                             progress_interval=0.05)  # fmt: skip
    seen: list[int] = []
    result = Downloader(settings).download(
        blob.url, tmp_path / "out", on_progress=lambda p: seen.append(len(p.parts))
    )
    assert sha256_file(tmp_path / "out") == blob.sha256 and result.parts == 600
    assert seen and all(n >= 600 for n in seen)  # progress still reports every part


def test_more_parts_than_the_cap_are_refused_before_any_request(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(1000, seed=2402)
    done = run_cli(blob.url, "-o", str(tmp_path / "out"), "--parts", str(MAX_PARTS + 1))
    assert done.returncode == EXIT_USAGE and f"to {MAX_PARTS}" in done.stderr
    assert server.stats()["requests"] == 0
    assert f"at most {MAX_PARTS}" in run_cli("--help").stdout
