"""SIGKILL in the middle of a resume record's write (its scratch half or wholly written,
not yet renamed): the record before it stands, the rerun resumes from it to the exact
bytes, and leaves neither the scratch nor anything else beside the destination."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl.store._resume import state_path
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, run_cli, sha256_file
from tests.integration.test_resume import BIG, CLI_FAST, slow_down
from tests.integration.test_trust_stops import Cli

Make = Callable[..., Blob]

# The CLI, SIGKILLed as it writes its third resume record: the scratch made and written
# (whole, or its first half), never renamed.
KILL_IN_THE_RECORDS_WRITE = """
import os, signal, sys
from blobdl.store import _resume
half, original, calls = sys.argv[1] == "half", _resume.atomic_write, []

def killed(path, data, *, scratch=None, **kwargs):
    calls.append(path)
    if len(calls) == 3:
        with open(scratch, "wb") as f:
            f.write(data[: len(data) // 2] if half else data)
        os.kill(os.getpid(), signal.SIGKILL)
    original(path, data, scratch=scratch, **kwargs)

_resume.atomic_write = killed
sys.argv = ["blobdl", *sys.argv[2:]]
from blobdl.cli import run
run()
"""


@pytest.mark.parametrize("written", ["half", "whole"])
def test_a_kill_as_a_record_is_written_keeps_the_one_before(
    make: Make, server: ServerHandle, tmp_path: Path, written: str
) -> None:
    blob = make(BIG, seed=2640)
    slow_down(server, blob, 200_000)
    out = tmp_path / "out"
    args = [blob.url, "-o", str(out), *CLI_FAST]
    killed = Cli([sys.executable, "-c", KILL_IN_THE_RECORDS_WRITE, written, *args])
    code, _ = killed.finish()
    assert code == -9
    scratch = Path(f"{state_path(out)}.new")
    assert scratch.exists()
    kept = json.loads(state_path(out).read_text())["state"]  # the second, whole
    on_disk = sum(p[2] - p[0] for p in kept["parts"])

    server.reset()
    rerun = run_cli(*args, "--json", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert sha256_file(out) == blob.sha256
    finished = [json.loads(line) for line in rerun.stdout.splitlines() if '"finished"' in line]
    assert finished[0]["resumed"] == on_disk
    assert [p.name for p in tmp_path.iterdir() if ".blobdl-" in p.name] == []
