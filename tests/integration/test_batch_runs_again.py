"""A small item whose pool process dies under it runs again, once (the scheduler's
``_again``): wherever it was going (named after its probe, through the cache, a duplicate's
first, redirected to another host, in a pull, from a threaded caller), it ends exact and
leaves nothing, the budget holds, and a Ctrl-C while it waits to run again still gives it
its last word. One that failed on its own before its process died keeps its own failure."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle
from tests.conftest import REPO, Blob, fast_settings, sha256_file, spawn_cli
from tests.integration.test_batch_ends import _kill_the_writer
from tests.integration.test_batch_small_hostile import _pool_processes

Make = Callable[..., Blob]
SLOW = 10_000  # bytes, paced (4 KB/s): a request under way for seconds


def _slow(server: ServerHandle) -> None:
    server.set_faults({"path": "/files/*", "times": None, "action": "rate", "bps": 4000,
                       "step": 500})  # fmt: skip


class _OnRunAgain(logging.Handler):
    """Calls ``then`` as the scheduler logs that an item runs again (in the scheduler)."""

    def __init__(self, then: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.then = then
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.endswith("run again"):
            self.seen.append(message)
            self.then()


@contextlib.contextmanager
def _hooked(handler: logging.Handler) -> Iterator[None]:
    logger = logging.getLogger("blobdl")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def test_ctrl_c_while_a_rerun_is_queued_still_gives_the_item_its_last_word(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A Ctrl-C that arrives once a dead pool process's item is queued to run again, before
    it is on a seat again: the item was told ``Started`` (its first run), so its callback
    must hear its end (``failed``, the stop), as every item cut under way does."""
    blob = make(SLOW, seed=7700)
    _slow(server)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    events: dict[int, list[blobdl.BatchEvent]] = {}
    killed: list[int] = []
    note = _kill_once_on_progress(before, events, {0}, killed)
    hook = _OnRunAgain(lambda: os.kill(os.getpid(), signal.SIGINT))  # the user's Ctrl-C, now
    items = [Item(blob.url, str(tmp_path / "o"))]
    with _hooked(hook), pytest.raises(blobdl.Interrupted):
        blobdl.download_many(items, on_event=note, settings=fast_settings(processes=1))
    assert killed and hook.seen, (killed, hook.seen)
    told = _names(events[0])
    left = sorted(p.name for p in tmp_path.glob("*.blobdl-*"))
    assert told[0] == "Started", told
    assert told[-1] == "Failed", (
        f"the item started, was cut, and never heard its end: {told}; left {left}"
    )
    assert left == [], left


def _kill_once_on_progress(
    before: set[int], told: dict[int, list[blobdl.BatchEvent]], victims: set[int], killed: list[int]
) -> Callable[[blobdl.BatchEvent], None]:
    """A callback that kills the pool process once every item of ``victims`` is mid-progress
    in its first run."""

    def note(batch_event: blobdl.BatchEvent) -> None:
        told.setdefault(batch_event.item, []).append(batch_event)
        if killed:
            return
        progressed = {i for i, events in told.items()
                      if isinstance(events[-1].event, blobdl.Progress)}  # fmt: skip
        if progressed >= victims:
            (pool,) = _pool_processes(before)
            killed.append(pool.pid)
            pool.kill()

    return note


def _names(events: list[blobdl.BatchEvent]) -> list[str]:
    return [type(e.event).__name__ for e in events]


def test_a_pathless_item_killed_once_runs_again_under_its_name_and_leaves_nothing(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(SLOW, seed=7710)
    _slow(server)
    out = tmp_path / "out"
    out.mkdir()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    told: dict[int, list[blobdl.BatchEvent]] = {}
    killed: list[int] = []
    note = _kill_once_on_progress(before, told, {0}, killed)
    [result] = blobdl.download_many([Item(blob.url)], base_dir=out, on_event=note,
                                    settings=fast_settings(processes=1))  # fmt: skip
    assert killed
    names = _names(told[0])
    assert names.count("Started") == 2 and names[-1] == "Finished", names
    starts = [e.event.path for e in told[0] if isinstance(e.event, blobdl.Started)]
    assert starts[0] == starts[1], starts
    assert result.ok, result
    assert sorted(p.name for p in out.iterdir()) == [blob.name]
    assert sha256_file(out / blob.name) == blob.sha256


def test_a_pathless_item_with_a_relative_base_dir_killed_once_runs_again_there(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = make(SLOW, seed=7711)
    _slow(server)
    monkeypatch.chdir(tmp_path)
    Path("out").mkdir()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    told: dict[int, list[blobdl.BatchEvent]] = {}
    killed: list[int] = []
    note = _kill_once_on_progress(before, told, {0}, killed)
    [result] = blobdl.download_many([Item(blob.url)], base_dir="out", on_event=note,
                                    settings=fast_settings(processes=1))  # fmt: skip
    assert killed
    assert result.ok, result
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "out",
        f"out/{blob.name}",
    ]
    assert sha256_file(tmp_path / "out" / blob.name) == blob.sha256


@pytest.mark.parametrize("pathless", [False, True], ids=["given", "pathless"])
def test_an_item_through_the_cache_killed_once_ends_exact_and_leaves_nothing(
    make: Make, server: ServerHandle, tmp_path: Path, pathless: bool
) -> None:
    blob = make(SLOW, seed=7720)
    _slow(server)
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    told: dict[int, list[blobdl.BatchEvent]] = {}
    killed: list[int] = []
    note = _kill_once_on_progress(before, told, {0}, killed)
    item = Item(blob.url, None if pathless else str(out / "o"), f"sha256:{blob.sha256}")
    settings = fast_settings(processes=1, cache_dir=str(cache))
    [result] = blobdl.download_many([item], on_event=note, base_dir=out if pathless else None,
                                    settings=settings)  # fmt: skip
    assert killed
    assert result.ok, (result, _names(told[0]))
    assert _names(told[0]).count("Started") == 2, _names(told[0])
    dest = out / (blob.name if pathless else "o")
    assert sha256_file(dest) == blob.sha256
    left = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if ".blobdl-" in p.name]
    assert left == [], left


def test_a_duplicate_of_an_item_run_again_shares_its_exact_result(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob, other = make(SLOW, seed=7730), make(SLOW, seed=7731)
    _slow(server)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    told: dict[int, list[blobdl.BatchEvent]] = {}
    killed: list[int] = []
    note = _kill_once_on_progress(before, told, {0, 1}, killed)
    items = [Item(blob.url, str(tmp_path / "o")), Item(other.url, str(tmp_path / "p")),
             Item(blob.url, str(tmp_path / "o"))]  # fmt: skip
    results = blobdl.download_many(items, on_event=note, max_connections=2,
                                   settings=fast_settings(processes=1))  # fmt: skip
    assert killed
    assert [r.ok for r in results] == [True, True, True], results
    assert results[2].result is not None and results[2].result.path == tmp_path / "o"
    assert results[2].result.bytes_fetched == 0
    assert sha256_file(tmp_path / "o") == blob.sha256
    assert sha256_file(tmp_path / "p") == other.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "p"]
    assert 2 not in told, told.get(2)


def test_a_kill_and_rerun_keeps_the_connection_budget(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blobs = [make(4000, seed=7740 + n) for n in range(4)]
    _slow(server)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    told: dict[int, list[blobdl.BatchEvent]] = {}
    killed: list[int] = []
    note = _kill_once_on_progress(before, told, {0, 1}, killed)
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    results = blobdl.download_many(items, on_event=note, max_connections=2,
                                   settings=fast_settings(processes=1))  # fmt: skip
    assert killed
    assert all(r.ok for r in results), results
    stats = server.stats()
    assert stats["max_concurrent"] <= 2, stats


def test_a_rate_limited_batch_killed_mid_item_runs_it_again_exact(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blobs = [make(3000, seed=7750 + n) for n in range(3)]
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    told: dict[int, list[blobdl.BatchEvent]] = {}
    killed: list[int] = []
    note = _kill_once_on_progress(before, told, {0, 1}, killed)
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    settings = fast_settings(processes=1, limit_rate=4000)
    results = blobdl.download_many(items, on_event=note, max_connections=2, settings=settings)
    assert killed
    assert all(r.ok for r in results), results
    for n, b in enumerate(blobs):
        assert sha256_file(tmp_path / f"o{n}") == b.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o0", "o1", "o2"]


@contextlib.contextmanager
def _kill_once_a_leaf_holds(suffix: str, killed: list[int]) -> Iterator[None]:
    """Every 20 ms (SIGALRM, in the main thread: no thread of ours, so the batch runs here),
    look for a leaf process of ours holding a file ending with ``suffix`` open: kill it,
    once."""

    def look(_signum: int, _frame: object) -> None:
        if killed:
            return
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error, OSError):
                if child.children():
                    continue
                if any(f.path.endswith(suffix) for f in child.open_files()):
                    child.kill()
                    killed.append(child.pid)
                    return

    previous = signal.signal(signal.SIGALRM, look)
    signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def hostile() -> Iterator[object]:
    from faultserver.hostile_registry import HostileRegistry

    handle = HostileRegistry()
    yield handle
    handle.stop()


def test_a_pull_whose_layers_pool_process_dies_runs_the_layer_again(
    hostile: object, tmp_path: Path
) -> None:
    from tests.integration.test_pull_hostile import (
        REGISTRY_REPO,
        REGISTRY_TAG,
        fixed_model,
        rule,
        script,
    )  # fmt: skip

    blobs, doc = fixed_model()
    layer = doc["layers"][0]["digest"]
    # The layer's second GET (its look-up's is first) answers with a head that never ends.
    hostile.load(
        script(
            faults=[{**rule("registry", f"blobs/{layer}", trickle_head=0.2), "skip": 1, "times": 1}]
        )
    )  # type: ignore[attr-defined]
    models = tmp_path / "models"
    reference = f"http://127.0.0.1:{hostile.ports['registry']}/{REGISTRY_REPO}:{REGISTRY_TAG}"  # type: ignore[attr-defined]
    killed: list[int] = []
    with _kill_once_a_leaf_holds(".blobdl-lock", killed):
        result = blobdl.pull(reference, models, settings=fast_settings(stall_timeout=10.0))
    assert killed
    log = [(e["method"], e["path"]) for e in hostile.log()]  # type: ignore[attr-defined]
    assert sum(1 for m, p in log if m == "GET" and layer in p) == 3, log  # look-up, killed, again
    assert result is not None
    for digest, data in blobs.items():
        assert (models / "blobs" / digest.replace(":", "-")).read_bytes() == data
    left = [
        str(p.relative_to(models))
        for p in models.rglob("*")
        if p.is_file()
        and (".blobdl-" in str(p.relative_to(models)) or "partial" in str(p.relative_to(models)))
    ]
    assert left == [], left


def test_a_threaded_caller_s_batch_runs_a_killed_item_again(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    import threading

    blobs = [make(SLOW, seed=7760 + n) for n in range(2)]
    _slow(server)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    told: dict[int, list[blobdl.BatchEvent]] = {}
    killed: list[int] = []
    note = _kill_once_on_progress(before, told, {0, 1}, killed)
    items = [Item(b.url, str(tmp_path / f"o{n}")) for n, b in enumerate(blobs)]
    got: list[object] = []

    def run() -> None:
        try:
            got.append(blobdl.download_many(items, on_event=note, max_connections=2,
                                            settings=fast_settings(processes=1)))  # fmt: skip
        except BaseException as exc:
            got.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert killed
    [results] = got
    assert isinstance(results, list), results
    assert all(r.ok for r in results), results
    for n in (0, 1):
        assert _names(told[n]).count("Started") == 2, _names(told[n])
        assert sha256_file(tmp_path / f"o{n}") == blobs[n].sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o0", "o1"]


def test_a_redirect_to_another_host_in_flight_when_killed_keeps_per_host(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """Item 1 is asked of ``other`` (localhost), which redirects it to ``server``
    (127.0.0.1), busy with item 0 under ``per_host=1``: its seat waits to hop. The pool
    process is killed with item 0 mid-progress: both run again, and ``server`` never
    serves more than one at a time."""
    a, b = make(4000, seed=7770), make(4000, seed=7771)
    _slow(server)
    other.set_faults({"path": f"/files/{b.name}", "times": None, "action": "redirect",
                      "location": b.url})  # fmt: skip
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    told: dict[int, list[blobdl.BatchEvent]] = {}
    killed: list[int] = []
    note = _kill_once_on_progress(before, told, {0}, killed)
    items = [Item(a.url, str(tmp_path / "o0")), Item(other.url(b.name), str(tmp_path / "o1"))]
    results = blobdl.download_many(items, on_event=note, max_connections=2, per_host=1,
                                   settings=fast_settings(processes=1))  # fmt: skip
    assert killed
    assert all(r.ok for r in results), results
    assert sha256_file(tmp_path / "o0") == a.sha256 and sha256_file(tmp_path / "o1") == b.sha256
    assert server.stats()["max_concurrent"] <= 1, server.stats()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o0", "o1"]


# The CLI, its Ctrl-C arriving just as the scheduler queues an item to run again (a logging
# handler of this wrapper's sends it then: the window a user's Ctrl-C can fall in, made
# certain). The pool process is killed by the test once it holds the item's lock file.
_CTRL_C_AT_RUN_AGAIN = """
import logging, os, signal, sys
class AtRunAgain(logging.Handler):
    def emit(self, record):
        if record.getMessage().endswith("run again"):
            os.kill(os.getpid(), signal.SIGINT)
import blobdl.cli
from blobdl.cli import run
shown = blobdl.cli.show_warnings
def show_warnings(*args, **kwargs):
    shown(*args, **kwargs)
    logging.getLogger("blobdl").addHandler(AtRunAgain())  # beside the CLI's own
blobdl.cli.show_warnings = show_warnings
sys.argv = ["blobdl", *sys.argv[1:]]
run()
"""


def test_the_cli_ctrl_c_as_a_rerun_is_queued_ends_the_item_in_one_failed_line(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(SLOW, seed=7780)
    _slow(server)
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{blob.url} {tmp_path / 'o'}\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CTRL_C_AT_RUN_AGAIN, "-i", str(manifest), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started["event"] == "started", started
        _kill_the_writer(proc, started["path"])
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = [started, *map(json.loads, stdout.splitlines())]
    assert proc.returncode == 130, (proc.returncode, stderr)
    ends = [r for r in records if r.get("event") in ("finished", "failed") and "item" in r]
    assert len(ends) == 1, f"an item that started has no end line: {records}; {stderr}"
    left = sorted(p.name for p in tmp_path.glob("*.blobdl-*"))
    assert left == [], f"{left}; {records}; {stderr}"


def test_ctrl_c_as_a_dead_pool_process_is_heard_leaves_no_partial(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that arrives as the scheduler hears its pool process died (before it swept
    what that process left): the batch stops, exit 130, and the small item's partial goes
    all the same (a small item starts over: nothing of it is kept)."""
    from blobdl.batch import _seats

    crashed = _seats.died

    def died_then_ctrl_c(*args: object, **kwargs: object) -> object:
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, now
        return crashed(*args, **kwargs)

    monkeypatch.setattr(_seats, "died", died_then_ctrl_c)
    blob = make(SLOW, seed=7790)
    _slow(server)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    killed: list[int] = []
    note = _kill_once_on_progress(before, {}, {0}, killed)
    with pytest.raises(blobdl.Interrupted):
        blobdl.download_many([Item(blob.url, str(tmp_path / "o"))], on_event=note,
                             settings=fast_settings(processes=1))  # fmt: skip
    assert killed
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("heard", [True, False], ids=["callback", "no callback"])
def test_an_item_that_failed_on_its_own_before_its_process_died_keeps_its_own_error(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    heard: bool,
) -> None:  # fmt: skip
    """A seat's item fails on its merits (a digest mismatch, exit 4) and says so (its last
    word, sent even without a callback so that the batch knows it "failed on its own");
    its process dies before the outcome that follows. It is not run again, and its result
    is the failure it told, as a ``Finished`` told is kept, not the process's crash."""
    from blobdl.batch import _pool

    fetch = _pool._fetch

    def fetched_then_killed(*args: object) -> object:
        fetch(*args)
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(_pool, "_fetch", fetched_then_killed)
    blob = make(1000, seed=7800)
    told: list[blobdl.BatchEvent] = []
    item = Item(blob.url, str(tmp_path / "o"), "sha256:" + "0" * 64)
    [result] = blobdl.download_many([item], on_event=told.append if heard else None,
                                    settings=fast_settings())  # fmt: skip
    assert server.stats()["per_path"][f"/files/{blob.name}"] == 1  # not run again
    # Its failure as told (the type stayed with the process that raised it), not the crash.
    error = result.error
    assert error is not None and not isinstance(error, blobdl.WorkerCrashed), error
    assert str(error).startswith("digest mismatch") and error.exit_code == 4, error
    if heard:
        [failed] = [e.event for e in told if isinstance(e.event, blobdl.Failed)]
        assert (failed.error, failed.exit_code) == (str(error), error.exit_code), failed


def test_a_callback_that_starts_a_thread_then_a_kill_runs_the_items_again_off_the_seats(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A callback starts a thread (the process forks no more); the pool process is then
    killed: its items, run again, go to children of their own (``_off_the_seats``), a
    path-less one under the name it was given, and end exact."""
    import threading

    blobs = [make(SLOW, seed=7810 + n) for n in range(2)]
    _slow(server)
    out = tmp_path / "out"
    out.mkdir()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    told: dict[int, list[blobdl.BatchEvent]] = {}
    killed: list[int] = []
    stop = threading.Event()
    waiter = threading.Thread(target=stop.wait, daemon=True)
    kill = _kill_once_on_progress(before, told, {0, 1}, killed)

    def note(batch_event: blobdl.BatchEvent) -> None:
        if not waiter.is_alive() and not stop.is_set():
            waiter.start()
        kill(batch_event)

    from blobdl.batch import _scheduler

    off: list[list[int]] = []
    moved = _scheduler._Scheduler._off_the_seats

    def off_the_seats(self: _scheduler._Scheduler) -> None:
        off.append([i for queue in self.queued.values() for i in queue])
        moved(self)

    monkeypatch.setattr(_scheduler._Scheduler, "_off_the_seats", off_the_seats)
    items = [Item(blobs[0].url, "o0"), Item(blobs[1].url)]
    try:
        results = blobdl.download_many(items, on_event=note, max_connections=2, base_dir=out,
                                       settings=fast_settings(processes=1))  # fmt: skip
    finally:
        stop.set()
    assert killed
    assert all(r.ok for r in results), results
    assert sha256_file(out / "o0") == blobs[0].sha256
    assert sha256_file(out / blobs[1].name) == blobs[1].sha256
    assert sorted(p.name for p in out.iterdir()) == sorted(["o0", blobs[1].name])
    assert off == [[1, 0]] or off == [[0, 1]], off


def test_the_cli_ctrl_c_while_an_item_runs_again_ends_it_in_one_failed_line(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blobs = [make(SLOW, seed=7820 + n) for n in range(2)]
    _slow(server)
    manifest = tmp_path / "manifest"
    manifest.write_text("".join(f"{b.url} {tmp_path / f'o{n}'}\n" for n, b in enumerate(blobs)))
    proc = spawn_cli("-i", str(manifest), "--json", "--connections", "2")
    lines: list[dict[str, object]] = []
    try:
        assert proc.stdout is not None
        starts = 0
        for line in proc.stdout:
            lines.append(json.loads(line))
            if lines[-1].get("event") != "started" or lines[-1]["item"] != 0:
                continue
            starts += 1
            if starts == 1:
                _kill_the_writer(proc, str(lines[-1]["path"]))
            else:  # item 0 runs again: Ctrl-C now
                proc.send_signal(signal.SIGINT)
                break
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = [*lines, *map(json.loads, stdout.splitlines())]
    assert proc.returncode == 130, (proc.returncode, stderr)
    for n in (0, 1):
        ends = [r for r in records if r.get("item") == n and r["event"] in ("finished", "failed")]
        assert len(ends) == 1, (n, records)
    left = sorted(p.name for p in tmp_path.glob("*.blobdl-*"))
    assert left == [], left
