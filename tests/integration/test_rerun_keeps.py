"""The same command run again keeps what an earlier run finished, digest or none.

A digest vouches for a destination's bytes; without one, the record blobdl leaves on the
file when it renames it into place does: which URL it came from, the size, ETag and
Last-Modified it was pinned to, and the file's size and mtime then. A rerun keeps the file
(one probe, none of its bytes fetched) only while all of that still holds: the remote
changed, the file edited, a file blobdl did not write, or one written for another URL is
refused as before (exit 5), or replaced with ``--force``. Each test first shows the file
kept, so that the refusal after it is the change's doing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from blobdl import DestinationExists, Downloader
from blobdl.errors import EXIT_INTERRUPTED, EXIT_LOCAL, EXIT_OK
from blobdl.store import _source
from blobdl.store._resume import claims_bytes
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import PART, Blob, fast_settings, run_cli, sha256_file, spawn_cli
from tests.integration.conftest import freeze

Make = Callable[..., Blob]
CLI = ["--min-part-size", "64KiB", "--max-part-size", "64KiB", "--connections", "4",
       "--checkpoint-interval", "0.05", "--progress-interval", "0.05", "--max-backoff", "0.05",
       "--json"]  # fmt: skip
DEADLINE = 20.0


def aged(server: ServerHandle, name: str) -> None:
    """Served as a blob modified an hour ago: its Last-Modified (and an ETag beside it) can
    vouch for it. One modified in the second it is served vouches for nothing
    (``http._remote.lasting``), and the blobs of these tests are made just before."""
    hour_ago = time.time() - 3600
    os.utime(server.root / name, (hour_ago, hour_ago))


@pytest.fixture
def make(make: Make, server: ServerHandle) -> Make:
    def _make(size: int, seed: int = 0) -> Blob:
        blob = make(size, seed)
        aged(server, blob.name)
        return blob

    return _make


def finished(stdout: str) -> dict[int, dict[str, object]]:
    """The ``finished`` events of a batch's --json output, by item."""
    events = map(json.loads, stdout.splitlines())
    return {e["item"]: e for e in events if e["event"] == "finished"}


def served(server: ServerHandle, name: str, size: int, seed: int) -> str:
    """A blob of this test's own at ``name`` (the ``make`` cache must never see it change)."""
    make_blob(server.root, name, size, seed)
    aged(server, name)
    return server.url(name)


def kept(run: CompletedProcess[str], out: Path, sha256: str) -> None:
    """The rerun kept ``out``: exit 0, nothing fetched, the bytes as they were."""
    assert run.returncode == EXIT_OK, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["event"] == "finished" and result["bytes_fetched"] == 0, result
    assert sha256_file(out) == sha256


def refused(run: CompletedProcess[str], out: Path, sha256: str) -> None:
    """The rerun refused the existing destination as before a record existed: exit 5."""
    assert run.returncode == EXIT_LOCAL, run.stderr
    assert "already exists" in run.stderr
    assert "--force" in run.stderr, run.stderr  # what a command line's user types
    assert sha256_file(out) == sha256


def test_an_interrupted_manifest_rerun_keeps_the_items_it_finished(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    # A small item (done at a seat), a large one (its own coordinator), both quick, and a
    # slow large one still running when Ctrl-C comes. No digests.
    blobs = [make(40_000, seed=7300), make(8 * PART, seed=7301), make(16 * PART, seed=7302)]
    outs = [tmp_path / f"out-{i}" for i in range(3)]
    manifest = tmp_path / "manifest"
    manifest.write_text("".join(f"{b.url} {o}\n" for b, o in zip(blobs, outs, strict=True)))
    server.set_faults({"path": f"/files/{blobs[2].name}", "times": None, "action": "rate",
                       "bps": 10_000, "method": "GET"})  # fmt: skip
    # The server paces a response after its first 64 KiB only: parts of 256 KiB keep the
    # slow item running once its first bytes are in. Its four parts leave room in the
    # budget for the quick ones, whichever is granted lanes first.
    args = ["-i", str(manifest), *CLI, "--min-part-size", "256KiB", "--max-part-size", "256KiB",
            "--connections", "8", "--per-host", "8"]  # fmt: skip
    proc = spawn_cli(*args)
    try:
        assert proc.stdout is not None
        done: set[int] = set()
        seen: list[str] = []  # what the batch said, for a failure's message
        deadline = time.monotonic() + DEADLINE
        while done != {0, 1}:
            assert time.monotonic() < deadline, f"the quick items never finished: {seen}"
            line = proc.stdout.readline()
            assert line, f"the batch ended before Ctrl-C: {seen}"
            event = json.loads(line)
            if event["event"] != "progress":
                seen.append(line)
            if event["event"] == "finished":
                done.add(event["item"])
        state = outs[2].with_name(outs[2].name + ".blobdl-state")
        while not claims_bytes(state):
            assert time.monotonic() < deadline, "the slow item never saved a checkpoint"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    server.reset()

    rerun = run_cli(*args)
    assert rerun.returncode == EXIT_OK, rerun.stderr
    for blob, out in zip(blobs, outs, strict=True):
        assert sha256_file(out) == blob.sha256
    results, per_path = finished(rerun.stdout), server.stats()["per_path"]
    for n in (0, 1):  # kept: one probe for its validators, none of its bytes
        assert results[n]["bytes_fetched"] == 0 and not results[n]["verified"], results[n]
        assert per_path[f"/files/{blobs[n].name}"] == 1, per_path
    assert results[2]["resumed"] > 0, results[2]  # the interrupted one resumed


def test_the_same_download_run_twice_keeps_the_file_it_wrote(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob, out = make(4 * PART, seed=7310), tmp_path / "out"
    assert run_cli(blob.url, "-o", str(out), *CLI).returncode == EXIT_OK
    server.reset()
    kept(run_cli(blob.url, "-o", str(out), *CLI), out, blob.sha256)
    assert server.stats()["ranges"] == ["bytes=0-0"]  # the probe, and nothing else


@pytest.mark.parametrize("change", ["new-bytes", "new-etag"])
def test_a_file_is_not_kept_once_the_remote_changed(
    server: ServerHandle, tmp_path: Path, change: str
) -> None:
    name, out = f"rerun-changed-{change}.bin", tmp_path / "out"
    url = served(server, name, 4 * PART, seed=7320)
    first = sha256_file(server.root / name)
    assert run_cli(url, "-o", str(out), *CLI).returncode == EXIT_OK
    kept(run_cli(url, "-o", str(out), *CLI), out, first)
    if change == "new-bytes":  # the same size, other bytes, a later mtime (so a new ETag)
        newer = make_blob(server.root, name, 4 * PART, seed=7321)
        stamp = (server.root / name).stat().st_mtime_ns + 10**9
        os.utime(server.root / name, ns=(stamp, stamp))
    else:  # the same bytes and Last-Modified, under another ETag: the ETag proves a change
        newer = first
        server.set_faults({"path": f"/files/{name}", "times": None, "action": "etag",
                           "value": "another-blob"})  # fmt: skip
    refused(run_cli(url, "-o", str(out), *CLI), out, first)
    replaced = run_cli(url, "-o", str(out), "--force", *CLI)
    assert replaced.returncode == EXIT_OK, replaced.stderr
    assert json.loads(replaced.stdout.splitlines()[-1])["bytes_fetched"] == 4 * PART
    assert sha256_file(out) == newer


def test_a_file_edited_after_its_download_is_not_kept(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob, out = make(4 * PART, seed=7330), tmp_path / "out"
    assert run_cli(blob.url, "-o", str(out), *CLI).returncode == EXIT_OK
    kept(run_cli(blob.url, "-o", str(out), *CLI), out, blob.sha256)
    with out.open("r+b") as f:  # the same size, one byte changed, the mtime moved on
        f.seek(1000)
        f.write(bytes([f.read(1)[0] ^ 0xFF]))
    stamp = out.stat().st_mtime_ns + 10**9
    os.utime(out, ns=(stamp, stamp))
    edited = sha256_file(out)
    refused(run_cli(blob.url, "-o", str(out), *CLI), out, edited)


def test_a_file_blobdl_did_not_write_for_that_url_is_refused(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob, other = make(4 * PART, seed=7340), make(4 * PART, seed=7341)
    out, copy = tmp_path / "out", tmp_path / "copy"
    assert run_cli(blob.url, "-o", str(out), *CLI).returncode == EXIT_OK
    kept(run_cli(blob.url, "-o", str(out), *CLI), out, blob.sha256)
    # The same bytes, copied by someone else (no record), are not vouched for.
    shutil.copyfile(out, copy)
    server.reset()
    refused(run_cli(blob.url, "-o", str(copy), *CLI), copy, blob.sha256)
    assert server.stats()["requests"] == 0  # refused before any network traffic, as before
    # Nor is blobdl's own file, recorded for one URL, the download of another.
    refused(run_cli(other.url, "-o", str(out), *CLI), out, blob.sha256)


def test_a_file_replaced_by_one_with_its_record_size_and_mtime_is_not_kept(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    # Other bytes put at the name as a new file (another inode), given the record, the size
    # and the mtime of blobdl's file: only the inode tells that it is not the file written.
    blob, out = make(4 * PART, seed=7342), tmp_path / "out"
    assert run_cli(blob.url, "-o", str(out), *CLI).returncode == EXIT_OK
    kept(run_cli(blob.url, "-o", str(out), *CLI), out, blob.sha256)
    forged = tmp_path / "forged"
    forged.write_bytes(os.urandom(blob.size))
    os.setxattr(forged, _source.NAME, os.getxattr(out, _source.NAME))
    mtime = out.stat().st_mtime_ns
    os.utime(forged, ns=(mtime, mtime))
    os.replace(forged, out)
    refused(run_cli(blob.url, "-o", str(out), *CLI), out, sha256_file(out))


def test_a_file_written_for_one_url_is_not_kept_for_another_that_looks_the_same(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    # Two blobs of one size and one mtime: an ETag made of those (nginx's, this server's)
    # and the Last-Modified are the same for both, so only the URL in the record tells them.
    first, second = make(4 * PART, seed=7343), make(4 * PART, seed=7344)
    mtime = (server.root / first.name).stat().st_mtime_ns
    os.utime(server.root / second.name, ns=(mtime, mtime))
    out = tmp_path / "out"
    assert run_cli(first.url, "-o", str(out), *CLI).returncode == EXIT_OK
    kept(run_cli(first.url, "-o", str(out), *CLI), out, first.sha256)
    refused(run_cli(second.url, "-o", str(out), *CLI), out, first.sha256)


def test_without_user_extended_attributes_a_rerun_refuses_as_before(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))

    monkeypatch.setattr(os, "setxattr", unsupported)  # a filesystem without user xattrs
    blob, out = make(4 * PART, seed=7350), tmp_path / "out"
    downloader = Downloader(fast_settings())
    assert downloader.download(blob.url, out).size == blob.size  # the download is not worse
    assert _source.recorded(out) is None
    with pytest.raises(DestinationExists):
        downloader.download(blob.url, out)
    assert sha256_file(out) == blob.sha256


def test_a_record_planted_too_deep_to_read_is_no_record(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    # A value of nested brackets that Python's JSON reader gives up on (RecursionError,
    # not a ValueError): an unreadable record vouches for nothing, it is not a bug (exit 1).
    blob, out = make(4 * PART, seed=7360), tmp_path / "out"
    out.write_bytes(b"mine")
    os.setxattr(out, _source.NAME, b"[" * 4000)
    server.reset()
    refused(run_cli(blob.url, "-o", str(out), *CLI), out, sha256_file(out))
    assert server.stats()["requests"] == 0


@pytest.mark.parametrize("etag", ["none", "from-the-second"])
def test_a_last_modified_of_the_second_the_blob_was_served_vouches_for_nothing(
    server: ServerHandle, tmp_path: Path, etag: str
) -> None:
    # Only Last-Modified, as Python's http.server sends it: a date to the second. A blob
    # served in the second it was last modified may change again within that second under
    # the same Last-Modified (RFC 9110 8.8.2.2: it is a weak validator unless the Date is
    # later). A clock ahead of the Date stands here for that second: the same rule. Nor
    # does an ETag beside it vouch then: nginx's is the mtime in seconds and the size, the
    # same for both blobs here.
    name, out = f"rerun-same-second-{etag}.bin", tmp_path / "out"
    url, path = served(server, name, 4 * PART, seed=7370), server.root / name
    if etag == "none":
        server.set_faults({"path": f"/files/{name}", "times": None, "action": "headers",
                           "drop": ["ETag"]})  # fmt: skip
    else:
        server.set_faults({"path": f"/files/{name}", "times": None, "action": "etag",
                           "value": "65f1a2b3-100000"})  # fmt: skip
    past = (int(time.time()) - 3600) * 10**9
    os.utime(path, ns=(past, past))  # long before it is served: Last-Modified vouches
    assert run_cli(url, "-o", str(out), *CLI).returncode == EXIT_OK
    kept(run_cli(url, "-o", str(out), *CLI), out, sha256_file(path))
    out.unlink()
    second = (int(time.time()) + 3600) * 10**9
    os.utime(path, ns=(second + 200_000_000,) * 2)
    first = sha256_file(path)
    assert run_cli(url, "-o", str(out), *CLI).returncode == EXIT_OK
    make_blob(server.root, name, 4 * PART, seed=7371)  # other bytes, in the same second
    os.utime(path, ns=(second + 700_000_000,) * 2)
    refused(run_cli(url, "-o", str(out), *CLI), out, first)


def test_force_keeps_a_batchs_small_finished_items_with_one_byte_each(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    # --force replaces only what nothing vouches for: a small item's record vouches, so its
    # probe asks one byte, as without --force and as a single download does, never the
    # whole blob again to throw it away. One that is not vouched for is still replaced.
    blobs = [make(30_000, seed=7380 + i) for i in range(3)]
    outs = [tmp_path / f"out-{i}" for i in range(3)]
    manifest = tmp_path / "manifest"
    manifest.write_text("".join(f"{b.url} {o}\n" for b, o in zip(blobs, outs, strict=True)))
    assert run_cli("-i", str(manifest), *CLI).returncode == EXIT_OK
    outs[2].unlink()
    outs[2].write_bytes(b"x" * 30_000)  # no record: --force replaces it
    server.reset()
    rerun = run_cli("-i", str(manifest), "--force", *CLI)
    assert rerun.returncode == EXIT_OK, rerun.stderr
    for blob, out in zip(blobs, outs, strict=True):
        assert sha256_file(out) == blob.sha256
    results, per_path = finished(rerun.stdout), server.stats()["per_path"]
    assert [results[n]["bytes_fetched"] for n in range(3)] == [0, 0, 30_000], results
    asked = server.stats()["ranges"]
    assert asked.count("bytes=0-0") >= 2, asked  # the two kept ones: their validators only
    assert sum(per_path[f"/files/{b.name}"] for b in blobs[:2]) == 2, per_path


# --- a folder no one may write to ----------------------------------------------------------------


@pytest.mark.parametrize("digest", [False, True], ids=["record", "digest"])
@pytest.mark.parametrize("how", ["-o", "small item", "large item"])
def test_a_finished_download_in_a_folder_no_one_may_write_to_is_kept(
    make: Make, server: ServerHandle, tmp_path: Path, frozen: list[Path], how: str, digest: bool
) -> None:
    """A folder filled once, then read-only (a read-only mount, an image's layer, a shared
    dataset): the same command run again finds each file kept as its download (its digest
    or its record vouches for it) and writes nothing, as it would under the lock. It cannot
    take the lock there (a lock is a file made beside the destination): it was refused, exit
    5, "not writable", with nothing to write. A file that is not there is still refused so."""
    blob = make(40_000 if how == "small item" else 8 * PART, seed=7340)
    folder = tmp_path / "folder"
    folder.mkdir()
    out, missing = folder / "out.bin", folder / "missing.bin"
    pin = ["--digest", f"sha256:{blob.sha256}"] if digest else []
    if how == "-o":
        args = [blob.url, "-o", str(out), *pin, *CLI]
    else:
        manifest = tmp_path / "manifest"
        manifest.write_text(f"{blob.url} {out}{' sha256:' + blob.sha256 if digest else ''}\n")
        args = ["-i", str(manifest), *CLI]
    assert run_cli(*args).returncode == EXIT_OK
    freeze(folder, frozen)
    server.reset()
    rerun = run_cli(*args)
    if how == "-o":
        kept(rerun, out, blob.sha256)
    else:
        assert rerun.returncode == EXIT_OK, rerun.stderr
        assert finished(rerun.stdout)[0]["bytes_fetched"] == 0, rerun.stdout
        assert sha256_file(out) == blob.sha256
    assert sorted(p.name for p in folder.iterdir()) == ["out.bin"]
    # the digest vouches alone; a record, with one probe of one byte
    assert server.stats()["ranges"] == ([] if digest else ["bytes=0-0"])
    refused_here = run_cli(blob.url, "-o", str(missing), *CLI)
    assert refused_here.returncode == EXIT_LOCAL, refused_here.stderr
    assert "not writable" in refused_here.stderr


def test_a_download_placed_from_the_cache_in_a_folder_no_one_may_write_to_is_kept(
    make: Make, server: ServerHandle, tmp_path: Path, frozen: list[Path]
) -> None:
    """As above, with ``--cache-dir``: the destination is the cache entry's link; nothing
    needs placing again, and nothing is asked of the server."""
    blob = make(8 * PART, seed=7341)
    folder, cache = tmp_path / "folder", tmp_path / "cache"
    folder.mkdir()
    out = folder / "out.bin"
    args = [blob.url, "-o", str(out), "--digest", f"sha256:{blob.sha256}",
            "--cache-dir", str(cache), *CLI]  # fmt: skip
    assert run_cli(*args).returncode == EXIT_OK
    freeze(folder, frozen)
    server.reset()
    kept(run_cli(*args), out, blob.sha256)
    assert sorted(p.name for p in folder.iterdir()) == ["out.bin"]
    assert server.stats()["ranges"] == []


def test_a_file_another_user_planted_with_a_record_is_not_kept(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """In a folder all may write to (a sticky /tmp), another user can put a file at the
    destination before the download, and on it a record that names its own inode, size
    and mtime and the remote's validators (a HEAD tells them): their bytes, in their file,
    would be kept as the download. A record on another user's file vouches for nothing."""
    assert os.geteuid() == 0, "CI runs as root: this test needs it"
    blob = make(4 * PART, seed=7345)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    out = shared / "out"
    assert run_cli(blob.url, "-o", str(out), *CLI).returncode == EXIT_OK
    theirs = _source.recorded(out)
    assert theirs is not None
    out.unlink()
    out.write_bytes(os.urandom(blob.size))  # planted before the download runs
    os.chown(out, 54321, 54321)
    info = out.stat()
    forged = theirs._replace(ino=info.st_ino, size=info.st_size, mtime_ns=info.st_mtime_ns)
    os.setxattr(out, _source.NAME, _source._encode(forged))
    assert _source.recorded(out) == forged
    refused(run_cli(blob.url, "-o", str(out), *CLI), out, sha256_file(out))
