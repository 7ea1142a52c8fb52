"""Threaded and async callers: the coordinator never forks a process that has other threads.

Real server, real processes, sha256 over every result. The tests that signal or kill a
threaded caller run one as a script (``tests/threaded_caller.py``) and act on that process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

import blobdl
from blobdl.processes._spawn import start_clean
from blobdl.store._destination import temp_path
from blobdl.store._resume import state_path
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, REPO, Blob, sha256_file

Make = Callable[..., Blob]
HANG = 120.0  # seconds: far beyond any healthy run; only a deadlock reaches it
FAST: dict[str, Any] = {
    "min_part_size": PART,
    "max_part_size": PART,
    "connections": 4,
    "stall_timeout": 2.0,
    "progress_interval": 0.1,
    "checkpoint_interval": 0.2,
    "backoff_unit": 0.001,
    "max_backoff": 0.05,
    "buffer_size": 16 * 1024,
}
SLOW = 400_000  # bytes/s per connection: a 2 MiB blob takes over a second
# The server paces in 64 KiB bursts, the first one free: paced parts must be larger.
PACED = {**FAST, "min_part_size": 4 * PART, "max_part_size": 4 * PART}


@contextmanager
def noise(threads: int = 3) -> Iterator[None]:
    """Threads logging in a tight loop (each record takes the logging and handler locks)."""
    stop = threading.Event()
    log = logging.getLogger("tests.noise")
    handler = logging.FileHandler(os.devnull)
    log.addHandler(handler)
    log.propagate = False  # pytest's log capture would keep every record

    def chatter() -> None:
        while not stop.is_set():
            log.warning("busy %d", threading.get_ident())

    workers = [threading.Thread(target=chatter, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        log.removeHandler(handler)
        handler.close()


def in_thread(job: Callable[[], Any], within: float = HANG) -> Any:
    """Run ``job`` in a (daemon) thread; fail, not hang, if it has not returned ``within``
    seconds."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = job()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), "the download hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def forked_children() -> list[psutil.Process]:
    """Direct children that are forks of this process (same command line), not new programs."""
    me = psutil.Process()
    return [c for c in me.children() if _cmdline(c) == me.cmdline()]


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def slow_down(server: ServerHandle, blob: Blob, bps: int = SLOW) -> None:
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None,
                       "action": "rate", "bps": bps})  # fmt: skip


# --- in-process callers -------------------------------------------------------------------


def test_twenty_downloads_from_a_thread_while_others_log(make: Make, tmp_path: Path) -> None:
    blob = make(8 * PART, seed=301)

    def twenty() -> list[str]:
        digests = []
        for i in range(20):
            out = tmp_path / f"out-{i}"
            blobdl.download(blob.url, out, **FAST)
            digests.append(sha256_file(out))
        return digests

    with noise():
        assert in_thread(twenty) == [blob.sha256] * 20


def test_a_threaded_caller_is_never_forked(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(16 * PART, seed=302)
    slow_down(server, blob)
    seen: list[list[psutil.Process]] = []

    def look(event: blobdl.Event) -> None:
        if isinstance(event, blobdl.Progress) and event.active:
            seen.append(forked_children())

    with noise(1):
        in_thread(lambda: blobdl.download(blob.url, tmp_path / "out", on_event=look, **PACED))
    assert seen and not any(seen), f"the threaded caller forked: {seen}"
    assert sha256_file(tmp_path / "out") == blob.sha256


def test_a_single_threaded_caller_still_forks_its_workers_itself(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    assert threading.active_count() == 1
    blob = make(16 * PART, seed=303)
    slow_down(server, blob)
    seen: list[list[psutil.Process]] = []

    def look(event: blobdl.Event) -> None:
        if isinstance(event, blobdl.Progress) and event.active:
            seen.append(forked_children())

    blobdl.download(blob.url, tmp_path / "out", on_event=look, **PACED)
    assert any(seen)  # workers are forks of this very process: no extra process, no cost


def test_four_concurrent_downloads_from_a_pool(make: Make, tmp_path: Path) -> None:
    blobs = [make(12 * PART, seed=310 + i) for i in range(4)]
    threads: dict[int, set[int]] = {}

    def fetch(index: int) -> int:
        me = threading.get_ident()
        callers = threads.setdefault(me, set())

        def note(event: blobdl.Event) -> None:
            callers.add(threading.get_ident())

        out = tmp_path / f"out-{index}"
        blobdl.download(blobs[index].url, out, on_event=note, **FAST)
        return me

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(fetch, range(4), timeout=HANG))
    for i, blob in enumerate(blobs):
        assert sha256_file(tmp_path / f"out-{i}") == blob.sha256
    # Callbacks run in this process, on the thread that called download().
    assert all(callers == {caller} for caller, callers in threads.items())


def test_download_many_from_a_thread(make: Make, tmp_path: Path) -> None:
    blobs = [make(6 * PART, seed=320 + i) for i in range(3)]
    items = [blobdl.Item(b.url, str(tmp_path / f"out-{i}")) for i, b in enumerate(blobs)]
    callers: set[int] = set()

    def many() -> tuple[int, list[blobdl.ItemResult]]:
        def note(event: blobdl.BatchEvent) -> None:
            callers.add(threading.get_ident())

        results = blobdl.download_many(items, on_event=note, max_connections=6, **FAST)
        return threading.get_ident(), results

    with noise(1):
        caller, results = in_thread(many)
    assert all(r.ok for r in results), results
    assert [sha256_file(tmp_path / f"out-{i}") for i in range(3)] == [b.sha256 for b in blobs]
    assert callers == {caller}


def test_a_raising_callback_stops_the_download_and_keeps_the_partial(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(32 * PART, seed=330)
    slow_down(server, blob)
    out = tmp_path / "out"

    def explode(event: blobdl.Event) -> None:
        if isinstance(event, blobdl.Progress) and event.done > 0:
            raise RuntimeError("the caller's bug")

    with noise(1), pytest.raises(RuntimeError, match="the caller's bug"):
        in_thread(lambda: blobdl.download(blob.url, out, on_event=explode, **PACED))
    assert temp_path(out).exists() and state_path(out).exists() and not out.exists()
    # (the autouse fixture asserts that no child process is left alive)


def test_errors_cross_back_with_their_type(server: ServerHandle, tmp_path: Path) -> None:
    with noise(1), pytest.raises(blobdl.HTTPStatusError) as caught:
        in_thread(lambda: blobdl.download(server.url("missing.bin"), tmp_path / "out", **FAST))
    assert caught.value.status == 404


def test_settings_are_checked_in_the_calling_thread(tmp_path: Path) -> None:
    with noise(1), pytest.raises(blobdl.UsageError):
        in_thread(lambda: blobdl.download("http://127.0.0.1:9/x", tmp_path / "o", nonsense=1))


def test_asyncio_to_thread(make: Make, tmp_path: Path) -> None:
    blobs = [make(8 * PART, seed=340 + i) for i in range(2)]

    async def main() -> list[blobdl.DownloadResult]:
        calls = [
            asyncio.to_thread(blobdl.download, b.url, tmp_path / f"out-{i}", **FAST)
            for i, b in enumerate(blobs)
        ]
        return await asyncio.wait_for(asyncio.gather(*calls), HANG)

    results = asyncio.run(main())
    assert [r.size for r in results] == [b.size for b in blobs]
    assert [sha256_file(tmp_path / f"out-{i}") for i in range(2)] == [b.sha256 for b in blobs]


# --- a threaded caller as its own process: signals, SIGKILL, warnings -----------------------


def caller(
    mode: str, blob: Blob, out: Path, settings: dict[str, Any], *flags: str, group: bool = False
) -> subprocess.Popen[str]:
    """``tests/threaded_caller.py`` downloading ``blob``; ``group``: in its own session, so a
    whole-group signal (a terminal's Ctrl-C) can be sent to it alone."""
    script = ["-m", "tests.threaded_caller", mode, blob.url, str(out), json.dumps(settings)]
    return subprocess.Popen(
        # "always", not "error": CPython swallows its fork warning when it is an error.
        [sys.executable, "-W", "always::DeprecationWarning", *script, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=group,
    )


def until_progress(proc: subprocess.Popen[str], done: int) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        record = json.loads(line)
        assert "outcome" not in record, record
        if record["done"] >= done:
            return
    raise AssertionError(f"no progress: {proc.stderr.read() if proc.stderr else ''}")


def outcome(proc: subprocess.Popen[str]) -> dict[str, Any]:
    # Not communicate(): it would skip lines the reads above already buffered.
    proc.wait(timeout=HANG)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines and "outcome" in lines[-1], err
    assert "DeprecationWarning" not in err, err
    return {**lines[-1], "stderr": err}


def tree(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def test_a_threaded_caller_gets_no_fork_warning(make: Make, tmp_path: Path) -> None:
    blob = make(8 * PART, seed=350)
    result = outcome(caller("download", blob, tmp_path / "out", FAST))
    assert result["outcome"] == "ok", result
    assert sha256_file(tmp_path / "out") == blob.sha256


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("mode", ["download", "many"])
def test_ctrl_c_or_sigterm_to_the_main_thread_of_a_threaded_caller(
    mode: str, signum: int, make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """SIGTERM is Ctrl-C by another name, as in a single-threaded caller: the download
    stops with ``Interrupted``, its partial kept. A threaded caller died of it at once (exit
    143), its ``except``/``finally`` never run."""
    blob = make(32 * PART, seed=351)
    slow_down(server, blob)
    out = tmp_path / "out"
    proc = caller(mode, blob, out, PACED)
    until_progress(proc, blob.size // 4)
    children = tree(proc)
    proc.send_signal(signum)  # to the caller alone: it must pass it on
    result = outcome(proc)
    assert result["outcome"] == "interrupted" and result["thread"] == "MainThread", result
    assert result["signum"] == signum
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    assert temp_path(out).exists() and state_path(out).exists() and not out.exists()
    server.reset()
    blobdl.download(blob.url, out, **PACED)  # resumes
    assert sha256_file(out) == blob.sha256
    assert server.stats()["bytes_sent"] < blob.size


def test_a_terminal_ctrl_c_stops_a_download_in_a_worker_thread(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(32 * PART, seed=352)
    slow_down(server, blob)
    out = tmp_path / "out"
    proc = caller("download", blob, out, PACED, "--in-thread", group=True)
    until_progress(proc, blob.size // 4)
    children = tree(proc)
    os.killpg(proc.pid, signal.SIGINT)  # the whole group, as a terminal's Ctrl-C does
    result = outcome(proc)
    assert result["outcome"] == "interrupted" and result["thread"] == "worker", result
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    assert temp_path(out).exists() and state_path(out).exists() and not out.exists()


@pytest.mark.parametrize("mode", ["download", "many"])
def test_sigkill_of_a_threaded_caller_leaves_no_process_behind(
    mode: str, make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(32 * PART, seed=353)
    slow_down(server, blob, bps=32_000)  # ~16 s in all: an orphan would still be at it
    proc = caller(mode, blob, tmp_path / "out", PACED, "--in-thread")
    until_progress(proc, blob.size // 16)
    children = tree(proc)
    assert len(children) >= 2  # a coordinator (or batch item) and its workers at least
    proc.kill()
    proc.communicate()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [(p, _cmdline(p)) for p in alive]
    # The download was stopped, not cut: its partial is kept for the next run.
    assert state_path(tmp_path / "out").exists()


def clean_processes() -> list[psutil.Process]:
    """This process's clean interpreters (a threaded caller's downloads run there)."""
    return [c for c in psutil.Process().children() if "_exec_main" in " ".join(_cmdline(c))]


def test_a_threaded_callers_download_process_killed_is_a_crash_not_a_bug(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(16 * PART, seed=361)
    slow_down(server, blob)

    def kill(event: blobdl.Event) -> None:  # as the OOM killer would, mid-download
        if isinstance(event, blobdl.Progress) and event.done > 0:
            for proc in clean_processes():
                proc.kill()

    with pytest.raises(blobdl.WorkerCrashed) as info:
        in_thread(lambda: blobdl.download(blob.url, tmp_path / "out", on_event=kill, **PACED))
    assert info.value.exit_code == 3 and "download process died" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_stop_signal_that_ends_a_starting_download_process_is_an_interrupt(
    make: Make, tmp_path: Path
) -> None:
    blob = make(2 * PART, seed=362)
    outcome: dict[str, BaseException] = {}

    def download() -> None:
        try:
            blobdl.download(blob.url, tmp_path / "out", **FAST)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=download, daemon=True)
    thread.start()
    while not (started := clean_processes()):  # caught while it imports, before its handlers
        time.sleep(0.001)
    started[0].terminate()
    thread.join(HANG)
    assert isinstance(outcome.get("error"), blobdl.Interrupted), outcome
    assert outcome["error"].exit_code == 130


@pytest.mark.parametrize(
    ("signum", "error"),
    [(signal.SIGTERM, blobdl.Interrupted), (signal.SIGKILL, blobdl.WorkerCrashed)],
    ids=["SIGTERM", "SIGKILL"],
)
def test_a_download_process_that_dies_before_it_is_sent_its_download_is_reported(
    make: Make, tmp_path: Path, signum: int, error: type[blobdl.BlobdlError]
) -> None:
    """Killed once it is started, before the caller sends it its download: a stop or a
    crash, as when it dies a moment later; never the caller's broken pipe."""
    blob = make(2 * PART, seed=364)

    def kill_at_start(frame: Any, event: str, arg: Any) -> None:
        if event == "return" and frame.f_code is start_clean.__code__:
            pid = arg[1].pid
            os.kill(pid, signum)
            while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:  # dead, not reaped
                time.sleep(0.001)

    def download() -> None:
        sys.setprofile(kill_at_start)  # this thread only
        try:
            blobdl.download(blob.url, tmp_path / "out", **FAST)
        finally:
            sys.setprofile(None)

    with pytest.raises(error):
        in_thread(download)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["download", "many"])
def test_a_terminal_ctrl_c_that_a_threaded_caller_ignores_stays_ignored(
    mode: str, make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A background job of a shell script starts with SIGINT ignored: a Ctrl-C at the terminal
    is not for it, nor for the clean process its download runs in (SIGTERM still stops it)."""
    blob = make(32 * PART, seed=363)
    slow_down(server, blob, bps=2 * SLOW)
    out = tmp_path / "out"
    script = ["-m", "tests.threaded_caller", mode, blob.url, str(out), json.dumps(PACED)]

    def background_job() -> None:  # in a group of its own: the Ctrl-C reaches it alone
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, *script, "--in-thread"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=background_job)  # fmt: skip
    until_progress(proc, blob.size // 4)
    os.killpg(proc.pid, signal.SIGINT)  # the whole group, as a terminal's Ctrl-C does
    result = outcome(proc)
    assert result["outcome"] == "ok", result
    assert sha256_file(out) == blob.sha256
