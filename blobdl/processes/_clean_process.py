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

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from ..errors import BlobdlError, Interrupted
from ._signals import interrupted
from ._spawn import start_clean

T = TypeVar("T")
Tell = Callable[[Any], None]
_LOOK = 1.0  # seconds between checks that a silent child is still alive
log = logging.getLogger("blobdl")


def threaded() -> bool:
    """Whether this process has a thread besides the current one. Counted as CPython 3.12
    counts for its fork warning: by the kernel, so threads started by C libraries count."""
    try:
        return len(os.listdir("/proc/self/task")) > 1
    except OSError:
        return threading.active_count() > 1


def call(target: Callable[..., T], args: tuple[Any, ...], tell: Tell | None) -> T:
    """``target(*args, tell_parent)`` in a clean process; ``tell`` gets what it is told."""
    conn, proc = start_clean(child_main)
    try:
        conn.send((target, args, tell is not None, log.getEffectiveLevel()))
        result: T = _follow(conn, proc, tell)
        return result
    finally:
        conn.close()
        _reap(proc)


def _follow(conn: Connection, proc: subprocess.Popen[bytes], tell: Tell | None) -> Any:
    """Tell events until the outcome; return or raise it."""
    stop: BaseException | None = None  # why we asked the child to stop, if we did
    while True:
        try:
            kind, payload = _receive(conn, proc)
        except KeyboardInterrupt:  # Ctrl-C in the main thread: the child saves its state
            stop = stop or _stop(proc, Interrupted(signal.SIGINT))
            continue
        except BlobdlError:  # it died without a word
            if stop is None:
                raise
            raise stop from None
        if kind in ("result", "error"):
            break
        try:
            _deliver(kind, payload, None if _broken(stop) else tell)
        except KeyboardInterrupt:
            stop = stop or _stop(proc, Interrupted(signal.SIGINT))
        except Exception as exc:  # the callback's own error: stop the child, then raise it
            stop = stop or _stop(proc, exc)
    if stop is not None:
        raise stop
    if kind == "error":
        raise payload
    return payload


def _stop(proc: subprocess.Popen[bytes], why: BaseException) -> BaseException:
    """Ask the child to stop as a signal would (it saves its state); return ``why``."""
    sig = signal.SIGINT if isinstance(why, Interrupted) else signal.SIGTERM
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    return why


def _deliver(kind: str, payload: Any, tell: Tell | None) -> None:
    if kind == "event" and tell is not None:
        tell(payload)
    elif kind == "log":
        logging.getLogger(payload.name).handle(payload)


def _broken(stop: BaseException | None) -> bool:
    """A callback raised: it gets no more events (as in the caller's own process)."""
    return stop is not None and not isinstance(stop, Interrupted)


def _receive(conn: Connection, proc: subprocess.Popen[bytes]) -> tuple[str, Any]:
    # Polled, not only read: another thread of the caller may fork and hold our socket open.
    while not conn.poll(_LOOK):
        if proc.poll() is not None and not conn.poll(0):
            raise _died(proc)
    try:
        message: tuple[str, Any] = conn.recv()
    except (EOFError, OSError):
        proc.wait()
        raise _died(proc) from None
    return message


def _died(proc: subprocess.Popen[bytes]) -> BlobdlError:
    return BlobdlError(f"download process died (exit code {proc.returncode})")


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait()
    except KeyboardInterrupt:  # a second Ctrl-C: the child is already stopping
        proc.wait()


# --- in the child ---------------------------------------------------------------------------


def child_main(conn: Connection) -> None:
    """The clean coordinator (``_spawn.child_setup`` ran first): run one call, send its
    outcome, exit."""
    target, args, telling, level = conn.recv()
    _forward_logs(conn, level)
    outcome: tuple[str, Any]
    try:
        outcome = ("result", target(*args, _tell_parent(conn) if telling else None))
    except KeyboardInterrupt as stop:
        outcome = ("error", interrupted(stop))
    except BaseException as exc:
        outcome = ("error", _portable(exc))
    with contextlib.suppress(OSError):  # the caller may be gone
        conn.send(outcome)


def _tell_parent(conn: Connection) -> Tell:
    def send(event: Any) -> None:
        # The caller gone is not this download's failure: PDEATHSIG stops us, state saved.
        with contextlib.suppress(OSError):
            conn.send(("event", event))

    return send


class _Forward(logging.Handler):
    """blobdl's log records go to the caller's logging configuration, not our stderr."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = record.getMessage(), None  # arguments may not pickle
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        with contextlib.suppress(OSError):
            self.conn.send(("log", record))


def _forward_logs(conn: Connection, level: int) -> None:
    log.setLevel(level)
    log.addHandler(_Forward(conn))
    log.propagate = False


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a BlobdlError naming it."""
    try:
        copy: BaseException = pickle.loads(pickle.dumps(exc))
    except Exception:
        return BlobdlError(f"download failed: {exc!r}")
    return copy
