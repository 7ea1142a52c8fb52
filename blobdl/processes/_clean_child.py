"""What a clean interpreter runs (``_clean_process`` starts it, or takes a spare:
``_spare``): one call, its events, log records and outcome sent back over its socket as
small picklable records.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import BlobdlError
from ..events import Finished
from ._signals import decided, interrupted
from ._stack_writes import batch_writes, told_to

Tell = Callable[[Any], None]
log = logging.getLogger("blobdl")


def child_main(conn: Connection) -> None:
    """The clean coordinator (``_spawn.child_setup`` ran first): run one call, send its
    outcome, exit."""
    try:
        job = conn.recv()
    except (EOFError, OSError):  # the caller is gone before it asked: nothing to do
        return
    run_job(conn, job)


def run_job(conn: Connection, job: tuple[Any, ...]) -> None:
    """One call (``job``, as ``call`` sends it); its outcome is sent back."""
    target, args, telling, level, callers = job
    forward_logs(conn, level)
    outcome: tuple[str, Any]
    try:
        # What the calls up the caller's stack write is as good as ours: a wait for it waits
        # on the caller's thread, which waits for us.
        # A name our batch learns of is theirs too: told ahead of any later event.
        heard = told_to(_tell_writes(conn)) if telling else contextlib.nullcontext()
        with batch_writes(Path(p) for p in callers), heard:
            outcome = ("result", target(*args, _tell_parent(conn, everything=telling)))
    except KeyboardInterrupt as stop:
        outcome = ("error", interrupted(stop))
    except BaseException as exc:
        outcome = ("error", _portable(exc))
    decided()  # the caller's stop from now on would cut the outcome, or our exit, in two
    with contextlib.suppress(OSError):  # the caller may be gone
        conn.send(outcome)


def _tell_parent(conn: Connection, *, everything: bool) -> Tell:
    """The caller's events; ``Finished`` even when it has no callback: a stop that reaches
    us after that (once our download has let go of the signals) may end us before the
    outcome is sent, and the caller then knows the download had succeeded."""

    def send(event: Any) -> None:
        if not everything and not isinstance(event, Finished):
            return
        # The caller gone is not this download's failure: PDEATHSIG stops us, state saved.
        with contextlib.suppress(OSError):
            conn.send(("event", event))

    return send


def _tell_writes(conn: Connection) -> Callable[[str, str], None]:
    """What our batch writes from now on (a name it learns of), or no longer (an ended
    item's), to the caller's thread, whose callbacks' calls must not wait for what it
    writes (``_stack_writes.told_to``): ("writes" | "ended", path)."""

    def send(kind: str, path: str) -> None:
        with contextlib.suppress(OSError):  # the caller gone: as for an event
            conn.send((kind, path))

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


def forward_logs(conn: Connection, level: int) -> None:
    """blobdl's records at ``level`` and above go to our parent as ``("log", record)``,
    for its own logging configuration (``relay_log`` there)."""
    log.setLevel(level)
    log.addHandler(_Forward(conn))
    log.propagate = False


def relay_log(record: logging.LogRecord) -> None:
    """A record a child sent (``forward_logs``), handled by this process's logging."""
    logging.getLogger(record.name).handle(record)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a BlobdlError naming it."""
    try:
        copy: BaseException = pickle.loads(pickle.dumps(exc))
    except Exception:
        return BlobdlError(f"download failed: {exc!r}")
    return copy
