"""Starting a child process: ``start`` forks any child, ``start_clean`` execs a fresh
interpreter (for threaded callers, see ``_clean_process``), each returned as a ``_child``
handle to wait for, judge and signal it by, and ``child_setup`` is the first thing every
child runs, forked or exec'd.

Every forked child of blobdl (a worker process, the prefix hasher, a batch item) is started
by ``start``, which hands it one end of a fresh pipe and keeps the other (a worker also
gets one pipe per seat, ``seat_pipe``, whose reading ends are ``private``). Before the
child's own code runs, ``child_setup`` makes it a well-behaved child: Ctrl-C is the
parent's business (unless the child is a coordinator itself), it dies with its parent,
and it lets go of every pipe end it inherited that is not its own. That last step
matters: a forked child inherits the parent's ends of its siblings' pipes (and of its
own), so without it a pipe keeps a reader after the parent dies and a child writing to it
blocks forever instead of failing. It inherits the parent's pidfds of its siblings too
(``_child``), and closes them as well.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.spawn import get_executable
from typing import Any

from .._libc import libc_function
from ..errors import OutOfResources
from ._child import Execed, Forked, close_inherited
from ._proc import own_thread
from ._signals import child_signals, coordinator_signals
from ._stack_writes import forked_by

_PR_SET_PDEATHSIG = 1
_prctl = libc_function(("prctl",), ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong)  # fmt: skip
# tgkill(process, thread, 0): whether a thread of a process is there, by the numbers of our
# own pid namespace (glibc 2.30+).
_tgkill = libc_function(("tgkill",), ctypes.c_int, ctypes.c_int, ctypes.c_int)
_context = multiprocessing.get_context("fork")
# Pipe ends this process holds that none of its children may keep: the parent's ends of
# its children's pipes, and (in a child) its own end towards its parent.
_not_for_children: weakref.WeakSet[Connection] = weakref.WeakSet()


def start(
    target: Callable[..., None],
    args: tuple[Any, ...],
    *,
    name: str,
    daemon: bool,
    duplex: bool = False,
    coordinator: bool = False,
) -> tuple[Forked, Connection]:
    """Fork a child running ``target(*args, conn)``; return it (watched: ``_child``) and
    our end of its pipe.

    Without ``duplex`` the child writes and we read; the child's end is closed here, so
    our end reads EOF once the child (and anything it forked) is gone. A ``coordinator``
    child handles Ctrl-C and SIGTERM itself (it saves its state) instead of ignoring them."""
    with _refused_as_ours(f"start a process ({name})"):
        ours, theirs = _context.Pipe(duplex=duplex)
    setup = (os.getpid(), coordinator)
    proc = _context.Process(
        target=_child_main, args=(setup, target, args, theirs), name=name, daemon=daemon
    )
    _not_for_children.add(ours)
    try:
        with _refused_as_ours(f"start a process ({name})"), _unflushable_streams_aside():
            proc.start()
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return Forked(proc), ours


@contextlib.contextmanager
def _unflushable_streams_aside() -> Iterator[None]:
    """multiprocessing flushes ``sys.stdout`` and ``sys.stderr`` before it forks (else the
    child would write their buffered text again), and fails the fork if a flush fails: the
    caller's stdout a pipe whose reader has gone (``job | head -1``). That stream is the
    caller's, not the download's: set aside for the fork, the child has none (what it holds
    can never be written anyway), and the caller gets it back."""
    aside: dict[str, Any] = {}
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            if stream is not None:
                stream.flush()
        except OSError:
            aside[name] = stream
            setattr(sys, name, None)
    try:
        yield
    finally:
        for name, stream in aside.items():
            setattr(sys, name, stream)


def threaded() -> bool:
    """Whether this process has a thread besides the current one, and so must fork no more
    (a lock another thread holds at the fork stays held for ever in the child). Counted as
    CPython 3.12 counts for its fork warning: by the kernel, so threads started by C
    libraries count."""
    try:
        return len(os.listdir("/proc/self/task")) > 1
    except OSError:
        return threading.active_count() > 1


def in_threads(calls: Sequence[Callable[[], None]], within: float = 1.0) -> None:
    """Run each of ``calls`` on a thread of its own; return once all have ended, for the
    kernel too: a joined thread's task outlives its ``join`` by a moment, and ``threaded()``
    would then count it, so a fork right after (a batch's) would be refused. Waits at most
    ``within`` seconds for those tasks after the joins. A call's exception is its own to
    keep: ``calls`` must not raise. A thread the machine refuses (too little memory, too
    many threads) is ``OutOfResources``, once those that started have ended."""
    ended: list[str] = []

    def run(call: Callable[[], None]) -> None:
        folder = own_thread()  # None: no /proc, and ``threaded()`` counts by ``threading``
        if folder is not None:
            ended.append(folder)
        call()

    threads = [threading.Thread(target=run, args=(call,), name="blobdl-call", daemon=True)
               for call in calls]  # fmt: skip
    started: list[threading.Thread] = []
    refused: OutOfResources | None = None
    for thread in threads:
        try:
            start_thread(thread)
        except OutOfResources as exc:
            refused = exc
            break
        started.append(thread)
    for thread in started:
        thread.join()
    _gone(ended, within)
    if refused is not None:
        raise refused


def start_thread(thread: threading.Thread) -> None:
    """``thread.start()``; a thread the machine refuses (too little memory, too many tasks
    for ulimit -u or a pids cgroup) is ``OutOfResources``, never a RuntimeError."""
    try:
        thread.start()
    except RuntimeError as exc:  # "can't start new thread": EAGAIN, ENOMEM
        raise OutOfResources("start a thread", f"{exc} (not enough memory, or ulimit -u)") from None


def _gone(tasks: list[str], within: float) -> None:
    """Wait (``within`` seconds at most) until the kernel's ``tasks`` (their /proc folders,
    as ``threaded()`` counts them) have ended."""
    deadline = time.monotonic() + within
    while any(os.path.exists(task) for task in tasks):
        if time.monotonic() >= deadline:
            return
        time.sleep(0.0002)


def seat_pipe(duplex: bool = False) -> tuple[Connection, Connection]:
    """A pipe for a child that is not started with it: (our end, the end to hand to the
    child); one-way (we read) unless ``duplex``. Give ours to ``private`` before the child
    is forked."""
    with _refused_as_ours("open a pipe to a worker process"):
        ours, theirs = _context.Pipe(duplex=duplex)
    return ours, theirs


@contextlib.contextmanager
def _refused_as_ours(what: str) -> Iterator[None]:
    """The system's refusal (too many open files, processes; no memory) as our error: one
    line that says what to change, never a traceback."""
    try:
        yield
    except OSError as exc:
        raise OutOfResources.refused(what, exc) from None


def private(conn: Connection) -> None:
    """A pipe end of ours that no child forked later may keep (see the module's note)."""
    _not_for_children.add(conn)


def _child_main(
    setup: tuple[int, bool], target: Callable[..., None], args: tuple[Any, ...], conn: Connection
) -> None:
    parent, coordinator = setup
    child_setup(parent, conn, coordinator=coordinator)
    target(*args, conn)


# The exec'd child's first line: our sys.path, then the one child set-up, then the entry.
_BOOT = (
    "import sys; sys.path[:] = sys.argv[5:]; from blobdl.processes._spawn import _exec_main; "
    "_exec_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))"
)


def start_clean(
    entry: Callable[[Connection], None], keep: Sequence[int] = ()
) -> tuple[Connection, Execed]:
    """Start ``entry(conn)`` in a fresh interpreter (fork + exec: nothing of this process's
    threads or locks comes along); return our end of its socket and the process (watched:
    ``_child``). The
    descriptors in ``keep`` are the child's too, under the same numbers."""
    where = f"{entry.__module__}:{entry.__qualname__}"
    with _refused_as_ours("open a socket to a new process"):
        ours, theirs = socket.socketpair()
    with ours, theirs:
        parent = [str(os.getpid()), str(threading.get_native_id())]
        boot = [_BOOT, where, str(theirs.fileno()), *parent, *sys.path]
        with _refused_as_ours("start a process"):
            proc = subprocess.Popen(
                [get_executable(), *_interpreter_flags(), "-c", *boot],
                pass_fds=(theirs.fileno(), *keep),
                stdin=subprocess.DEVNULL,
            )
        # The child now holds the only other end: if it dies, we read EOF.
        return Connection(ours.detach()), Execed(proc)


def start_watched(
    entry: Callable[[Connection], None], keep: Sequence[int] = ()
) -> tuple[Execed, Connection]:
    """``start_clean(entry, keep)`` with a ``sentinel`` too: a pipe whose other end only the
    child, and what it forks, holds (as multiprocessing makes one for a fork), to watch
    beside other pipes; and our end of its socket, which no child forked later keeps
    (``private``)."""
    with _refused_as_ours("open a pipe to a new process"):
        sentinel, held = os.pipe()
    try:
        conn, proc = start_clean(entry, keep=(*keep, held))
    except BaseException:
        os.close(sentinel)
        raise
    finally:
        os.close(held)  # the child's now
    private(conn)
    proc.sentinel = sentinel
    return proc, conn


def _interpreter_flags() -> list[str]:
    """-W, -X and the like, as multiprocessing passes them to its children."""
    flags: Callable[[], list[str]] = getattr(subprocess, "_args_from_interpreter_flags", list)
    return flags()


def _exec_main(where: str, fd: int, parent: int, thread: int) -> None:
    """The exec'd child: the one child set-up, then ``entry(conn)``.

    It dies with its parent by SIGTERM, not SIGKILL: it is a coordinator, and the parent is
    the caller's own process, so a caller that dies leaves a partial that can be resumed
    (SIGTERM makes the coordinator stop its workers and save its state first)."""
    conn = Connection(fd)
    child_setup(parent, conn, coordinator=True, death_signal=signal.SIGTERM, thread=thread)
    module, _, name = where.partition(":")
    entry: Callable[[Connection], None] = getattr(importlib.import_module(module), name)
    entry(conn)


def child_setup(
    parent: int,
    own: Connection,
    *,
    coordinator: bool = False,
    death_signal: int = signal.SIGKILL,
    thread: int | None = None,
) -> None:
    """First thing in any child: signals (SIGCHLD at its default whatever the caller's),
    die with ``parent`` (and with its ``thread`` that started us, if given), drop foreign
    pipe ends and the pidfds of its siblings."""
    # A caller that ignores SIGCHLD passes that on (through exec too): the kernel would
    # then reap our own children, their exit codes lost and their pids free for anyone.
    # This process is blobdl's alone, and reaps every child it starts: reset first, so
    # that the caller's disposition lasts as short a while as a fork allows.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if coordinator:
        coordinator_signals()
    else:
        child_signals()
    forked_by(parent)  # before any lock is waited for: a wait for the parent's own is one
    _die_with(parent, death_signal, thread)
    for end in list(_not_for_children):
        if end is not own:
            end.close()
    _not_for_children.clear()
    _not_for_children.add(own)  # our own children must not hold our line to our parent
    close_inherited()


def _die_with(parent: int, death_signal: int, thread: int | None) -> None:
    """Have the kernel send ``death_signal`` when the parent dies (Linux), then check it is
    still there: it may have died between the fork and the prctl, and then no signal comes.

    PDEATHSIG fires when the *thread* that forked us exits, not its process. Every fork
    happens on the thread that runs the download (the coordinator, the batch scheduler),
    which reaps its children before it returns; a clean interpreter may outlive its call
    (a spare, ``_spare``), so it is told that ``thread`` and checks it too: a thread that
    ended before the prctl sends no signal either."""
    if _prctl is not None:  # else not Linux: the orphan checks (getppid) in the loops remain
        _prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    if thread is not None and _thread_gone(parent, thread):
        os._exit(1)


def _thread_gone(process: int, thread: int) -> bool:
    """Whether ``thread`` of ``process`` has ended, as the kernel says (tgkill, signal 0).
    Not by /proc/<process>/task: a pid namespace may see another's /proc (``unshare
    --pid`` without ``--mount-proc``), whose numbers name other processes, and a thread
    there was taken for gone. Without tgkill (glibc before 2.30), not known: not gone."""
    if _tgkill is None or _tgkill(process, thread, 0) == 0:
        return False
    return ctypes.get_errno() == errno.ESRCH  # EPERM: there, not ours to signal
