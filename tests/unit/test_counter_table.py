"""The counter table read by another process while the coordinator writes it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from blobdl.engine._counter_table import CounterTable


class _PublishedMidRead:
    """The table's words, with the coordinator's publication of a new slot landing after
    the reader's ``after``-th bulk (sliced) read of them."""

    def __init__(self, words: memoryview, after: int, publish: Callable[[], None]) -> None:
        self._words, self._after, self._publish, self._reads = words, after, publish, 0

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            if self._reads == self._after:
                self._publish()
            self._reads += 1
        return self._words[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        self._words[index] = value


@pytest.mark.parametrize("after", [0, 1, 2, 3])
def test_prefix_never_counts_a_slot_published_while_it_reads(after: int) -> None:
    """A steal's new slot (``Parts._add``: start, then pos, then end) published between two
    of the hasher's reads must not look like bytes on disk: a slot read with its old start
    (0) and its new pos once made the prefix reach the thief's start, and the hasher hashed
    bytes no lane had written yet (a digest mismatch over a correct file)."""
    table = CounterTable(4)
    table.set_start(0, 0)
    table.set_pos(0, 10)  # the only bytes on disk: [0, 10)
    table.set_end(0, 1000)

    def add_thief() -> None:  # as Parts._add does it
        table.set_start(1, 500)
        table.set_pos(1, 500)
        table.set_end(1, 1000)

    table._words = _PublishedMidRead(table._words, after, add_thief)  # type: ignore[assignment]
    assert table.prefix() == 10
    assert table.prefix() == 10  # and once it is all published
