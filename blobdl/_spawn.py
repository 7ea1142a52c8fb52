"""Starting a child process: one function forks any child, one is the first thing it runs.

Every child of blobdl (a part's worker, the prefix hasher, a batch item) is forked by
``start``, which hands it one end of a fresh pipe and keeps the other. Before the child's
own code runs, ``child_setup`` makes it a well-behaved child: Ctrl-C is the parent's
business, it dies with its parent, and it lets go of every pipe end it inherited that is
not its own. That last step matters: a forked child inherits the parent's ends of its
siblings' pipes (and of its own), so without it a pipe keeps a reader after the parent
dies and a child writing to it blocks forever instead of failing.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ._signals import child_signals

_PR_SET_PDEATHSIG = 1
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
) -> tuple[BaseProcess, Connection]:
    """Fork a child running ``target(*args, conn)``; return it and our end of its pipe.

    Without ``duplex`` the child writes and we read; the child's end is closed here, so
    our end reads EOF once the child (and anything it forked) is gone."""
    ours, theirs = _context.Pipe(duplex=duplex)
    proc = _context.Process(
        target=_child_main, args=(os.getpid(), target, args, theirs), name=name, daemon=daemon
    )
    _not_for_children.add(ours)
    try:
        proc.start()
    finally:
        theirs.close()
    return proc, ours


def _child_main(
    parent: int, target: Callable[..., None], args: tuple[Any, ...], conn: Connection
) -> None:
    child_setup(parent, conn)
    target(*args, conn)


def child_setup(parent: int, own: Connection) -> None:
    """First thing in a forked child: signals, die with ``parent``, drop foreign pipe ends."""
    child_signals()
    _die_with(parent)
    for end in list(_not_for_children):
        if end is not own:
            end.close()
    _not_for_children.clear()
    _not_for_children.add(own)  # our own children must not hold our line to our parent


def _die_with(parent: int) -> None:
    """Have the kernel SIGKILL us when the parent dies (Linux), then check it is still
    there: it may have died between the fork and the prctl, and then no signal comes.

    PDEATHSIG fires when the *thread* that forked us exits, not its process. Today every
    fork happens on the thread that runs the download (the coordinator, the batch
    scheduler), which reaps its children before it returns, so that is fine; a design that
    forks from a short-lived helper thread would kill its children early."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the orphan checks (getppid) in the children's loops remain
    if os.getppid() != parent:
        os._exit(1)
