"""Resume judges the remote as the download does (trust issue #20, item 7).

"Same blob" is one rule, used by a resume, a refreshed URL and every response mid-download:
the size must match, and a validator (ETag, Last-Modified) proves a change only when both
looks have one and they differ. A validator that disappears (or appears) proves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import blobdl
from blobdl import Downloader
from blobdl.store._resume import PartRecord, State, save, state_path
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import PART, Blob, fast_settings, sha256_file
from tests.integration.test_trust_keep import assert_kept, claimed, temp_of

Make = Callable[..., Blob]


def partial(
    blob: Blob, server: ServerHandle, out: Path, first: dict[str, object] | None = None
) -> int:
    """A first run that ends with a kept partial (the sixth request is a 404; ``first``
    changes the five before it); the bytes its state claims."""
    path = f"/files/{blob.name}"
    before = [{"path": path, "times": 5, **first}] if first else []
    server.set_faults(*before, {"path": path, "skip": 0 if first else 5, "times": 1,
                                "action": "status", "status": 404})  # fmt: skip
    with pytest.raises(blobdl.HTTPStatusError):
        Downloader(fast_settings()).download(blob.url, out)
    server.reset()
    return assert_kept(out)


@pytest.mark.parametrize("dropped", [["ETag"], ["Last-Modified"], ["ETag", "Last-Modified"]])
def test_a_validator_that_disappears_keeps_the_partial(
    make: Make, server: ServerHandle, tmp_path: Path, dropped: list[str]
) -> None:
    blob = make(8 * PART, seed=2201)
    out = tmp_path / "out"
    kept = partial(blob, server, out)
    server.set_faults({"path": "/files/*", "times": None, "action": "headers", "drop": dropped})
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == kept
    assert server.stats()["bytes_sent"] == blob.size - kept + 1  # only what was missing
    assert not temp_of(out).exists()


def test_a_validator_that_appears_keeps_the_partial(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(8 * PART, seed=2202)
    out = tmp_path / "out"
    kept = partial(blob, server, out, {"action": "headers", "drop": ["ETag"]})
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == kept


def test_a_validator_that_changes_still_discards_the_partial(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(8 * PART, seed=2203)
    out = tmp_path / "out"
    assert partial(blob, server, out) > 0
    server.set_faults({"path": "/files/*", "times": None, "action": "etag", "value": "other"})
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == 0
    assert server.stats()["bytes_sent"] == blob.size + 1  # everything again


def test_a_validator_that_disappears_for_one_run_is_not_forgotten(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A run against an edge that strips the validators keeps the partial, and must keep
    the record's validators too: else the next run cannot see that the blob changed since
    the first, and mixes the old bytes with the new under a success."""
    blob = make(8 * PART, seed=2204)
    out = tmp_path / "out"
    assert partial(blob, server, out) > 0
    path = f"/files/{blob.name}"
    dropped = {"action": "headers", "drop": ["ETag", "Last-Modified"]}
    server.set_faults({"path": path, "times": 1, **dropped},
                      {"path": path, "times": None, "action": "status", "status": 404})  # fmt: skip
    with pytest.raises(blobdl.HTTPStatusError):
        Downloader(fast_settings()).download(blob.url, out)
    server.reset()
    assert_kept(out)
    served = server.root / blob.name  # the blob changes: same size, other bytes
    stat = served.stat()
    new = make_blob(server.root, blob.name, blob.size, seed=2205)
    os.utime(served, ns=(stat.st_atime_ns, stat.st_mtime_ns + 100 * 10**9))
    Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == new


def test_a_file_put_at_the_destination_mid_download_is_not_replaced(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Without force, a file there is refused; one that appears while the download runs
    (another program, the user) is refused too, not silently replaced by the rename. The
    finished bytes stay as a partial that a rerun with force only renames."""
    blob = make(8 * PART, seed=2206)
    out = tmp_path / "out"

    def theirs(event: object) -> None:
        if isinstance(event, blobdl.Started):
            out.write_bytes(b"theirs")

    with pytest.raises(blobdl.DestinationExists):
        Downloader(fast_settings()).download(blob.url, out, on_event=theirs)
    assert out.read_bytes() == b"theirs"
    assert temp_of(out).exists() and claimed(out) == blob.size
    server.reset()
    result = Downloader(fast_settings(force=True)).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == blob.size
    assert result.bytes_fetched == 0


def test_a_partial_removed_mid_download_is_not_said_to_be_kept(
    make: Make, server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Someone removes the temporary file while the download runs: the bytes went into a
    file no name reaches. Nothing is kept then, so nothing may say so, and its record (it
    claims bytes of a file that is gone) does not stay behind."""
    blob = make(8 * PART, seed=2207)
    out = tmp_path / "out"

    def remove(event: object) -> None:
        if isinstance(event, blobdl.Started):
            temp_of(out).unlink()

    with pytest.raises(blobdl.LocalFileError) as failed:
        Downloader(fast_settings()).download(blob.url, out, on_event=remove)
    assert failed.value.path == str(temp_of(out)), failed.value
    assert "kept" not in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_changed_blob_behind_a_probe_without_validators_is_not_mixed_in(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The blob changed since the partial, and the probe of the rerun (one edge) shows no
    validator, so it proves nothing: the ranges it then fetches must still be of the blob
    the partial is of, as its record names it, or the old bytes and the new are mixed."""
    blob = make(8 * PART, seed=2208)
    out = tmp_path / "out"
    assert partial(blob, server, out) > 0
    served = server.root / blob.name
    stat = served.stat()
    new = make_blob(server.root, blob.name, blob.size, seed=2209)
    os.utime(served, ns=(stat.st_atime_ns, stat.st_mtime_ns + 100 * 10**9))
    server.set_faults({"path": f"/files/{blob.name}", "times": 1, "action": "headers",
                       "drop": ["ETag", "Last-Modified"]})  # fmt: skip
    try:
        Downloader(fast_settings()).download(blob.url, out)
    except blobdl.RemoteChanged:
        assert not out.exists() and not temp_of(out).exists()
    else:
        assert sha256_file(out) == new


OTHER = 54321  # a user that is neither root nor the test's


def plant_partial(out: Path, blob: Blob, uid: int) -> None:
    """What another user can put beside a destination in a folder all may write to (a
    sticky /tmp): a temporary file of the blob's size holding their bytes, and a record,
    well checksummed (nothing secret goes into it), that claims every byte of it."""
    temp_of(out).write_bytes(b"X" * blob.size)
    whole = (PartRecord(0, blob.size, blob.size),)
    save(state_path(out), State(blob.url, blob.url, blob.size, None, None, whole))
    for path in (temp_of(out), state_path(out)):
        os.chown(path, uid, uid)


def test_a_partial_another_user_planted_is_never_resumed(
    make: Make, server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A partial is resumed only if its writer could have put the destination there anyway:
    one another user planted in a shared folder (their bytes, their file) would become the
    download, theirs to edit later, under a success. It is ignored: the run starts over."""
    assert os.geteuid() == 0, "CI runs as root: this test needs it"
    blob = make(8 * PART, seed=2210)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: anyone may add a file, only its owner remove it
    out = shared / "out"
    plant_partial(out, blob, OTHER)
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == 0
    assert out.stat().st_uid == os.geteuid()
    assert "another user" in caplog.text
    assert sorted(p.name for p in shared.iterdir()) == ["out"]


def test_a_partial_of_the_folders_owner_is_resumed_by_root(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Root resumes a partial that the owner of its folder owns (a download it ran into that
    user's folder, handed over as a pull hands its store's partials to the store's user):
    that user may replace anything in their folder anyway."""
    assert os.geteuid() == 0, "CI runs as root: this test needs it"
    blob = make(8 * PART, seed=2211)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER, OTHER)
    out = theirs / "out"
    kept = partial(blob, server, out)
    for path in (temp_of(out), state_path(out)):
        os.chown(path, OTHER, OTHER)
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == kept


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_a_partial_linked_elsewhere_is_started_over_never_written_through(
    make: Make, server: ServerHandle, tmp_path: Path, link: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A temporary file with another name (a hard link: a backup, a copy made with ``ln``)
    or that is a symbolic link cannot be resumed: writing through it would change a file
    that is not ours. The record is ignored and the run starts over beside it, leaving that
    file as it is: not refused again and again while saying to run it again to resume."""
    blob = make(8 * PART, seed=2212)
    out = tmp_path / "out"
    assert partial(blob, server, out) > 0
    other = tmp_path / "other"
    if link == "hard":
        os.link(temp_of(out), other)
    else:
        os.replace(temp_of(out), other)
        temp_of(out).symlink_to(other)
    before = sha256_file(other)
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == 0
    assert sha256_file(other) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "out"]
    assert "ignoring resume state" in caplog.text
