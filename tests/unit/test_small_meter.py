"""A small item's meter: when it has progress to tell (pure: the clock is given), and the
seat's line that tells it: its last word after every Progress."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from blobdl.batch._pool import _Done, _Line, _Told
from blobdl.engine._counter_table import CounterTable
from blobdl.engine._small import Meter
from blobdl.errors import BlobdlError
from blobdl.events import Progress


def test_an_item_tells_progress_once_it_has_run_an_interval_and_none_once_over() -> None:
    table = CounterTable(1)
    meter = Meter(table, 0)
    assert meter.progress(1e9, 0.2) is None  # no item yet
    meter.start(1000)
    meter.attempt()
    table.set_pos(0, 400)
    assert meter.progress(meter.started + 0.19, 0.2) is None  # done within its first interval
    # Past the interval, not at it: (started + 0.2) - started is 0.2 only for some starts,
    # as floats go (the monotonic clock's value decided whether this test passed).
    told = meter.progress(meter.started + 0.21, 0.2)
    assert told is not None and (told.done, told.total, told.active) == (400, 1000, 1)
    assert told.elapsed == pytest.approx(0.21)
    meter.stop()
    assert meter.progress(meter.started + 1.0, 0.2) is None  # its last word may be said


class _HeldMeter(Meter):
    """A meter whose progress, once computed, is held until ``go``: the pool process's main
    thread caught between reading the meter and sending what it read."""

    def __init__(self, table: CounterTable, slot: int) -> None:
        super().__init__(table, slot)
        self.computed, self.go = threading.Event(), threading.Event()

    def progress(self, now: float, interval: float) -> Progress | None:
        told = super().progress(now, interval)
        self.computed.set()
        self.go.wait(10)
        return told


def test_a_progress_read_as_the_item_ends_is_sent_before_the_items_last_word() -> None:
    meter = _HeldMeter(CounterTable(1), 0)
    meter.start(1000)
    ours, theirs = multiprocessing.Pipe()
    line = _Line(ours)
    line.events = True
    teller = threading.Thread(target=line.progress, args=(meter, meter.started + 1.0, 0.2))
    teller.start()
    assert meter.computed.wait(10)  # the main thread has read a Progress, not sent it yet
    last = _Done(BlobdlError("the item's outcome"), None, None)

    def seat() -> None:  # the item ends: its meter stops, then its last word
        meter.stop()
        line.send(last)

    ender = threading.Thread(target=seat)
    ender.start()
    ender.join(0.3)  # its chance to say the last word first (the seat's lock holds it back)
    meter.go.set()
    teller.join(10)
    ender.join(10)
    words = [theirs.recv(), theirs.recv()]
    assert isinstance(words[0], _Told) and isinstance(words[0].event, Progress), words
    assert isinstance(words[1], _Done) and str(words[1].outcome) == str(last.outcome), words
    ours.close()
    theirs.close()
