"""Who gets SIGINT/SIGTERM: the coordinator owns cancellation, its children never do.

SIGTERM is Ctrl-C by another name: wherever a download is, either one stops it the same
way (exit 130, the partial kept), never the default death of SIGTERM (143, no message, a
lock file left). ``stoppable`` is that for one whole download (the probe, a lock or cache
wait, the hashing after the last byte): a signal raises ``Stop`` at once, as Ctrl-C raises
KeyboardInterrupt. ``Stop`` *is* a KeyboardInterrupt, not an ``Exception``: it lands at an
arbitrary bytecode, and every ``except Exception`` on its way (ours, urllib3's, the
standard library's parsers) would swallow an Exception there, and the download would go on.
The boundaries that report turn it into ``Interrupted`` (``interrupted``). What still
swallows it (a finalizer, ``__del__``, that Python runs and whose errors it only prints)
cannot lose it: it is remembered, and the next ``held`` block, the coordinator's watch and
the commit raise it. A few steps must not be cut in two, and hold it instead:

- ``held``: a fork and its bookkeeping, a lock taken and written down, a file opened and
  noted. The signal is raised when the step is done; ``held(drop=True)`` drops it instead,
  for a cleanup that already runs because the download stops.
- ``commit``: from the moment the complete file is renamed into place on, the download has
  succeeded; a signal can no longer make it a failure, and is dropped. A download inside a
  larger one (a cache entry filled, then placed) commits only for itself: ``inner``.

While the coordinator's loop runs, ``Interrupts`` turns both signals into a *note*, never an
exception raised at an arbitrary bytecode: one thrown from a signal handler can land between
``fork()`` and the bookkeeping that records the child (leaking it), inside a cleanup, or
inside a weakref callback where Python swallows it. Instead the handler records the signal
and the wake-up fd makes the coordinator's ``wait()`` return at once; the loop then raises
``Interrupted`` at a point of its choosing, and shuts down cleanly.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from types import FrameType, TracebackType
from typing import Any, TypeVar

from ..errors import Interrupted, OutOfResources

T = TypeVar("T")
_STOP = (signal.SIGINT, signal.SIGTERM)
# SIGPIPE is ignored while a download runs, and in every child, as Python ignores it by
# default: a write to a worker that has just died must fail with EPIPE, which we expect,
# not kill a caller that set SIGPIPE back to its default (to die quietly under ``| head``).
_PIPES = signal.SIGPIPE


def _heeded() -> list[int]:
    """SIGINT and SIGTERM, but one this process was started ignoring (a background job of a
    shell script ignores Ctrl-C): that one stays ignored, as Python leaves it."""
    return [sig for sig in _STOP if signal.getsignal(sig) is not signal.SIG_IGN]


class _Stops:
    """This process's part in ``stoppable``: how deep, what is held, what arrived."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.depth = 0  # stoppable() blocks entered (the outermost installs the handlers)
        self.held = 0  # held() blocks entered
        self.arrived: int | None = None  # the signal that stops this block (held, or raised)
        self.committed = False  # the download succeeded: signals are dropped
        self.late: int | None = None  # a signal dropped since the commit
        self.callers = 0  # caller's callbacks running under a loop's Interrupts (``callers``)


_stops = _Stops()


class Stop(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where ``stoppable`` lets it land (see the module's note):
    a KeyboardInterrupt, so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def interrupted(stop: BaseException) -> Interrupted:
    """What a boundary that reports says of a ``Stop`` (or of a plain Ctrl-C); an
    ``Interrupted`` already is that, its words kept."""
    if isinstance(stop, Interrupted):
        return stop
    return Interrupted(getattr(stop, "signum", signal.SIGINT))


def _stop(signum: int, _frame: FrameType | None) -> None:
    if _stops.committed:
        _stops.late = _stops.late or signum  # dropped, unless an ``inner`` commit ends
        return
    _stops.arrived = _stops.arrived or signum
    if not _stops.held:
        raise Stop(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_arrived() -> None:
    """Raise the signal that arrived in this block, if any: one that was held, or one that
    something swallowed on its way (a finalizer; see the module's note)."""
    if _stops.arrived is not None and not _stops.committed:
        raise Stop(_stops.arrived)


def unheard() -> None:
    """Raise the signal that arrived in this block and has not stopped it (a download a
    caller's callback made heard it, and the callback let its ``Interrupted`` pass): a
    loop that waits without a watch of its own asks this before each wait. Only the main
    thread's block has one."""
    if _in_main_thread():
        _raise_arrived()


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """In the block, SIGINT and SIGTERM raise ``Interrupted`` (see the module's note). Only
    the main thread may handle signals: elsewhere (a threaded caller's worker thread) the
    caller's handlers stay, and the main thread's block is not this one's. Nested blocks
    are one."""
    if threading.current_thread() is not threading.main_thread():
        yield  # (counted, it would race the main thread's own block and reset)
        return
    if _stops.depth:
        _stops.depth += 1
        try:
            yield
        finally:
            _stops.depth -= 1
        return
    previous = {sig: signal.signal(sig, _stop) for sig in _heeded()}
    previous[_PIPES] = signal.signal(_PIPES, signal.SIG_IGN)
    _stops.depth = 1
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stops.reset()


@contextlib.contextmanager
def called() -> Iterator[None]:
    """A library call (``download``, ``download_many``, ``pull``, ``hf_download``), as the
    CLI runs each command: in the main thread SIGINT and SIGTERM stop it wherever it is
    (``stoppable``), in the caller's process or in the clean one a threaded caller's
    download runs in, and reach the caller as ``Interrupted``."""
    try:
        with stoppable(), _for_itself():
            yield
    except Stop as stop:
        raise interrupted(stop) from None


@contextlib.contextmanager
def _for_itself() -> Iterator[None]:
    """A library call that a caller's callback makes (``callers``) inside a download of its
    own commits only for itself: before it commits, it is stoppable even if the download
    around it has committed; once it has, the one around it, not yet committed, is still
    stoppable. A signal dropped after its commit is handed to the one around it as one that
    arrived (its next ``held`` step or check raises it): it has succeeded, so it returns."""
    if not (_stops.callers and _in_main_thread()):
        yield
        return
    outer, outer_late = _stops.committed, _stops.late
    _stops.committed, _stops.late = False, None
    try:
        yield
    finally:
        late = _stops.late
        _stops.committed, _stops.late = outer, outer_late
        if late is not None and outer:
            _stops.late = _stops.late or late  # the one around it is done: dropped too
        elif late is not None:
            _stops.arrived = _stops.arrived or late


@contextlib.contextmanager
def held(*, drop: bool = False) -> Iterator[None]:
    """Hold SIGINT/SIGTERM through the block (see the module's note): raise the one that
    arrived when the outermost held block ends, or leave it with ``drop`` (a cleanup that
    runs because the download stops already). A block that raises keeps its own error.
    Outside the main thread, nothing is held (no handler runs there; the counts are the main
    thread's block's, and its signal is not this thread's to raise)."""
    if not _in_main_thread():
        yield
        return
    _stops.held += 1
    try:
        yield
    finally:
        _stops.held -= 1
    if not _stops.held and not drop:
        _raise_arrived()


@contextlib.contextmanager
def whole() -> Iterator[None]:
    """A step that must not be cut in two (a line of output): SIGINT/SIGTERM held through
    it, and one that arrived meanwhile raised once it is done. One that arrived before, and
    is being handled (the stop's own lines are written after it), is not raised again: a
    swallowed one is raised at the next ``held`` step or check, as ever. Outside the main
    thread, as ``held``: nothing to hold."""
    if not _in_main_thread():
        yield
        return
    before = _stops.arrived
    with held(drop=True):
        yield
    if before is None and not _stops.held:
        _raise_arrived()


def commit() -> None:
    """The download is about to be complete (the file renamed into place): from now until
    its ``stoppable`` block ends, SIGINT and SIGTERM are dropped (see the module's note).
    A signal that arrived before and was lost on its way is raised instead."""
    if _stops.depth:
        _raise_arrived()
        _stops.committed = True


@contextlib.contextmanager
def inner() -> Iterator[None]:
    """A download inside a larger one (a cache entry filled before the destination is
    placed): its ``commit`` lasts until the block ends, and a signal that arrived since is
    raised then, for the larger one to stop."""
    outer = _stops.committed
    try:
        yield
    finally:
        late = _stops.late if _stops.committed and not outer else None
        _stops.committed = outer
        if late is not None:
            _stops.late = None
            _stops.arrived = _stops.arrived or late
    if late is not None:
        raise Stop(late)


def callers(callback: Callable[[T], None] | None) -> Callable[[T], None] | None:
    """The caller's callback, run as the caller's own code: a signal raises in it at once,
    even under a loop's ``Interrupts``, which only note it (see ``Interrupts``). A callback
    that waits (a queue, a lock, the network, a download of its own) is stopped, not waited
    for. Only for a callback of the caller's: never for one that sends to another process,
    whose message a signal would cut in two."""
    if callback is None:
        return None
    own = callback

    def run(event: T) -> None:
        if not _in_main_thread():
            own(event)  # no handler runs here; and the count is the main thread's
            return
        _stops.callers += 1
        try:
            own(event)
        finally:
            _stops.callers -= 1

    return run


def reset_stops() -> None:
    """Forget the parent's ``stoppable`` state: a forked child starts with none."""
    _stops.reset()


class Interrupts:
    """A context in which SIGINT/SIGTERM are recorded for ``check()`` to raise; but raised at
    once inside a caller's callback (``callers``) that the loop runs, outside a held step."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self._raising = False  # in a wait that only another process ends (``raising``)
        self._callers = 0  # the callers' callbacks this loop runs inside (see __enter__)
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may handle signals; the caller owns them
        if not _stops.committed:
            self.pending = _stops.arrived  # one that something swallowed: the first check
        try:
            self._reader, self._writer = socket.socketpair()
        except OSError as exc:
            raise OutOfResources.refused("watch for Ctrl-C", exc) from None
        for end in (self._reader, self._writer):
            end.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, self._record) for sig in _heeded()}
        self._previous[_PIPES] = signal.signal(_PIPES, signal.SIG_IGN)
        # A download a callback started: its own loop is not the caller's code.
        self._callers, _stops.callers = _stops.callers, 0
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
        _stops.callers = self._callers
        self._reader.close()
        self._writer.close()
        if kind is None and self.pending is not None:
            raise Interrupted(self.pending)  # arrived after the last check: never lost

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.pending = signum
        if _stops.depth and not _stops.committed:
            _stops.arrived = _stops.arrived or signum  # the block it runs in stops too
        if (_stops.callers or self._raising) and not _stops.held and not _stops.committed:
            raise Stop(signum)  # in the caller's callback (its own code) or a wait: at once

    @contextlib.contextmanager
    def raising(self) -> Iterator[None]:
        """A wait that only another process's answer ends (its batch's room at another
        host): SIGINT/SIGTERM raise in it at once, outside a ``held`` step (a question
        sent whole), as in a caller's callback; one that came before raises first."""
        self.check()
        self._raising = True
        try:
            yield
        finally:
            self._raising = False

    def waitables(self) -> list[socket.socket]:
        """Objects for ``multiprocessing.connection.wait`` that become ready on a signal."""
        return [self._reader] if self._reader is not None else []

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` (a backoff), unless SIGINT/SIGTERM ends it at once (``check``)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            wait(self.waitables(), timeout=left)
            self.check()

    def check(self) -> None:
        """Raise ``Interrupted`` if SIGINT/SIGTERM arrived. Any handled signal (SIGWINCH
        too) writes a byte to the wake-up socket: drain it, or ``wait()`` spins."""
        if self._reader is not None:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while self._reader.recv(4096):
                    pass
            if self.pending is None and _stops.depth and not _stops.committed:
                # One that another watch heard (a download a callback made, whose stop the
                # callback let pass), or handed on by its commit (``_for_itself``): ours too.
                self.pending = _stops.arrived
        if self.pending is not None:
            raise Interrupted(self.pending)


def decided() -> None:
    """This process's outcome is decided, and is being said (sent to its parent): a stop
    from now on (its parent's, passed on as the outcome crosses) could only cut that message
    in two, or print a traceback over its exit. Ignored: the process ends in a moment."""
    for sig in _STOP:
        signal.signal(sig, signal.SIG_IGN)


def coordinator_signals() -> None:
    """First thing in a child that is a coordinator itself (a batch item, the clean process
    of a threaded caller): it owns cancellation of its own workers, so Ctrl-C raises
    KeyboardInterrupt and SIGTERM is unblocked, whatever the thread that started it had.
    A Ctrl-C its caller ignores (a background job of a script) it ignores too, as the
    caller's own download would (``_heeded``); SIGTERM, its death signal, it never does."""
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(_STOP))
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(_PIPES, signal.SIG_IGN)
    reset_stops()  # its own download's ``stoppable`` installs its own handlers


def child_signals() -> None:
    """First thing in a forked child: Ctrl-C (sent to the whole process group) is the
    coordinator's business; SIGTERM kills; the parent's wake-up fd is not ours."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(_PIPES, signal.SIG_IGN)
    reset_stops()
