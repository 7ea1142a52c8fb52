"""How blobdl knows its children (``blobdl/processes/_child.py``) where process ids
deceive: a pid namespace whose /proc is another's, and a pid that a child reaped by the
caller hands on to the caller's next child. Each caller runs in a pid namespace of its own
(``tests/pidns_caller.py``), SIGCHLD at its default.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from blobdl.processes._spawn import start, start_watched
from tests.conftest import PART, Blob, caller_report, sha256_file
from tests.integration.test_threads import FAST, HANG

Make = Callable[..., Blob]
SEVERAL = {**FAST, "processes": 3, "connections": 6}
PIDFD, PIPE = "anon_inode:[pidfd]", "pipe:"  # how a descriptor's link reads
NAMESPACE = ["unshare", "--user", "--map-root-user", "--pid", "--fork"]


def _call(tmp_path: Path, *args: str, own_proc: bool = False) -> dict[str, Any]:
    if subprocess.run([*NAMESPACE, "true"], capture_output=True).returncode:
        pytest.skip("no pid namespace here (unshare --user --pid refused)")
    report = tmp_path / "report"
    command = [*NAMESPACE, *(["--mount-proc"] if own_proc else [])]
    caller = [sys.executable, "-m", "tests.pidns_caller", str(report), *args]
    return caller_report([*command, *caller], report, HANG)


def test_a_download_in_a_pid_namespace_seeing_another_proc_leaves_no_zombie_or_descriptor(
    make: Make, tmp_path: Path
) -> None:
    """``unshare --pid --fork`` without ``--mount-proc``: /proc is the outer namespace's,
    so /proc/<our child's pid> is some other process. Each worker was judged ended the
    moment it was forked (its parent there was not us), so it was never joined: it stayed
    a zombie, multiprocessing kept it, and kept its sentinel open."""
    blob = make(24 * PART, seed=4201)
    out = tmp_path / "out"
    said = _call(tmp_path, "download", blob.url, str(out), json.dumps(SEVERAL))
    assert said["said"] == "ok", said["said"]
    assert sha256_file(out) == blob.sha256
    assert said["unreaped"] == []
    assert said["fds"] == []


def test_a_batch_in_a_pid_namespace_seeing_another_proc_leaves_no_zombie_or_descriptor(
    make: Make, tmp_path: Path
) -> None:
    blobs = [make(size, seed=4210 + n) for n, size in enumerate([100, PART, 20 * PART, 7] * 2)]
    items = [[b.url, str(tmp_path / f"o{n}")] for n, b in enumerate(blobs)]
    settings = {**SEVERAL, "max_connections": 6}
    said = _call(tmp_path, "many", json.dumps(items), json.dumps(settings))
    assert said["said"] == [None] * len(blobs), said["said"]
    assert [sha256_file(Path(out)) for _, out in items] == [b.sha256 for b in blobs]
    assert said["unreaped"] == []
    assert said["fds"] == []


@pytest.mark.parametrize("call", ["download", "many"])
def test_a_call_from_a_thread_in_a_pid_namespace_seeing_another_proc_gets_its_bytes(
    make: Make, tmp_path: Path, call: str
) -> None:
    """A call from a thread runs in a fresh interpreter, which first checks that the thread
    that started it is still there. It looked at /proc/<pid>/task/<thread>: in the outer
    namespace's /proc, another process (or none), without that thread. So each took its
    caller's thread for gone and exited at once: every such call failed."""
    blob = make(24 * PART, seed=4230)
    out = tmp_path / "out"
    if call == "download":
        args = ["download", blob.url, str(out), json.dumps(SEVERAL)]
    else:
        args = ["many", json.dumps([[blob.url, str(out)]]), json.dumps(SEVERAL)]
    said = _call(tmp_path, *args, "--thread")
    assert said["said"] in ("ok", [None]), said["said"]
    assert sha256_file(out) == blob.sha256
    assert said["unreaped"] == []
    assert said["fds"] == []


@pytest.mark.parametrize("kind", ["execed", "forked"])
def test_a_child_reaped_by_the_caller_never_takes_the_status_of_the_next_child_with_its_pid(
    tmp_path: Path, kind: str
) -> None:
    """Its pidfd said it had ended; it was then reaped by pid (waitpid, multiprocessing's
    poll): with the pid already the caller's next child's, that child was reaped instead,
    its exit code 7 reported as ours, and the caller's own ``Popen.wait`` said 0. (Where
    SIGCHLD is ignored the same wait blocks until that other child ends.)"""
    said = _call(tmp_path, "reuse", kind, own_proc=True)
    assert said["reaped"] == 3, "the caller reaped our child"
    assert said["ended"] is True
    assert said["exitcode"] is None, "how it ended is lost: never another's exit code"
    assert said["other"] == 7, "the caller's child keeps its own exit status"


def test_starting_a_child_never_reaps_the_callers_child_that_has_the_pid_of_an_earlier_one(
    tmp_path: Path,
) -> None:
    """multiprocessing, as it starts a process, polls each child still on its list by pid
    (``_cleanup``), and ours stayed there until we saw them end: our child, ended and
    reaped by the caller, its pid the caller's next child's, had that child reaped by
    the poll, its exit code 7 taken as ours, and the caller's ``Popen.wait`` said 0."""
    said = _call(tmp_path, "restart", own_proc=True)
    assert said["reaped"] == 3, "the caller reaped our child"
    assert said["ended"] is True
    assert said["exitcode"] is None, "how it ended is lost: never another's exit code"
    assert said["other"] == 7, "the caller's child keeps its own exit status"


def test_a_child_reaped_before_its_handle_is_made_is_let_go_of(tmp_path: Path) -> None:
    """It was judged ended but left among multiprocessing's children, which at the caller's
    exit SIGTERMs each daemon child it still thinks is running: by a pid anyone may hold."""
    said = _call(tmp_path, "early")
    assert said == {"ended": True, "kept": False}


def _held(kind: str) -> int:
    """How many of this process's descriptors are of ``kind`` (how their link reads:
    ``anon_inode:[pidfd]``, ``pipe:``)."""
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            held += os.readlink(f"/proc/self/fd/{fd}").startswith(kind)
        except OSError:  # the descriptor listdir used itself, closed since
            continue
    return held


def _holding(kind: str, conn: Connection) -> None:
    """A child that says how many descriptors of ``kind`` it holds, then ends when told to."""
    conn.send(_held(kind))
    with contextlib.suppress(EOFError):  # told by its pipe's end
        conn.recv()


def test_a_child_holds_no_pidfd_of_the_children_forked_before_it() -> None:
    """A pidfd is closed on exec, not on fork: each forked child inherited the pidfds of
    its siblings forked before it (the fourth worker of a download held 3, as did the
    fourth process of a batch's pool): descriptors it has no use for, and a way to signal
    its siblings."""
    started: list[tuple[Any, Connection]] = []
    try:
        for n in range(4):
            started.append(start(_holding, (PIDFD,), name=f"sibling {n}", daemon=True, duplex=True))
        held = [conn.recv() for _, conn in started]
    finally:
        for child, conn in started:
            conn.close()
            child.join()
    assert held == [0, 0, 0, 0]


def test_a_stopped_spare_in_a_pid_namespace_seeing_another_proc_is_replaced_not_waited_for(
    make: Make, tmp_path: Path
) -> None:
    """A spare is judged stopped by its state in /proc: /proc/<its pid> read another process
    (or none), so a spare that really was stopped (SIGSTOP) went unnoticed, never read the
    download it was given, and that download waited for ever."""
    blob = make(2 * PART, seed=4240)
    said = _call(tmp_path, "spare", blob.url, str(tmp_path), json.dumps(FAST))
    assert said["hung"] is False, "the download waited for its stopped spare"
    assert said["stopped"] is True
    assert sha256_file(tmp_path / "b") == blob.sha256


def test_a_process_in_a_pid_namespace_seeing_another_proc_may_fork_once_its_threads_joined(
    tmp_path: Path,
) -> None:
    """``in_threads`` waits for its threads' tasks to leave /proc/self/task, each named by its
    thread id: ours, which that /proc numbers otherwise, so it never waited, and
    ``threaded()`` then counted a thread that had been joined (a batch's fork refused)."""
    assert _call(tmp_path, "threads") == {"counted": 0}


def test_a_lane_blocked_on_its_socket_in_a_pid_namespace_seeing_another_proc_is_waiting(
    tmp_path: Path,
) -> None:
    """A lane's state was read at /proc/<worker pid>/task/<its thread id>, numbers of our
    namespace: another process's, or none, so a lane blocked on the network was never seen
    waiting (a lagging lane never cut), or a busy one was, as that other thread slept;
    and the kernel was taken to hide where threads
    sleep, as /proc/self/task/<our thread id> could not be read either."""
    from blobdl.engine._worker import kernel_names_sleeps

    said = _call(tmp_path, "waiting")
    assert said == {"blocked": True, "busy": False, "named": kernel_names_sleeps()}


def test_a_child_holds_no_pipe_end_of_the_children_started_before_it() -> None:
    """multiprocessing keeps two pipe ends per forked child (its ``sentinel``, and the write
    end of the child's ``parent_sentinel``), and ``start_watched`` one (its ``sentinel``):
    each child forked later inherited them all, so the fourth held six more pipe ends than
    the first, ended siblings' too (until their handles were collected); and while it lived,
    its siblings' ``parent_sentinel`` could not read EOF after their parent died."""
    ours = _held(PIPE)
    ended, conn = start(_at_once, (), name="ended", daemon=True)
    ended.join()
    conn.close()
    started: list[tuple[Any, Connection]] = [start_watched(_until_told)]
    try:
        for n in range(4):
            started.append(start(_holding, (PIPE,), name=f"sibling {n}", daemon=True, duplex=True))
        held = [conn.recv() for _, conn in started[1:]]
    finally:
        for child, conn in started:
            conn.close()
            child.join()
    assert held == [held[0]] * 4
    # Its own two (multiprocessing's) and what we held before (not blobdl's, or dropped).
    assert held[0] <= ours + 2, "it holds the ended sibling's ends"


def _at_once(conn: Connection) -> None:
    conn.close()


def _until_told(conn: Connection) -> None:
    """A fresh interpreter's entry: ends when its socket's other end is closed."""
    with contextlib.suppress(EOFError):
        conn.recv()
