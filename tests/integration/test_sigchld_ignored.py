"""A caller that ignores SIGCHLD: daemons, some job runners, and every program such a one
starts (the setting survives exec). The kernel then reaps each child of the caller as it
exits: ``waitpid`` fails with ECHILD, multiprocessing's ``exitcode`` stays None for ever,
and the dead child's process id is free for the next process the machine starts. Each
caller runs in a fresh interpreter (``tests/sigchld_caller.py``) that lets a kill through
only to a process that is still its child, and writes down any other.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, caller_report, sha256_file
from tests.integration.test_threads import HANG, PACED, slow_down

Make = Callable[..., Blob]
SEVERAL = {**PACED, "processes": 3, "connections": 6}  # parts of 4 PART: paced, they take a while
THREADED = pytest.mark.parametrize("threaded", [False, True], ids=["forks", "exec's"])


def _call(tmp_path: Path, mode: str, *args: str, options: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the caller; its report, and the kills it was asked for that no child of its own
    would have received (``strays``)."""
    report = tmp_path / "report"
    caller = [sys.executable, "-m", "tests.sigchld_caller", str(report), mode, *args, *options]
    said = caller_report(caller, report, HANG)
    strays = tmp_path / "report.strays"
    said["strays"] = strays.read_text().splitlines() if strays.exists() else []
    return said


def _download(tmp_path: Path, blob: Blob, digest: str = "", *options: str) -> dict[str, Any]:
    out = tmp_path / "out"
    said = _call(tmp_path, "download", blob.url, str(out), json.dumps(SEVERAL), digest,
                 options=options)  # fmt: skip
    said["sha256"] = sha256_file(out) if out.exists() else None
    return said


@pytest.mark.parametrize("caller", ["forks", "exec's", "reaps itself"])
def test_a_download_with_several_workers_kills_no_process_that_is_not_its_child(
    make: Make, tmp_path: Path, caller: str
) -> None:
    """Each worker told to quit was joined, found with no exit code (the kernel had reaped
    it) and killed for it: a SIGKILL to a process id that may be anyone's by then. So was
    the hasher, once it had sent its digest; and at the caller's exit multiprocessing
    SIGTERMed every such child again, still "running" for it. A caller whose own SIGCHLD
    handler reaps every child is the same case."""
    blob = make(24 * PART, seed=4101)
    options = {"forks": (), "exec's": ("--threaded",), "reaps itself": ("--reaper",)}[caller]
    said = _download(tmp_path, blob, blob.sha256, *options)
    assert said["said"] == "ok", said["said"]
    assert said["sha256"] == blob.sha256
    assert said["strays"] == []
    assert said["ignoring"] == [], "blobdl's own processes reap their children"


@THREADED
def test_a_worker_killed_mid_download_is_replaced_and_the_bytes_are_exact(
    make: Make, server: ServerHandle, tmp_path: Path, threaded: bool
) -> None:
    blob = make(24 * PART, seed=4102)
    slow_down(server, blob)
    options = ("--kill-worker", *(("--threaded",) if threaded else ()))
    said = _download(tmp_path, blob, "", *options)
    assert said["killed"], "a worker was killed"
    assert said["said"] == "ok", said["said"]
    assert said["sha256"] == blob.sha256
    assert said["strays"] == []
    assert said["ignoring"] == [], "blobdl's own processes reap their children"


def _batch(tmp_path: Path, blobs: list[Blob], *options: str) -> dict[str, Any]:
    items = [[b.url, str(tmp_path / f"o{n}")] for n, b in enumerate(blobs)]
    settings = {**SEVERAL, "max_connections": 6}
    said = _call(tmp_path, "many", json.dumps(items), json.dumps(settings), options=options)
    said["sha256"] = [sha256_file(Path(out)) if Path(out).exists() else None for _, out in items]
    return said


def test_a_batch_of_small_and_large_items_kills_no_process_that_is_not_its_child(
    make: Make, tmp_path: Path
) -> None:
    """The pool's processes, told to end, were joined and killed as the workers were;
    a large item's process was joined with no exit code, and its seats' lock files swept
    as if it had been killed."""
    blobs = [make(size, seed=4110 + n) for n, size in enumerate([100, PART, 20 * PART, 7] * 3)]
    said = _batch(tmp_path, blobs)
    assert said["said"] == [None] * len(blobs), said["said"]
    assert said["sha256"] == [b.sha256 for b in blobs]
    assert said["strays"] == []
    assert said["ignoring"] == []


def test_a_batch_item_whose_process_is_killed_fails_cleanly_without_a_made_up_exit_code(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """It said "download process died (exit code None)": a status nobody can know once the
    kernel has reaped the process. The other items still get their bytes."""
    large = make(24 * PART, seed=4120)
    slow_down(server, large)
    smalls = [make(100 + n, seed=4121 + n) for n in range(4)]
    said = _batch(tmp_path, [large, *smalls], "--kill-item")
    assert said["killed"], "the large item's process was killed"
    failed, *rest = said["said"]
    assert failed is not None and failed.startswith("WorkerCrashed: download process died"), failed
    assert "None" not in failed and "code" not in failed, failed
    assert rest == [None] * len(smalls), rest
    assert said["sha256"][1:] == [b.sha256 for b in smalls]
    assert said["strays"] == []


def test_a_clean_process_killed_is_a_crash_without_a_made_up_exit_code(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A threaded caller's clean process, reaped by the kernel, was said to have died with
    exit code -1 (SIGHUP, by Python's reckoning); it was killed by SIGKILL, and nobody
    can know that any more."""
    blob = make(24 * PART, seed=4130)
    slow_down(server, blob)
    said = _download(tmp_path, blob, "", "--kill-item", "--threaded")
    assert said["killed"], "the clean process was killed"
    assert said["said"].startswith("WorkerCrashed: download process died"), said["said"]
    assert "-1" not in said["said"] and "None" not in said["said"], said["said"]
    assert said["strays"] == []
