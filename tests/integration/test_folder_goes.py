"""A destination's folder that goes away (removed, or replaced by a file) while its item runs:
after its lock is taken, before its temporary file is made. The item fails alone, with the
error naming the folder (exit 4: the user can act on it), told as its ``failed`` event as any
failure is; never a Python exception from the middle of the story (``FileNotFoundError``),
nor a batch item that ends without a last word.

The folder goes at a point the server scripts: the item's first GET is held (``after``)
until the test has removed the folder and asks for the release path itself."""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

import blobdl
from blobdl import BatchEvent, Item
from blobdl.errors import EXIT_LOCAL, BlobdlError, LocalFileError
from blobdl.events import Failed, Finished
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file, spawn_cli
from tests.integration.test_trust_stops import wait_for

Make = Callable[..., Blob]
SMALL = PART // 2


def held_until_released(server: ServerHandle, path: str, release: Blob) -> dict[str, object]:
    """A rule: the answer to ``path`` waits until ``release`` is asked for once."""
    return {"path": path, "times": 1, "action": "ttfb", "delay": 0,
            "after": {"path": f"/files/{release.name}", "requests": 1}}  # fmt: skip


def take_away(folder: Path, how: str) -> None:
    shutil.rmtree(folder)
    if how == "replaced by a file":
        folder.write_bytes(b"not a folder")


def problem(folder: Path, how: str) -> str:
    if how == "removed":
        return f"{folder}: directory does not exist"
    return f"{folder}: is a file, not a directory"


@pytest.mark.parametrize("how", ["removed", "replaced by a file"])
def test_a_small_items_folder_that_goes_while_it_runs_fails_it_alone_and_told(
    make: Make, server: ServerHandle, tmp_path: Path, how: str
) -> None:
    """Two seats: item 1's first GET is held until item 0 has ended, the folder has gone, and
    the release is asked for; item 0 is answered only once item 1 has asked (so item 1 holds
    its lock in the folder by then)."""
    first, second, release = (make(SMALL, seed=7100 + n) for n in range(3))
    folder = tmp_path / "sub"
    folder.mkdir()
    items = [Item(first.url, str(folder / "o0")), Item(second.url, str(folder / "o1"))]
    server.set_faults(
        {"path": f"/files/{first.name}", "times": 1, "action": "ttfb", "delay": 0,
         "after": {"path": f"/files/{second.name}", "requests": 1}},
        held_until_released(server, f"/files/{second.name}", release),
    )  # fmt: skip
    told: list[BatchEvent] = []

    def on_event(event: BatchEvent) -> None:
        told.append(event)
        if event.item == 0 and isinstance(event.event, Finished):
            assert sha256_file(folder / "o0") == first.sha256
            take_away(folder, how)
            urllib.request.urlopen(server.url(release.name), timeout=10).read()

    results = blobdl.download_many(
        items, on_event=on_event, max_connections=2, per_host=2, settings=fast_settings()
    )
    assert results[0].ok, results[0]
    error = results[1].error
    assert isinstance(error, LocalFileError), repr(error)
    assert str(error) == problem(folder, how) and error.exit_code == EXIT_LOCAL
    last = [e.event for e in told if e.item == 1 and isinstance(e.event, Finished | Failed)]
    assert last == [Failed(second.url, str(folder / "o1"), str(error), EXIT_LOCAL)], told


@pytest.mark.parametrize("how", ["removed", "replaced by a file"])
def test_a_downloads_folder_that_goes_while_it_probes_is_named(
    make: Make, server: ServerHandle, tmp_path: Path, how: str
) -> None:
    """The same cause on the ordinary path: the folder goes between the lock and the
    temporary file (the probe held meanwhile)."""
    blob, release = make(8 * PART, seed=7110), make(1, seed=7111)
    folder = tmp_path / "sub"
    folder.mkdir()
    server.set_faults(held_until_released(server, f"/files/{blob.name}", release))
    cli = spawn_cli(blob.url, "-o", str(folder / "out"), "--retries", "0")
    try:
        wait_for(lambda: server.stats()["requests"] >= 1, "the probe")  # locked by now
        take_away(folder, how)
        urllib.request.urlopen(server.url(release.name), timeout=10).read()
        _, stderr = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert "Traceback" not in stderr, stderr
    assert f"blobdl: error: {problem(folder, how)}" in stderr.splitlines(), stderr
    assert cli.returncode == EXIT_LOCAL


def test_a_bug_in_a_small_items_story_is_told_as_its_failure(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a seat's item raises, the item has its last word (``failed``): a JSON line,
    a callback's ``Failed``; the batch goes on with its other items. (A bug is planted in
    the story the pool's processes inherit when they are forked.)"""
    from blobdl.engine import _small

    def planted(fd: int, size: int) -> str:
        raise RuntimeError("a planted bug")

    monkeypatch.setattr(_small, "_digest", planted)  # only an item with a digest meets it
    blobs = [make(SMALL, seed=7120 + n) for n in range(2)]
    items = [Item(blobs[0].url, str(tmp_path / "o0"), f"sha256:{blobs[0].sha256}"),
             Item(blobs[1].url, str(tmp_path / "o1"))]  # fmt: skip
    told: list[BatchEvent] = []
    results = blobdl.download_many(items, on_event=told.append, settings=fast_settings())
    assert results[1].ok and sha256_file(tmp_path / "o1") == blobs[1].sha256
    error = results[0].error
    assert isinstance(error, BlobdlError) and "a planted bug" in str(error)
    last = [e.event for e in told if e.item == 0 and isinstance(e.event, Finished | Failed)]
    assert last == [Failed(blobs[0].url, str(tmp_path / "o0"), str(error), error.exit_code)]
    assert not (tmp_path / "o0").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o1"]
