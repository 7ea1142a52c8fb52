"""Who gets SIGINT/SIGTERM: the coordinator owns cancellation, its children never do.

While a download runs, ``Interrupts`` turns both signals into a *note*, never an exception
raised at an arbitrary bytecode: an exception thrown from a signal handler can land
between ``fork()`` and the bookkeeping that records the child (leaking it), inside a
cleanup, or inside a weakref callback where Python swallows it. Instead the handler records
the signal and the wake-up fd makes the coordinator's ``wait()`` return at once; the loop
then raises ``Interrupted`` at a point of its choosing, and shuts down cleanly.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from types import FrameType, TracebackType
from typing import Any

from ..errors import Interrupted

_STOP = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """A context in which SIGINT/SIGTERM are recorded for ``check()`` to raise."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may handle signals; the caller owns them
        self._reader, self._writer = socket.socketpair()
        for end in (self._reader, self._writer):
            end.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, self._record) for sig in _STOP}
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._reader is None or self._writer is None:
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._reader.close()
        self._writer.close()

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.pending = signum

    def waitables(self) -> list[socket.socket]:
        """Objects for ``multiprocessing.connection.wait`` that become ready on a signal."""
        return [self._reader] if self._reader is not None else []

    def check(self) -> None:
        """Raise ``Interrupted`` if SIGINT/SIGTERM arrived. Any handled signal (SIGWINCH
        too) writes a byte to the wake-up socket: drain it, or ``wait()`` spins."""
        if self._reader is not None:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while self._reader.recv(4096):
                    pass
        if self.pending is not None:
            raise Interrupted(self.pending)


def coordinator_signals() -> None:
    """First thing in a child that is a coordinator itself (a batch item, the clean process
    of a threaded caller): it owns cancellation of its own workers, so Ctrl-C raises
    KeyboardInterrupt and SIGTERM is unblocked, whatever the thread that started it had."""
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(_STOP))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def child_signals() -> None:
    """First thing in a forked child: Ctrl-C (sent to the whole process group) is the
    coordinator's business; SIGTERM kills; the parent's wake-up fd is not ours."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
