"""A hostile or careless library user: blobdl imported into a batch job, which is a threaded
program, called the way such programs call it. Each test is a defect found in review (branch
``hostile-library``, and later ones); each failed before its fix. Real server, real
processes, as in ``test_threads.py``, whose helpers these tests share.
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import pickle
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import pytest

import blobdl
from blobdl.store._destination import temp_path
from blobdl.store._resume import state_path
from faultserver.hub import HubHandle, HubRepo, start_hub
from faultserver.registry import Registry
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, REPO, Blob, sha256_file
from tests.integration.test_threads import FAST, PACED, forked_children, noise, slow_down

Make = Callable[..., Blob]
SLOWEST = 20_000  # bytes/s per connection: 4 paced parts of 256 KiB take ~10 s


# --- a threaded caller that stops: the clean process must be told -------------------------


def test_an_exception_from_a_signal_handler_stops_a_threaded_callers_download(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A signal-based timeout (SIGALRM raising TimeoutError: timeout-decorator, pytest-timeout,
    Airflow's SIGTERM handler raising) in the main thread of a threaded caller."""
    blob = make(16 * PART, seed=901)
    slow_down(server, blob, bps=SLOWEST)
    out = tmp_path / "out"

    def alarm(_signum: int, _frame: Any) -> None:
        raise TimeoutError("the job's time is up")

    armed: list[bool] = []

    def arm(event: blobdl.Event) -> None:
        # Armed once bytes are in, not 0.5 s after the call: under load the download had
        # not begun by then, and a stop before any byte keeps nothing (by design).
        if not armed and isinstance(event, blobdl.Progress) and event.done > 0:
            armed.append(True)
            signal.setitimer(signal.ITIMER_REAL, 0.05)

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        with noise(1), pytest.raises(TimeoutError):
            blobdl.download(blob.url, out, on_event=arm, **PACED)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert temp_path(out).exists() and not out.exists()  # stopped, its partial kept


def test_a_callback_raising_systemexit_stops_a_threaded_callers_download(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """``sys.exit()`` in a callback stops a single-threaded caller's download at once; in a
    threaded caller the whole blob came down first, then SystemExit was raised."""
    blob = make(16 * PART, seed=902)
    slow_down(server, blob, bps=SLOWEST)
    out = tmp_path / "out"

    def leave(event: blobdl.Event) -> None:
        if isinstance(event, blobdl.Progress) and event.done > 0:
            raise SystemExit(3)

    with noise(1), pytest.raises(SystemExit):
        blobdl.download(blob.url, out, on_event=leave, **PACED)
    assert temp_path(out).exists() and not out.exists()  # stopped, its partial kept


def test_an_interrupted_threaded_caller_never_has_the_whole_blob_in_place(
    make: Make, tmp_path: Path
) -> None:
    """Interrupted promises a kept partial for the next run. A Ctrl-C that a threaded caller
    gets once the child has committed (here: while its callback handles Finished) raised
    Interrupted with the blob complete at its destination, and the rerun then fails with
    DestinationExists. A single-threaded caller gets its result (the signal is dropped)."""
    blob = make(16 * PART, seed=903)
    out = tmp_path / "out"

    def ctrl_c_now(event: blobdl.Event) -> None:
        if isinstance(event, blobdl.Finished):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)

    with noise(1):
        try:
            blobdl.download(blob.url, out, on_event=ctrl_c_now, **FAST)
        except blobdl.Interrupted:
            assert not out.exists(), "Interrupted, yet the blob is complete at its destination"
        except KeyboardInterrupt:
            pass  # the callback's own (it was the one the signal landed in): acceptable
    if out.exists():
        assert sha256_file(out) == blob.sha256


_FINISHED_THEN_CUT = """
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from blobdl.errors import Interrupted
from blobdl.events import DownloadResult, Finished
conn = Connection(int(sys.argv[1]))
done = DownloadResult(Path(sys.argv[2]), 3, 0.1, 3, 0, 1, "http://h/x", "http://h/x")
conn.send(("event", Finished(done)))  # its file is in place
conn.send(("error", Interrupted(2)))  # a Ctrl-C landed before its result went out
"""


@pytest.mark.parametrize("stopped", [False, True], ids=["the terminal's Ctrl-C", "ours"])
def test_a_clean_child_cut_after_its_finished_event_gives_the_caller_its_result(
    tmp_path: Path, stopped: bool
) -> None:
    """The window of the test above, made certain: a clean process that has told Finished
    (committed: its file in place) and is cut by a Ctrl-C before its result goes out
    answers Interrupted. The caller gets the result Finished told: Interrupted would
    promise a partial to resume, where the whole blob is in place."""
    from blobdl.processes._child import Execed
    from blobdl.processes._clean_process import _follow
    from blobdl.processes._signals import Stop

    ours, theirs = socket.socketpair()
    out = tmp_path / "out"
    out.write_bytes(b"abc")
    with ours, theirs:
        child = Execed(
            subprocess.Popen(
                [sys.executable, "-c", _FINISHED_THEN_CUT, str(theirs.fileno()), str(out)],
                pass_fds=(theirs.fileno(),),
            )
        )
        theirs.close()
        told: list[blobdl.Event] = []

        def tell(event: blobdl.Event) -> None:
            told.append(event)
            if stopped:
                # The caller's own Ctrl-C, in its callback: ``called`` makes it a ``Stop``
                # (a plain KeyboardInterrupt is the callback's own, given back as it is).
                raise Stop(signal.SIGINT)

        try:
            result = _follow(Connection(os.dup(ours.fileno())), child, tell)
        finally:
            child.join()
    assert isinstance(result, blobdl.DownloadResult) and result.path == out
    assert [type(e) for e in told] == [blobdl.Finished]


# --- callers blobdl does not see coming ----------------------------------------------------


def _download_in_a_pool_worker(url: str, out: str) -> str:
    try:
        blobdl.download(url, out, **FAST)
    except BaseException as exc:  # what it raised, to be shown by the parent
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def test_download_from_a_multiprocessing_pool_worker(make: Make, tmp_path: Path) -> None:
    """``Pool.map(download_one, urls)``: the commonest batch job there is. Pool workers are
    daemonic, and multiprocessing refuses them children; the clean process (exec'd, not a
    multiprocessing child) is allowed, as the Dask path already knows."""
    blob = make(8 * PART, seed=904)
    out = tmp_path / "out"
    with multiprocessing.get_context("fork").Pool(1) as pool:
        said = pool.apply(_download_in_a_pool_worker, (blob.url, str(out)))
        pool.close()
        pool.join()
    assert said == "ok"
    assert sha256_file(out) == blob.sha256


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads this process had at each fork it made (1: none but the forking one).

    The test starts single-threaded: a thread an earlier test's callback started (told to
    end, not yet ended on a loaded machine) would make blobdl rightly fork nothing."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread():
            thread.join(timeout=10)
    assert len(os.listdir("/proc/self/task")) == 1, threading.enumerate()
    seen: list[int] = []
    real_fork = os.fork

    def watched_fork() -> int:
        seen.append(len(os.listdir("/proc/self/task")))
        return real_fork()

    monkeypatch.setattr(os, "fork", watched_fork)
    return seen


def test_a_callback_that_starts_a_thread_never_makes_blobdl_fork_a_threaded_process(
    make: Make, tmp_path: Path, forks: list[int]
) -> None:
    """A tqdm bar made on Started starts tqdm's monitor thread (blobdl's own CLI turns it off
    for this reason); any callback may start a thread. The workers are forked after Started."""
    blob = make(16 * PART, seed=905)
    done = threading.Event()

    def bar(event: blobdl.Event) -> None:
        if isinstance(event, blobdl.Started):  # what tqdm(total=event.size) does
            threading.Thread(target=done.wait, name="monitor", daemon=True).start()

    assert len(os.listdir("/proc/self/task")) == 1, "the test needs a single-threaded caller"
    try:
        blobdl.download(blob.url, tmp_path / "out", on_event=bar, **FAST)
    finally:
        done.set()
    assert forks and max(forks) == 1, forks


def test_a_worker_lost_after_a_callback_started_a_thread_is_not_replaced_by_a_fork(
    make: Make, server: ServerHandle, tmp_path: Path, forks: list[int]
) -> None:
    """Once the caller's process has a thread, the download goes on in the workers it has."""
    blob = make(16 * PART, seed=909)
    slow_down(server, blob)  # seconds in all: long after the worker is lost
    done, killed = threading.Event(), []

    def bar(event: blobdl.Event) -> None:
        if isinstance(event, blobdl.Started):
            threading.Thread(target=done.wait, name="monitor", daemon=True).start()
        if isinstance(event, blobdl.Progress) and event.done and not killed:
            killed.append(forked_children()[0].pid)  # one of its two workers
            os.kill(killed[0], signal.SIGKILL)

    try:
        blobdl.download(blob.url, tmp_path / "out", on_event=bar, **PACED)
    finally:
        done.set()
    assert killed and sha256_file(tmp_path / "out") == blob.sha256
    assert max(forks) == 1, forks


def test_a_batch_callback_that_starts_a_thread_never_makes_blobdl_fork_a_threaded_process(
    make: Make, tmp_path: Path, forks: list[int]
) -> None:
    """The batch's scheduler runs the callbacks, and starts a process for each large item:
    those after the thread are fresh interpreters (fork + exec), never bare forks."""
    assert len(os.listdir("/proc/self/task")) == 1, "the test needs a single-threaded caller"
    _threaded_batch([make(16 * PART, seed=906 + n) for n in range(3)], tmp_path)
    assert forks and max(forks) == 1, forks


def _threaded_batch(blobs: list[Blob], tmp_path: Path) -> None:
    """A batch of ``blobs`` whose callback starts a thread (as a tqdm bar does) once item 0
    has started: every item comes whole."""
    done = threading.Event()

    def bar(event: blobdl.BatchEvent) -> None:
        if isinstance(event.event, blobdl.Started) and event.item == 0:
            threading.Thread(target=done.wait, name="monitor", daemon=True).start()

    items = [blobdl.Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    try:
        results = blobdl.download_many(items, max_connections=2, on_event=bar, **FAST)
    finally:
        done.set()
    for n, (blob, result) in enumerate(zip(blobs, results, strict=True)):
        assert result.ok, result
        assert sha256_file(tmp_path / f"o{n}") == blob.sha256


def test_a_thread_started_on_an_unfit_item_keeps_blobdl_from_forking_the_pool(
    make: Make, tmp_path: Path, forks: list[int]
) -> None:
    """An item with a bad URL fails before anything starts, and its callback may start a
    thread: the pool is not forked then, and the small items run on children of their own
    (fresh interpreters). One to be named after its probe fails clearly instead."""
    blobs = [make(PART // 2, seed=940 + n) for n in range(3)]
    done = threading.Event()

    def bar(event: blobdl.BatchEvent) -> None:
        if isinstance(event.event, blobdl.Failed) and event.item == 0:
            threading.Thread(target=done.wait, name="monitor", daemon=True).start()

    assert len(os.listdir("/proc/self/task")) == 1, "the test needs a single-threaded caller"
    items = [blobdl.Item("ftp://127.0.0.1/nothing", "bad")]
    items += [blobdl.Item(b.url, f"o{n}") for n, b in enumerate(blobs)]
    items += [blobdl.Item(blobs[0].url + "?unnamed")]
    try:
        results = blobdl.download_many(
            items, max_connections=2, on_event=bar, base_dir=tmp_path, **FAST
        )
    finally:
        done.set()
    assert max(forks, default=1) == 1, forks
    assert isinstance(results[0].error, blobdl.UsageError), results[0]
    for n, (blob, result) in enumerate(zip(blobs, results[1:4], strict=True)):
        assert result.ok, result
        assert sha256_file(tmp_path / f"o{n}") == blob.sha256
    assert isinstance(results[4].error, blobdl.OutOfResources), results[4]
    assert "give the item a path" in str(results[4].error)


def test_a_pool_process_lost_after_a_batch_callback_started_a_thread_is_not_forked_again(
    make: Make, server: ServerHandle, tmp_path: Path, forks: list[int]
) -> None:
    """A pool process that dies is forked again, unless the scheduler's process has a thread
    by then: the items still queued run in fresh interpreters instead. Only the items the
    lost process held fail (as a crashed worker's)."""
    blobs = [make(PART // 2, seed=930 + n) for n in range(8)]
    server.set_faults({"path": "/files/*", "times": None, "action": "ttfb", "delay": 0.3})
    assert len(os.listdir("/proc/self/task")) == 1, "the test needs a single-threaded caller"
    results = _pool_lost_after_a_thread(blobs, tmp_path, lambda pool: pool, max_connections=2)
    assert max(forks) == 1, forks
    assert sum(r.ok for r in results) >= len(blobs) - 2  # only what the two seats held failed


def _stopped_when_execed(blobs: list[Blob], tmp_path: Path, signum: int) -> list[str]:
    """A batch whose first item's callback starts a thread: the second item then runs in a
    fresh interpreter, and is stopped by ``signum`` to the scheduler once it has bytes."""
    done, said = threading.Event(), []

    def bar(event: blobdl.BatchEvent) -> None:
        said.append(f"{event.item}:{type(event.event).__name__}")
        if isinstance(event.event, blobdl.Started) and event.item == 0:
            threading.Thread(target=done.wait, name="monitor", daemon=True).start()
        if event.item == 1 and isinstance(event.event, blobdl.Progress) and event.event.done:
            os.kill(os.getpid(), signum)

    items = [blobdl.Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    log = logging.getLogger("blobdl")
    handler = logging.FileHandler(tmp_path / "log")
    log.addHandler(handler)
    try:
        with pytest.raises(blobdl.Interrupted):
            blobdl.download_many(items, max_connections=1, on_event=bar, **PACED)
    finally:
        done.set()
        log.removeHandler(handler)
        handler.close()
    return said


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_batch_keeps_the_partial_of_an_item_in_a_fresh_interpreter(
    make: Make, server: ServerHandle, tmp_path: Path, forks: list[int], signum: int
) -> None:
    """A stop while an exec'd item runs: it saves its state as a forked one does, says so
    to the caller's logging, and the next run resumes it."""
    blobs = [make(16 * PART, seed=950), make(16 * PART, seed=951)]
    slow_down(server, blobs[1], bps=SLOWEST)
    said = _stopped_when_execed(blobs, tmp_path, signum)
    assert max(forks) == 1, forks
    assert said.index("0:Finished") < said.index("1:Started"), said  # 1 started after the thread
    assert "1:Failed" in said, said
    out = tmp_path / "o1"
    assert temp_path(out).exists() and state_path(out).exists() and not out.exists()
    # What a forked item's coordinator tells the caller's logging, an exec'd one's does too.
    assert "partial download kept in" in (tmp_path / "log").read_text()
    server.reset()
    starts: list[blobdl.Started] = []

    def note(event: blobdl.BatchEvent) -> None:
        if isinstance(event.event, blobdl.Started):
            starts.append(event.event)

    results = blobdl.download_many([blobdl.Item(blobs[1].url, str(out))], on_event=note, **PACED)
    assert results[0].ok, results[0]
    assert starts and starts[0].resumed > 0, starts
    assert sha256_file(out) == blobs[1].sha256


def test_a_pool_process_lost_after_a_thread_leaves_the_others_at_work(
    make: Make, server: ServerHandle, tmp_path: Path, forks: list[int]
) -> None:
    """One of the pool's processes dies once the scheduler has a thread: its seats are
    retired, the other process goes on with the queue, and the pool still ends cleanly.
    (A guard, not a defect: it passed in review.)"""
    blobs = [make(PART // 2, seed=960 + n) for n in range(12)]
    server.set_faults({"path": "/files/*", "times": None, "action": "ttfb", "delay": 0.2})

    def one_of_two(pool: list[psutil.Process]) -> list[psutil.Process]:
        assert len(pool) == 2, pool
        return pool[:1]

    _pool_lost_after_a_thread(blobs, tmp_path, one_of_two, max_connections=4, processes=2)
    assert max(forks) == 1, forks


def _pool_lost_after_a_thread(
    blobs: list[Blob],
    tmp_path: Path,
    victims: Callable[[list[psutil.Process]], list[psutil.Process]],
    **options: Any,
) -> list[blobdl.ItemResult]:
    """A batch of ``blobs`` whose callback, told the first item finished, starts a thread
    and then SIGKILLs the ``victims`` among the pool's processes. Every item is whole or
    failed as a crashed worker's, and at most the two seats' items in flight failed."""
    done, killed = threading.Event(), []

    def bar(event: blobdl.BatchEvent) -> None:
        if isinstance(event.event, blobdl.Finished) and not killed:
            threading.Thread(target=done.wait, name="monitor", daemon=True).start()
            killed.extend(p.pid for p in victims(forked_children()))
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    items = [blobdl.Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    try:
        results = blobdl.download_many(items, on_event=bar, **options, **FAST)
    finally:
        done.set()
    assert killed
    lost = [r for r in results if not r.ok]
    assert all(isinstance(r.error, blobdl.WorkerCrashed) for r in lost), lost
    assert len(lost) <= 2, lost
    for n, (blob, result) in enumerate(zip(blobs, results, strict=True)):
        if result.ok:
            assert sha256_file(tmp_path / f"o{n}") == blob.sha256
    return results


@pytest.mark.parametrize("thread", [False, True], ids=["forked", "exec'd"])
def test_an_execed_items_log_records_reach_the_callers_logging(
    make: Make,
    tmp_path: Path,
    forks: list[int],
    capfd: pytest.CaptureFixture[str],
    thread: bool,
) -> None:
    """A forked item's warnings go where the caller's logging sends blobdl's (here: a file,
    nothing on stderr); an exec'd one's (after a callback's thread) must too, as the clean
    process's do (``_clean_child._forward_logs``), not to a bare stderr."""
    blobs = [make(16 * PART, seed=970), make(16 * PART, seed=971)]
    out = tmp_path / "o1"
    state_path(out).write_text("not a resume record")  # item 1 warns, and starts afresh
    done = threading.Event()

    def bar(event: blobdl.BatchEvent) -> None:
        if thread and isinstance(event.event, blobdl.Started) and event.item == 0:
            threading.Thread(target=done.wait, name="monitor", daemon=True).start()

    log = logging.getLogger("blobdl")
    handler = logging.FileHandler(tmp_path / "log")
    log.addHandler(handler)
    log.propagate = False
    items = [blobdl.Item(blobs[0].url, str(tmp_path / "o0")), blobdl.Item(blobs[1].url, str(out))]
    try:
        results = blobdl.download_many(items, max_connections=1, on_event=bar, **FAST)
    finally:
        done.set()
        log.removeHandler(handler)
        log.propagate = True
        handler.close()
    assert all(r.ok for r in results), results
    assert max(forks) == 1, forks
    assert sha256_file(out) == blobs[1].sha256
    assert "ignoring unreadable resume state" in (tmp_path / "log").read_text()
    assert "ignoring unreadable resume state" not in capfd.readouterr().err


def test_a_threaded_batch_runs_where_the_kernel_has_no_pidfd(
    make: Make, tmp_path: Path, forks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """RHEL 8 (4.18), Amazon Linux 2 (4.14), and containers whose seccomp profile predates
    pidfd_open: the call fails with ENOSYS (or EPERM). A forked item never needed it; an
    exec'd one must not fail its whole batch as OutOfResources for the lack of it."""

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    _threaded_batch([make(16 * PART, seed=906 + n) for n in range(3)], tmp_path)
    assert max(forks) == 1, forks


def test_a_threaded_batch_never_forks_where_the_kernel_has_no_memfd(
    make: Make, tmp_path: Path, forks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """gVisor, old seccomp profiles and some sandboxes refuse memfd_create. The batch's
    Shares then had no descriptor to hand an exec'd item, and a threaded scheduler forked
    its large items instead: a fork of a threaded process (a lock another thread held stays
    held for ever in the child), which blobdl refuses everywhere else."""

    def no_memfd(name: str, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(os, "memfd_create", no_memfd)
    assert len(os.listdir("/proc/self/task")) == 1, "the test needs a single-threaded caller"
    _threaded_batch([make(16 * PART, seed=980 + n) for n in range(3)], tmp_path)
    assert max(forks) == 1, forks


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_threaded_batch_leaves_no_descriptor_open(
    make: Make, tmp_path: Path, forks: list[int]
) -> None:
    """An exec'd item's socket and pidfd, and the batch's memfd, all go with the batch.
    (A guard, not a defect: it passed in review.)"""
    blobs = [make(16 * PART, seed=906 + n) for n in range(3)]
    before = _fds()
    _threaded_batch(blobs, tmp_path)
    assert max(forks) == 1, forks
    assert _fds() <= before, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in _fds() - before}


# --- arguments: a careless user's are a UsageError, never a TypeError from deep inside ------

URL = "http://127.0.0.1:9/x"  # never reached: every call below must fail before
PULL_REF = "http://127.0.0.1:9/library/m:1"  # the same for a pull


def _careless_calls(tmp: Path) -> dict[str, Callable[[], object]]:
    return {
        "url None": lambda: blobdl.download(None, tmp / "o"),  # type: ignore[arg-type]
        "url bytes": lambda: blobdl.download(b"http://h/x", tmp / "o"),  # type: ignore[arg-type]
        "path int": lambda: blobdl.download(URL, 5),  # type: ignore[arg-type]
        "digest int": lambda: blobdl.download(URL, tmp / "o", digest=5),  # type: ignore[arg-type]
        "settings dict": lambda: blobdl.Downloader({"connections": 2}).download(URL, tmp / "o"),  # type: ignore[arg-type]
        "items None": lambda: blobdl.download_many(None),  # type: ignore[arg-type]
        "item tuple": lambda: blobdl.download_many([(URL, str(tmp / "o"))]),  # type: ignore[list-item]
        "item url None": lambda: blobdl.download_many([blobdl.Item(None)]),  # type: ignore[arg-type]
        "item headers dict": lambda: blobdl.download_many(
            [blobdl.Item(URL, str(tmp / "o"), None, {"A": "b"})]  # type: ignore[arg-type]
        ),
        "item size str": lambda: blobdl.download_many([blobdl.Item(URL, size="1GB")]),  # type: ignore[arg-type]
        "max_connections str": lambda: blobdl.download_many([], max_connections="4"),  # type: ignore[arg-type]
        "per_host None": lambda: blobdl.download_many([], per_host=None),  # type: ignore[arg-type]
        "base_dir int": lambda: blobdl.download_many([], base_dir=5),  # type: ignore[arg-type]
        "many settings dict": lambda: blobdl.download_many([], settings={"retries": 1}),  # type: ignore[arg-type]
        "pull ref None": lambda: blobdl.pull(None, tmp),  # type: ignore[arg-type]
        "hf repo None": lambda: blobdl.hf_download(None, cache_dir=tmp),  # type: ignore[arg-type]
        "hf revision None": lambda: blobdl.hf_download("a/b", revision=None, cache_dir=tmp),  # type: ignore[arg-type]
        # A callback that cannot be called: it was taken, the download started, and the
        # first event raised a TypeError deep inside, a partial kept at the destination.
        "on_event int": lambda: blobdl.download(URL, tmp / "o", on_event=5),  # type: ignore[arg-type]
        "on_progress str": lambda: blobdl.download(URL, tmp / "o", on_progress="bar"),  # type: ignore[arg-type]
        "many on_event int": lambda: blobdl.download_many([URL], on_event=5),  # type: ignore[arg-type]
        "pull on_event int": lambda: blobdl.pull(PULL_REF, tmp, on_event=5),  # type: ignore[arg-type]
        "hf on_event int": lambda: blobdl.hf_download(
            "a/b",
            cache_dir=tmp,
            endpoint=URL,
            on_event=5,  # type: ignore[arg-type]
        ),
        # A path whose __fspath__ gives bytes (or no path at all): taken, then a TypeError.
        "path of bytes": lambda: blobdl.download(URL, _BytesPath(tmp / "o")),  # type: ignore[arg-type]
        "path of nothing": lambda: blobdl.download(URL, _BytesPath(None)),  # type: ignore[arg-type]
        "base_dir of bytes": lambda: blobdl.download_many([], base_dir=_BytesPath(tmp)),  # type: ignore[arg-type]
        "pull models_dir int": lambda: blobdl.pull(PULL_REF, 5),  # type: ignore[arg-type]
        "pull models_dir of bytes": lambda: blobdl.pull(PULL_REF, _BytesPath(tmp)),  # type: ignore[arg-type]
        "hf cache_dir int": lambda: blobdl.hf_download("a/b", cache_dir=5, endpoint=URL),  # type: ignore[arg-type]
        "hf paths int": lambda: blobdl.hf_download("a/b", 5, cache_dir=tmp, endpoint=URL),  # type: ignore[arg-type]
        "hf paths of ints": lambda: blobdl.hf_download("a/b", [5], cache_dir=tmp, endpoint=URL),  # type: ignore[list-item]
        # A token or endpoint that is no text (an int, bytes from a file read "rb"): a raw
        # AttributeError or TypeError escaped. (True and False are huggingface_hub's.)
        "hf token int": lambda: blobdl.hf_download("a/b", cache_dir=tmp, endpoint=URL, token=5),  # type: ignore[arg-type]
        "hf token bytes": lambda: blobdl.hf_download(
            "a/b",
            cache_dir=tmp,
            endpoint=URL,
            token=b"hf_x",  # type: ignore[arg-type]
        ),
        "hf endpoint int": lambda: blobdl.hf_download("a/b", cache_dir=tmp, endpoint=5),  # type: ignore[arg-type]
        "hf endpoint bytes": lambda: blobdl.hf_download("a/b", cache_dir=tmp, endpoint=b"http://h"),  # type: ignore[arg-type]
        "hf local_dir of bytes": lambda: blobdl.hf_download(
            "a/b",
            local_dir=_BytesPath(tmp),
            endpoint=URL,  # type: ignore[arg-type]
        ),
        # An empty path is the current directory to the file system: a variable that
        # expanded to nothing, never what was meant (the CLI refuses it too).
        "path empty": lambda: blobdl.download(URL, ""),
        "base_dir empty": lambda: blobdl.download_many([], base_dir=""),
        "pull models_dir empty": lambda: blobdl.pull(PULL_REF, ""),
        "hf cache_dir empty": lambda: blobdl.hf_download("a/b", cache_dir="", endpoint=URL),
        "hf local_dir empty": lambda: blobdl.hf_download("a/b", local_dir="", endpoint=URL),
        # A lone surrogate that is no byte os.fsdecode made (a JSON "\\ud800" escape): no
        # file can be named so, and os.fsencode's UnicodeEncodeError escaped, exit 1.
        "path no text": lambda: blobdl.download(URL, tmp / "\ud800.bin"),
        "url no text": lambda: blobdl.download(URL + "\ud800", tmp / "o"),
        "url not utf8": lambda: blobdl.download(URL + "\udce9", tmp / "o"),
        "cache_dir no text": lambda: blobdl.download(
            URL, tmp / "o", digest="a" * 64, cache_dir=tmp / "\ud800"
        ),
        "item path no text": lambda: blobdl.download_many([blobdl.Item(URL, f"{tmp}/\ud800")]),
        "pull models_dir no text": lambda: blobdl.pull(PULL_REF, tmp / "\udfff"),
        "hf local_dir no text": lambda: blobdl.hf_download(
            "a/b", local_dir=tmp / "\ud800", endpoint=URL
        ),
    }


class _BytesPath(os.PathLike):  # type: ignore[type-arg]
    """An ``os.PathLike`` as a caller may hand one: its ``__fspath__`` gives bytes (or,
    given None, something that is no path at all)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __fspath__(self) -> Any:
        return os.fsencode(self.path) if self.path is not None else 5


CARELESS = list(_careless_calls(Path("/nonexistent")))


@pytest.mark.parametrize("case", CARELESS)
def test_a_careless_argument_is_a_usage_error(case: str, tmp_path: Path) -> None:
    with pytest.raises(blobdl.UsageError):
        _careless_calls(tmp_path)[case]()


def test_a_threaded_callers_values_of_its_own_types_download_as_plain_ones(
    make: Make, tmp_path: Path
) -> None:
    """A str, int or float of a subclass (an enum's member, numpy's float64, a class of the
    caller's script or notebook) was kept as given, and a threaded caller's download sends
    its arguments to a fresh interpreter: one made in a function does not pickle (an
    AttributeError, no blobdl error), one of the script's ``__main__`` cannot be imported
    there (``WorkerCrashed``, a traceback on stderr). A single-threaded caller's worked."""

    class Text(str):
        pass

    class Count(int):
        pass

    class Seconds(float):
        pass

    blob = make(4 * PART, seed=912)
    digest = Text(f"sha256:{blob.sha256}")
    header = (Text("X-Job"), Text("7"))
    settings = {**FAST, "connections": Count(4), "stall_timeout": Seconds(2.0),
                "cache_dir": Text(tmp_path / "cache"), "headers": (header,)}  # fmt: skip
    item = blobdl.Item(Text(blob.url), Text(tmp_path / "two"), digest, (header,),
                       size=Count(blob.size))  # fmt: skip
    with noise():  # a threaded caller
        one = blobdl.download(Text(blob.url), Text(tmp_path / "one"), digest=digest, **settings)
        [two] = blobdl.download_many(
            [item], max_connections=Count(4), per_host=Count(2), **settings
        )
    assert two.error is None, two.error
    assert sha256_file(one.path) == sha256_file(tmp_path / "two") == blob.sha256
    taken = blobdl.Settings(**settings)
    assert type(taken.connections) is int and type(taken.stall_timeout) is float
    assert type(taken.cache_dir) is str and type(taken.headers[0][0]) is str


def test_a_batch_budget_no_machine_can_honour_is_a_usage_error() -> None:
    """Settings caps ``connections`` at 1024; the batch's budget is not capped at all, and
    ``LargeItems`` allocates a list and a shared-memory slot per connection: 10**7 costs
    400 MB before anything is fetched, 10**9 exhausts memory. (1025 allocates nothing much.)"""
    with pytest.raises(blobdl.UsageError):
        blobdl.download_many([], max_connections=1025)


def test_one_url_given_as_the_items_is_a_usage_error() -> None:
    with pytest.raises(blobdl.UsageError):
        blobdl.download_many(URL)


# --- hf_download's patterns ------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubHandle]:
    repo = HubRepo("acme/mixed")
    repo.commit(
        {
            "config.json": b"{}",
            "tokenizer.json": b'{"vocab": {}}',
            "model.safetensors": random.Random(905).randbytes(300_000),
        }
    )
    handle = start_hub(tmp_path_factory.mktemp("hub"), [repo], tokens=("hf_good",))
    yield handle
    handle.stop()


@pytest.mark.parametrize("which", ["include", "exclude"])
def test_a_pattern_given_as_one_string_is_one_pattern(
    which: str, hub: HubHandle, tmp_path: Path
) -> None:
    """huggingface_hub's ``allow_patterns``/``ignore_patterns`` take a str or a list; here
    ``include="*.json"`` fetched every file (a model repository's weights too) and
    ``exclude="*.json"`` fetched nothing, both without a word."""
    kwargs: dict[str, Any] = {which: "*.json"}
    try:
        result = blobdl.hf_download(
            "acme/mixed", cache_dir=tmp_path, endpoint=hub.url, token="hf_good", **kwargs
        )
    except blobdl.UsageError:
        return  # refusing a bare string is as good as reading it as one pattern
    got = sorted(f.path for f in result.files)
    if which == "include":
        assert got == ["config.json", "tokenizer.json"]
    else:
        assert got == ["model.safetensors"]


def test_a_path_given_as_one_string_is_one_path(hub: HubHandle, tmp_path: Path) -> None:
    """``paths="config.json"`` was read as its characters: the call failed with "file not
    found: acme/mixed has no 'c'", a file the caller never named. One string is one path,
    as one string of ``include`` is one pattern (huggingface_hub's ``filename`` is one)."""
    result = blobdl.hf_download(
        "acme/mixed", "config.json", cache_dir=tmp_path, endpoint=hub.url, token="hf_good"
    )
    assert [f.path for f in result.files] == ["config.json"]
    assert result.files[0].local_path.read_bytes() == b"{}"


# --- SIGTERM is Ctrl-C in every library call --------------------------------------------------

# A single-threaded job that calls blobdl CALL(*ARGS, **KWARGS) and is sent SIGTERM (``docker
# stop``, a scheduler's timeout) just before MODULE:ATTR runs; says how the call ended, and
# whether its own SIGTERM disposition is back.
_SIGTERM_AT = """
import importlib, json, os, signal, sys
import blobdl
target, call, given = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
module, _, path = target.partition(":")
owner = importlib.import_module(module)
*heads, name = path.split(".")
for head in heads:
    owner = getattr(owner, head)
original = getattr(owner, name)

def fire(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return original(*args, **kwargs)

setattr(owner, name, fire)
try:
    getattr(blobdl, call)(*given["args"], **given["kwargs"])
    said = "completed"
except blobdl.Interrupted as exc:
    said = f"interrupted by {exc.signum}"
print(said, "| handler back:", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""


def sigterm_at(target: str, call: str, *args: Any, **kwargs: Any) -> str:
    given = json.dumps({"args": args, "kwargs": kwargs})
    done = subprocess.run([sys.executable, "-c", _SIGTERM_AT, target, call, given],
                          capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr)
    return done.stdout.strip()


def test_sigterm_while_a_pull_reads_its_manifest_is_an_interrupt(
    registry: Registry, tmp_path: Path
) -> None:
    """The CLI's every command takes SIGTERM as Ctrl-C; a library caller's ``pull`` did only
    while one of its layers downloaded: before (the manifest, the store's claims) and
    between rounds, SIGTERM killed the caller (exit 143), its ``except`` never run."""
    model = registry.push_model("library/stopped", "v1", (100 * 1024, 10))
    where = f"http://{registry.host}/{model.repo}:{model.tag}"
    said = sigterm_at("blobdl.registry._pull:Registry.manifest", "pull", where,
                      str(tmp_path / "models"), insecure=True)  # fmt: skip
    assert said == "interrupted by 15 | handler back: True"


def test_sigterm_while_hf_download_lists_the_repository_is_an_interrupt(
    hub: HubHandle, tmp_path: Path
) -> None:
    said = sigterm_at("blobdl.hf._download:_look", "hf_download", "acme/mixed",
                      cache_dir=str(tmp_path), endpoint=hub.url, token="hf_good")  # fmt: skip
    assert said == "interrupted by 15 | handler back: True"


# --- a signal while a callback waits ----------------------------------------------------------

WAITS = 30.0  # seconds a callback waits for what never comes, unless the signal cuts it short


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("mode", ["download", "many"])
def test_a_signal_stops_a_callback_that_waits(
    mode: str, signum: int, make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A single-threaded caller's callback that waits (on a queue, a lock, the network,
    another download of its own) is the caller's code: Ctrl-C or SIGTERM cuts it short,
    as anywhere else. Under the coordinator's (or the batch's) loop a signal was only noted
    for the loop's next look, and that look came only once the callback returned: a
    callback waiting for ever could not be stopped but by SIGKILL."""
    assert threading.active_count() == 1  # the caller's own process runs the loop
    blob = make(16 * PART, seed=906)
    slow_down(server, blob, bps=SLOWEST)
    out = tmp_path / "out"
    waited: list[bool] = []
    told: list[type] = []

    def wait_for_nothing(event: Any) -> None:
        event = getattr(event, "event", event)  # a batch's event wraps the download's
        told.append(type(event))
        if waited or not (isinstance(event, blobdl.Progress) and event.done > 0):
            return
        never, _ = os.pipe()
        try:
            os.kill(os.getpid(), signum)
            waited.append(not select.select([never], [], [], WAITS)[0])  # the whole wait
        finally:
            os.close(never)

    with pytest.raises(blobdl.Interrupted) as stopped:
        if mode == "many":
            items = [blobdl.Item(blob.url, str(out))]
            results = blobdl.download_many(items, on_event=wait_for_nothing, **PACED)
            raise results[0].error or AssertionError("completed")
        blobdl.download(blob.url, out, on_event=wait_for_nothing, **PACED)
    assert not waited, "the callback waited its whole wait: the signal did not reach it"
    assert stopped.value.signum == signum
    assert told[-1] is blobdl.Failed  # its last word, as for any stop
    assert temp_path(out).exists() and not out.exists()  # stopped, its partial kept


# --- a callback that calls blobdl again -------------------------------------------------------


@pytest.mark.parametrize("through", ["the cache", "a lock wait"])
def test_a_callback_waiting_for_the_lock_its_own_download_holds_is_refused_not_hung(
    through: str, make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A single-threaded caller's callback that downloads the blob its own download is
    fetching (the same digest into the same cache, or the same destination with a lock
    wait) waited for a lock held up its own stack: a cache entry's for 24 hours, and
    the download it waited for could not go on meanwhile. It is refused at once instead,
    ``DestinationLocked``, as a lock held elsewhere is once the wait is over."""
    assert threading.active_count() == 1  # the caller's own process holds the lock
    blob = make(16 * PART, seed=907)
    slow_down(server, blob)
    if through == "the cache":
        again = {"digest": f"sha256:{blob.sha256}", "cache_dir": str(tmp_path / "cache")}
        inner, outer = tmp_path / "copy", tmp_path / "out"
    else:
        again = {"lock_timeout": 24 * 3600.0}
        inner = outer = tmp_path / "out"
    said: list[BaseException] = []

    def again_from_inside(event: blobdl.Event) -> None:
        if said or not (isinstance(event, blobdl.Progress) and event.done > 0):
            return
        try:
            blobdl.download(blob.url, inner, **again, **FAST)
        except BaseException as exc:  # what the call said is the point
            said.append(exc)

    def hung(_signum: int, _frame: Any) -> None:
        raise TimeoutError("the callback's download waited for its own download's lock")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, 60.0)
    try:
        blobdl.download(blob.url, outer, on_event=again_from_inside, **again, **PACED)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert len(said) == 1 and isinstance(said[0], blobdl.DestinationLocked), said
    # Said as what it is: no "process N" the caller would look for, being N itself.
    assert "this process's own download" in str(said[0])
    # (A word of its own: a cache entry's path holds a digest whose hex may hold the digits.)
    assert not re.search(rf"\b{os.getpid()}\b", str(said[0]))
    assert pickle.loads(pickle.dumps(said[0])).detail == said[0].detail
    assert sha256_file(outer) == blob.sha256  # the outer download went on and finished


# A holder of a destination's lock in another process, which wrote the number it is told
# into the lock file (as a holder in another pid namespace, a container sharing the volume,
# writes its own), and lets go once the waiter (that number) sleeps between two tries
# with the lock file open: it is waiting then, not refused.
HOLDER = """
import fcntl, os, sys, time
lock, waiter = sys.argv[1], sys.argv[2]
fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, waiter.encode(), 0)
print("held", flush=True)

def waiting():
    try:
        opened = any(os.readlink(f"/proc/{waiter}/fd/{n}") == lock
                     for n in os.listdir(f"/proc/{waiter}/fd"))
        with open(f"/proc/{waiter}/wchan") as wchan:
            return opened and wchan.read() == "hrtimer_nanosleep"
    except OSError:
        return False

while not waiting():
    time.sleep(0.005)
os.unlink(lock)
os.close(fd)
"""


def test_a_lock_whose_file_names_our_process_id_but_held_elsewhere_is_waited_for(
    make: Make, tmp_path: Path
) -> None:
    """The process id in a lock file is words for a message, not who holds the lock: a
    holder in another pid namespace (a container sharing the volume) can bear our number,
    and a file left by one of ours that another process has just locked still names us.
    Another process holds that lock: it is waited for (and taken once let go), never
    refused at once as one held up our own call stack."""
    assert threading.active_count() == 1  # single-threaded, as a callback's caller is
    blob = make(PART, seed=911)
    out = tmp_path / "out"
    lock = str(out.with_name(out.name + ".blobdl-lock"))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, lock, str(os.getpid())], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        result = blobdl.download(blob.url, out, lock_timeout=60.0, **FAST)
    finally:
        holder.kill()
        holder.wait()
    assert result.path == out and sha256_file(out) == blob.sha256


# A holder of a destination's lock in another process, which lets go once another process
# of the caller's (a threaded caller's download runs in a clean process) has the lock file
# open to wait for it.
HOLDER_OF_A_THREADED_CALLERS_LOCK = """
import fcntl, os, sys, time
import psutil
lock, caller = sys.argv[1], int(sys.argv[2])
fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)

def waiting():
    for child in psutil.Process(caller).children(recursive=True):
        if child.pid == os.getpid():
            continue
        try:
            if any(os.readlink(f"/proc/{child.pid}/fd/{n}") == lock
                   for n in os.listdir(f"/proc/{child.pid}/fd")):
                return True
        except OSError:
            pass
    return False

while not waiting():
    time.sleep(0.005)
time.sleep(0.2)  # a few of its tries refused meanwhile
os.unlink(lock)
os.close(fd)
"""


def test_a_threaded_callers_download_waits_for_its_lock_held_by_another_process(
    make: Make, tmp_path: Path
) -> None:
    """A threaded caller's download runs in a clean process, which is told what the calls up
    the caller's stack write (a callback's wait for one of those is refused at once): never
    its own destination, whose lock another process holds. It waits for it, as any
    download given a lock timeout does, and takes it once let go."""
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)  # the caller has threads: a clean process
    other.start()
    blob = make(PART, seed=912)
    out = tmp_path / "out"
    lock = str(out.with_name(out.name + ".blobdl-lock"))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_OF_A_THREADED_CALLERS_LOCK, lock, str(os.getpid())],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        result = blobdl.download(blob.url, out, lock_timeout=60.0, **FAST)
        assert holder.wait(timeout=10) == 0  # it saw the download wait, and let go
    finally:
        stop.set()
        other.join()
        holder.kill()
        holder.wait()
    assert result.path == out and sha256_file(out) == blob.sha256
