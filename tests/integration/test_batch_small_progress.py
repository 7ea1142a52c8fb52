"""A batch's small item tells its progress as a large item does, once it runs past a progress
interval: on a capped link or a trickling server one request may take minutes, and a reader
of ``--json`` or a caller's progress bar must see its bytes move.

Its ``progress`` events describe one part (the item's one request): ``done`` the bytes on
disk, ``total`` its size, ``active`` 1 while the request runs, and they all come after its
``started`` and before its one last word (``finished`` or ``failed``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blobdl
from blobdl import Item
from blobdl.events import PartProgress
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, fast_settings, run_cli, sha256_file

Make = Callable[..., Blob]
SLOW = 10_000  # bytes, paced at 4 KB/s a kilobyte at a time: about 2.5 s, one request


def trickle(server: ServerHandle, blob: Blob) -> None:
    """``blob`` comes 1,000 bytes at a time at 4,000 bytes/s; everything else at once."""
    server.set_faults({"path": f"/files/{blob.name}", "times": None, "action": "rate",
                       "bps": 4000, "step": 1000})  # fmt: skip


def check_progress(records: list[dict[str, Any]], size: int) -> None:
    """An item's events, as JSON records: started, then progress that only grows and never
    passes the size, then one last word."""
    names = [r["event"] for r in records]
    assert names[0] == "started" and names[-1] == "finished", names
    assert set(names[1:-1]) == {"progress"}, names
    progress = records[1:-1]
    done = [r["done"] for r in progress]
    assert done == sorted(done) and done[-1] <= size, done
    for record in progress:
        assert record["total"] == size and record["retries"] == 0
        assert record["active"] == 1 and record["rate"] >= 0
        part = {"part": 0, "start": 0, "end": size, "done": record["done"], "state": "running",
                "attempts": 1}  # fmt: skip
        assert record["parts"] == [part], record
    elapsed = [r["elapsed"] for r in progress]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0, elapsed


def test_a_slow_small_item_tells_its_progress_to_a_callback(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    slow, quick = make(SLOW, seed=4100), make(1000, seed=4101)
    trickle(server, slow)
    served = (server.root / slow.name).read_bytes()
    dest = tmp_path / "slow"
    events: list[blobdl.Event] = []
    on_disk: list[bool] = []  # at each progress: the bytes it counts are the blob's, on disk

    def note(batch_event: blobdl.BatchEvent) -> None:
        if batch_event.item != 0:
            return
        event = batch_event.event
        events.append(event)
        if isinstance(event, blobdl.Progress):
            written = (tmp_path / "slow.blobdl-tmp").read_bytes()[: event.done]
            on_disk.append(written == served[: event.done])

    items = [Item(slow.url, str(dest)), Item(quick.url, str(tmp_path / "quick"))]
    settings = fast_settings(progress_interval=0.2)
    results = blobdl.download_many(items, on_event=note, settings=settings)
    assert all(r.ok for r in results), results
    assert sha256_file(dest) == slow.sha256
    assert any(isinstance(e, blobdl.Progress) for e in events), events
    assert on_disk and all(on_disk)
    records = [blobdl.events.event_record(e) for e in events]
    check_progress(records, SLOW)
    last = events[-2]
    assert isinstance(last, blobdl.Progress)
    assert isinstance(last.parts[0], PartProgress)


def test_a_slow_small_item_tells_its_progress_in_json_lines(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    slow, quick = make(SLOW, seed=4102), make(1000, seed=4103)
    trickle(server, slow)
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{slow.url} {tmp_path / 'slow'}\n{quick.url} {tmp_path / 'quick'}\n")
    done = run_cli("-i", str(manifest), "--json", "--progress-interval", "0.2")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert records[-1] == {"event": "summary", "ok": 2, "failed": 0}
    check_progress([r for r in records if r.get("item") == 0], SLOW)
    assert sha256_file(tmp_path / "slow") == slow.sha256
    assert sha256_file(tmp_path / "quick") == quick.sha256


def test_a_small_item_retried_tells_its_progress_through_the_backoff_and_the_retry(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The case that showed the gap: an item cut short and retried for long said only
    ``part_retried``. Its progress goes on: ``waiting`` (no request runs: ``active`` 0)
    through the backoff, then its second attempt, counted with the retry."""
    blob = make(SLOW, seed=4104)
    cut = {"path": f"/files/{blob.name}", "times": 1, "action": "reset_after", "bytes": 3000}
    server.set_faults(cut, {"path": f"/files/{blob.name}", "times": None, "action": "rate",
                            "bps": 4000, "step": 1000})  # fmt: skip
    events: list[blobdl.Event] = []
    retried: list[int] = []  # at each progress: part_retried heard so far

    def note(batch_event: blobdl.BatchEvent) -> None:
        events.append(batch_event.event)
        if isinstance(batch_event.event, blobdl.Progress):
            retried.append(sum(isinstance(e, blobdl.PartRetried) for e in events))

    # A backoff of 0.5-1.5 s: several progress intervals.
    settings = fast_settings(progress_interval=0.2, backoff_unit=1.0, max_backoff=1.0)
    results = blobdl.download_many([Item(blob.url, str(tmp_path / "o"))], on_event=note,
                                   settings=settings)  # fmt: skip
    assert results[0].ok, results
    assert sha256_file(tmp_path / "o") == blob.sha256
    assert isinstance(events[-1], blobdl.Finished)
    progress = [e for e in events if isinstance(e, blobdl.Progress)]
    assert progress and sum(isinstance(e, blobdl.PartRetried) for e in events) == 1, events
    for event, heard in zip(progress, retried, strict=True):
        (part,) = event.parts
        assert event.active == (part.state == "running"), event
        if part.state == "running" and part.attempts == 2:  # the retry runs: it was told
            assert event.retries == heard == 1, event
    second = [e for e in progress if e.parts[0].attempts == 2 and e.active]
    assert second and second[-1].done > 3000, progress
    assert [e.done for e in second] == sorted(e.done for e in second)


def test_no_progress_of_an_item_is_told_once_it_is_over_even_as_its_seat_takes_the_next(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """One seat: the slow item, then one whose server is slow to answer. The first item's
    progress stops with its last word; while its seat waits for the next item's answer,
    nothing is told of either (what the seat would tell then is the last item's bytes,
    given as the next one's before its ``started``)."""
    slow, late = make(SLOW, seed=4105), make(1000, seed=4106)
    server.set_faults({"path": f"/files/{slow.name}", "times": None, "action": "rate",
                       "bps": 4000, "step": 1000},
                      {"path": f"/files/{late.name}", "action": "ttfb", "delay": 1.5})  # fmt: skip
    told: dict[int, list[blobdl.Event]] = {0: [], 1: []}
    items = [Item(slow.url, str(tmp_path / "slow")), Item(late.url, str(tmp_path / "late"))]
    results = blobdl.download_many(items, on_event=lambda e: told[e.item].append(e.event),
                                   settings=fast_settings(progress_interval=0.2),
                                   max_connections=1)  # fmt: skip
    assert all(r.ok for r in results), results
    assert sha256_file(tmp_path / "slow") == slow.sha256
    assert sha256_file(tmp_path / "late") == late.sha256
    check_progress([blobdl.events.event_record(e) for e in told[0]], SLOW)
    names = [blobdl.events.event_record(e)["event"] for e in told[1]]
    assert names == ["started", "finished"], names
