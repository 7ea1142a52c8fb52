"""A hostile caller's process: blobdl imported into a job whose environment is not blobdl's
to choose (its stdout a pipe nobody reads, its logging broken). Each test is a defect found
in review (branch ``h8``); each failed before its fix. Real server, real processes, as in
``test_threads.py``, whose helpers these tests share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from faultserver.serverctl import ServerHandle
from tests.conftest import PART, REPO, Blob, sha256_file
from tests.integration.test_threads import FAST, HANG, PACED, slow_down

Make = Callable[..., Blob]

# A job that printed (buffered: its stdout is a pipe) and whose reader has gone, then
# downloads; it writes what the call said, and what it left running, to a report file.
_JOB = """
import json, sys, threading, traceback
import psutil
import blobdl
url, out, report, settings, threaded = sys.argv[1:]
sys.stdin.readline()  # our stdout's reader is gone by now
print("the job's own output")
if threaded == "yes":
    threading.Thread(target=threading.Event().wait, daemon=True).start()
try:
    blobdl.download(url, out, **json.loads(settings))
    said = "ok"
except Exception:
    said = traceback.format_exc()
left = [p.pid for p in psutil.Process().children(recursive=True)]
with open(report, "w") as f:
    json.dump({"said": said, "left": left}, f)
"""


@pytest.mark.parametrize("threaded", [False, True], ids=["forks", "exec's"])
def test_a_caller_whose_stdout_is_a_broken_pipe_still_downloads(
    make: Make, tmp_path: Path, threaded: bool
) -> None:
    """``job.py | head -1``: head has gone, and the job's print is still in its buffer.
    multiprocessing flushes stdout before it forks, the flush failed with EPIPE, and the
    download failed with "cannot start a process (blobdl-worker-0): Broken pipe", as if the
    machine refused a process. The caller's stdout is not the download's business."""
    blob = make(8 * PART, seed=1301)
    out, report = tmp_path / "out", tmp_path / "report"
    args = [blob.url, str(out), str(report), json.dumps(FAST), "yes" if threaded else "no"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _JOB, *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdout.close()
    proc.stdin.write("go\n")
    proc.stdin.close()
    proc.wait(HANG)
    said = json.loads(report.read_text())
    assert said == {"said": "ok", "left": []}, said["said"]
    assert sha256_file(out) == blob.sha256


# A job that dies quietly under ``| head`` (SIGPIPE back to its default, as many CLIs set
# it), and lets the kernel reap its children (SIGCHLD ignored); its callback kills the
# download's worker process once bytes arrive.
_PIPE_JOB = """
import json, signal, sys, time, traceback
import psutil
import blobdl
url, out, report, settings = sys.argv[1:]
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
killed = []

def kill_workers(event):
    if killed or not isinstance(event, blobdl.Progress) or event.done == 0:
        return
    killed.extend(psutil.Process().children())
    for kid in killed:
        kid.kill()
    while any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in killed):
        time.sleep(0.01)  # dead (not reaped: the kernel does that, as SIGCHLD is ignored)

try:
    blobdl.download(url, out, on_event=kill_workers, **json.loads(settings))
    said = "ok"
except blobdl.BlobdlError as exc:
    said = type(exc).__name__
except Exception:
    said = traceback.format_exc()
with open(report, "w") as f:
    json.dump({"said": said, "sigpipe": signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL}, f)
"""


def test_a_worker_lost_never_kills_a_caller_that_kept_sigpipe_default(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A coordinator that writes to a worker which has just died gets EPIPE, which it
    expects (``Worker.run``: "dead: the seat's pipe reads EOF, a crash like any other").
    In a caller whose SIGPIPE is back to its default the write killed the caller's whole
    process instead, silently (exit -13): no exception, no partial noted. And where the
    caller ignores SIGCHLD the kernel reaps the dead worker, multiprocessing's exitcode
    stayed None, the worker was never replaced, and every retry went to it:
    RetriesExhausted, where a caller with SIGCHLD at its default got its file."""
    blob = make(16 * PART, seed=1302)
    slow_down(server, blob)
    out, report = tmp_path / "out", tmp_path / "report"
    settings = json.dumps({**PACED, "processes": 1})
    done = subprocess.run(
        [sys.executable, "-c", _PIPE_JOB, blob.url, str(out), str(report), settings],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    said = json.loads(report.read_text())
    assert said["sigpipe"], "the caller's SIGPIPE is its own again once the call returns"
    assert said["said"] == "ok", said["said"]
    assert sha256_file(out) == blob.sha256
