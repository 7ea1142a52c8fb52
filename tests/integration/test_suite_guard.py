"""The suite's own guard (tests/conftest.py): a process forked under a test must end where
it was forked. One that comes back up through the test into pytest would run the caller's
code (there, pytest's: the rest of the suite) a second time; the session then fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

_FORKS = """
import os
def test_forks_a_child_that_returns():
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
def test_after_it():
    pass
"""


def test_a_process_forked_under_a_test_that_comes_back_into_pytest_fails_the_session(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_forks.py").write_text(_FORKS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBDL_TEST_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         str(tmp_path / "test_forks.py")],
        cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=120,
    )  # fmt: skip
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 1, out
    assert "came back into pytest" in out and "test_forks_a_child_that_returns" in out, out
    assert out.count("2 passed") == 1, out  # the child ran no test of its own after it
