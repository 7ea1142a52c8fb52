"""Shared fixtures: one real server process per session, blobs on disk, leak checks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import psutil
import pytest

from blobdl import Settings
from faultserver.serverctl import ServerHandle, make_blob, start_server

# A CI runner may start the suite with SIGINT ignored (a background job of a script gets it
# so), and blobdl keeps an ignored SIGINT ignored, in itself and in the processes it starts,
# as a program should. The suite's Ctrl-C tests press it as at a terminal: the session and
# everything it starts take SIGINT as a foreground command does (an ignored SIGINT is the
# one disposition a child inherits through exec). The tests of an ignored Ctrl-C set it
# themselves.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``BLOBDL_TEST_SHARD=K/N`` (set by ``tests/shards.py``) keeps every Nth test from the
    Kth: N sessions side by side each run a share of every module, so the slow modules are
    split too. Unset, every test runs."""
    shard = os.environ.get("BLOBDL_TEST_SHARD")
    if not shard:
        return
    k, n = (int(x) for x in shard.split("/"))
    if not 0 <= k < n:
        raise pytest.UsageError(f"BLOBDL_TEST_SHARD={shard}: want K/N with 0 <= K < N")
    config.hook.pytest_deselected(items=[t for i, t in enumerate(items) if i % n != k])
    items[:] = [t for i, t in enumerate(items) if i % n == k]


# The session's own process: a process forked under a test (by blobdl, or by the test) that
# came back up through the test into pytest, instead of ending where it was forked, would
# run the caller's code (here pytest's: the rest of the suite) a second time. It is ended,
# and the session fails.
_SESSION_PID = os.getpid()
_ESCAPES = Path(tempfile.gettempdir()) / f"blobdl-tests-escaped-{_SESSION_PID}"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if os.getpid() != _SESSION_PID:
        _escaped(report.nodeid)


def _escaped(nodeid: str) -> None:
    with contextlib.suppress(OSError), _ESCAPES.open("a") as said:
        said.write(f"pid {os.getpid()}, forked in {nodeid}\n")
    os._exit(70)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A forked process that came back into pytest fails the session."""
    if os.getpid() != _SESSION_PID:
        _escaped("the session's end")
    with contextlib.suppress(FileNotFoundError):
        escaped = _ESCAPES.read_text()
        _ESCAPES.unlink()
        sys.stderr.write(f"processes forked under a test came back into pytest:\n{escaped}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# Small parts and short timeouts so faults play out in milliseconds, not Ollama's minutes.
PART = 64 * 1024


def fast_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "min_part_size": PART,
        "max_part_size": PART,
        "connections": 4,
        "stall_timeout": 2.0,
        "progress_interval": 0.1,
        "backoff_unit": 0.001,
        "max_backoff": 0.05,
        "buffer_size": 16 * 1024,
    }
    base.update(overrides)
    return Settings(**base)


@dataclass(frozen=True)
class Blob:
    name: str
    size: int
    sha256: str
    url: str


@pytest.fixture(scope="session", autouse=True)
def _private_seal_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Cache seals go to a directory of the session's, never the real home."""
    os.environ["BLOBDL_SEAL_DIR"] = str(tmp_path_factory.mktemp("state") / "seals")


@pytest.fixture(scope="session", autouse=True)
def _no_ca_bundle_of_the_developers() -> None:
    """A CA bundle variable set for requests or curl replaces the default store for blobdl
    too: a test sets the ones it means (``SSL_CERT_FILE`` would be read under it, never)."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        os.environ.pop(name, None)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(tmp_path_factory.mktemp("served"))
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _clean_server(request: pytest.FixtureRequest) -> None:
    if "server" in request.fixturenames:
        request.getfixturevalue("server").reset()


@pytest.fixture(scope="session")
def _blob_cache() -> dict[tuple[int, int], str]:
    return {}


@pytest.fixture
def make(server: ServerHandle, _blob_cache: dict[tuple[int, int], str]) -> Callable[..., Blob]:
    """``make(size, seed=0)`` -> a blob of that size served by ``server``."""

    def _make(size: int, seed: int = 0) -> Blob:
        name = f"blob-{size}-{seed}.bin"
        if (size, seed) not in _blob_cache:
            _blob_cache[(size, seed)] = make_blob(server.root, name, size, seed)
        return Blob(name, size, _blob_cache[(size, seed)], server.url(name))

    return _make


REPO = Path(__file__).resolve().parent.parent


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 60, env: dict[str, str] | None = None
) -> CompletedProcess[str]:
    """``python -m blobdl ARGS`` to completion, as a user runs it (in ``env``: the
    environment, if given)."""
    return subprocess.run(
        [sys.executable, "-m", "blobdl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        env=env,
    )


def caller_report(command: list[str], report: Path, timeout: float) -> dict[str, Any]:
    """Run a caller program (``... python -m tests.X REPORT ARGS``) to a clean exit; what it
    wrote to ``report`` as JSON."""
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.returncode, done.stderr)
    said: dict[str, Any] = json.loads(report.read_text())
    return said


def interrupted_once_under_way(script: str, args: list[str], timeout: float) -> tuple[str, str]:
    """Run ``python -c SCRIPT ARGS``; once it prints ``B under way``, one SIGINT. What it
    printed, and its stderr (``timeout``: a guard against a run that does not stop)."""
    running = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip
    try:
        assert running.stdout is not None
        assert running.stdout.readline() == "B under way\n"
        running.send_signal(signal.SIGINT)
        return running.communicate(timeout=timeout)
    finally:
        running.kill()
        running.wait()


def pipe_line(fd: int) -> str:
    """One line off the pipe ``fd``, a byte at a time: nothing past it is taken, so that
    ``Popen.communicate``, which reads the pipe itself, gets the rest whole. A buffered
    reader's read-ahead (``next(proc.stdout)``, ``readline``) is lost to it: a line cut in
    two, or lines missing, once the child had written ahead."""
    got = bytearray()
    while not got.endswith(b"\n") and (byte := os.read(fd, 1)):
        got += byte
    return got.decode()


def spawn_cli(*args: str) -> subprocess.Popen[str]:
    """``python -m blobdl ARGS`` in the background, its stdout unbuffered for --json."""
    return subprocess.Popen(
        [sys.executable, "-m", "blobdl", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def opened_by(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds ``path`` open (its lock file, while it waits). It opens
    and closes files as it starts (its imports): a descriptor listed may be gone when read."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(fd) == str(path):
                return True
    return False


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` (tmpfs) at ``mount``, made here and unmounted after:
    a small disk, or a second one. CI runs as root: a refused mount is a broken set-up,
    not a reason to skip."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr!r}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _is_test_server(proc: psutil.Process) -> bool:
    """The session's servers: ours, the pull tests' registry, token and S3 servers, and the
    stand-in Hugging Face Hub."""
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return False
    ours = (
        "docker-registry",
        "faultserver.registry",
        "faultserver.hostile_registry",
        "faultserver.hub",
        "moto_server",
    )
    if "faultserver.server" in cmdline or any(word.endswith(ours) for word in cmdline):
        return True
    return _is_dask_service(proc, cmdline)


def _is_dask_service(proc: psutil.Process, cmdline: list[str]) -> bool:
    """A module's Dask cluster (``faultserver/dask_cluster.py``, reaped by its fixture):
    ``dask scheduler``, ``dask worker`` and what Dask starts under them (multiprocessing's
    worker processes and tracker). blobdl's own processes under a worker are not exempt."""
    if (
        cmdline[1:2]
        and cmdline[1].endswith("/dask")
        and cmdline[2:3] in (["scheduler"], ["worker"])
    ):
        return True
    if "multiprocessing" not in " ".join(cmdline):
        return False
    with contextlib.suppress(psutil.Error):
        return any(_is_dask_service(p, p.cmdline()) for p in proc.parents()[:2])
    return False


@pytest.fixture(autouse=True)
def no_fork_of_a_threaded_process() -> Iterator[None]:
    """Python 3.12+ warns when a process with other threads forks (a lock one of them holds
    stays held in the child), but the warning is raised from inside ``os.fork``, which
    swallows it under ``-W error``: it is recorded here instead, and fails the test. Every
    other warning is given back to pytest's own filters as it was."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield
    forks = [w for w in seen if "use of fork() may lead to deadlocks" in str(w.message)]
    for other in (w for w in seen if w not in forks):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    assert not forks, [f"{w.filename}:{w.lineno}: {w.message}" for w in forks]


@pytest.fixture(autouse=True)
def no_leftover_workers() -> Iterator[None]:
    """Every test must reap its worker processes (the session's server is exempt)."""
    yield
    me = psutil.Process(os.getpid())
    kids = me.children(recursive=True)
    leftovers = [p for p in kids if not _is_test_server(p) and not _being_reaped(p, me.pid)]
    for proc in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):  # it ended as it was looked at
            proc.kill()
    assert not leftovers, f"processes left alive: {leftovers}"


def _being_reaped(proc: psutil.Process, me: int) -> bool:
    """An ended process that its own parent, not this test's process, has yet to reap (a
    zombie for an instant, say under a module's Dask worker): nothing of it runs. One this
    process should reap stays a leftover."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE and proc.ppid() != me
    except psutil.NoSuchProcess:
        return True
