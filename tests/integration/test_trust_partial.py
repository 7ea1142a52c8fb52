"""The temporary file meddled with while a download writes it: another program replaces it
(a rename onto ``DEST.blobdl-tmp``) or truncates it. The workers write through the file
they opened, so the bytes they land are not the ones at the name: the run must end in one
error, never rename someone else's file, or a file with holes, onto the destination."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import blobdl
from blobdl.errors import EXIT_LOCAL, LocalFileError
from blobdl.events import Progress
from blobdl.store._resume import state_path
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file, spawn_cli

Make = Callable[..., Blob]
BIG = 32 * PART  # 2 MiB
SLOW = 500_000  # bytes/s per connection: ~1 s for BIG on 4 connections
CLI = ["--min-part-size", "256KiB", "--max-part-size", "256KiB", "--connections", "4",
       "--progress-interval", "0.1", "--checkpoint-interval", "0.2", "--json"]  # fmt: skip


def _under_way(proc: subprocess.Popen[str], size: int) -> None:
    """Read --json progress until 40% of ``size`` is done."""
    assert proc.stdout is not None
    for line in proc.stdout:
        record: dict[str, Any] = json.loads(line)
        if record["event"] == "progress" and record["done"] >= 0.4 * size:
            return
    raise AssertionError("finished before it was 40% done")


def _meddled(
    make: Make, server: ServerHandle, tmp_path: Path, seed: int, act: Callable[[Path], None],
    *extra: str,
) -> tuple[Blob, Path, int, list[str]]:  # fmt: skip
    """A paced CLI download; ``act(temp)`` once it is under way. The blob, the destination,
    the exit code and stderr's lines; no process of it is left."""
    blob = make(BIG, seed=seed)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None,
                       "action": "rate", "bps": SLOW})  # fmt: skip
    out = tmp_path / "out"
    proc = spawn_cli(blob.url, "-o", str(out), *CLI, *extra)
    children = []
    try:
        _under_way(proc, blob.size)
        children = psutil.Process(proc.pid).children(recursive=True)
        act(Path(f"{out}.blobdl-tmp"))
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive
    return blob, out, proc.returncode, stderr.splitlines()


def _replace(temp: Path) -> None:
    other = temp.with_name("other")
    other.write_bytes(b"X" * os.stat(temp).st_size)  # same size: only its bytes differ
    os.replace(other, temp)


def _truncate(temp: Path) -> None:
    os.truncate(temp, 0)


@pytest.mark.parametrize("digest", [False, True])
def test_a_temporary_file_replaced_mid_download_is_never_renamed_into_place(
    make: Make, server: ServerHandle, tmp_path: Path, digest: bool
) -> None:
    # With a digest too: the bytes hashed are those the workers wrote (the file they hold
    # open), all good, while the name points at the other program's file.
    seed = 2601 + digest
    extra = ("--digest", f"sha256:{make(BIG, seed=seed).sha256}") if digest else ()
    blob, out, code, lines = _meddled(make, server, tmp_path, seed, _replace, *extra)
    assert not out.exists() or sha256_file(out) == blob.sha256, "another file renamed in"
    assert code == EXIT_LOCAL, lines
    errors = [line for line in lines if line.startswith("blobdl: error:")]
    assert len(errors) == 1 and "replaced" in errors[0], lines
    assert not state_path(out).exists(), "a record left vouching for a file not ours"


def test_a_temporary_file_truncated_mid_download_is_never_renamed_into_place(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob, out, code, lines = _meddled(make, server, tmp_path, 2603, _truncate)
    assert not out.exists() or sha256_file(out) == blob.sha256, "a file with holes renamed in"
    assert code == EXIT_LOCAL, lines
    errors = [line for line in lines if line.startswith("blobdl: error:")]
    assert len(errors) == 1 and "truncated" in errors[0], lines
    # Its bytes are lost: no record may claim them for a rerun, which starts over.
    assert not state_path(out).exists()
    server.reset()
    blobdl.download(blob.url, out, **_fast())
    assert sha256_file(out) == blob.sha256


def test_a_temporary_file_replaced_after_its_last_byte_is_never_renamed_into_place(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Replaced after the coordinator's last look, as the last progress is told: only the
    rename's own check stands between the other file and the destination."""
    blob = make(8 * PART, seed=2604)
    out = tmp_path / "out"
    temp = Path(f"{out}.blobdl-tmp")

    def on_progress(progress: Progress) -> None:
        if progress.done == blob.size and temp.exists():
            _replace(temp)

    with pytest.raises(LocalFileError, match="replaced"):
        blobdl.download(blob.url, out, on_progress=on_progress, **_fast())
    assert not out.exists()


def _fast() -> dict[str, Any]:
    return fast_settings().__dict__.copy()
