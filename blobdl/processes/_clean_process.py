"""A clean coordinator for threaded callers.

The coordinator forks its workers, and forking a process that has other threads is unsafe:
a lock another thread holds at that instant (logging, the import lock, the allocator's)
stays held forever in the child, and Python 3.12+ warns about it. So when the caller has
other threads, the download runs in a fresh, single-threaded interpreter instead (fork +
exec by ``_spawn.start_clean``, never a bare fork of the caller; ``_spawn.child_setup`` is
its first step, as for every child), which then forks its workers as usual. The caller's
``__main__`` is not imported there (multiprocessing's ``spawn`` and ``forkserver`` would
run an unguarded script again), and no process-wide multiprocessing state is touched.

Events, the outcome and log records come back over a socket as the same small picklable
records; callbacks run in the caller, on the calling thread. A callback that raises, or a
Ctrl-C in the caller's main thread, stops the child as a signal would: it saves its state.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BlobdlError, Interrupted, WorkerCrashed
from ..events import Finished
from . import _spare
from ._child import Execed
from ._clean_child import child_main, relay_log
from ._signals import Stop, interrupted, unheard, whole
from ._spawn import start_clean, threaded
from ._stack_writes import callers_writes, calling_writes

T = TypeVar("T")
Tell = Callable[[Any], None]
_LOOK = 1.0  # seconds between checks that a silent child is still alive
log = logging.getLogger("blobdl")


def needs_clean() -> bool:
    """Whether a download must not fork here, and runs in a clean process instead: the caller
    has other threads, or it is a daemonic ``multiprocessing`` process (a ``Pool`` worker),
    which multiprocessing allows no children of its own (the clean process is exec'd)."""
    return threaded() or multiprocessing.current_process().daemon


def call(
    target: Callable[..., T], args: tuple[Any, ...], tell: Tell | None, writes: Iterable[Path] = ()
) -> T:
    """``target(*args, tell_parent)`` in a clean process; ``tell`` gets what it is told.
    ``writes``: what the call writes under a lock, its callbacks' calls' to refuse
    (``calling_writes``). The child is told only what the calls up this thread's stack
    write: a lock of its own that another process holds, it waits for as ever."""
    tell = _spare.beside(target.__module__, tell)  # starts the next call's, if we keep one
    job = (target, args, tell is not None, log.getEffectiveLevel(), callers_writes())
    taken = _spare.take(job)  # this thread's spare, if it keeps one, already given the job
    conn, proc = taken or start_clean(child_main)
    answered = False
    try:
        if taken is None:
            _send_job(conn, proc, job)
        with calling_writes(writes) as also:  # its callbacks run here, on this thread
            result: T = _follow(conn, proc, tell, also)
        answered = True
        return result
    finally:
        conn.close()
        if not answered:  # whatever cut us short (even in a handler): the child stops too
            _stop(proc, None)
        proc.join()


def _send_job(conn: Connection, proc: Execed, job: tuple[Any, ...]) -> None:
    """Its job to a child just started; one killed meanwhile (its end of the socket is
    closed: only it held that) died as it would have a moment later, and is said so."""
    try:
        conn.send(job)
    except (BrokenPipeError, ConnectionResetError):
        proc.join()
        raise _died(proc) from None


def _follow(
    conn: Connection,
    proc: Execed,
    tell: Tell | None,
    also: Callable[[str, str], None] = lambda kind, path: None,  # ``calling_writes``'
) -> Any:
    """Tell events until the outcome; return or raise it. Anything raised in this thread
    meanwhile (Ctrl-C, an exception from a signal handler such as a job's timeout, a
    callback's own error or SystemExit) stops the child as a signal would, and is raised
    once the child has stopped, its state saved."""
    stop: BaseException | None = None  # why we asked the child to stop, if we did
    said = _Said()
    while said.outcome is None:
        try:
            if stop is None:
                unheard()  # one a callback's own download heard, and the callback let pass
            if said.event is None:
                _receive(conn, proc, said)
        except BlobdlError:  # it died without a word
            if stop is None:
                raise
            if said.finished is not None and isinstance(stop, Interrupted):
                return said.finished  # our stop came after it finished: it succeeded
            raise stop from None
        except BaseException as exc:
            stop = stop or _stop(proc, _reason(exc))
            continue
        if said.event is None:
            continue  # its outcome
        try:
            _deliver(said.take(), None if _broken(stop) else tell, also)
        except BaseException as exc:  # the callback's own error: stop the child, then raise it
            stop = stop or _stop(proc, _reason(exc))
    kind, payload = said.outcome
    if kind == "result" and isinstance(stop, Interrupted):
        return payload  # it had committed: as in the caller's own process, it succeeded
    finished = said.finished
    cut_after_commit = kind == "error" and isinstance(payload, Interrupted) and finished is not None
    if cut_after_commit and (stop is None or isinstance(stop, Interrupted)):
        return finished  # cut after it committed (its Finished said so): it succeeded
    if stop is not None:
        raise stop
    if kind == "error":
        raise payload
    return payload


class _Said:
    """What the child said, as read: ``note`` is its one writer, inside the read of one
    message (a step a signal does not cut in two), so a stop that lands once the message is
    whole loses nothing of it: the outcome, whether it finished, the event not yet told."""

    def __init__(self) -> None:
        self.outcome: tuple[str, Any] | None = None  # ("result" | "error", payload)
        self.finished: Any = None  # the result its Finished event told, if it did
        self.event: tuple[str, Any] | None = None  # an event or log record, not yet told

    def note(self, message: tuple[str, Any]) -> None:
        kind, payload = message
        if kind in ("result", "error"):
            self.outcome = message
            return
        if kind == "event" and isinstance(payload, Finished):
            self.finished = payload.result
        self.event = message

    def take(self) -> tuple[str, Any]:
        """The event to tell; a stop from here on leaves it untold, as one in its callback."""
        event, self.event = self.event, None
        assert event is not None
        return event


def _reason(exc: BaseException) -> BaseException:
    """What a stop raises: our SIGINT/SIGTERM (``Stop``: ``called`` handles both in the main
    thread) as ``Interrupted``, else itself. A plain KeyboardInterrupt is then never a signal
    (none reaches another thread): a callback's own, given back unchanged as in the caller's
    own process (the scheduler turns only ``Stop`` into ``Interrupted``)."""
    return interrupted(exc) if isinstance(exc, Stop) else exc


def _stop(proc: Execed, why: BaseException | None) -> BaseException | None:
    """Ask the child to stop as a signal would (it saves its state); return ``why``. A
    second Ctrl-C before the first is passed on does not keep it from being passed on."""
    sig = signal.SIGINT if isinstance(why, Interrupted) else signal.SIGTERM
    while True:
        try:
            proc.signal(sig)  # to it alone (nothing, if it has ended)
            return why
        except KeyboardInterrupt:
            continue


def _deliver(message: tuple[str, Any], tell: Tell | None, also: Callable[[str, str], None]) -> None:
    kind, payload = message
    if kind == "event" and tell is not None:
        tell(payload)
    elif kind == "log":
        relay_log(payload)
    elif kind in ("writes", "ended"):  # its batch's: a callback's call is refused it, or not
        also(kind, payload)


def _broken(stop: BaseException | None) -> bool:
    """A callback raised: it gets no more events (as in the caller's own process)."""
    return stop is not None and not isinstance(stop, Interrupted)


def _receive(conn: Connection, proc: Execed, said: _Said) -> None:
    """The child's next message, noted in ``said``. Waited for as a stoppable wait, then read
    as one step (``whole``): a signal between its length and its body takes effect once it is
    noted, never leaving the stream out of step (the next length read in a body)."""
    # Polled, not only read: another thread of the caller may fork and hold our socket open.
    while not conn.poll(_LOOK):
        if proc.ended and not conn.poll(0):
            raise _died(proc)
    try:
        with whole():
            said.note(conn.recv())
    except (EOFError, OSError):
        proc.join()
        raise _died(proc) from None


def _died(proc: Execed) -> BlobdlError:
    """It ended without a word. Ended by Ctrl-C or SIGTERM, it was stopped before its
    download could hear it (while it started): stopped all the same. Ended otherwise (the
    OOM killer's SIGKILL, a crash), it is a child that crashed, as a worker can."""
    code = proc.exitcode  # None: reaped by the system, how it ended is lost
    if code is not None and -code in (signal.SIGINT, signal.SIGTERM):
        return Interrupted(-code)
    return WorkerCrashed(code, "download process")
