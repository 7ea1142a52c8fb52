"""The report a command writes on stdout, lost to a stdout that refuses it (``> /dev/full``,
a full disk, an I/O error): the downloads still finish whole, but the loss is said once on
stderr and the exit code is not 0. A reader that quits (``| head``, a closed terminal) is
not a loss: blobdl stops writing, says nothing, and the exit code is the download's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from blobdl.errors import EXIT_LOCAL, EXIT_NETWORK, EXIT_OK
from faultserver.hub import HubHandle, HubRepo, start_hub
from faultserver.registry import Registry
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, REPO, Blob, sha256_file
from tests.hf_client import hf_env

Make = Callable[..., Blob]
FAST = ["--min-part-size", "64KiB", "--max-part-size", "64KiB", "--connections", "4",
        "--progress-interval", "0.05", "--max-backoff", "0.05", "--retries", "1"]  # fmt: skip
F_SETPIPE_SZ = 1031  # Linux's; fcntl names it from Python 3.10 on
NO_SPACE = (
    "blobdl: error: could not write to standard output: No space left on device (the report "
    "is lost from here on; the downloads go on, their files whole)"
)


def blobdl(
    *args: str, stdout: int | IO[bytes], stderr: int | IO[bytes] = subprocess.PIPE,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run([sys.executable, "-m", "blobdl", *args], stdout=stdout,
                          stderr=stderr, text=True, cwd=REPO, env=env, timeout=60)  # fmt: skip


@contextlib.contextmanager
def full() -> Iterator[IO[bytes]]:
    """/dev/full: every write to it fails with ENOSPC, as a full disk's would."""
    with open("/dev/full", "wb") as stream:
        yield stream


def files_in(folder: Path) -> list[str]:
    """What a download left: the destinations only, never a partial, a record or a lock."""
    return sorted(p.name for p in folder.iterdir())


# --- a stdout that refuses the report --------------------------------------------------------


@pytest.mark.parametrize("how", ["url", "manifest"])
def test_json_to_a_full_stdout_finishes_says_so_once_and_exits_5(
    how: str, make: Make, tmp_path: Path
) -> None:
    blobs = [make(4 * PART, seed=4801), make(3 * PART, seed=4802)]
    out = tmp_path / "out"
    out.mkdir()
    if how == "url":
        blobs = blobs[:1]
        args = [blobs[0].url, "-o", str(out / "b0")]
    else:
        manifest = tmp_path / "list.txt"
        manifest.write_text("".join(f"{b.url} {out / f'b{i}'}\n" for i, b in enumerate(blobs)))
        args = ["-i", str(manifest)]
    with full() as stdout:
        done = blobdl(*args, "--json", *FAST, stdout=stdout)
    assert done.returncode == EXIT_LOCAL, done.stderr
    assert done.stderr.splitlines() == [NO_SPACE]
    assert files_in(out) == [f"b{i}" for i in range(len(blobs))]
    for i, blob in enumerate(blobs):
        assert sha256_file(out / f"b{i}") == blob.sha256


@pytest.mark.parametrize("how", ["url", "manifest"])
def test_plain_lines_are_on_stderr_so_a_full_stdout_loses_nothing(
    how: str, make: Make, tmp_path: Path
) -> None:
    """Without --json, ``blobdl URL`` and ``-i`` write their lines on stderr: stdout is not
    written at all, so nothing is lost (``true > /dev/full`` exits 0 too)."""
    blob = make(2 * PART, seed=4803)
    if how == "url":
        args = [blob.url, "-o", str(tmp_path / "b")]
    else:
        manifest = tmp_path / "list.txt"
        manifest.write_text(f"{blob.url} {tmp_path / 'b'}\n")
        args = ["-i", str(manifest)]
    with full() as stdout:
        done = blobdl(*args, *FAST, stdout=stdout)
    assert done.returncode == EXIT_OK, done.stderr
    assert "standard output" not in done.stderr and done.stderr.strip()
    assert sha256_file(tmp_path / "b") == blob.sha256


@pytest.mark.parametrize("how", ["url", "manifest"])
def test_a_failed_download_keeps_its_own_exit_code_when_stdout_is_full(
    how: str, make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    missing = server.route("/status/404")
    if how == "url":
        args = [missing, "-o", str(tmp_path / "x")]
    else:
        good = make(2 * PART, seed=4804)
        manifest = tmp_path / "list.txt"
        manifest.write_text(f"{missing} {tmp_path / 'x'}\n{good.url} {tmp_path / 'y'}\n")
        args = ["-i", str(manifest)]
    with full() as stdout:
        done = blobdl(*args, "--json", *FAST, stdout=stdout)
    assert done.returncode == EXIT_NETWORK, done.stderr
    lines = done.stderr.splitlines()
    assert lines.count(NO_SPACE) == 1, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    if how == "manifest":
        assert sha256_file(tmp_path / "y") == good.sha256


def test_with_stderr_full_too_the_exit_code_still_tells(make: Make, tmp_path: Path) -> None:
    blob = make(2 * PART, seed=4805)
    with full() as stdout, full() as stderr:
        done = blobdl(blob.url, "-o", str(tmp_path / "b"), "--json", *FAST,
                      stdout=stdout, stderr=stderr)  # fmt: skip
    assert done.returncode == EXIT_LOCAL
    assert files_in(tmp_path) == ["b"] and sha256_file(tmp_path / "b") == blob.sha256


def test_a_json_report_into_a_closed_terminal_is_not_a_loss(make: Make, tmp_path: Path) -> None:
    """A terminal closed before blobdl writes (its writes fail with EIO): the reader went
    away, as with ``| head``; the download finishes, exit 0, nothing said."""
    blob = make(2 * PART, seed=4806)
    primary, secondary = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "blobdl", blob.url, "-o",
                                 str(tmp_path / "b"), "--json", *FAST],
                                stdin=subprocess.DEVNULL, stdout=secondary,
                                stderr=subprocess.PIPE, cwd=REPO)  # fmt: skip
    finally:
        os.close(secondary)
        os.close(primary)  # hangs the terminal up: the child's writes fail with EIO
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_OK, err
    assert err == b""
    assert sha256_file(tmp_path / "b") == blob.sha256


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_a_non_blocking_stdout_whose_reader_is_behind_loses_nothing(
    buffered: bool, make: Make, tmp_path: Path
) -> None:
    """A stdout another process made non-blocking (it shares the pipe or terminal: Node's
    libuv does so to its own stdout) refuses a write while its reader is behind: EAGAIN.
    The reader is there: blobdl waits for it, as on a blocking pipe, and loses no line
    (Python itself would drop them: silently if unbuffered, ``PYTHONUNBUFFERED``)."""
    blob = make(2 * PART, seed=4830)
    read_end, write_end = os.pipe()
    capacity = fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)  # the smallest: a page
    os.write(write_end, b"#" * (capacity - 1) + b"\n")  # full: the reader is behind
    os.set_blocking(write_end, False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED" or not buffered}
    env |= {} if buffered else {"PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "blobdl", blob.url, "-o", str(tmp_path / "b"), "--json", *FAST]
    proc = subprocess.Popen(args, stdout=write_end, stderr=subprocess.PIPE, cwd=REPO, env=env)
    os.close(write_end)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)  # the reader is behind a while (no timing asserted: a pause)
    with open(read_end, "rb") as reader:
        out = reader.read()
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == EXIT_OK, err
    assert err == b""
    lines = out.splitlines()
    assert lines[0] == b"#" * (capacity - 1)
    events = [json.loads(line)["event"] for line in lines[1:]]
    assert events[:1] == ["started"] and events[-1:] == ["finished"], events
    assert sha256_file(tmp_path / "b") == blob.sha256


def test_prune_to_a_full_stdout_says_so_and_exits_5(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "blobs-partial").mkdir(parents=True)
    with full() as stdout:
        done = blobdl("prune", "--models-dir", str(models), stdout=stdout)
    assert done.returncode == EXIT_LOCAL, done.stderr
    assert done.stderr.splitlines() == [NO_SPACE]


def test_a_name_stdout_cannot_encode_is_escaped_not_lost(tmp_path: Path) -> None:
    """A stdout whose encoding cannot hold a name we echo (``PYTHONIOENCODING=ascii``, a
    Latin-1 locale) refuses that line only: it is written with the name escaped, as
    stderr's lines are, and the rest of the report follows."""
    models = tmp_path / "models-\u65e5\u672c"
    (models / "blobs-partial").mkdir(parents=True)
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = blobdl("prune", "--models-dir", str(models), stdout=subprocess.PIPE, env=env)
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines() == [
        f"store {tmp_path}/models-\\u65e5\\u672c (--models-dir)",
        "freed 0 bytes in 0 files",
    ]


# --- hf and pull: their reports too ----------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubHandle]:
    repo = HubRepo("acme/small")
    repo.commit(
        {"model.bin": random.Random(4807).randbytes(200_000), "config.json": b"{}"}, lfs=("*.bin",)
    )
    handle = start_hub(tmp_path_factory.mktemp("hub"), [repo])
    yield handle
    handle.stop()


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["plain", "json"])
def test_hf_to_a_full_stdout_says_so_and_exits_5(
    json_flag: list[str], hub: HubHandle, tmp_path: Path
) -> None:
    """Plain ``blobdl hf`` prints the snapshot's folder on stdout (for ``$(blobdl hf ...)``):
    losing it is a loss too."""
    with full() as stdout:
        done = blobdl("hf", "acme/small", *json_flag, *FAST, stdout=stdout,
                      env=hf_env(hub.url, tmp_path / "home"))  # fmt: skip
    assert done.returncode == EXIT_LOCAL, done.stderr
    assert [line for line in done.stderr.splitlines() if "standard output" in line] == [NO_SPACE]
    again = blobdl("hf", "acme/small", "--json", *FAST, stdout=subprocess.PIPE,
                   env=hf_env(hub.url, tmp_path / "home"))  # fmt: skip
    assert again.returncode == EXIT_OK, again.stderr
    summary = json.loads(again.stdout.splitlines()[-1])
    assert not any(f["fetched"] for f in summary["files"])  # the first run left them whole


def test_pull_json_to_a_full_stdout_says_so_and_exits_5(registry: Registry, tmp_path: Path) -> None:
    model = registry.push_model("library/lost", "v1", (100 * 1024, 30))
    reference = f"http://{registry.host}/{model.repo}:{model.tag}"
    models = tmp_path / "models"
    with full() as stdout:
        done = blobdl("pull", reference, "--models-dir", str(models), "--json", stdout=stdout)
    assert done.returncode == EXIT_LOCAL, done.stderr
    assert done.stderr.splitlines() == [NO_SPACE]
    assert (models / "manifests" / registry.host / model.repo / model.tag).is_file()


# --- what argparse prints: --help, --version -------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["pull", "--help"], ["hf", "--help"],
                                  ["prune", "--help"]], ids=" ".join)  # fmt: skip
@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_help_to_a_full_stdout_says_so_and_exits_5(args: list[str], buffered: bool) -> None:
    """Buffered, Python's exit would flush it into an ``Exception ignored`` trace, exit 120;
    unbuffered (``PYTHONUNBUFFERED``), argparse would drop the error, exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    with full() as stdout:
        done = blobdl(*args, stdout=stdout, env=env)
    assert done.returncode == EXIT_LOCAL, done.stderr
    assert done.stderr.splitlines() == [NO_SPACE]
