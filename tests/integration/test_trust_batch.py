"""Trust issue #9 (batch): children die with their parent, Ctrl-C never deadlocks, manifest
paths stay inside --base-dir, and the connection budget counts every socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import blobdl
from blobdl import Item
from blobdl.store._resume import claims_bytes
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, REPO, Blob, fast_settings, run_cli, sha256_file

Make = Callable[..., Blob]
BPART = 4 * PART
DEADLINE = 20.0  # generous bound on "promptly": a deadlock never meets it, a slow box does


def pace(server: ServerHandle, bps: int) -> None:
    server.set_faults({"path": "/files/*", "times": None, "action": "rate", "bps": bps,
                       "method": "GET"})  # fmt: skip


def spawn_batch(manifest: Path, out: Path, *args: str) -> subprocess.Popen[bytes]:
    """``blobdl -i MANIFEST`` in the background; its stdout goes to a file nobody must drain."""
    with (out / "stdout.txt").open("wb") as stdout:
        return subprocess.Popen(
            [sys.executable, "-m", "blobdl", "-i", str(manifest), "--json", *args],
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=REPO,
            start_new_session=True,  # its own process group, for a terminal's Ctrl-C
        )


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Processes still running (a zombie waiting for a reaper has already let go of
    everything it held)."""
    left = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.fixture
def reaper() -> Iterator[list[psutil.Process]]:
    """Processes a test recorded: whatever is still alive at the end is killed."""
    procs: list[psutil.Process] = []
    yield procs
    for proc in alive(procs):
        proc.kill()


# --- 9: batch process death -----------------------------------------------------------------


def test_sigkilled_batch_leaves_no_process_and_the_rerun_resumes(
    make: Make, server: ServerHandle, tmp_path: Path, reaper: list[psutil.Process]
) -> None:
    blobs = [make(32 * PART, seed=900 + i) for i in range(2)]
    outs = [tmp_path / f"out-{i}" for i in range(2)]
    manifest = tmp_path / "manifest"
    # Digests: each item forks a hasher as well as its workers.
    manifest.write_text(
        "".join(f"{b.url} {o} sha256:{b.sha256}\n" for b, o in zip(blobs, outs, strict=True))
    )
    pace(server, 10_000)
    args = ("--connections", "4", "--per-host", "4", "--min-part-size", str(BPART),
            "--max-part-size", str(BPART), "--checkpoint-interval", "0.05")  # fmt: skip
    proc = spawn_batch(manifest, tmp_path, *args)
    try:
        states = [o.with_name(o.name + ".blobdl-state") for o in outs]
        wait_for(lambda: any(s.exists() for s in states), "a checkpoint")
        tree = psutil.Process(proc.pid).children(recursive=True)
        reaper.extend(tree)
        assert len(tree) >= 3  # items, their workers and hashers
        proc.kill()
        proc.wait()
    finally:
        assert proc.stderr is not None
        proc.stderr.close()
    deadline = time.monotonic() + DEADLINE
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(tree), f"left running after the batch was SIGKILLed: {alive(tree)}"
    recorded = [n for n, state in enumerate(states) if state.exists()]
    server.reset()
    rerun = run_cli("-i", str(manifest), "--json", *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "locked" not in rerun.stderr
    for blob, out in zip(blobs, outs, strict=True):
        assert sha256_file(out) == blob.sha256
    # What had a record was resumed, not refetched (an item without one starts over, and
    # its first GET may cost up to one request's worth more).
    finished = {e["item"]: e for e in map(json.loads, rerun.stdout.splitlines())
                if e["event"] == "finished"}  # fmt: skip
    for n in recorded:
        assert finished[n]["resumed"] > 0, finished[n]
        assert finished[n]["bytes_fetched"] == blobs[n].size - finished[n]["resumed"]


def test_sigkilled_single_download_leaves_no_worker_or_hasher(
    make: Make, server: ServerHandle, tmp_path: Path, reaper: list[psutil.Process]
) -> None:
    blob = make(32 * PART, seed=905)
    out = tmp_path / "one"
    pace(server, 10_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "blobdl", blob.url, "-o", str(out), "--digest", blob.sha256,
         "-q", "--min-part-size", str(BPART), "--max-part-size", str(BPART),
         "--checkpoint-interval", "0.05"],
        cwd=REPO,
    )  # fmt: skip
    try:
        wait_for(out.with_name(out.name + ".blobdl-state").exists, "a checkpoint")
        tree = psutil.Process(proc.pid).children(recursive=True)
        reaper.extend(tree)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + DEADLINE
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(tree)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "Ctrl-C to the process group"])
def test_stopping_a_batch_item_with_thousands_of_parts_exits_130(
    make: Make, server: ServerHandle, tmp_path: Path, how: str
) -> None:
    blob = make(3 << 20, seed=910)
    out = tmp_path / "many-parts"
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{blob.url} {out}\n")
    server.set_faults({"path": "/files/*", "times": None, "action": "ttfb", "delay": 0.05,
                       "method": "GET"})  # fmt: skip
    # 1 KiB parts: 3072 of them, so one Progress event is far beyond a pipe's 64 KiB.
    proc = spawn_batch(manifest, tmp_path, "--connections", "4", "--min-part-size", "1KB",
                       "--max-part-size", "1KB", "--checkpoint-interval", "0.05",
                       "--progress-interval", "0.05")  # fmt: skip
    state = out.with_name(out.name + ".blobdl-state")
    try:
        # A checkpoint may be saved before any byte landed, and a run stopped then keeps
        # nothing (by design): wait for one that claims bytes, or the outcome is a race.
        wait_for(lambda: claims_bytes(state), "a checkpoint that claims bytes")
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        elif how == "SIGINT":
            proc.send_signal(signal.SIGINT)
        else:  # what a terminal does: every process of the group gets it
            os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=DEADLINE) == 130
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert state.exists() and out.with_name(out.name + ".blobdl-tmp").exists()
    assert not out.exists()


def test_an_item_whose_parent_vanishes_while_it_sends_exits(
    make: Make, server: ServerHandle, tmp_path: Path, reaper: list[psutil.Process]
) -> None:
    """SIGKILL a ``download_many`` caller that has three items running: the siblings hold
    each other's pipes no longer, so no item blocks forever on a pipe nobody reads."""
    blobs = [make(16 * PART, seed=920 + i) for i in range(3)]
    pace(server, 10_000)  # parts of 256 KiB: the first 64 KiB at once, then slowly
    code = (
        "import sys, blobdl; from tests.conftest import fast_settings;"
        "items = [blobdl.Item(u, sys.argv[1] + '/o' + str(n)) for n, u in enumerate(sys.argv[2:])];"
        "blobdl.download_many(items, settings=fast_settings(connections=2, progress_interval=0.01,"
        " checkpoint_interval=0.05, min_part_size=262144, max_part_size=262144))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path), *(b.url for b in blobs)], cwd=REPO
    )
    try:
        wait_for(lambda: len(list(tmp_path.glob("*.blobdl-state"))) == 3, "three items running")
        tree = psutil.Process(proc.pid).children(recursive=True)
        reaper.extend(tree)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + DEADLINE
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(tree)


# --- 13: manifest paths and --base-dir ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/etc/evil", "absolute"),
        ("../evil", "outside"),
        ("sub/../../evil", "outside"),
        ("escape/evil", "outside"),  # a symlinked directory leading out of the base
        ("sub/..", "outside"),
    ],
)
def test_base_dir_refuses_paths_leaving_it(
    make: Make, tmp_path: Path, path: str, problem: str
) -> None:
    blob = make(PART, seed=930)
    base, outside = tmp_path / "base", tmp_path / "outside"
    (base / "sub").mkdir(parents=True)
    outside.mkdir()
    (base / "escape").symlink_to(outside)
    manifest = tmp_path / "manifest"
    manifest.write_text(f"# first\n{blob.url} ok\n{blob.url} {path}\n")
    result = run_cli("-i", str(manifest), "--base-dir", str(base))
    assert result.returncode == 2, result.stderr
    assert "line 3" in result.stderr and problem in result.stderr
    assert not (base / "ok").exists()  # refused before anything was fetched
    assert list(outside.iterdir()) == [] and not (tmp_path / "evil").exists()
    with pytest.raises(blobdl.UsageError, match=rf"items\[1\].*{problem}"):
        blobdl.download_many([Item(blob.url, "ok"), Item(blob.url, path)], base_dir=base,
                             settings=fast_settings())  # fmt: skip


def test_base_dir_refuses_a_symlinked_file_leading_out(make: Make, tmp_path: Path) -> None:
    blob = make(PART, seed=931)
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious")
    (base / "link").symlink_to(outside / "victim")
    with pytest.raises(blobdl.UsageError, match=r"items\[0\].*outside"):
        blobdl.download_many([Item(blob.url, "link")], base_dir=base, settings=fast_settings())
    assert (outside / "victim").read_bytes() == b"precious"


def test_base_dir_holds_relative_paths_and_server_names(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = [make(PART, seed=932), make(2 * PART, seed=933)]
    base = tmp_path / "base"
    (base / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # a name must not land in the working directory
    items = [Item(blobs[0].url, "sub/a"), Item(blobs[1].url)]
    results = blobdl.download_many(items, base_dir=str(base), settings=fast_settings())
    assert all(r.ok for r in results), results
    assert [r.item for r in results] == items  # the caller's items, as given
    assert sha256_file(base / "sub" / "a") == blobs[0].sha256
    assert sha256_file(base / blobs[1].name) == blobs[1].sha256
    assert not (tmp_path / blobs[1].name).exists()


def test_a_server_name_that_is_a_symlink_out_of_base_dir_is_refused(
    make: Make, tmp_path: Path
) -> None:
    blob = make(PART, seed=934)
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / blob.name).symlink_to(outside / "victim")
    [result] = blobdl.download_many([Item(blob.url)], base_dir=base, settings=fast_settings())
    assert isinstance(result.error, blobdl.UsageError) and "outside" in str(result.error)
    assert not (outside / "victim").exists()


def test_without_base_dir_manifest_paths_are_kept_as_given(make: Make, tmp_path: Path) -> None:
    blob = make(PART, seed=935)
    manifest = tmp_path / "m"
    manifest.write_text(f"{blob.url} {tmp_path / 'abs'}\n")
    assert run_cli("-i", str(manifest)).returncode == 0
    assert sha256_file(tmp_path / "abs") == blob.sha256


def test_help_states_the_replace_rule() -> None:
    text = " ".join(run_cli("--help").stdout.split())
    assert "--base-dir" in text
    assert "kept if its digest matches" in text and "replaced" in text and "--force" in text


# --- 14: the connection budget counts sockets -----------------------------------------------


def test_a_batch_never_opens_more_sockets_than_its_budget(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blobs = [make(2 * BPART + i, seed=940 + i) for i in range(10)]
    manifest = tmp_path / "manifest"
    manifest.write_text("".join(f"{b.url} {tmp_path / f'o{i}'}\n" for i, b in enumerate(blobs)))
    pace(server, 2_000_000)
    result = run_cli("-i", str(manifest), "--connections", "8", "--per-host", "8",
                     "--min-part-size", str(BPART), "--max-part-size", str(BPART))  # fmt: skip
    assert result.returncode == 0, result.stderr
    stats = server.stats()
    assert stats["max_concurrent"] <= 8, stats["max_concurrent"]
    assert stats["connections"] >= len(blobs)


def test_a_probe_through_a_redirect_to_another_host_holds_one_socket(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The hop that redirected is not kept alive while the next host is asked: with
    'localhost' redirecting to '127.0.0.1' (two hosts, one server), the probe held both."""
    blob = make(4 * PART, seed=945)
    url = server.route(f"/redirect-abs/1/{blob.name}").replace("127.0.0.1", "localhost")
    budget = 1
    settings = fast_settings(connections=budget)
    [result] = blobdl.download_many([Item(url, str(tmp_path / "o"))], max_connections=budget,
                                    settings=settings)  # fmt: skip
    assert result.ok and sha256_file(tmp_path / "o") == blob.sha256
    assert server.stats()["max_concurrent"] <= budget
    server.reset()
    blobdl.download(url, tmp_path / "single", settings=settings)
    assert server.stats()["max_concurrent"] <= budget


def test_a_url_refresh_while_lanes_run_stays_within_the_connections(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A 403 on a redirected URL re-resolves it while the other lane keeps running."""
    blob = make(16 * PART, seed=946)
    url = server.route(f"/redirect-abs/1/{blob.name}").replace("127.0.0.1", "localhost")
    server.set_faults(
        # GETs of the file: the probe's last hop, lane 1, then lane 2 is refused (expired)
        {"path": f"/files/{blob.name}", "skip": 2, "times": 1, "action": "status",
         "status": 403, "method": "GET"},
        {**RATE, "bps": 500_000},
    )  # fmt: skip
    result = blobdl.download(url, tmp_path / "o", settings=fast_settings(connections=2))
    assert sha256_file(result.path) == blob.sha256
    assert server.stats()["per_path"][f"/redirect-abs/1/{blob.name}"] == 2  # refreshed once
    assert server.stats()["max_concurrent"] <= 2


def test_a_cache_hit_that_turns_out_rotten_fetches_within_the_budget(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A cache hit was forked with no connections granted; when the entry fails its
    check the item fetches after all, and must do so inside the budget."""
    rotten, other = make(8 * PART, seed=947), make(8 * PART, seed=948)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"sha256-{rotten.sha256}").write_bytes(b"rot" * 1000)
    pace(server, 1_000_000)
    items = [Item(rotten.url, str(tmp_path / "a"), rotten.sha256),
             Item(other.url, str(tmp_path / "b"), other.sha256)]  # fmt: skip
    settings = fast_settings(connections=4, cache_dir=str(cache), verify_cache=True)
    results = blobdl.download_many(items, max_connections=2, settings=settings)
    assert all(r.ok for r in results), results
    assert sha256_file(tmp_path / "a") == rotten.sha256
    assert server.stats()["max_concurrent"] <= 2


RATE = {"path": "/files/*", "times": None, "action": "rate", "bps": 1_000_000, "method": "GET"}
ABANDONED = {
    # a lane that goes silent: the stall detector kills its worker and starts another
    "stall": ([{"path": "/files/*", "times": 2, "skip": 1, "action": "stall_after",
                "bytes": 1000, "hold": 30, "method": "GET"}, RATE],
              {"stall_timeout": 0.3, "steal": False}),
    # pacing gaps longer than the stall timeout: killed while the server sleeps between chunks
    "slow": ([{**RATE, "bps": 100_000}], {"stall_timeout": 0.3, "steal": False,
                                          "min_part_size": 4 * PART, "max_part_size": 4 * PART}),
    # a slow lane (its connection: a lane asks in chunks) taken over or restarted: its
    # worker is killed and another starts at once
    "takeover": ([{**RATE, "times": 1, "skip": 1, "action": "slow_conn", "bps": 5_000}, RATE],
                 {"min_steal_size": PART, "min_part_size": 4 * PART, "max_part_size": 4 * PART}),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(ABANDONED))
def test_abandoned_connections_keep_a_download_within_its_connections(
    make: Make, server: ServerHandle, tmp_path: Path, case: str
) -> None:
    blob = make(32 * PART, seed=950)
    rules, overrides = ABANDONED[case]
    server.set_faults(*rules)
    result = blobdl.download(blob.url, tmp_path / "o", settings=fast_settings(connections=2,
                             **overrides))  # fmt: skip
    assert sha256_file(result.path) == blob.sha256
    assert result.retries + result.steals > 0  # connections really were abandoned
    assert server.stats()["max_concurrent"] <= 2


def test_json_progress_of_a_batch_is_still_one_line_per_event(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(PART, seed=960)
    manifest = tmp_path / "m"
    manifest.write_text(f"{blob.url} {tmp_path / 'o'}\n")
    result = run_cli("-i", str(manifest), "--json")
    assert result.returncode == 0
    assert all(json.loads(line) for line in result.stdout.splitlines())
    assert os.path.exists(tmp_path / "o")


def stopped_json_batch(
    manifest: Path, tmp_path: Path, item: int | None, signum: int, *args: str
) -> list[dict[str, Any]]:
    """``blobdl -i MANIFEST --json`` stopped by ``signum`` once ``item`` (any, if None) has
    started; it must exit 130. Its JSON records."""
    proc = spawn_batch(manifest, tmp_path, *args)
    stdout = tmp_path / "stdout.txt"

    def records() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stdout.read_text().splitlines() if line.strip()]

    def started() -> bool:
        return any(r.get("event") == "started" and item in (None, r.get("item"))
                   for r in records())  # fmt: skip

    try:
        wait_for(started, f"item {item}'s start")
        proc.send_signal(signum)
        assert proc.wait(timeout=DEADLINE) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    return records()


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_a_stopped_batch_tells_json_readers_how_each_running_item_ended(
    make: Make, server: ServerHandle, tmp_path: Path, how: str
) -> None:
    """``--json`` gives every item a last word: an item that started and was cut by the stop
    gets its ``failed`` event (exit 130), as one that ended on its own gets ``finished``."""
    small, large = make(1000, seed=930), make(16 * PART, seed=931)
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{small.url} {tmp_path / 'small'}\n{large.url} {tmp_path / 'large'}\n")
    pace(server, 20_000)  # the large one takes minutes
    records = stopped_json_batch(manifest, tmp_path, 1, getattr(signal, how), "--min-part-size",
                                 "256KB", "--max-part-size", "256KB", "--checkpoint-interval",
                                 "0.05")  # fmt: skip
    last = {r["item"]: r for r in records if r.get("event") in ("finished", "failed")}
    started = {r["item"] for r in records if r.get("event") == "started"}
    assert started <= set(last), (started, last)  # every item that started has its last word
    assert last[1]["event"] == "failed" and last[1]["exit_code"] == 130, last[1]


@pytest.mark.parametrize("size", [1000, 16 * PART], ids=["on a seat", "in its own child"])
def test_a_stop_after_an_items_finished_event_adds_no_failed_after_it(
    make: Make, tmp_path: Path, size: int
) -> None:
    """An item says ``finished``, then its outcome, one message after the other; a stop that
    comes between the two (here: Ctrl-C while the caller handles the ``finished``) cuts an
    item that had already ended. Its last word stays ``finished``: no ``failed`` after it."""
    blob = make(size, seed=933)
    items = [Item(blob.url, str(tmp_path / "o"))]
    said: list[type[blobdl.Event]] = []

    def note(event: blobdl.BatchEvent) -> None:
        said.append(type(event.event))
        if isinstance(event.event, blobdl.Finished):
            os.kill(os.getpid(), signal.SIGINT)  # its outcome is still in the pipe

    with pytest.raises(blobdl.Interrupted):
        blobdl.download_many(items, on_event=note, settings=fast_settings())
    assert said[-1] is blobdl.Finished, said
    assert sha256_file(tmp_path / "o") == blob.sha256


@pytest.mark.parametrize("size", [1000, 16 * PART], ids=["on a seat", "in its own child"])
def test_an_item_that_ends_while_the_batch_stops_is_told_finished(
    make: Make, tmp_path: Path, size: int
) -> None:
    """A stop that comes while an item's last reports are on their way (here: Ctrl-C while
    the caller handles its ``started``, which lets the KeyboardInterrupt pass and carries
    on while the item ends) finds an item that has finished, its file in place: it is told
    ``finished``, not ``failed`` (exit 130)."""
    blob = make(size, seed=934)
    items = [Item(blob.url, str(tmp_path / "o"))]
    said: list[type[blobdl.Event]] = []

    def note(event: blobdl.BatchEvent) -> None:
        said.append(type(event.event))
        if isinstance(event.event, blobdl.Started):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                sum(range(1000))  # a few bytecodes: the handler runs at one of them
            except KeyboardInterrupt:
                pass  # the batch noted it all the same: it stops at its next look
            wait_for((tmp_path / "o").exists, "the item in place")
            time.sleep(0.2)  # its last reports are said, and nobody reads them yet

    with pytest.raises(blobdl.Interrupted):
        blobdl.download_many(items, on_event=note, settings=fast_settings())
    assert sha256_file(tmp_path / "o") == blob.sha256
    assert said[-1] is blobdl.Finished, said


def test_a_stopped_item_named_after_its_probe_is_told_failed_at_its_name(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """An item given no path is named by its seat's probe; the ``failed`` event a stop gives
    it names the path its ``started`` did, not an empty one."""
    blob = make(200_000, seed=935)
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{blob.url}\n")
    pace(server, 20_000)  # ten seconds: stopped while it runs
    out = tmp_path / "out"
    out.mkdir()
    records = stopped_json_batch(manifest, tmp_path, None, signal.SIGINT, "--base-dir", str(out))
    [started] = [r for r in records if r.get("event") == "started"]
    [failed] = [r for r in records if r.get("event") == "failed" and "item" in r]
    assert failed["path"] == started["path"] != "" and failed["exit_code"] == 130, failed
