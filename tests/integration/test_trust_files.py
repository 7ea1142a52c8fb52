"""Files on disk we do not control: filesystems without fallocate, planted links, forged
cache entries, special files at the destination — over real processes and sockets."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

import blobdl
import blobdl.http._probe
from blobdl.errors import EXIT_LOCAL, EXIT_OK
from blobdl.store import _cache, _resume
from blobdl.store._destination import reserve
from blobdl.store._resume import PartRecord, State
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, REPO, Blob, fast_settings, run_cli, sha256_file

Make = Callable[..., Blob]
HERE = REPO / "tests"  # where nofalloc.c is
CLI_PARTS = ["--min-part-size", "64KiB", "--max-part-size", "64KiB", "--connections", "4"]

# --- preallocation on filesystems without fallocate(2) -------------------------------------

# How long the launcher holds each one-byte pwrite (glibc's emulated posix_fallocate writes one
# per 4 KiB block): a network filesystem's round trip, the window a racing worker falls into.
NFS_ROUND_TRIP_US = 200


@pytest.fixture(scope="session")
def nofalloc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tests/nofalloc.c`` built for this session: runs a command with fallocate(2) failing
    with EOPNOTSUPP for real (a seccomp filter), as on NFSv3, FUSE or ext4 without extents."""
    return _launcher(tmp_path_factory, "nofalloc")


def _launcher(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """``tests/NAME.c`` built with gcc, for this session."""
    # `make test` installs gcc: its absence is a broken set-up, not a reason to skip.
    assert shutil.which("gcc") is not None, "needs gcc to build the seccomp launcher"
    exe = tmp_path_factory.mktemp(name) / name
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / f"{name}.c")], check=True)
    return exe


def test_no_fallocate_filesystem_never_zeroes_downloaded_bytes(
    nofalloc: Path, make: Make, tmp_path: Path
) -> None:
    # Many parts on many connections: workers write while any preallocation could still run.
    blob = make(64 * PART, seed=11)
    dest = tmp_path / "out"
    args = [str(nofalloc), str(NFS_ROUND_TRIP_US), sys.executable, "-m", "blobdl", blob.url,
            "-o", str(dest), "--min-part-size", "64KiB", "--max-part-size", "64KiB",
            "--connections", "8", "-q"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == EXIT_OK, done.stderr
    assert sha256_file(dest) == blob.sha256, "bytes were zeroed by emulated preallocation"


def test_without_fallocate_the_file_stays_sparse(nofalloc: Path, tmp_path: Path) -> None:
    """Where fallocate(2) is refused, ``reserve`` writes nothing: glibc's emulation
    (posix_fallocate) would write a zero into every 4 KiB block (a round trip each on NFS,
    and a race with any writer), where the promise is a sparse file. Whatever the workers'
    timing, a file with blocks after ``reserve`` shows the emulation ran."""
    path = tmp_path / "reserved"
    script = (
        "import os, sys; from pathlib import Path; from blobdl.store._destination import reserve\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
        "reserve(fd, 64 * 65536, Path(sys.argv[1])); print(os.fstat(fd).st_blocks)\n"
    )
    args = [str(nofalloc), "0", sys.executable, "-c", script, str(path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == EXIT_OK, done.stderr
    assert int(done.stdout) == 0, "blocks were written where fallocate(2) is refused"


@pytest.fixture(scope="session")
def nosync(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tests/nosync.c`` built for this session: runs a command with fsync(2) and
    fdatasync(2) failing with EIO for real (a seccomp filter), as on a failing disk."""
    return _launcher(tmp_path_factory, "nosync")


def test_bytes_that_cannot_be_made_durable_are_never_renamed_into_place(
    nosync: Path, make: Make, tmp_path: Path
) -> None:
    # One part and no resume record: the fsync of the finished temp file is the first one a
    # run makes, so only it stands between the bytes and the rename. A rename before the
    # data is durable could leave DEST naming a file of holes after a crash.
    blob = make(PART, seed=13)
    dest = tmp_path / "out"
    args = [str(nosync), sys.executable, "-m", "blobdl", blob.url, "-o", str(dest),
            "--no-resume", "-q"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == EXIT_LOCAL, done.stderr
    assert not os.path.lexists(dest), "renamed into place though its bytes were not durable"
    assert done.stderr.startswith("blobdl: error:"), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr


@pytest.mark.parametrize("why", ["--force", "a digest the old file does not match"])
def test_bytes_that_cannot_be_made_durable_never_replace_an_existing_destination(
    nosync: Path, make: Make, tmp_path: Path, why: str
) -> None:
    # A destination already there is replaced (os.replace), not renamed onto nothing: the
    # other branch of the final rename, which must wait for the fsync as well. Renamed
    # first, a crash could swap a good old file for one of holes.
    blob = make(PART, seed=15)
    dest = tmp_path / "out"
    dest.write_bytes(PRECIOUS)
    given = ["--force"] if why == "--force" else ["--digest", f"sha256:{blob.sha256}"]
    args = [str(nosync), sys.executable, "-m", "blobdl", blob.url, "-o", str(dest),
            "--no-resume", "-q", *given]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == EXIT_LOCAL, done.stderr
    assert dest.read_bytes() == PRECIOUS, "replaced though the new bytes were not durable"
    assert done.stderr.startswith("blobdl: error:"), done.stderr


def test_a_resume_record_is_never_written_over_bytes_that_could_not_be_made_durable(
    nosync: Path, make: Make, tmp_path: Path
) -> None:
    # Only fdatasync fails: the checkpoint's own (every ranged run saves one as it winds
    # down, success included), while the record's and the file's fsyncs work. A record saved
    # without that fdatasync would vouch for pages that a crash can still lose.
    blob = make(4 * PART, seed=14)
    dest = tmp_path / "out"
    args = [str(nosync), "--fdatasync-only", sys.executable, "-m", "blobdl", blob.url,
            "-o", str(dest), *CLI_PARTS, "-q"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == EXIT_LOCAL, done.stderr
    assert not os.path.lexists(dest)
    record = _resume.state_path(dest)
    assert not record.exists() or not _resume.claims_bytes(record), "a record vouches for them"


def test_reserve_allocates_for_real_where_the_filesystem_can(tmp_path: Path) -> None:
    path = tmp_path / "reserved"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        reserve(fd, 64 * PART, path)
        info = os.fstat(fd)
    finally:
        os.close(fd)
    assert info.st_size == 64 * PART
    if info.st_blocks == 0:
        pytest.skip("this filesystem has no fallocate(2): the file stays sparse")
    assert info.st_blocks * 512 >= 64 * PART


# --- planted links at our side files --------------------------------------------------------

PRECIOUS = b"someone else's file\n"


def plant(kind: str, at: Path, victim: Path) -> None:
    """Make ``at`` a symbolic or a hard link to ``victim`` (which holds PRECIOUS)."""
    victim.write_bytes(PRECIOUS)
    if kind == "symlink":
        at.symlink_to(victim)
    else:
        os.link(victim, at)


def refused(done: subprocess.CompletedProcess[str], path: Path) -> bool:
    """Exit 5 with a one-line error that names ``path``, no traceback."""
    return (
        done.returncode == EXIT_LOCAL
        and str(path) in done.stderr
        and "Traceback" not in done.stderr
    )


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_planted_lock_link_is_refused_and_its_target_untouched(
    kind: str, make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(4 * PART, seed=12)
    dest, victim = tmp_path / "out", tmp_path / "victim"
    lock = tmp_path / "out.blobdl-lock"
    plant(kind, lock, victim)
    done = run_cli(blob.url, "-o", str(dest), "-q")
    assert refused(done, lock), done.stderr
    assert victim.read_bytes() == PRECIOUS
    assert not dest.exists() and server.stats()["requests"] == 0


def test_dangling_lock_symlink_is_refused_not_created(make: Make, tmp_path: Path) -> None:
    blob = make(4 * PART, seed=12)
    dest, lock, target = tmp_path / "out", tmp_path / "out.blobdl-lock", tmp_path / "created"
    lock.symlink_to(target)
    done = run_cli(blob.url, "-o", str(dest), "-q")
    assert refused(done, lock), done.stderr
    assert not target.exists()


def resumable(blob: Blob, dest: Path) -> None:
    """A state record that claims half of every part of ``blob`` for ``dest``."""
    probe = blobdl.http._probe.resolve(blob.url, fast_settings())
    half = PART // 2
    parts = tuple(
        PartRecord(s, min(s + PART, blob.size), min(s + half, blob.size))
        for s in range(0, blob.size, PART)
    )
    state = State(blob.url, probe.final_url, blob.size, probe.etag, probe.last_modified, parts)
    _resume.save(_resume.state_path(dest), state)


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_planted_temp_link_is_not_written_through_on_resume(
    kind: str, make: Make, tmp_path: Path
) -> None:
    """A record beside a temp name that links elsewhere claims bytes of a file not ours:
    never resumed through it. Refused, it was refused at every rerun (exit 5) while saying
    to run the same command again; now the record is ignored and the download starts over
    beside it, our name of the link removed, its target untouched (as on a fresh download)."""
    blob = make(4 * PART, seed=13)
    dest, victim = tmp_path / "out", tmp_path / "victim"
    temp = tmp_path / "out.blobdl-tmp"
    plant(kind, temp, victim)
    precious = PRECIOUS * (blob.size // len(PRECIOUS)) + PRECIOUS[: blob.size % len(PRECIOUS)]
    victim.write_bytes(precious)  # the size the state expects, so it looks resumable
    resumable(blob, dest)
    done = run_cli(blob.url, "-o", str(dest), "-q", *CLI_PARTS)
    assert done.returncode == EXIT_OK, done.stderr
    assert victim.read_bytes() == precious
    assert sha256_file(dest) == blob.sha256
    assert not os.path.lexists(temp)


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_planted_temp_link_is_discarded_on_a_fresh_download(
    kind: str, make: Make, tmp_path: Path
) -> None:
    blob = make(4 * PART, seed=13)
    dest, victim = tmp_path / "out", tmp_path / "victim"
    plant(kind, tmp_path / "out.blobdl-tmp", victim)
    done = run_cli(blob.url, "-o", str(dest), "-q", *CLI_PARTS)
    assert done.returncode == EXIT_OK, done.stderr
    assert victim.read_bytes() == PRECIOUS and sha256_file(dest) == blob.sha256


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_state_scratch_link_is_replaced_not_written_through(kind: str, tmp_path: Path) -> None:
    record, victim = tmp_path / "out.blobdl-state", tmp_path / "victim"
    plant(kind, tmp_path / "out.blobdl-state.new", victim)
    state = State("http://x/b", "http://x/b", 10, None, None, (PartRecord(0, 10, 5),))
    _resume.save(record, state)
    _resume.save(record, state)  # and again, over its own scratch name
    assert victim.read_bytes() == PRECIOUS
    temp = tmp_path / "out.blobdl-tmp"
    temp.write_bytes(bytes(10))
    loaded = _resume.load(record, "http://x/b", temp)
    assert loaded is not None and loaded.parts == state.parts and loaded.url == state.url


def test_kept_bad_bytes_replace_a_planted_link_not_its_target(make: Make, tmp_path: Path) -> None:
    blob = make(4 * PART, seed=14)
    dest, victim, bad = tmp_path / "out", tmp_path / "victim", tmp_path / "out.blobdl-bad"
    plant("symlink", bad, victim)
    done = run_cli(blob.url, "-o", str(dest), "-q", "--keep-bad", "--digest", "0" * 64)
    assert done.returncode != EXIT_OK and victim.read_bytes() == PRECIOUS
    assert not bad.is_symlink() and sha256_file(bad) == blob.sha256


def test_kept_bad_bytes_that_cannot_be_renamed_are_a_local_error(
    make: Make, tmp_path: Path
) -> None:
    blob = make(4 * PART, seed=14)
    dest, bad = tmp_path / "out", tmp_path / "out.blobdl-bad"
    (bad / "occupied").mkdir(parents=True)
    done = run_cli(blob.url, "-o", str(dest), "-q", "--keep-bad", "--digest", "0" * 64)
    assert refused(done, bad), done.stderr


# --- forged cache entries ---------------------------------------------------------------------


def cached(blob: Blob, dest: Path, cache: Path) -> blobdl.DownloadResult:
    return blobdl.download(blob.url, dest, digest=blob.sha256, cache_dir=str(cache))


def test_seals_live_in_a_private_directory_not_in_the_cache(make: Make, tmp_path: Path) -> None:
    blob = make(4 * PART, seed=15)
    cache = tmp_path / "cache"
    cached(blob, tmp_path / "a", cache)
    assert [p.name for p in cache.iterdir()] == [f"sha256-{blob.sha256}"]
    seals = Path(os.environ["BLOBDL_SEAL_DIR"])
    assert stat.S_IMODE(seals.stat().st_mode) == 0o700


def test_a_seal_directory_found_open_to_others_is_made_private(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = make(4 * PART, seed=23)
    seals = tmp_path / "seals"
    seals.mkdir()
    seals.chmod(0o777)  # made by hand, or under a umask that leaves it open
    monkeypatch.setenv("BLOBDL_SEAL_DIR", str(seals))
    cached(blob, tmp_path / "a", tmp_path / "cache")
    assert stat.S_IMODE(seals.stat().st_mode) == 0o700
    assert len(list(seals.iterdir())) == 1  # and the entry's seal is in it


def test_forged_entry_with_an_old_style_seal_is_hashed_and_refetched(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(4 * PART, seed=16)
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = cache / f"sha256-{blob.sha256}"
    entry.write_bytes(os.urandom(blob.size))  # someone who can write the cache directory
    info = entry.stat()
    Path(f"{entry}.seal").write_text(f"{info.st_size} {info.st_mtime_ns}\n")
    result = cached(blob, tmp_path / "a", cache)
    assert sha256_file(tmp_path / "a") == blob.sha256
    assert not result.cached and server.stats()["bytes_sent"] >= blob.size


def test_entry_edited_in_place_with_its_mtime_restored_is_refetched(
    make: Make, tmp_path: Path
) -> None:
    blob = make(4 * PART, seed=17)
    cache = tmp_path / "cache"
    cached(blob, tmp_path / "a", cache)
    entry = cache / f"sha256-{blob.sha256}"
    before = entry.stat()
    entry.chmod(0o644)
    with entry.open("r+b") as f:  # same inode, same size, same mtime: only ctime tells
        f.write(b"forged!")
    entry.chmod(0o444)
    os.utime(entry, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = cached(blob, tmp_path / "b", cache)
    assert sha256_file(tmp_path / "b") == blob.sha256
    assert not result.cached


def test_entry_replaced_by_another_file_with_forged_times_is_refetched(
    make: Make, tmp_path: Path
) -> None:
    blob = make(4 * PART, seed=18)
    cache = tmp_path / "cache"
    cached(blob, tmp_path / "a", cache)
    entry = cache / f"sha256-{blob.sha256}"
    before = entry.stat()
    forged = cache / "forged"
    forged.write_bytes(os.urandom(blob.size))
    os.utime(forged, ns=(before.st_atime_ns, before.st_mtime_ns))
    forged.chmod(0o444)
    os.replace(forged, entry)
    result = cached(blob, tmp_path / "b", cache)
    assert sha256_file(tmp_path / "b") == blob.sha256
    assert not result.cached


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_an_entry_another_user_owns_is_copied_never_linked(make: Make, tmp_path: Path) -> None:
    """Right bytes, planted by another user of a shared cache: linked, the destination would
    be their file, which they may make writable and edit whenever they like."""
    blob = make(4 * PART, seed=21)
    cache = tmp_path / "cache"
    cached(blob, tmp_path / "a", cache)  # the right bytes
    entry = cache / f"sha256-{blob.sha256}"
    planted = cache / "planted"
    shutil.copyfile(entry, planted)
    os.chown(planted, NOBODY, NOBODY)
    planted.chmod(0o666)
    os.replace(planted, entry)
    result = cached(blob, tmp_path / "b", cache)
    assert sha256_file(tmp_path / "b") == blob.sha256 and result.cached
    dest = os.stat(tmp_path / "b")
    assert dest.st_uid == os.geteuid() and dest.st_ino != os.stat(entry).st_ino
    # The owner's mode is theirs to choose: a user of the cache never changes it.
    assert stat.S_IMODE(os.stat(entry).st_mode) == 0o666


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_seal_another_user_wrote_vouches_for_nothing(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seal directory that was not private (blobdl makes it 0700 when it finds it open,
    but whatever others put there before stays): only our own seals vouch for an entry."""
    blob = make(4 * PART, seed=22)
    seals = tmp_path / "seals"
    seals.mkdir(mode=0o777)
    seals.chmod(0o777)
    monkeypatch.setenv("BLOBDL_SEAL_DIR", str(seals))
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = cache / f"sha256-{blob.sha256}"
    entry.write_bytes(os.urandom(blob.size))  # forged by someone who can write both
    _cache.reseal(entry, blob.sha256, os.lstat(entry))
    (record,) = seals.iterdir()
    os.chown(record, NOBODY, NOBODY)
    result = cached(blob, tmp_path / "a", cache)
    assert sha256_file(tmp_path / "a") == blob.sha256
    assert not result.cached and server.stats()["bytes_sent"] >= blob.size


def test_repeated_hits_stay_sealed_and_cost_no_network(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(4 * PART, seed=19)
    cache = tmp_path / "cache"
    for name in ("a", "b", "c"):
        cached(blob, tmp_path / name, cache)
    sent = server.stats()["bytes_sent"]
    result = cached(blob, tmp_path / "d", cache)
    assert result.cached and server.stats()["bytes_sent"] == sent
    assert _cache.sealed(cache / f"sha256-{blob.sha256}", blob.sha256) is not None


def test_cache_on_another_filesystem_is_copied_and_stays_sealed(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temp directory")
    blob = make(4 * PART, seed=20)
    cache = Path(tempfile.mkdtemp(dir=shm))
    try:
        for name in ("a", "b"):
            cached(blob, tmp_path / name, cache)
        sent = server.stats()["bytes_sent"]
        result = cached(blob, tmp_path / "c", cache)
        assert result.cached and server.stats()["bytes_sent"] == sent
        assert sha256_file(tmp_path / "c") == blob.sha256
        assert os.stat(tmp_path / "c").st_nlink == 1  # a copy, not a link
    finally:
        shutil.rmtree(cache)


# --- special files at the destination -----------------------------------------------------------


def special(kind: str, at: Path) -> None:
    """Put a FIFO, a character device, a socket or a directory at ``at``."""
    if kind == "fifo":
        os.mkfifo(at)
    elif kind == "chardev":
        try:
            os.mknod(at, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
        except PermissionError:
            at.symlink_to("/dev/null")
    elif kind == "devnull-link":
        at.symlink_to("/dev/null")
    elif kind == "socket":
        short = Path(tempfile.mkdtemp(dir="/tmp")) / "s"  # AF_UNIX paths are short
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(short))
        os.rename(short, at)
        short.parent.rmdir()
    else:
        at.mkdir()


SPECIAL = ["fifo", "chardev", "devnull-link", "socket", "directory"]


@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("mode", ["--force", "--digest"])
def test_special_destination_is_refused_before_any_traffic(
    kind: str, mode: str, make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(4 * PART, seed=21)
    dest = tmp_path / "out"
    special(kind, dest)
    before = os.lstat(dest)
    how = ["--force"] if mode == "--force" else ["--digest", blob.sha256]
    done = run_cli(blob.url, "-o", str(dest), "-q", *how, timeout=20)
    assert refused(done, dest) and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert server.stats()["requests"] == 0
    after = os.lstat(dest)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


@pytest.mark.parametrize("kind", SPECIAL)
def test_special_cache_entry_is_refused_before_any_traffic(
    kind: str, make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(4 * PART, seed=22)
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = cache / f"sha256-{blob.sha256}"
    special(kind, entry)
    done = run_cli(blob.url, "-o", str(tmp_path / "out"), "-q", "--digest", blob.sha256,
                   "--cache-dir", str(cache), timeout=20)  # fmt: skip
    assert refused(done, entry), done.stderr
    assert server.stats()["requests"] == 0


def test_fifo_state_record_is_ignored_not_waited_on(make: Make, tmp_path: Path) -> None:
    blob = make(4 * PART, seed=23)
    dest = tmp_path / "out"
    os.mkfifo(tmp_path / "out.blobdl-state")
    done = run_cli(blob.url, "-o", str(dest), "-q", *CLI_PARTS, timeout=20)
    assert done.returncode == EXIT_OK, done.stderr
    assert sha256_file(dest) == blob.sha256


def test_fifo_temp_file_is_never_opened(make: Make, tmp_path: Path) -> None:
    blob = make(4 * PART, seed=24)
    dest = tmp_path / "out"
    resumable(blob, dest)
    os.mkfifo(tmp_path / "out.blobdl-tmp")
    done = run_cli(blob.url, "-o", str(dest), "-q", *CLI_PARTS, timeout=20)
    assert done.returncode == EXIT_OK, done.stderr
    assert sha256_file(dest) == blob.sha256


@pytest.mark.parametrize("how", ["one-url", "manifest"])
def test_a_dangling_link_at_the_destination_is_an_existing_destination(
    make: Make, tmp_path: Path, how: str
) -> None:
    """A link to a file not there yet is something the user put at that name, as a link to
    one that is: refused without a digest or --force, and left as it was."""
    blob = make(4 * PART if how == "one-url" else 1000, seed=26)
    dest = tmp_path / "out"
    dest.symlink_to(tmp_path / "missing" / "model.bin")
    if how == "one-url":
        done = run_cli(blob.url, "-o", str(dest), "-q", *CLI_PARTS)
    else:
        (tmp_path / "list").write_text(f"{blob.url} {dest}\n")
        done = run_cli("-i", str(tmp_path / "list"), "-q", *CLI_PARTS)
    assert refused(done, dest) and "already exists" in done.stderr, done.stderr
    assert os.readlink(dest) == str(tmp_path / "missing" / "model.bin")


def test_destination_symlink_is_replaced_not_written_through(make: Make, tmp_path: Path) -> None:
    blob = make(4 * PART, seed=25)
    dest, victim = tmp_path / "out", tmp_path / "victim"
    plant("symlink", dest, victim)
    done = run_cli(blob.url, "-o", str(dest), "-q", "--force", *CLI_PARTS)
    assert done.returncode == EXIT_OK, done.stderr
    assert not dest.is_symlink() and sha256_file(dest) == blob.sha256
    assert victim.read_bytes() == PRECIOUS
