"""A batch callback's download of what an item given no path is named by its probe (the
named review): refused only while it is held up the callback's own stack."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file
from tests.integration.test_threaded_batches import (
    HOLDER_FOR_A_WHILE,
    Make,
    _in_a_thread,
    _paced_blob,
    hung_past,
)

PACED = {"progress_interval": 0.01, "min_part_size": 4 * PART, "max_part_size": 4 * PART}
# What a download that waited for a finished item's lock gets: the file there, or the file
# found whole (its record vouches for it only if the server's Last-Modified was a second older
# than its Date, ``http._remote.lasting``: a blob made just before, on a fast machine, is not).
WAITED = (blobdl.DestinationExists, blobdl.DownloadResult)


@contextlib.contextmanager
def _held_then_asked(url: str, dest: Path) -> Iterator[Callable[[], Any]]:
    """What the callback does: another process takes ``dest``'s lock for a second, then the
    callback downloads ``url`` there, waiting for locks. The holder is ended after the block."""
    holder: list[subprocess.Popen[str]] = []

    def act() -> Any:
        lock = str(dest.with_name(dest.name + ".blobdl-lock"))
        holder.append(subprocess.Popen([sys.executable, "-c", HOLDER_FOR_A_WHILE, lock, "1.0"],
                                       stdout=subprocess.PIPE, text=True))  # fmt: skip
        assert holder[0].stdout is not None and holder[0].stdout.readline() == "held\n"
        return blobdl.download(url, dest, settings=fast_settings(lock_timeout=60.0))

    try:
        yield act
    finally:
        for p in holder:
            p.kill()
            p.wait()


def _on_progress(act: Any, index: int | None = None) -> tuple[list[Any], Any]:
    """A callback that calls ``act`` once, on the first progress (of item ``index``, once
    item 0 has ended, if given), and what it returned or raised."""
    said: list[Any] = []
    ended: set[int] = set()

    def callback(event: Any) -> None:
        inner = getattr(event, "event", event)
        if isinstance(inner, blobdl.Finished | blobdl.Failed):
            ended.add(event.item)
        if said or not (isinstance(inner, blobdl.Progress) and inner.done > 0):
            return
        if index is not None and (event.item != index or 0 not in ended):
            return
        try:
            said.append(act())
        except BaseException as exc:  # what the call said is the point
            said.append(exc)

    return said, callback


def test_a_threaded_callers_batch_callback_asking_for_a_probe_named_item_is_refused(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A threaded caller's batch runs in a clean process, which names a path-less item once
    probed: the calling thread did not hear of the name, and its callback's download of it
    waited (a day's lock wait) for the item its own batch ran, held up by the callback
    until the event socket filled. It is refused at once, as a given path is."""
    blob = _paced_blob(make, server, 79600)
    folder = tmp_path / "named"
    folder.mkdir()
    said, callback = _on_progress(
        lambda: blobdl.download(
            blob.url, folder / blob.name, settings=fast_settings(lock_timeout=24 * 3600.0)
        )
    )
    results: list[Any] = []
    raised = _in_a_thread(
        lambda: results.extend(
            blobdl.download_many(
                [blob.url], on_event=callback, base_dir=folder, settings=fast_settings(**PACED)
            )
        )
    )
    assert raised is None, raised
    assert len(said) == 1 and isinstance(said[0], blobdl.DestinationLocked), said
    assert "this process's own download" in str(said[0])
    assert results[0].ok, results


def test_a_second_batch_keeps_no_name_of_the_first(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A name the first batch gave is not the second's: another process holds its lock,
    and the second's callback waits for it (then finds the file there)."""
    assert threading.active_count() == 1
    small, blob = make(PART, seed=79603), _paced_blob(make, server, 79604)
    folder = tmp_path / "named"
    folder.mkdir()
    assert blobdl.download_many([small.url], base_dir=folder, settings=fast_settings())[0].ok
    dest = folder / small.name
    with _held_then_asked(small.url, dest) as act, hung_past(20.0, "hung"):
        said, callback = _on_progress(act)
        out = Item(blob.url, str(tmp_path / "out"))
        results = blobdl.download_many([out], on_event=callback, settings=fast_settings(**PACED))
    assert len(said) == 1 and isinstance(said[0], WAITED), said  # waited for, not refused
    assert results[0].ok, results


def test_a_nested_batchs_own_probe_named_item_is_not_refused(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A callback's batch names its own items (a large one on a child, a small one on a
    seat): never refused as the outer batch's."""
    assert threading.active_count() == 1
    blob, other = _paced_blob(make, server, 79605), make(16 * PART, seed=79606)
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    outer.mkdir()
    inner.mkdir()
    said, callback = _on_progress(
        lambda: blobdl.download_many(
            [other.url, make(PART, seed=79607).url],
            base_dir=inner,
            settings=fast_settings(min_part_size=4 * PART, max_part_size=4 * PART),
        )
    )
    with hung_past(20.0, "hung"):
        results = blobdl.download_many(
            [blob.url], on_event=callback, base_dir=outer, settings=fast_settings(**PACED)
        )
    assert len(said) == 1 and isinstance(said[0], list), said
    assert all(r.ok for r in said[0]), said
    assert results[0].ok, results


def test_a_nested_batch_of_the_outer_probe_named_item_is_refused(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A callback's batch of the item its outer batch named by its probe: refused, as
    around it, not waited for."""
    assert threading.active_count() == 1
    blob = _paced_blob(make, server, 79608)
    outer = tmp_path / "outer"
    outer.mkdir()
    said, callback = _on_progress(
        lambda: blobdl.download_many(
            [blob.url], base_dir=outer, settings=fast_settings(lock_timeout=24 * 3600.0)
        )
    )
    with hung_past(20.0, "hung"):
        results = blobdl.download_many(
            [blob.url], on_event=callback, base_dir=outer, settings=fast_settings(**PACED)
        )
    assert len(said) == 1 and isinstance(said[0], list), said
    assert isinstance(said[0][0].error, blobdl.DestinationLocked), said
    assert results[0].ok, results


def _batch(threaded: bool, call: Any) -> list[Any]:
    """``call()``'s results, in this thread (single-threaded) or in one of its own."""
    results: list[Any] = []
    if threaded:
        raised = _in_a_thread(lambda: results.extend(call()))
        assert raised is None, raised
    else:
        assert threading.active_count() == 1
        with hung_past(20.0, "the callback's download waited for its own batch's lock"):
            results.extend(call())
    return results


@pytest.mark.parametrize("threaded", [False, True], ids=["main thread", "a thread"])
def test_a_batch_callback_asking_for_a_small_item_named_on_its_seat_is_refused_not_hung(
    make: Make, server: ServerHandle, tmp_path: Path, threaded: bool
) -> None:
    """A small item given no path is named by its seat's probe (a claim the batch answers),
    and the seat holds its lock while it fetches it: refused at once, on a threaded caller's
    thread too (told by the clean process that named it)."""
    blob = make(PART, seed=79610 + threaded)
    server.set_faults({"path": f"/files/{blob.name}", "times": None, "action": "rate",
                       "bps": 15_000, "step": 1000})  # fmt: skip
    folder = tmp_path / "named"
    folder.mkdir()
    said: list[Any] = []

    def callback(event: Any) -> None:
        kinds = (blobdl.Progress, blobdl.Started)
        if said or not isinstance(event.event, kinds):
            return
        try:
            said.append(
                blobdl.download(
                    blob.url, folder / blob.name, settings=fast_settings(lock_timeout=24 * 3600.0)
                )
            )
        except BaseException as exc:
            said.append(exc)

    results = _batch(
        threaded,
        lambda: blobdl.download_many(
            [blob.url],
            on_event=callback,
            base_dir=folder,
            settings=fast_settings(progress_interval=0.01),
        ),
    )
    assert results[0].ok, results
    assert len(said) == 1 and isinstance(said[0], blobdl.DestinationLocked), said


@pytest.mark.parametrize("threaded", [False, True], ids=["main thread", "a thread"])
def test_a_batch_callback_asking_for_a_finished_probe_named_item_is_not_refused(
    make: Make, server: ServerHandle, tmp_path: Path, threaded: bool
) -> None:
    """Item 0 (named by its probe) has finished, its lock let go: another process now
    holds that lock; the callback's download should wait for it, as any download does
    ("a lock another process holds is waited for"). It was refused at once instead, as
    "this process's own download": the batch's record kept an item's destination till
    the batch ended, not till the item did (a given path's alike)."""
    small, blob = make(PART, seed=79601), _paced_blob(make, server, 79602)
    folder = tmp_path / "named"
    folder.mkdir()
    dest = folder / small.name
    _finished_item_asked(small, blob, dest, threaded, [small.url, blob.url], base_dir=folder)


@pytest.mark.parametrize("threaded", [False, True], ids=["main thread", "a thread"])
def test_a_batch_callback_asking_for_a_finished_item_given_its_path_is_not_refused(
    make: Make, server: ServerHandle, tmp_path: Path, threaded: bool
) -> None:
    """The same for an item given its path: a threaded caller's record had it twice (from
    its call, and as its clean process's batch told it), and lost one copy when it ended."""
    small, blob = make(PART, seed=79605), _paced_blob(make, server, 79606)
    dest = tmp_path / small.name
    items = [Item(small.url, str(dest)), Item(blob.url, str(tmp_path / "out"))]
    _finished_item_asked(small, blob, dest, threaded, items)


def _finished_item_asked(
    small: Blob, blob: Blob, dest: Path, threaded: bool, items: list[Any], **kwargs: Any
) -> None:
    """A batch of ``items`` (``small`` at ``dest``, then the paced ``blob``) whose callback,
    once ``small`` has ended, downloads it again while another process holds its lock."""
    with _held_then_asked(small.url, dest) as act:
        said, callback = _on_progress(act, index=1)  # item 0 has ended by then
        results = _batch(threaded, lambda: blobdl.download_many(
            items, on_event=callback, settings=fast_settings(**PACED), **kwargs))  # fmt: skip
    assert len(said) == 1 and isinstance(said[0], WAITED), said  # waited for, not refused
    assert all(r.ok for r in results), results
    assert sha256_file(dest) == small.sha256


@pytest.mark.parametrize("ended", ["finished", "failed"])
def test_a_batch_callback_asking_for_an_ended_probe_named_item_is_answered_as_any_download(
    make: Make, server: ServerHandle, tmp_path: Path, ended: str
) -> None:
    """Item 0 (named by its probe) has ended, its lock let go, nobody else holds it: the
    callback's download of its name is a download as any other (the file there, or none),
    never refused as held up its own stack."""
    assert threading.active_count() == 1
    small, blob = make(PART, seed=79620), _paced_blob(make, server, 79621)
    folder = tmp_path / "named"
    folder.mkdir()
    dest = folder / small.name
    digest = f"sha256:{'0' * 64}" if ended == "failed" else None  # a mismatch fails it
    said, callback = _on_progress(
        lambda: blobdl.download(small.url, dest, settings=fast_settings(lock_timeout=60.0)),
        index=1,  # item 0 has ended by then
    )
    with hung_past(20.0, "hung"):
        results = blobdl.download_many(
            [Item(small.url, None, digest), blob.url], on_event=callback, base_dir=folder,
            settings=fast_settings(**PACED),
        )  # fmt: skip
    assert results[0].ok == (ended == "finished") and results[1].ok, results
    if ended == "finished":
        assert len(said) == 1 and isinstance(said[0], WAITED), said
    else:
        assert len(said) == 1 and isinstance(said[0], blobdl.DownloadResult), said
    assert sha256_file(dest) == small.sha256
