"""A thread that runs one download after another (a Dask worker's task thread) keeps a clean
process started ahead for its next download: real downloads from a real server, in threads,
with the processes looked at through psutil."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import blobdl
from blobdl.processes import _spare
from tests.conftest import PART, Blob, sha256_file
from tests.integration.test_threads import FAST, in_thread

Make = Callable[..., Blob]


def interpreters() -> list[psutil.Process]:
    """This process's children that are clean interpreters of blobdl's (downloads, spares)."""
    me = psutil.Process()
    return [c for c in me.children() if "_exec_main" in " ".join(_program(c))]


def _program(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.02)
    return False


def noting_where_each_runs(pids: list[int]) -> Callable[[blobdl.Event], None]:
    """A callback that notes, at each ``Started``, the one clean interpreter running the
    download (the next spare starts only after that event)."""

    def look(event: blobdl.Event) -> None:
        if isinstance(event, blobdl.Started):
            (running,) = interpreters()
            pids.append(running.pid)

    return look


@pytest.fixture(autouse=True)
def _no_spare_left() -> Any:
    yield
    _spare.drop_all()


def test_the_next_download_runs_in_the_process_started_beside_the_last(
    make: Make, tmp_path: Path
) -> None:
    first, second = make(4 * PART, seed=1), make(4 * PART, seed=2)
    ran_in: list[int] = []
    look = noting_where_each_runs(ran_in)

    def both() -> list[int]:
        with _spare.kept():
            blobdl.download(first.url, tmp_path / "first", on_event=look, **FAST)
            spares = [p.pid for p in interpreters()]  # started beside the first, waiting
            blobdl.download(second.url, tmp_path / "second", on_event=look, **FAST)
        return spares

    spares = in_thread(both)
    assert len(spares) == 1
    assert ran_in[1] == spares[0] != ran_in[0]
    assert sha256_file(tmp_path / "first") == first.sha256
    assert sha256_file(tmp_path / "second") == second.sha256


def test_every_download_still_gets_a_process_of_its_own(make: Make, tmp_path: Path) -> None:
    blob = make(2 * PART, seed=3)
    pids: list[int] = []
    look = noting_where_each_runs(pids)

    def three() -> None:
        with _spare.kept():
            for n in range(3):
                blobdl.download(blob.url, tmp_path / f"out-{n}", on_event=look, **FAST)

    in_thread(three)
    assert len(pids) == 3 and len(set(pids)) == 3
    for n in range(3):
        assert sha256_file(tmp_path / f"out-{n}") == blob.sha256


def test_a_thread_that_does_not_keep_one_leaves_no_process_behind(
    make: Make, tmp_path: Path
) -> None:
    blob = make(2 * PART, seed=4)
    in_thread(lambda: blobdl.download(blob.url, tmp_path / "out", **FAST))
    assert interpreters() == []


def test_a_spare_is_only_for_the_thread_that_started_it(make: Make, tmp_path: Path) -> None:
    blob = make(2 * PART, seed=5)

    def kept_one() -> int:
        with _spare.kept():
            blobdl.download(blob.url, tmp_path / "a", **FAST)
        (spare,) = interpreters()
        return spare.pid

    spare = in_thread(kept_one)  # its thread has ended: so has its spare (its death signal)
    assert gone(spare)
    assert _spare.take(None) is None  # nor does another thread take it
    in_thread(lambda: blobdl.download(blob.url, tmp_path / "b", **FAST))
    assert sha256_file(tmp_path / "b") == blob.sha256


def test_a_spare_dropped_or_left_idle_ends(make: Make, tmp_path: Path) -> None:
    blob = make(2 * PART, seed=6)
    spares: list[int] = []
    done = threading.Event()

    def keep(idle: float) -> None:
        with _spare.kept(idle):
            blobdl.download(blob.url, tmp_path / f"out-{idle}", **FAST)
        spares.extend(p.pid for p in interpreters() if p.pid not in spares)
        done.wait(30)  # the thread lives on: only the drop or the idle time end the spare

    dropped = threading.Thread(target=keep, args=(600.0,), daemon=True)
    dropped.start()
    while not spares:
        time.sleep(0.01)
    assert _spare.drop_all() == 1
    assert gone(spares[0])
    idle = threading.Thread(target=keep, args=(0.3,), daemon=True)
    idle.start()
    while len(spares) < 2:
        time.sleep(0.01)
    assert gone(spares[1])  # it waited its 0.3 s, then ended by itself
    done.set()
    dropped.join()
    idle.join()


def test_a_spare_too_old_to_trust_is_never_given_a_download(make: Make, tmp_path: Path) -> None:
    blob = make(2 * PART, seed=7)
    pids: list[int] = []
    look = noting_where_each_runs(pids)

    def two() -> int:
        with _spare.kept(0.4):
            blobdl.download(blob.url, tmp_path / "a", **FAST)
            (spare,) = interpreters()
            time.sleep(0.3)  # over half its idle time: it may be ending as it is given work
            blobdl.download(blob.url, tmp_path / "b", on_event=look, **FAST)
        return spare.pid

    old = in_thread(two)
    assert old not in pids
    assert sha256_file(tmp_path / "b") == blob.sha256


def test_a_stopped_spare_is_replaced_not_waited_for(make: Make, tmp_path: Path) -> None:
    blob = make(2 * PART, seed=8)
    stopped: list[psutil.Process] = []

    def two() -> None:
        with _spare.kept():
            blobdl.download(blob.url, tmp_path / "a", **FAST)
            (spare,) = interpreters()
            spare.suspend()  # SIGSTOP while it waits: it never reads the download it is given
            stopped.append(spare)
            blobdl.download(blob.url, tmp_path / "b", **FAST)

    try:
        in_thread(two, within=30)  # a fresh process needs well under a second
    finally:
        for spare in stopped:  # a hung download then ends (its process died), the thread too
            with contextlib.suppress(psutil.Error):
                spare.kill()
    assert sha256_file(tmp_path / "b") == blob.sha256
    assert gone(stopped[0].pid)


def test_a_download_sees_the_directory_and_environment_of_its_call_not_of_its_spare(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = make(2 * PART, seed=9)
    then, now = tmp_path / "then", tmp_path / "now"
    then.mkdir()
    now.mkdir()
    monkeypatch.chdir(then)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens: refused

    def two() -> None:
        with _spare.kept():
            # The spare starts beside this one, here, with this environment.
            blobdl.download(blob.url, tmp_path / "a", trust_env=False, **FAST)
            os.chdir(now)
            del os.environ["HTTP_PROXY"]
            blobdl.download(blob.url, "b", **FAST)  # relative: to where the caller is now

    in_thread(two)
    assert sha256_file(now / "b") == blob.sha256
    assert not (then / "b").exists()
