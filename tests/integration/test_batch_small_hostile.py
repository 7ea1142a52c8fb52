"""A batch's small items, their progress told, under a hostile hand: the pool process killed
while its items are mid-progress. Each of its items gets one last word, after every event of
its own, the others go on, and nothing of a failed small item is left (it starts over: a
partial without a record would only be litter)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, fast_settings, sha256_file

Make = Callable[..., Blob]
SLOW = 10_000  # bytes, a kilobyte at a time at 4 KB/s: about 2.5 s, one request


def _pool_processes(before: set[int]) -> list[psutil.Process]:
    """The batch's pool processes: children of ours, born since ``before``, forking nothing."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.pid not in before and not proc.children():
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.parametrize(
    ("signum", "kills"),
    [(signal.SIGKILL, 1), (signal.SIGKILL, 2), (signal.SIGTERM, 2)],
    ids=["SIGKILL-once", "SIGKILL-twice", "SIGTERM-twice"],
)
def test_a_pool_process_killed_mid_progress_has_its_items_run_again_once_and_leaves_nothing(
    make: Make, server: ServerHandle, tmp_path: Path, signum: int, kills: int
) -> None:
    """A pool process dies (killed, the OOM killer's pick) while its three items are mid-
    progress: each is run again on the pool forked again, its callback told it started
    again, and ends exact. Killed again in that run too, each fails saying its process died
    (an item that kills its process each time ends), told so once, and leaves nothing."""
    blobs = [make(SLOW, seed=4400 + n) for n in range(3)]
    server.set_faults({"path": "/files/*", "times": None, "action": "rate", "bps": 4000,
                       "step": 1000})  # fmt: skip
    quick = make(1000, seed=4410)  # listed last: it runs on the pool forked again
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # the test server
    told: dict[int, list[str]] = {}
    killed: list[int] = []

    def note(batch_event: blobdl.BatchEvent) -> None:
        told.setdefault(batch_event.item, []).append(type(batch_event.event).__name__)
        run = len(killed) + 1  # each slow item's run under way: its first, then its second
        progressed = {i for i, names in told.items()
                      if names.count("Started") == run and names[-1] == "Progress"}  # fmt: skip
        if len(killed) < kills and progressed >= {0, 1, 2}:  # every slow item mid-progress
            (pool,) = _pool_processes(before | set(killed))
            killed.append(pool.pid)
            pool.send_signal(signum)

    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate([*blobs, quick])]
    settings = fast_settings(progress_interval=0.1, processes=1)
    results = blobdl.download_many(items, max_connections=3, on_event=note, settings=settings)
    assert len(killed) == kills
    for n in range(3):
        names = told[n]
        assert names[0] == "Started" and names.count("Started") == 2, names  # again once
        again = names.index("Started", 1)
        runs = [names[1:again], names[again + 1 :]]
        assert set(runs[0]) == {"Progress"}, names  # its first run cut, saying nothing of it
        if kills == 1:
            assert results[n].ok, results[n]
            assert sha256_file(tmp_path / f"o{n}") == blobs[n].sha256
            assert runs[1][-1] == "Finished" and set(runs[1][:-1]) <= {"Progress"}, names
        else:
            assert "download process died" in str(results[n].error), results[n]
            assert runs[1][-1] == "Failed" and set(runs[1][:-1]) == {"Progress"}, names
            assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f"o{n}")) == []
    assert results[3].ok, results[3]
    assert sha256_file(tmp_path / "o3") == quick.sha256
    assert not list(tmp_path.glob("*.blobdl-*"))  # no lock file, partial or state left


@pytest.mark.parametrize("outcome_sent", [True, False], ids=["its-outcome-sent", "told-only"])
def test_a_pool_process_killed_after_its_renames_leaves_them_made_durable(
    make: Make,
    server: ServerHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    outcome_sent: bool,
) -> None:
    """A pool process fsyncs the directories its seats renamed items in only as it ends. One
    killed before then (the OOM killer, a user) never does: the items it said were done
    are in place, reported so, yet a crash could still lose their renames. The batch
    returns only once they are durable: someone fsyncs the folder of the item it finished.
    Killed as the callback hears ``Finished`` (``told-only``: the seat's outcome message,
    which follows that event, not sent yet), the item has finished all the same: its
    result is the one ``Finished`` told, never the process's crash."""
    from blobdl.batch import _pool, _seats

    if not outcome_sent:  # the seat holds the first item's outcome back till it is killed
        fetch = _pool._fetch

        def held_back(seat: Any, job: Any, line: Any) -> Any:
            answer = fetch(seat, job, line)
            if job.number == 0:
                time.sleep(30)
            return answer

        monkeypatch.setattr(_pool, "_fetch", held_back)

    synced = tmp_path / "synced"

    def note(directory: Path) -> None:  # in the pool's forked processes and in the scheduler
        with open(synced, "a") as notes:
            notes.write(f"{directory}\n")

    monkeypatch.setattr(_pool, "sync_dir_quietly", note)
    monkeypatch.setattr(_seats, "sync_dir_quietly", note, raising=False)
    done, running = make(100, seed=4420), make(SLOW, seed=4421)
    server.set_faults({"path": f"/files/{running.name}", "times": None, "action": "rate",
                       "bps": 4000, "step": 1000})  # fmt: skip
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # the test server
    killed: list[int] = []

    def kill_after_the_first(batch_event: blobdl.BatchEvent) -> None:
        if batch_event.item == 0 and isinstance(batch_event.event, blobdl.Finished):
            (pool,) = _pool_processes(before)
            killed.append(pool.pid)
            pool.kill()

    items = [Item(done.url, str(first / "o0")), Item(running.url, str(second / "o1"))]
    settings = fast_settings(processes=1)
    results = blobdl.download_many(items, max_connections=2, on_event=kill_after_the_first,
                                   settings=settings)  # fmt: skip
    assert killed and results[0].ok, results
    assert sha256_file(first / "o0") == done.sha256
    notes = synced.read_text().split("\n") if synced.exists() else []
    assert str(first) in notes, notes
    assert results[1].ok, results  # the item it was running ran again, on its next fork
    assert sha256_file(second / "o1") == running.sha256


def test_a_pool_process_killed_at_its_end_before_its_fsyncs_leaves_them_made_durable(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Told to end, a pool process's last work is the fsync of the folders its seats renamed
    items in. Killed right then (the OOM killer), it never makes them: the scheduler, hearing
    it ended killed, makes them itself before the batch returns."""
    from blobdl.batch import _pool, _seats

    synced, scheduler = tmp_path / "synced", os.getpid()

    def killed(directory: Path) -> None:  # in the pool process: its end's first fsync
        assert os.getpid() != scheduler, "the pool's fsync, called in the scheduler"
        os.kill(os.getpid(), signal.SIGKILL)

    def note(directory: Path) -> None:  # in the scheduler
        with open(synced, "a") as notes:
            notes.write(f"{directory}\n")

    monkeypatch.setattr(_pool, "sync_dir_quietly", killed)
    monkeypatch.setattr(_seats, "sync_dir_quietly", note)
    blob = make(100, seed=4425)
    folder = tmp_path / "folder"
    folder.mkdir()
    results = blobdl.download_many([Item(blob.url, str(folder / "o0"))],
                                   settings=fast_settings(processes=1))  # fmt: skip
    assert results[0].ok, results
    assert sha256_file(folder / "o0") == blob.sha256
    notes = synced.read_text().split("\n") if synced.exists() else []
    assert str(folder) in notes, notes


@pytest.mark.parametrize("fork_too", [False, True], ids=["mid-item", "its-fork-as-it-starts"])
def test_a_pool_process_stopped_is_killed_once_silent_for_the_stall_timeout(
    make: Make, server: ServerHandle, tmp_path: Path, fork_too: bool, caplog: Any
) -> None:
    """A pool process that stops running (SIGSTOP, a debugger, a machine swapping it out)
    is a stalled worker: its seats' items make no progress, and their own timeouts cannot
    fire in a process that does not run. Once it has given no sign of life for the stall
    timeout (2 s here) it is killed, saying so, and forked again: its items run again there
    and end exact. The fork may stop itself too as it starts (a debugger following forks),
    before it tells the scheduler its seats started: killed and forked once more. The
    batch ends before an outside hand resumes them, 20 s later (never, if it is sound)."""
    blobs = [make(SLOW, seed=4430 + n) for n in range(2)]
    server.set_faults({"path": "/files/*", "times": None, "action": "rate", "bps": 4000,
                       "step": 1000})  # fmt: skip
    quick = make(1000, seed=4440)  # listed last: it runs on a pool forked again
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # the test server
    told: dict[int, list[str]] = {}
    resumers: list[subprocess.Popen[bytes]] = []
    armed: list[bool] = []  # the next fork stops itself in its child
    resumed = tmp_path / "resumed"

    def stop_self() -> None:
        if armed:
            os.kill(os.getpid(), signal.SIGSTOP)

    os.register_at_fork(after_in_child=stop_self, after_in_parent=armed.clear)

    def note(batch_event: blobdl.BatchEvent) -> None:
        told.setdefault(batch_event.item, []).append(type(batch_event.event).__name__)
        progressed = {i for i, names in told.items() if "Progress" in names}
        if not resumers and progressed >= {0, 1}:  # both slow items are mid-progress
            (pool,) = _pool_processes(before)
            pool.suspend()
            # Another process resumes whichever pool is stopped, and leaves a mark (a
            # thread here would change how the batch forks).
            resume = f"sleep 20; touch {resumed}; pkill -CONT -P {os.getpid()}"
            resumers.append(subprocess.Popen(["sh", "-c", resume]))
            if fork_too:
                armed.append(True)  # the pool forked again after this one is killed

    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate([*blobs, quick])]
    try:
        results = blobdl.download_many(items, max_connections=2, on_event=note,
                                       settings=fast_settings(processes=1))  # fmt: skip
    finally:
        armed.clear()
        for resumer in resumers:
            resumer.kill()
            resumer.wait()
        _kill_born_since(before)  # never a stopped leftover
    assert resumers
    assert not resumed.exists()  # the batch ended before the outside hand resumed it
    said = [r.getMessage() for r in caplog.records]
    for n in range(2):
        assert results[n].ok, results[n]
        assert sha256_file(tmp_path / f"o{n}") == blobs[n].sha256
        assert told[n].count("Started") == 2 and told[n][-1] == "Finished", told[n]
        assert f"items[{n}]: download process (silent for 2 s, killed) died" in "\n".join(said)
    assert results[2].ok, results[2]
    assert sha256_file(tmp_path / "o2") == quick.sha256
    assert not list(tmp_path.glob("*.blobdl-*"))  # no lock file, partial or state left


def test_a_pool_process_telling_progress_seldom_still_beats_and_is_never_taken_for_stalled(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A progress interval longer than the stall timeout (10 s, 2 s here) does not space the
    pool's beats: it beats every quarter of the stall timeout all the same, so a slow item
    that runs well (5 s) is never killed as silent."""
    blob = make(2 * SLOW, seed=4450)
    server.set_faults({"path": "/files/*", "times": None, "action": "rate", "bps": 4000,
                       "step": 1000})  # fmt: skip
    settings = fast_settings(processes=1, progress_interval=10.0)
    results = blobdl.download_many([Item(blob.url, str(tmp_path / "o0"))], settings=settings)
    assert results[0].ok, results[0]
    assert sha256_file(tmp_path / "o0") == blob.sha256


def _kill_born_since(before: set[int]) -> None:
    for proc in psutil.Process().children(recursive=True):
        if proc.pid not in before:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def test_a_pool_whose_every_fork_stops_itself_fails_its_items_instead_of_hanging(
    make: Make, server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Something stops every process the batch forks (a debugger following forks): each
    fork of the pool is killed once silent for the stall timeout as it starts, a few in a
    row, then heard dead as any pool process that dies, with the batch's signals checked in
    between; its items fail saying so, and the batch ends before an outside hand, 60 s
    later, resumes anything."""
    from blobdl.batch import _pool

    blobs = [make(1000, seed=4470 + n) for n in range(2)]
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # the test server
    resumed = tmp_path / "resumed"
    armed = [True]  # every fork stops itself in its child, until the batch is over

    def stop_self() -> None:
        if armed:
            os.kill(os.getpid(), signal.SIGSTOP)

    os.register_at_fork(after_in_child=stop_self)
    resume = f"sleep 60; touch {resumed}; pkill -CONT -P {os.getpid()}"
    resumer = subprocess.Popen(["sh", "-c", resume], start_new_session=True)
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    try:
        # Its items run again once their pool is heard dead: GO_TRIES forks more, each
        # killed after the stall timeout (1 s here: every fork stops, none is spared).
        settings = fast_settings(processes=1, stall_timeout=1.0)
        results = blobdl.download_many(items, max_connections=2, settings=settings)
    finally:
        armed.clear()
        resumer.kill()
        resumer.wait()
        _kill_born_since(before)  # never a stopped leftover
    assert not resumed.exists()  # the batch ended before the outside hand resumed it
    # Each pool forked for the batch is tried GO_TRIES times in all, no more, no fewer.
    tries = caplog.text.count("as it started: killed")
    assert tries and tries % _pool.GO_TRIES == 0, caplog.text
    for n in range(2):
        assert "download process died" in str(results[n].error), results[n]
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f"o{n}")) == []
