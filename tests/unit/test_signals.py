"""What a stop is, in one process (``blobdl/processes/_signals.py``), with real signals sent to
this very process: never an ``Exception``, never lost once it arrived, and dropped only after
the commit of the download it stops."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
from typing import Any

import pytest

from blobdl.cli._display import _write
from blobdl.errors import Interrupted
from blobdl.processes._signals import Interrupts, Stop, commit, held, inner, stoppable


def arrive(signum: int = signal.SIGTERM) -> None:
    """Send ``signum`` to ourselves; its handler runs before this returns."""
    os.kill(os.getpid(), signum)
    sum(range(1000))  # a few bytecodes: the handler runs at one of them


def swallowed(signum: int = signal.SIGTERM) -> None:
    """The signal arrives inside code that swallows everything (a finalizer's caller)."""
    with contextlib.suppress(BaseException):
        arrive(signum)


def test_a_stop_passes_every_except_exception() -> None:
    with pytest.raises(Stop) as caught, stoppable():
        try:
            arrive(signal.SIGTERM)
        except Exception:  # the code a signal must never be lost in
            pytest.fail("a stop was caught as an Exception")
    assert isinstance(caught.value, KeyboardInterrupt) and caught.value.signum == signal.SIGTERM


@pytest.mark.parametrize("where", ["held", "commit", "watch"])
def test_a_stop_that_something_swallowed_is_raised_at_the_next_step(where: str) -> None:
    with pytest.raises((Stop, Interrupted)) as caught, stoppable():
        swallowed(signal.SIGINT)
        if where == "held":
            with held():
                pass
        elif where == "commit":
            commit()
        else:
            with Interrupts() as watch:
                watch.check()
        pytest.fail("the swallowed stop was lost")
    assert getattr(caught.value, "signum", None) == signal.SIGINT


def test_after_the_commit_a_stop_is_dropped() -> None:
    with stoppable():
        commit()
        arrive()
        with held():
            pass


def test_an_inner_commit_drops_a_stop_only_until_its_block_ends() -> None:
    """A cache entry filled and committed: the stop that arrives as it is put in place
    stops the download that was to place it next."""
    with pytest.raises(Stop), stoppable():
        with inner():
            commit()
            arrive()  # dropped: the entry's rename goes on
        pytest.fail("the stop that arrived in the inner commit was lost")


def test_another_threads_block_leaves_the_main_threads_alone() -> None:
    """Every library call is a ``stoppable`` block, on whichever thread calls. One on
    another thread that outlives the main thread's must not count in it: it would leave the
    count below zero, and the main thread's next block, taken for a nested one, would not
    take SIGTERM."""
    entered, leave = threading.Event(), threading.Event()

    def elsewhere() -> None:
        with stoppable():
            entered.set()
            leave.wait()

    thread = threading.Thread(target=elsewhere)
    with stoppable():
        thread.start()
        entered.wait()
    leave.set()
    thread.join()

    def callers_own(_signum: int, _frame: Any) -> None:
        raise AssertionError("SIGTERM reached the caller's handler, not the block's")

    previous = signal.signal(signal.SIGTERM, callers_own)
    try:
        with pytest.raises(Stop), stoppable():
            arrive(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_line_written_while_a_stop_is_handled_does_not_raise_that_stop_again() -> None:
    """The stop's own lines (a cut item's ``failed``, the error) are written while it is
    handled: each line is whole (``_display._write``) and goes on to the next, instead of
    raising the same stop again after it (which cut the cluster's stop path short: its
    items' last words and the scheduler's silence were lost)."""
    out = io.StringIO()  # a stream that is no file is written as it is
    wrote: list[str] = []
    with pytest.raises(Stop), stoppable():
        try:
            arrive(signal.SIGINT)
        except Stop:
            for line in ("failed 0\n", "failed 1\n"):
                _write(out, line)
                wrote.append(line)
            raise
    assert wrote == ["failed 0\n", "failed 1\n"] and out.getvalue() == "".join(wrote)


def test_a_signal_during_a_line_is_raised_once_the_line_is_whole() -> None:
    class Slow(io.StringIO):
        def write(self, text: str) -> int:
            arrive(signal.SIGTERM)  # lands mid-line
            return super().write(text)

    out = Slow()
    with pytest.raises(Stop), stoppable():
        _write(out, "a whole line\n")
    assert out.getvalue() == "a whole line\n"
