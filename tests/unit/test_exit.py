"""The command line ends without the interpreter's teardown (``cli._exit``), but as a normal
exit would in every way a caller can see: its exit code, its exit handlers run, what it
printed flushed, a thread still running waited for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def run_cli(before: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``before`` runs first in the process, then ``blobdl ARGS`` through its entry point."""
    argv = ["blobdl", *args]
    code = f"import sys\n{before}\nsys.argv = {argv!r}\nfrom blobdl.cli import run\nrun()"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip


def prune(store: Path) -> tuple[str, ...]:
    """A command that returns (not raises) its exit code: a prune of an empty store."""
    return ("prune", "--models-dir", str(store))


def test_the_exit_code_is_the_commands(tmp_path: Path) -> None:
    assert run_cli("", *prune(tmp_path)).returncode == 0
    assert run_cli("", "-q", "-i", "/dev/null").returncode == 2  # a usage error, returned


def test_exit_handlers_run(tmp_path: Path) -> None:
    handler = "import atexit; atexit.register(lambda: print('handler ran', flush=True))"
    done = run_cli(handler, *prune(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("handler ran\n")


def test_what_an_exit_handler_prints_is_flushed(tmp_path: Path) -> None:
    """A normal exit flushes the streams after the exit handlers: a library's handler that
    prints (stdout a pipe, so buffered) is heard."""
    handler = "import atexit; atexit.register(lambda: print('handler ran'))"
    done = run_cli(handler, *prune(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("handler ran\n")


def test_what_was_printed_is_flushed() -> None:
    done = run_cli("sys.stdout.write('unflushed line\\n')", "-q", "-i", "/dev/null")
    assert done.returncode == 2, done.stderr  # a usage error: it writes nothing on stdout
    assert done.stdout == "unflushed line\n"


def test_a_thread_still_running_is_waited_for(tmp_path: Path) -> None:
    # The thread ends only once the main thread has ended (the command has printed all),
    # whatever the machine's speed: an exit that did not wait for it would lose its line.
    late = (
        "import threading, time\n"
        "def late():\n"
        "    while threading.main_thread().is_alive(): time.sleep(0.01)\n"
        "    print('thread ended', flush=True)\n"
        "threading.Thread(target=late).start()"
    )
    done = run_cli(late, *prune(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("thread ended\n")
