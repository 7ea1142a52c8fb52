"""The shard runner (``python -m tests.shards N``, what ``make suite`` runs): its sessions
end with it. Stopped (Ctrl-C, or a SIGTERM from a job runner that cancels), it stops its
pytest sessions and waits for them, shows what they printed, and exits as stopped: no
session goes on running the suite on its own, its servers with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO

# A session's one test: it says it started (its pid), then waits far longer than any test.
_WAITING = """
import os, pathlib, time
def test_waits():
    pathlib.Path(os.environ["STARTED"], str(os.getpid())).touch()
    time.sleep(120)
"""
BOUND = 30.0  # seconds anything here may take; the sessions' test waits 120


def _until(done: object, what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_shard_runner_stops_and_waits_for_its_sessions(
    tmp_path: Path, stop: signal.Signals
) -> None:
    (tmp_path / "test_waiting.py").write_text(_WAITING)
    started = tmp_path / "started"
    started.mkdir()
    # Not the share of the suite's session that runs this test (the runner sets its own).
    ours = {k: v for k, v in os.environ.items() if not k.startswith("BLOBDL_TEST_")}
    env = {**ours, "STARTED": str(started), "PYTHONPATH": str(REPO)}
    runner = subprocess.Popen(
        [sys.executable, "-m", "tests.shards", "2", str(tmp_path / "test_waiting.py"),
         "-q", "-p", "no:cacheprovider"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _until(lambda: len(list(started.iterdir())) == 2, "both sessions started")
        sessions = [int(p.name) for p in started.iterdir()]
        runner.send_signal(stop)  # to the runner alone, as a job runner's cancel sends it
        out, _ = runner.communicate(timeout=BOUND)
        alive = [pid for pid in sessions if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
        assert alive == [], f"sessions left running: {alive}"
        assert runner.returncode == 128 + stop, out
        assert out.count(b"===== session") == 2, out  # what they printed is shown
    finally:
        runner.kill()
        runner.wait()
        for pid in (int(p.name) for p in started.iterdir()):
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)


# One test that passes and one that fails, with a message of its own.
_FAILING = """
def test_passes():
    pass

def test_fails():
    assert 1 + 1 == 3, "the sum the failure names"
"""


def test_a_failing_session_is_named_again_at_the_very_end_with_its_message(
    tmp_path: Path,
) -> None:
    """A CI log is often read from its end (a job runner shows its tail): what failed, and
    why, is the last thing the runner prints, after every session's log, whichever session
    it was in."""
    (tmp_path / "test_two.py").write_text(_FAILING)
    ours = {k: v for k, v in os.environ.items() if not k.startswith("BLOBDL_TEST_")}
    run = subprocess.run(
        [sys.executable, "-m", "tests.shards", "2", str(tmp_path / "test_two.py"),
         "-q", "-p", "no:cacheprovider"],
        cwd=REPO, env={**ours, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=BOUND,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout
    out = run.stdout.decode()
    last_log = out.rindex("===== session")
    tail = out[out.index("\n", out.index("sessions: exit", last_log)) :]
    assert "test_two.py::test_fails" in tail, out
    assert "the sum the failure names" in tail, out
    assert "test_passes" not in tail, out
