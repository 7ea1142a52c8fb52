"""Every item of a batch ends with one event that says how, even when its process dies.

A JSON reader (``-i … --json``) or a callback learns each item's outcome from its events:
``finished``, or ``failed`` with the error and its exit code. An item whose process is killed
under it (a pool process: its small items; a large item's own child) cannot say so itself:
the batch says it for it ("download process died", exit 3, as a crashed worker), and goes
on with the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import blobdl
from blobdl import Item
from blobdl.store._lock import LOCK_SUFFIX
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, fast_settings, opened_by, run_cli, sha256_file, spawn_cli

Make = Callable[..., Blob]
PART = 16_384  # one request holds this much: smaller blobs are small items


@pytest.mark.parametrize("victim", ["pool twice", "large item"])
def test_an_item_whose_process_dies_is_told_failed(
    make: Make, server: ServerHandle, tmp_path: Path, victim: str
) -> None:
    """A large item's child killed: its item fails. A pool process killed: its items run
    again (``test_the_items_of_a_pool_process_killed_under_them_start_again_and_finish``);
    killed again while an item runs again, that item fails."""

    def kill(proc: Any) -> tuple[str, str]:
        if victim == "large item":
            _kill_when_found(proc, victim)
            return proc.communicate(timeout=60)  # type: ignore[no-any-return]
        return _kill_the_pool_as_items_start(proc, again=True)

    blobs, records, code, stderr = _killed_mixed_batch(make, server, tmp_path, kill)
    ends = {r["item"]: r for r in records if r.get("event") in ("finished", "failed")}
    assert sorted(ends) == list(range(len(blobs))), f"an item without an end: {records}"
    died = [n for n, r in ends.items() if r["event"] == "failed"]
    assert died, records
    for n in died:
        assert "download process died" in ends[n]["error"] and ends[n]["exit_code"] == 3
    for n, record in ends.items():
        if record["event"] == "finished":
            assert sha256_file(tmp_path / f"o{n}") == blobs[n].sha256
    assert records[-1] == {"event": "summary", "ok": len(blobs) - len(died), "failed": len(died)}
    assert code == 3, stderr


def test_the_items_of_a_pool_process_killed_under_them_start_again_and_finish(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A pool process killed while its items are in flight: the JSON reader sees each of
    them start again, then finish, exact; the batch exits 0."""
    blobs, records, code, stderr = _killed_mixed_batch(
        make, server, tmp_path, lambda proc: _kill_the_pool_as_items_start(proc, again=False)
    )
    starts = [r["item"] for r in records if r.get("event") == "started"]
    assert any(starts.count(n) == 2 for n in range(len(blobs))), records  # one ran again
    ends = [(r["item"], r["event"]) for r in records if r.get("event") in ("finished", "failed")]
    assert sorted(ends) == [(n, "finished") for n in range(len(blobs))], records
    assert [sha256_file(tmp_path / f"o{n}") for n in range(len(blobs))] == [b.sha256 for b in blobs]
    assert (code, records[-1]) == (0, {"event": "summary", "ok": 4, "failed": 0})
    assert re.search(r"warning: manifest line \d: download process died .*; run again", stderr)


def _killed_mixed_batch(
    make: Make, server: ServerHandle, tmp_path: Path, kill: Callable[[Any], tuple[str, str]]
) -> tuple[list[Blob], list[dict[str, Any]], int, str]:
    """The mixed batch (``_mixed_batch``) run by the CLI with ``--json``, ``kill`` killing
    what it kills as the run goes and giving what the CLI printed: the blobs, the JSON
    records, the exit code and stderr. The CLI is never left running."""
    blobs, args = _mixed_batch(make, server, tmp_path)
    proc = spawn_cli(*args)
    try:
        stdout, stderr = kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return blobs, [json.loads(line) for line in stdout.splitlines()], proc.returncode, stderr


def _mixed_batch(make: Make, server: ServerHandle, tmp_path: Path) -> tuple[list[Blob], list[str]]:
    """Three small items and a large one, slow, so that items are in flight: a small body
    at 5 KB/s (two seconds, in which a test kills its writer), every other after its first
    64 KiB at 20 KB/s, and slow to start; and the CLI's arguments."""
    small = [make(2 * PART // 3, seed=3300 + n) for n in range(3)]
    large = make(8 * PART, seed=3305)
    rules: list[dict[str, object]] = [
        {"path": f"/files/{b.name}", "times": None, "action": "rate", "bps": 5_000, "step": 1000}
        for b in small
    ]
    rules.append({"path": "/files/*", "times": None, "action": "shape", "bps": 20_000, "ttfb": 0.3})
    server.set_faults(*rules)
    blobs = [*small, large]
    manifest = tmp_path / "manifest"
    manifest.write_text("".join(f"{b.url} {tmp_path / f'o{n}'}\n" for n, b in enumerate(blobs)))
    args = ["-i", str(manifest), "--json", "--connections", "2", "--per-host", "2",
            "--min-part-size", str(PART), "--max-part-size", str(PART)]  # fmt: skip
    return blobs, args


def _kill_when_found(proc: Any, victim: str) -> None:
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + 20
    while not (target := _victim(me, victim)):
        assert time.monotonic() < deadline and proc.poll() is None, f"no {victim} process"
        time.sleep(0.02)
    target.kill()


def _kill_the_writer(proc: Any, path: str) -> None:
    """Kill the process of the batch's that writes ``path`` (it holds its lock file open):
    the pool process whose seat runs that item."""
    lock = Path(path + LOCK_SUFFIX)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                if opened_by(child.pid, lock):
                    child.kill()
                    return
        time.sleep(0.01)
    raise AssertionError(f"nobody writes {path}")


def _kill_the_pool_as_items_start(proc: Any, again: bool) -> tuple[str, str]:
    """Read the CLI's JSON lines as they come: kill the pool process once an item has
    started (and, ``again``, once more as an item starts its second run); its output."""
    assert proc.stdout is not None
    lines, starts, kills = [], {0: 0, 1: 0, 2: 0, 3: 0}, 0
    for line in proc.stdout:
        lines.append(line)
        record = json.loads(line)
        if record.get("event") != "started":
            continue
        starts[record["item"]] += 1
        if kills < 1 + again and starts[record["item"]] == kills + 1 and record["item"] < 3:
            _kill_the_writer(proc, record["path"])
            kills += 1
    stdout, stderr = proc.communicate(timeout=60)
    assert kills == 1 + again, lines
    return "".join(lines) + stdout, stderr


@pytest.mark.parametrize("victim", ["pool", "pool, no callback", "large item"])
def test_an_item_whose_process_dies_after_telling_finished_has_finished(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, victim: str
) -> None:
    """An item's outcome follows its ``Finished`` in a message of its own. Its process killed
    between the two (here it kills itself right then), the item has finished all the same:
    its file is in place, the callback was told so, and its result is the one ``Finished``
    told, never the process's crash."""
    from blobdl.batch import _item_process, _pool

    def killed() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if victim.startswith("pool"):
        fetch = _pool._fetch

        def fetched_then_killed(*args: Any) -> Any:
            fetch(*args)
            killed()

        monkeypatch.setattr(_pool, "_fetch", fetched_then_killed)
        blob = make(2 * PART // 3, seed=3320)
    else:
        monkeypatch.setattr(_item_process, "decided", killed)
        blob = make(8 * PART, seed=3321)
    told: list[blobdl.BatchEvent] = []
    settings = fast_settings(min_part_size=PART, max_part_size=PART)
    heard = None if victim.endswith("no callback") else told.append
    [result] = blobdl.download_many([Item(blob.url, str(tmp_path / "o"))], settings=settings,
                                    on_event=heard)  # fmt: skip
    assert result.ok, result
    assert sha256_file(tmp_path / "o") == blob.sha256
    if victim.startswith("pool"):  # one request: not run again
        assert server.stats()["per_path"][f"/files/{blob.name}"] == 1
    if heard is None:  # nobody was told: what it finished with is the story's own result
        assert result.result is not None and result.result.path == tmp_path / "o"
        return
    [finished] = [e.event for e in told if isinstance(e.event, blobdl.Finished)]
    assert result.result == finished.result
    assert not [e for e in told if isinstance(e.event, blobdl.Failed)], told


def test_an_item_named_after_its_probe_whose_process_dies_is_told_failed_at_its_name(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A seat's item given no path is named by its probe; if the seat's process dies under
    it, its ``failed`` event names the path its ``started`` did, not an empty one."""
    blob = make(2 * PART // 3, seed=3310)
    # The body stops after 1000 bytes: the item is in flight for as long as the kill takes.
    # (Paced, a body this small came whole at once: under load the kill came after it.)
    server.set_faults({"path": "/files/*", "times": None, "action": "stall_after",
                       "bytes": 1000, "hold": 30})  # fmt: skip
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{blob.url}\n")
    out = tmp_path / "out"
    out.mkdir()
    args = ["-i", str(manifest), "--json", "--base-dir", str(out),
            "--min-part-size", str(PART), "--max-part-size", str(PART)]  # fmt: skip
    proc = spawn_cli(*args)
    assert proc.stdout is not None
    try:
        for _run in range(2):  # killed in its run, and in its run again under that name
            started = json.loads(proc.stdout.readline())  # the seat has named it
            assert started["event"] == "started", started
            _kill_the_writer(proc, started["path"])
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    [failed] = [r for r in map(json.loads, stdout.splitlines()) if r.get("event") == "failed"]
    assert failed["path"] == started["path"] != "" and failed["exit_code"] == 3, failed


def _victim(me: psutil.Process, victim: str) -> psutil.Process | None:
    """The batch's pool process (forked first, threads of its own), or a large item's child
    (a process that forks workers); None until it runs."""
    for child in me.children():
        # A child may end between the listing and the look (the pool, its small items
        # done; a large item's probe): it is not the victim, so look at the next one.
        with contextlib.suppress(psutil.NoSuchProcess):
            forks = child.children()
            if victim == "pool" and not forks and child.num_threads() > 1:
                return child
            if victim == "large item" and forks:
                return child
    return None


def test_every_item_of_a_mixed_batch_has_one_last_line_and_the_summary_counts_them(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A JSON reader keys on ``item``: each index of the manifest gets exactly one
    ``finished`` or ``failed`` line, a duplicate included (it shares its first's outcome,
    with nothing fetched of its own), so the lines agree with the summary and the exit
    code is the first failure's."""
    small, large = make(PART // 2, seed=3320), make(4 * PART, seed=3321)
    held = tmp_path / "held"  # already complete: its digest matches, nothing is fetched
    held.write_bytes((server.root / small.name).read_bytes())
    rows = [
        (small.url, tmp_path / "ok", small.sha256),
        (server.route("/status/404"), tmp_path / "missing", None),
        (small.url, tmp_path / "ok", small.sha256),  # a duplicate of an item that succeeds
        (large.url, tmp_path / "bad", "0" * 64),  # a digest mismatch (exit 4)
        (server.route("/status/404"), tmp_path / "missing", None),  # a duplicate of a failure
        (large.url, tmp_path / "large", large.sha256),
        (small.url, held, small.sha256),
    ]
    manifest = tmp_path / "manifest"
    manifest.write_text("".join(f"{url} {path}{f' sha256:{d}' if d else ''}\n"
                                for url, path, d in rows))  # fmt: skip
    args = ["-i", str(manifest), "--json", "--retries", "0", "--min-part-size", str(PART),
            "--max-part-size", str(PART)]  # fmt: skip
    done = run_cli(*args)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    ends = [r for r in records if r.get("event") in ("finished", "failed")]
    assert sorted(r["item"] for r in ends) == list(range(len(rows))), records
    outcome = {r["item"]: (r["event"], r.get("exit_code")) for r in ends}
    assert outcome == {0: ("finished", None), 1: ("failed", 3), 2: ("finished", None),
                       3: ("failed", 4), 4: ("failed", 3), 5: ("finished", None),
                       6: ("finished", None)}  # fmt: skip
    by_item = {r["item"]: r for r in ends}
    assert by_item[2]["path"] == by_item[0]["path"] and by_item[2]["bytes_fetched"] == 0
    assert by_item[4]["error"] == by_item[1]["error"]
    assert records[-1] == {"event": "summary", "ok": 4, "failed": 3}
    assert done.returncode == 3, done.stderr
    for _, path, digest in rows:
        if digest != "0" * 64 and digest is not None:
            assert sha256_file(path) == digest
