"""Work done on short-lived threads (a pull's blob lookups) leaves a process that may fork
at once: ``threaded()`` counts the kernel's tasks, and a joined thread's task outlives its
``join`` by a moment. A batch that then saw a thread ran in a clean interpreter instead."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

from blobdl.processes._spawn import in_threads, threaded
from tests.conftest import REPO


def test_every_call_runs_on_another_thread() -> None:
    seen: list[int] = []
    in_threads([lambda: seen.append(threading.get_native_id()) for _ in range(5)])
    assert len(seen) == 5 and threading.get_native_id() not in seen


def lookup() -> None:
    """What a blob lookup leaves a thread to tear down: a socket, a thread-local buffer."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(b"GET" * 300)
        theirs.recv(900)
    local = threading.local()
    local.buffer = bytearray(1 << 20)


def test_the_process_has_no_other_thread_once_it_returns() -> None:
    assert not threaded(), "the test needs a single-threaded process"
    for _ in range(300):  # without the wait, 1 in 10 or so still counted a thread here
        in_threads([lookup, lookup, lookup])
        assert not threaded()


LIMITED = """
import resource, sys, time
from blobdl.errors import OutOfResources
from blobdl.processes._spawn import in_threads, threaded
with open("/proc/self/statm") as f:
    used = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (48 << 20), resource.RLIM_INFINITY))
try:
    in_threads([lambda: time.sleep(0.5)] * 64)  # 8 MiB of stack each: most cannot start
except OutOfResources as exc:
    print("refused:", exc, "| threaded:", threaded())
"""


def test_threads_the_machine_refuses_are_one_error_and_the_started_ones_end() -> None:
    """Too little memory (or too many threads) for the calls' threads: OutOfResources, the
    one line the CLI prints for such refusals, not a RuntimeError's traceback; and the
    threads that did start have ended, so the process may fork."""
    done = subprocess.run([sys.executable, "-c", LIMITED], capture_output=True, text=True,
                          cwd=REPO, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused: cannot start a thread"), done.stdout
    assert done.stdout.rstrip().endswith("| threaded: False"), done.stdout
