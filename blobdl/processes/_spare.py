"""A clean process started ahead of need, for a thread that runs one download after another.

A download from a threaded caller runs in a fresh interpreter (``_clean_process``), and
starting one costs about 0.2 s of CPU (the interpreter, then blobdl's imports) before its
download sends a request. A task thread of a Dask worker runs the items of a batch one
after another, so that cost lands between every two items. A thread inside ``kept()``
starts the next one while its current download runs (``beside``): the next call on the same
thread finds it waiting, blobdl already imported. Each download still gets a process of its
own; nothing of one download reaches the next. A spare started where its caller no longer
is (another directory, environment or ``sys.path``) is not taken: the download would not
see what a process of its own sees.

A spare is this thread's only (its death signal comes when the thread that started it ends,
so no other thread may use it). It ends, unused, when it is dropped (``drop_all``: a
cluster run does that on every worker when it ends; ``drop_own``: a task whose run stops or
whose client is gone), when its thread or process ends, or by itself after ``idle`` seconds
of waiting; a spare that old is never taken, so its end cannot race its use.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from ..events import Started
from ._child import Execed
from ._clean_child import run_job
from ._proc import kernel_state
from ._spawn import start_clean

#: Seconds a spare waits for its download before it ends by itself. Long enough for the item
#: it was started beside; an item longer than this makes its 0.2 s of start-up negligible.
IDLE = 60.0
TAKEN = "taken"  # what a spare says once it holds its download, before it starts on it
_LOOK = 0.1  # seconds between looks at a spare that has not said so yet (is it stopped?)

#: What a fresh interpreter takes from its caller as it starts, and a download then reads
#: in its own process: the directory (a relative path), the environment (proxies, TMPDIR,
#: tokens), ``sys.path`` (where the job's code is found). A spare has its caller's of then.
Context = tuple[str, dict[str, str], list[str]]


class _Spare(NamedTuple):
    conn: Connection
    proc: Execed
    taken_before: float  # monotonic time after which it is no longer taken (it may be ending)
    context: Context | None  # the caller's when it was started (None: unknown, never taken)


_lock = threading.Lock()
_spares: dict[int, _Spare] = {}  # by the ident of the thread that started it
_keeping = threading.local()


@contextlib.contextmanager
def kept(idle: float = IDLE) -> Iterator[None]:
    """Within this block, each clean process this thread starts has a spare started beside
    it for the thread's next one (that waits at most ``idle`` seconds)."""
    before = getattr(_keeping, "idle", None)
    _keeping.idle = idle
    try:
        yield
    finally:
        _keeping.idle = before


def take(job: object) -> tuple[Connection, Execed] | None:
    """This thread's spare, given ``job``, if it has a live one young enough that says it
    holds the job (it is no longer a spare then); else None, and the caller starts a
    process of its own."""
    spare = _own()
    if spare is None:
        return None
    try:
        if _fits(spare) and _holds(spare, job):
            return spare.conn, spare.proc
    except BaseException:  # the job would not pickle: the spare is no one's now
        _end(spare)
        raise
    _end(spare)
    return None


def _fits(spare: _Spare) -> bool:
    """Whether the spare may run the download: young enough, alive, and started where the
    caller now is (a process of its own would start there, with that environment)."""
    if time.monotonic() >= spare.taken_before or spare.context is None:
        return False
    return spare.context == _context() and not spare.proc.ended


def _context() -> Context | None:
    try:
        return os.getcwd(), dict(os.environ), list(sys.path)
    except OSError:  # the directory was removed: no spare can match it
        return None


def _holds(spare: _Spare, job: object) -> bool:
    """Whether the spare, given ``job``, says it holds it (before it starts on it). Alive is
    not enough: one stopped (SIGSTOP) would never read it, and the download would wait for
    ever; one that dies before it says so never started it. Either is killed, and the
    download starts a process of its own, as without a spare. One still starting up (a
    short item before it) is waited for, as a process of its own would be."""
    try:
        spare.conn.send(job)
        while not spare.conn.poll(_LOOK):
            if _stopped(spare.proc):
                return False
        return bool(spare.conn.recv() == TAKEN)
    except (OSError, EOFError):  # it died
        return False


def _stopped(proc: Execed) -> bool:
    """Whether it is stopped (SIGSTOP, Ctrl-Z; or at a tracer's stop), as Linux says. Gone
    (its EOF is next), or without /proc, it is not known to be stopped."""
    folder = proc.folder()
    return folder is not None and kernel_state(folder) in ("T", "t")


def beside(module: str, tell: Callable[[Any], None] | None) -> Callable[[Any], None] | None:
    """``tell`` for a download about to start; within ``kept()``, it also starts this
    thread's spare (importing ``module``, the next download's entry) once the download is
    under way: at its first event after ``Started``, so that the two start-ups do not
    compete for the CPU."""
    idle = getattr(_keeping, "idle", None)
    if idle is None:
        return tell
    ahead = [True]

    def told(event: Any) -> None:
        if ahead and not isinstance(event, Started):
            ahead.clear()
            _prepare(module, idle)
        if tell is not None:
            tell(event)

    return told


def _prepare(module: str, idle: float) -> None:
    with _lock:
        if threading.get_ident() in _spares:
            return
    context = _context()  # before it starts: what changes meanwhile makes it unfit
    try:
        conn, proc = start_clean(spare_main)
    except OSError:  # no process to spare (out of processes, memory): the next starts its own
        return
    try:
        conn.send((module, idle))
    except OSError:  # it died at once
        _end(_Spare(conn, proc, 0.0, None))
        return
    with _lock:
        _spares[threading.get_ident()] = _Spare(conn, proc, time.monotonic() + idle / 2, context)


def drop_own() -> None:
    """End this thread's spare, if it has one: no download of its caller comes next."""
    spare = _own()
    if spare is not None:
        _end(spare)


def _own() -> _Spare | None:
    """This thread's spare, no longer in the registry (so nothing else ends or takes it)."""
    with _lock:
        return _spares.pop(threading.get_ident(), None)


def drop_all() -> int:
    """End every spare of this process (a run is over); return how many there were."""
    with _lock:
        spares = list(_spares.values())
        _spares.clear()
    for spare in spares:
        _end(spare)
    return len(spares)


def _end(spare: _Spare) -> None:
    """An unused spare holds nothing: it is killed and reaped."""
    spare.conn.close()
    spare.proc.kill()  # nothing, if it has ended
    spare.proc.join()


# --- in the spare ---------------------------------------------------------------------------


def spare_main(conn: Connection) -> None:
    """Import the next download's entry, wait for the download, then run it as any clean
    process does; end quietly if it never comes (EOF, Ctrl-C, or ``idle`` seconds)."""
    try:
        module, idle = conn.recv()
        importlib.import_module(module)
        if not conn.poll(idle):
            return
        job = conn.recv()  # EOF: dropped just as it looked, nothing was asked
        conn.send(TAKEN)
    except (EOFError, OSError, KeyboardInterrupt):
        return
    run_job(conn, job)
