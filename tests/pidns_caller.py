"""A caller in a pid namespace of its own, its SIGCHLD at its default, for
``tests/integration/test_child_handles.py``: ``unshare --user --map-root-user --pid --fork
[--mount-proc] python -m tests.pidns_caller REPORT MODE ...``.

``download URL OUT SETTINGS`` and ``many ITEMS SETTINGS`` (JSON: ``[[url, out], ...]``
and keyword arguments) make the call (from a thread of the caller, with ``--thread`` last:
blobdl then runs it in a fresh interpreter), then write down what it left behind:
children never reaped (zombies, found by ``waitid``, which needs no /proc) and descriptors
it opened and never closed. Without ``--mount-proc`` the /proc this process sees is the
outer namespace's: its numbers are not ours.

``reuse KIND`` (``execed`` or ``forked``; needs ``--mount-proc``, to steer the next pid
through ``ns_last_pid``): a child of blobdl's, watched, ends with exit code 3 and is reaped
by the caller itself (as a caller's own SIGCHLD handler would), and the caller's next
child, given the same pid, ends with 7 and is not reaped yet; then what blobdl says of the
first, and what ``Popen.wait`` says of the second.

``restart``: as ``reuse forked``, but blobdl starts another child (a worker replaced, the
next item of a batch) before it looks at the first: what it then says of the first, and
``Popen.wait`` of the caller's child.

``spare URL DIR SETTINGS``: from a thread keeping a spare (``_spare.kept``), a download,
then its spare stopped (SIGSTOP), then a second download: whether that one hung (the
stopped spare is killed after ``STUCK`` seconds, which ends it), and whether the spare was
judged stopped.

``threads``: work on short-lived threads (``in_threads``) again and again, each time
counting whether the process still has another thread (``threaded()``).

``waiting``: a forked child whose thread blocks on a socket, looked at as the coordinator
looks at a lane (``Running.waiting``); and whether the kernel names where threads sleep.

``early``: SIGCHLD ignored, a forked child reaped by the kernel before its handle is made;
whether multiprocessing still counts it among its children (it would SIGTERM that pid,
anyone's by then, at exit).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import process
from multiprocessing.connection import Connection
from typing import Any

import blobdl
from blobdl.engine._worker import Running, _ThreadIds, kernel_names_sleeps
from blobdl.processes import _spare
from blobdl.processes._child import Child, Execed, Forked
from blobdl.processes._proc import own_thread_id
from blobdl.processes._spawn import in_threads, start, threaded

STUCK = 30.0  # seconds: a fresh process needs well under one


def _unreaped() -> list[int]:
    """Exit codes of the children that ended and were never reaped (reaped here, now)."""
    codes = []
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return codes
        if info is None:
            return codes
        codes.append(info.si_status)


def _call(mode: str, rest: list[str]) -> dict[str, Any]:
    before = set(os.listdir("/proc/self/fd"))
    try:
        settings = json.loads(rest[-1])
        if mode == "download":
            url, out, _ = rest
            blobdl.download(url, out, **settings)
            said: Any = "ok"
        else:
            items = [blobdl.Item(url, out) for url, out in json.loads(rest[0])]
            results = blobdl.download_many(items, **settings)
            said = [None if r.ok else f"{type(r.error).__name__}: {r.error}" for r in results]
    except blobdl.BlobdlError as exc:
        said = f"{type(exc).__name__}: {exc}"
    left = set(os.listdir("/proc/self/fd")) - before
    fds = sorted(
        os.readlink(f"/proc/self/fd/{fd}") for fd in left if fd in os.listdir("/proc/self/fd")
    )
    return {"said": said, "unreaped": _unreaped(), "fds": fds}


def _hold(read: int) -> None:
    os.read(read, 1)
    os._exit(3)


def _watched(kind: str) -> tuple[Child, int]:
    """A child that ends with 3 once a byte comes down its pipe, watched as blobdl watches its
    own."""
    read, write = os.pipe()
    if kind == "execed":
        code = f"import os; os.read({read}, 1); os._exit(3)"
        popen = subprocess.Popen([sys.executable, "-c", code], pass_fds=(read,))
        os.close(read)
        return Execed(popen), write
    proc = multiprocessing.get_context("fork").Process(target=_hold, args=(read,), daemon=True)
    proc.start()
    os.close(read)
    return Forked(proc), write


def _reuse(kind: str, restart: bool = False) -> dict[str, Any]:
    child, hold = _watched(kind)
    os.write(hold, b"x")
    _, status = os.waitpid(child.pid, 0)  # the caller's own reaper, say
    with open("/proc/sys/kernel/ns_last_pid", "w") as last:
        last.write(str(child.pid - 1))
    other = subprocess.Popen([sys.executable, "-c", "import os; os._exit(7)"])
    assert other.pid == child.pid, (other.pid, child.pid)
    os.waitid(os.P_PID, other.pid, os.WEXITED | os.WNOWAIT)  # it has ended, not reaped
    if restart:
        following, conn = start(_at_once, (), name="following", daemon=True)
        following.join()
        conn.close()
    return {
        "reaped": os.waitstatus_to_exitcode(status),
        "ended": child.ended,
        "exitcode": child.exitcode,
        "other": other.wait(),
    }


def _at_once(conn: Connection) -> None:
    conn.close()


def _early() -> dict[str, Any]:
    """SIGCHLD ignored: a forked child that ends, and is reaped by the kernel, before its
    handle is made (as one that fails at once may)."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    proc = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,), daemon=True)
    proc.start()
    assert proc.pid is not None
    while True:  # until the kernel has reaped it: its pid names no process (of ours)
        try:
            os.close(os.pidfd_open(proc.pid))
        except ProcessLookupError:
            break
        time.sleep(0.01)
    child = Forked(proc)
    return {"ended": child.ended, "kept": proc in process._children}  # type: ignore[attr-defined]


def _stopped_spare(url: str, folder: str, settings: dict[str, Any]) -> dict[str, Any]:
    said: dict[str, Any] = {}

    def two() -> None:
        with _spare.kept():
            blobdl.download(url, os.path.join(folder, "a"), **settings)
            spare = _spare._spares[threading.get_ident()].proc
            said["spare"] = spare
            spare.signal(signal.SIGSTOP)
            os.waitid(os.P_PID, spare.pid, os.WSTOPPED | os.WNOWAIT)  # stopped now
            said["stopped"] = _spare._stopped(spare)
            blobdl.download(url, os.path.join(folder, "b"), **settings)

    thread = threading.Thread(target=two, daemon=True)
    thread.start()
    thread.join(STUCK)
    hung = thread.is_alive()
    said.pop("spare").kill()  # a hung download then ends (its process died), the thread too
    thread.join()
    return {**said, "hung": hung}


def _threads() -> dict[str, Any]:
    counted = 0
    for _ in range(300):  # outside a namespace, 1 in 10 or so counted a thread without a wait
        in_threads([lambda: None] * 3)
        counted += threaded()
    return {"counted": counted}


def _blocked_lane(tids: _ThreadIds, conn: Connection) -> None:
    """A lane as the worker runs one, blocked on its socket (the pipe to its parent)."""
    tids.set(0, own_thread_id())
    conn.recv()


def _busy_lane(tids: _ThreadIds, conn: Connection) -> None:
    """A lane that could run all along: the only thread of its process, never blocked."""
    tids.set(0, own_thread_id())
    while not conn.poll():
        sum(range(2000))


def _waiting() -> dict[str, Any]:
    return {
        "blocked": _seen_waiting(_blocked_lane, looks=None),
        "busy": _seen_waiting(_busy_lane, looks=50),
        "named": kernel_names_sleeps(),
    }


def _seen_waiting(lane: Callable[..., None], looks: int | None) -> bool:
    """Whether ``lane``, in a child of its own, is ever seen waiting in ``looks`` looks (None:
    looked at until it is, for ``STUCK`` seconds at most)."""
    tids = _ThreadIds(1)
    child, conn = start(lane, (tids,), name="lane", daemon=True, duplex=True)
    try:
        while not tids.get(0):
            time.sleep(0.01)
        handle: Any = type("Worker", (), {"tids": tids, "proc": child})
        running = Running(handle, 0)
        deadline = time.monotonic() + STUCK
        for _ in range(looks) if looks is not None else iter(int, 1):
            if running.waiting():
                return True
            if time.monotonic() >= deadline:
                break
            time.sleep(0.002)
        return False
    finally:
        conn.send(None)
        conn.close()
        child.join()


def main() -> None:
    report, mode, *rest = sys.argv[1:]
    if mode == "spare":
        said = _stopped_spare(rest[0], rest[1], json.loads(rest[2]))
    elif mode == "threads":
        said = _threads()
    elif mode == "waiting":
        said = _waiting()
    elif mode == "early":
        said = _early()
    elif mode == "restart":
        said = _reuse("forked", restart=True)
    elif mode == "reuse":
        said = _reuse(rest[0])
    elif rest[-1] == "--thread":
        done: list[dict[str, Any]] = []
        thread = threading.Thread(target=lambda: done.append(_call(mode, rest[:-1])))
        thread.start()
        thread.join()
        said = done[0]
    else:
        said = _call(mode, rest)
    with open(report, "w") as f:
        json.dump(said, f)


if __name__ == "__main__":
    main()
