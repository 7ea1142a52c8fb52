"""A download that stops says truly how it ended (trust issue #20, items 8, 11, 12, 15).

SIGTERM is Ctrl-C by another name, wherever it arrives: the probe, a lock or cache wait,
the parts, the hashing after the last byte (exit 130, one error line, the partial kept if
bytes landed, no lock file left, never 143). From the moment the complete file is renamed
into place on, the download has succeeded: exit 0, no state file left. The system refusing
what a download needs (file descriptors, a child process that dies, a full disk, a
directory made read-only) is one error line with exit 2-5 that no cleanup replaces, never a
traceback, and no process is left behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from blobdl.errors import EXIT_INTERRUPTED, EXIT_LOCAL, EXIT_NETWORK, EXIT_OK
from blobdl.store._resume import claims_bytes
from faultserver.serverctl import ServerHandle
from tests.conftest import REPO, Blob, sha256_file
from tests.integration.test_hostile import MARK, reap_tagged
from tests.integration.test_lost_output import F_SETPIPE_SZ
from tests.integration.test_trust_resume import partial

Make = Callable[..., Blob]
SIZE = 1_000_000
CLI = ["--min-part-size", "64KiB", "--max-part-size", "64KiB", "--connections", "4",
       "--checkpoint-interval", "0.05", "--progress-interval", "0.05", "--max-backoff", "0.05",
       "--stall-timeout", "5"]  # fmt: skip
SIDE = (".blobdl-tmp", ".blobdl-state", ".blobdl-lock")
DEADLINE = 20.0


class Cli:
    """A command that runs blobdl, in the background, every process it starts tagged so
    that none can hide afterwards."""

    def __init__(
        self,
        command: list[str],
        *,
        preexec: Callable[[], None] | None = None,
        cwd: Path = REPO,
        stdout: int = subprocess.DEVNULL,
    ) -> None:
        self.tag = uuid.uuid4().hex
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, MARK: self.tag, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec,
        )

    @classmethod
    def of(
        cls,
        args: list[str],
        *,
        wrapper: str | None = None,
        preexec: Callable[[], None] | None = None,
        stdout: int = subprocess.DEVNULL,
    ) -> Cli:
        """``python -m blobdl ARGS`` (or ``python -c WRAPPER ARGS``)."""
        head = [sys.executable, "-c", wrapper] if wrapper else [sys.executable, "-m", "blobdl"]
        return cls([*head, *args], preexec=preexec, stdout=stdout)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self) -> tuple[int, list[str]]:
        """Its exit code and stderr lines; every process it started is gone (else: fail)."""
        try:
            _, stderr = self.proc.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, stderr = self.proc.communicate()
            pytest.fail(f"no exit within {DEADLINE} s: {stderr}")
        assert not reap_tagged(self.tag), "processes left behind"
        assert "Traceback" not in stderr, stderr
        return self.proc.returncode, stderr.strip().splitlines()


def one_error(lines: list[str]) -> str:
    """The one error line (warnings aside)."""
    errors = [ln for ln in lines if ln.startswith("blobdl: error: ")]
    others = [ln for ln in lines if not ln.startswith(("blobdl: error: ", "blobdl: warning: "))]
    assert len(errors) == 1 and not others, lines
    return errors[0]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def side_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name + "."))


# The fault server paces a response after its first 64 KiB only: four parts of 256 KiB at
# 250 KB/s each take about 0.8 s.
SLOW_CLI = [*CLI, "--min-part-size", "256KiB", "--max-part-size", "256KiB"]


def slow(server: ServerHandle, bps: int = 250_000) -> None:
    """Every range request paced (with SLOW_CLI, the download takes about 0.8 s)."""
    server.set_faults({"path": "/files/*", "skip": 1, "times": None, "action": "rate",
                       "bps": bps, "method": "GET"})  # fmt: skip


def rerun_completes(blob: Blob, out: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "blobdl", blob.url, "-o", str(out), *CLI, "-q"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    assert sha256_file(out) == blob.sha256 and side_files(out) == []


STOPS = [signal.SIGTERM, signal.SIGINT]


# --- item 15: SIGTERM is Ctrl-C, wherever it arrives ----------------------------------------


@pytest.mark.parametrize("signum", STOPS, ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_the_probe_exits_130_and_leaves_nothing(
    make: Make, server: ServerHandle, tmp_path: Path, signum: int
) -> None:
    blob = make(SIZE, seed=2501)
    server.set_faults({"path": "/files/*", "times": None, "action": "ttfb", "delay": 30})
    out = tmp_path / "out"
    cli = Cli.of([blob.url, "-o", str(out), *CLI])
    wait_for(lambda: server.stats()["requests"] >= 1, "the probe")
    cli.signal(signum)
    code, lines = cli.finish()
    assert code == EXIT_INTERRUPTED and f"signal {signum}" in one_error(lines)
    assert list(tmp_path.iterdir()) == []  # no lock file, no partial


@pytest.mark.parametrize("signum", STOPS, ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", ["pull", "hf"])
def test_a_signal_while_a_named_command_waits_on_the_network_exits_130(
    server: ServerHandle, tmp_path: Path, signum: int, command: str
) -> None:
    """``pull`` and ``hf`` stop as the download does: 130 and one line, never 143."""
    server.set_faults({"path": "/*", "times": None, "action": "ttfb", "delay": 30})
    host = f"127.0.0.1:{server.port}"
    args = {
        "pull": ["pull", "--insecure", f"{host}/ns/model:tag", "--models-dir", str(tmp_path)],
        "hf": ["hf", "acme/tiny", "--cache-dir", str(tmp_path)],
    }[command]
    os.environ["HF_ENDPOINT"] = f"http://{host}"
    try:
        cli = Cli.of(args)
    finally:
        del os.environ["HF_ENDPOINT"]
    wait_for(lambda: server.stats()["requests"] >= 1, "the first request")
    cli.signal(signum)
    code, lines = cli.finish()
    assert code == EXIT_INTERRUPTED and f"signal {signum}" in one_error(lines)


@pytest.mark.parametrize("signum", STOPS, ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_the_probe_keeps_an_earlier_partial_and_says_so(
    make: Make, server: ServerHandle, tmp_path: Path, signum: int
) -> None:
    blob = make(SIZE, seed=2502)
    out = tmp_path / "out"
    partial(blob, server, out)
    state = Path(f"{out}.blobdl-state").read_bytes()
    server.set_faults({"path": "/files/*", "times": None, "action": "ttfb", "delay": 30})
    cli = Cli.of([blob.url, "-o", str(out), *CLI])
    wait_for(lambda: server.stats()["requests"] >= 1, "the probe")
    cli.signal(signum)
    code, lines = cli.finish()
    assert code == EXIT_INTERRUPTED and one_error(lines)
    assert any("partial download kept" in ln for ln in lines), lines
    assert side_files(out) == ["out.blobdl-state", "out.blobdl-tmp"]  # no lock file
    assert Path(f"{out}.blobdl-state").read_bytes() == state
    server.reset()
    rerun_completes(blob, out)


def test_ctrl_c_that_the_caller_ignores_stays_ignored(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A background job of a shell script starts with SIGINT ignored: a Ctrl-C at the
    terminal is not for it, and blobdl leaves it so (SIGTERM still stops it)."""
    blob = make(SIZE, seed=2512)
    server.set_faults({"path": "/files/*", "action": "ttfb", "delay": 0.5})
    out = tmp_path / "out"
    cli = Cli.of([blob.url, "-o", str(out), *CLI],
                 preexec=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    wait_for(lambda: server.stats()["requests"] >= 1, "the probe")
    cli.signal(signal.SIGINT)
    code, lines = cli.finish()
    assert code == EXIT_OK and sha256_file(out) == blob.sha256, lines


def test_ctrl_c_that_a_batch_ignores_stays_ignored_by_its_items(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The same for ``-i``, Ctrl-C sent to the whole group as a terminal sends it: a large
    item runs in a process of its own that stops its own workers, and it ignores it too."""
    blob = make(SIZE, seed=2513)
    server.set_faults({"path": "/files/*", "times": None, "action": "ttfb", "delay": 0.3})
    out, manifest = tmp_path / "out", tmp_path / "manifest"
    manifest.write_text(f"{blob.url} {out}\n")

    def background_job() -> None:  # in a group of its own: the Ctrl-C reaches it alone
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    cli = Cli.of(["-i", str(manifest), *CLI], preexec=background_job)
    wait_for(lambda: server.stats()["requests"] >= 2, "the item's first range")  # probe first
    os.killpg(cli.proc.pid, signal.SIGINT)
    code, lines = cli.finish()
    assert code == EXIT_OK and sha256_file(out) == blob.sha256, lines


def unread(fd: int) -> int:
    """How many bytes wait in the pipe ``fd`` reads."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0])


@pytest.mark.parametrize("batch", [False, True], ids=["URL", "-i"])
@pytest.mark.parametrize("signum", STOPS, ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_a_json_line_waits_for_its_reader_never_cuts_it(
    make: Make, tmp_path: Path, signum: int, batch: bool
) -> None:
    """A ``--json`` line of three pipes' worth (a long URL) goes out in pieces while the
    reader is behind; the signal comes after the first piece. It stops the run as always
    (exit 130), but after the line: every line on stdout is whole JSON, the ``started``
    line, then the ``failed``; never half a line with the next glued to it."""
    blob = make(SIZE, seed=2531)
    url, out = f"{blob.url}?pad={'x' * 12000}", tmp_path / "out"
    args = [url, "-o", str(out)]
    if batch:
        (tmp_path / "manifest").write_text(f"{url} {out}\n")
        args = ["-i", str(tmp_path / "manifest")]
    read_end, write_end = os.pipe()
    capacity = fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)  # the smallest: a page
    cli = Cli.of([*args, "--json", *CLI], stdout=write_end)
    os.close(write_end)
    wait_for(lambda: unread(read_end) >= capacity, "the started line, cut by a full pipe")
    cli.signal(signum)
    with open(read_end, "rb") as reader:
        lines = reader.read().splitlines()
    code, errors = cli.finish()
    assert code == EXIT_INTERRUPTED, errors
    events = [json.loads(line)["event"] for line in lines]  # whole lines, each one
    assert events[0] == "started" and events[-1] == "failed", events


@pytest.mark.parametrize("where", ["destination", "cache"])
@pytest.mark.parametrize("signum", STOPS, ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_a_lock_wait_exits_130(
    make: Make, server: ServerHandle, tmp_path: Path, signum: int, where: str
) -> None:
    """Another holder has the lock (of the destination, or of the cache entry that all
    jobs fill); the wait is long, and a signal ends it like Ctrl-C."""
    blob = make(SIZE, seed=2503)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = [blob.url, "-o", str(out), *CLI, "--lock-timeout", "60"]
    locked = Path(f"{out}.blobdl-lock")
    if where == "cache":
        cache.mkdir()
        args += ["--cache-dir", str(cache), "--digest", blob.sha256]
        locked = cache / f"sha256-{blob.sha256}.blobdl-lock"
    holder = os.open(locked, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        cli = Cli.of(args)
        me = psutil.Process(cli.proc.pid)
        wait_for(lambda: str(locked) in [f.path for f in me.open_files()], "the lock wait")
        time.sleep(0.1)  # waiting on the lock (polled), having made no request
        assert cli.proc.poll() is None and server.stats()["requests"] == 0
        cli.signal(signum)
        code, lines = cli.finish()
    finally:
        os.close(holder)
    assert code == EXIT_INTERRUPTED and f"signal {signum}" in one_error(lines)
    assert locked.exists() and not out.exists()  # the holder's lock file is the holder's


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.45, 0.7, 1.0])
def test_a_sigterm_at_any_moment_leaves_a_true_outcome(
    make: Make, server: ServerHandle, tmp_path: Path, delay: float
) -> None:
    """Complete at the destination and exit 0, or exit 130 with no destination and the
    partial (if any) resumable; no lock file and no process left either way. (Counted from
    the probe: before it, the interpreter may still be starting, and nothing of ours runs.)"""
    blob = make(SIZE, seed=2504)
    slow(server)
    out = tmp_path / "out"
    cli = Cli.of([blob.url, "-o", str(out), *SLOW_CLI, "--digest", blob.sha256])
    wait_for(lambda: server.stats()["requests"] >= 1, "the probe")
    time.sleep(delay)
    cli.signal(signal.SIGTERM)
    code, lines = cli.finish()
    assert f"{out.name}.blobdl-lock" not in side_files(out)
    if code == EXIT_OK:
        assert sha256_file(out) == blob.sha256 and side_files(out) == [], lines
        return
    assert code == EXIT_INTERRUPTED and one_error(lines) and not out.exists()
    kept = side_files(out)
    assert kept in ([], ["out.blobdl-state", "out.blobdl-tmp"]), kept
    assert bool(kept) == any("partial download kept" in ln for ln in lines), lines
    server.reset()
    rerun_completes(blob, out)


# --- item 8: a signal in the last steps ------------------------------------------------------

# The CLI, with a signal sent to itself just before one step of the end runs.
WRAPPER = """
import os, sys
from pathlib import Path
import blobdl.engine._hasher as hasher
import blobdl.store._destination as destination
import blobdl.store._lock as lock
import blobdl.store._resume as resume

point, signum, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fired = []

def fire():
    if not fired:
        fired.append(point)
        os.kill(os.getpid(), signum)

def before(function, test=lambda *a, **k: True):
    def patched(*args, **kwargs):
        if test(*args, **kwargs):
            fire()
        return function(*args, **kwargs)
    return patched

if point == "hash":
    hasher.PrefixHasher.finish = before(hasher.PrefixHasher.finish)
elif point == "fsync":
    os.fsync = before(os.fsync, lambda fd: sys._getframe(2).f_code.co_name == "finalize")
elif point == "rename":
    os.replace = before(os.replace, lambda src, dst, **k: str(dst) == dest)
elif point == "dir-fsync":
    destination.fsync_dir = before(destination.fsync_dir)
elif point == "state":
    resume.remove = before(resume.remove, lambda path: Path(path).exists())
elif point == "unlock":
    lock.DestinationLock.__exit__ = before(lock.DestinationLock.__exit__)
elif point == "freeze-at-state":  # no signal: the directory becomes immutable instead
    import subprocess
    fire = lambda: fired or fired.append(subprocess.run(["chattr", "+i", str(Path(dest).parent)]))
    resume.remove = before(resume.remove, lambda path: Path(path).exists())
sys.argv = ["blobdl", *sys.argv[4:]]
from blobdl.cli import run
run()
"""


def wrapped(point: str, signum: int, blob: Blob, folder: Path) -> tuple[int, list[str], Path]:
    """The CLI fetching ``blob`` into ``folder`` (with its digest), ``signum`` sent to itself
    just before ``point`` (see WRAPPER); its exit code, stderr lines and destination."""
    out = folder / "out"
    args = [point, str(int(signum)), str(out), blob.url, "-o", str(out), *CLI]
    return (*Cli.of([*args, "--digest", blob.sha256], wrapper=WRAPPER).finish(), out)


@pytest.mark.parametrize(
    ("point", "signum"),
    [(point, signal.SIGTERM) for point in ("fsync", "rename", "dir-fsync", "state", "unlock")]
    + [("dir-fsync", signal.SIGINT)],  # Ctrl-C there: exit 130 and a stale state, in #20
)
def test_a_signal_once_the_file_is_being_put_in_place_is_a_success(
    make: Make, server: ServerHandle, tmp_path: Path, point: str, signum: int
) -> None:
    blob = make(SIZE, seed=2505)
    code, lines, out = wrapped(point, signum, blob, tmp_path)
    assert code == EXIT_OK, lines
    assert sha256_file(out) == blob.sha256 and side_files(out) == []


@pytest.mark.parametrize("signum", STOPS, ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_last_bytes_are_hashed_keeps_the_whole_partial(
    make: Make, server: ServerHandle, tmp_path: Path, signum: int
) -> None:
    blob = make(SIZE, seed=2506)
    code, lines, out = wrapped("hash", signum, blob, tmp_path)
    assert code == EXIT_INTERRUPTED and one_error(lines) and not out.exists()
    assert side_files(out) == ["out.blobdl-state", "out.blobdl-tmp"]
    server.reset()
    rerun_completes(blob, out)
    assert server.stats()["bytes_sent"] == 1  # every byte was kept: only the probe's again


def test_a_record_that_cannot_be_removed_after_the_rename_is_a_warning(
    make: Make, server: ServerHandle, tmp_path: Path, immutable: Callable[[Path], None]
) -> None:
    """The file is in place when its directory turns immutable: exit 0, and the record and
    the lock file that could not be removed are warnings, never an error of their own."""
    blob = make(SIZE, seed=2511)
    folder = tmp_path / "dir"
    folder.mkdir()
    immutable(folder)  # (made so by the run itself; the fixture only undoes it after)
    subprocess.run(["chattr", "-i", str(folder)], check=True)
    out = folder / "out"
    cli = Cli.of(["freeze-at-state", "0", str(out), blob.url, "-o", str(out), *CLI],
              wrapper=WRAPPER)  # fmt: skip
    code, lines = cli.finish()
    assert code == EXIT_OK, lines
    assert sha256_file(out) == blob.sha256
    assert any("could not remove the resume record" in line for line in lines), lines
    assert any("could not remove the lock file" in line for line in lines), lines


# --- item 12: the system refuses what a download needs ----------------------------------------


def open_files(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return preexec


@pytest.mark.parametrize("limit", [16, 32, 40, 64])
def test_too_few_file_descriptors_is_one_error_line(
    make: Make, server: ServerHandle, tmp_path: Path, limit: int
) -> None:
    blob = make(SIZE, seed=2507)
    out = tmp_path / "out"
    args = [blob.url, "-o", str(out), *CLI, "--connections", "16", "--digest", blob.sha256]
    code, lines = Cli.of(args, preexec=open_files(limit)).finish()
    if code == EXIT_OK:
        assert sha256_file(out) == blob.sha256 and side_files(out) == []
        return
    assert 2 <= code <= 5, lines
    assert "open-file limit" in one_error(lines) and not out.exists()
    assert f"{out.name}.blobdl-lock" not in side_files(out)


def test_a_killed_hasher_is_one_error_line_and_the_partial_is_kept(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(SIZE, seed=2508)
    slow(server)
    out = tmp_path / "out"
    cli = Cli.of([blob.url, "-o", str(out), *SLOW_CLI, "--digest", blob.sha256])
    me = psutil.Process(cli.proc.pid)
    wait_for(lambda: len(me.children()) >= 2, "the hasher and a worker")
    hasher = min(me.children(), key=lambda p: p.create_time())  # forked before any worker
    hasher.kill()
    code, lines = cli.finish()
    assert code == EXIT_NETWORK and "hashing process died" in one_error(lines)
    assert side_files(out) == ["out.blobdl-state", "out.blobdl-tmp"] and not out.exists()
    server.reset()
    rerun_completes(blob, out)


def test_a_coordinator_killed_while_its_hasher_follows_leaves_it_quiet(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """SIGKILL of the coordinator alone (an OOM kill): its hasher goes with it, quietly, and
    the partial resumes. (The kernel closes the coordinator's pipe before it signals the
    hasher: the next test pins what the hasher makes of that window.)"""
    blob = make(SIZE, seed=2509)
    slow(server)
    out = tmp_path / "out"
    cli = Cli.of([blob.url, "-o", str(out), *SLOW_CLI, "--digest", blob.sha256])
    me = psutil.Process(cli.proc.pid)
    wait_for(lambda: len(me.children()) >= 2, "the hasher and a worker")
    cli.signal(signal.SIGKILL)
    code, lines = cli.finish()  # no process left, no traceback
    assert code == -signal.SIGKILL and lines == []
    server.reset()
    rerun_completes(blob, out)


ALONE = """
import multiprocessing, os
from blobdl.engine._counter_table import CounterTable
from blobdl.engine._hasher import _hasher_main
from blobdl.processes._clean_child import child_main
ours, theirs = multiprocessing.Pipe()
theirs.close()  # its parent's end, gone
{call}
"""


@pytest.mark.parametrize(
    ("call", "code"),
    [
        ("_hasher_main(os.open(os.devnull, os.O_RDONLY), CounterTable(1), ours)", 1),
        ("child_main(ours)", 0),  # a threaded caller's clean coordinator, before its job
    ],
    ids=["hasher", "clean coordinator"],
)
def test_a_child_whose_parents_pipe_closes_ends_quietly(call: str, code: int) -> None:
    """A coordinator that exits (killed, or stopped by its batch's death) closes its end of
    the hasher's pipe before the kernel signals the hasher: the hasher read that end as a
    word and printed a traceback on the user's terminal, cut short by the signal (CI, in
    test_a_pull_rerun_after_a_kill_once_a_layer_was_in_blobs_leaves_no_fetch_lock, 2 of 12
    runs beside three busy loops). It ends as the workers do, quietly; so does a clean
    coordinator whose caller went before sending its job (the same read, unguarded)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = ALONE.format(call=call)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=30)  # fmt: skip
    assert (done.returncode, done.stderr) == (code, "")


# --- item 11: a full disk, a directory made read-only ---------------------------------------


def mount_namespaces() -> None:
    """Root passes every permission check: a read-only directory and a full disk are made
    with mounts, in a mount namespace of the CLI's own."""
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("no mount namespace here (unshare -m refused)")


def in_namespace(mounts: str, args: list[str]) -> list[str]:
    """A command line: ``blobdl ARGS`` in a new mount namespace, after ``mounts`` (sh)."""
    return ["unshare", "-m", "sh", "-c", f'{mounts} && exec "$0" -m blobdl "$@"',
            sys.executable, *args]  # fmt: skip


@pytest.fixture
def immutable() -> Iterator[Callable[[Path], None]]:
    """``immutable(folder)``: no entry can be created in or removed from it any more, even by
    root (chattr +i), while files already open in it stay writable; undone afterwards."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    made: list[Path] = []

    def make(folder: Path) -> None:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"chattr +i refused here: {done.stderr.strip()}")
        made.append(folder)

    yield make
    for folder in made:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_directory_made_read_only_mid_download_is_one_exit_5_line(
    make: Make, server: ServerHandle, tmp_path: Path, immutable: Callable[[Path], None]
) -> None:
    """The next checkpoint cannot be written, nor the lock file removed on the way out:
    the first error is the one said, the lock's cleanup only warns."""
    blob = make(SIZE, seed=2509)
    slow(server)
    folder = tmp_path / "dir"
    folder.mkdir()
    out = folder / "out"
    cli = Cli.of([blob.url, "-o", str(out), *SLOW_CLI])
    try:
        wait_for(lambda: claims_bytes(Path(f"{out}.blobdl-state")), "a checkpoint with bytes")
        immutable(folder)
    finally:
        code, lines = cli.finish()
    assert code == EXIT_LOCAL, lines
    error = one_error(lines)
    assert str(folder) in error and "not permitted" in error, error
    assert any("could not remove the lock file" in line for line in lines), lines
    subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert not out.exists() and Path(f"{out}.blobdl-tmp").exists()  # the partial is kept
    server.reset()
    rerun_completes(blob, out)


def test_a_full_disk_when_the_lock_is_written_is_one_exit_5_line(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A tmpfs filled to the last byte: the lock file is created (a tmpfs has inodes to
    spare) but our process id cannot be written into it."""
    mount_namespaces()
    blob = make(SIZE, seed=2510)
    disk = tmp_path / "disk"
    disk.mkdir()
    fill = (f"mount -t tmpfs -o size=64k tmpfs {disk} && "
            f"(dd if=/dev/zero of={disk}/filler bs=4k 2>/dev/null; true)")  # fmt: skip
    cli = Cli(in_namespace(fill, [blob.url, "-o", str(disk / "out"), *CLI]))
    code, lines = cli.finish()
    assert code == EXIT_LOCAL, lines
    error = one_error(lines)
    assert str(disk / "out") in error and "free" in error, error
