"""A small item's meter: when it has progress to tell (pure: the clock is given)."""

from __future__ import annotations

import pytest

from blobdl.engine._counter_table import CounterTable
from blobdl.engine._small import Meter


def test_an_item_tells_progress_once_it_has_run_an_interval_and_none_once_over() -> None:
    table = CounterTable(1)
    meter = Meter(table, 0)
    assert meter.progress(1e9, 0.2) is None  # no item yet
    meter.start(1000)
    meter.attempt()
    table.set_pos(0, 400)
    assert meter.progress(meter.started + 0.19, 0.2) is None  # done within its first interval
    told = meter.progress(meter.started + 0.2, 0.2)
    assert told is not None and (told.done, told.total, told.active) == (400, 1000, 1)
    assert told.elapsed == pytest.approx(0.2)
    meter.stop()
    assert meter.progress(meter.started + 1.0, 0.2) is None  # its last word may be said
