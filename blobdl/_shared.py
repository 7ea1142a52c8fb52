"""The shared-memory counter table between the coordinator and its workers.

An anonymous ``MAP_SHARED`` mapping created before the fork, so every worker sees the
same pages with no file to clean up. Each slot holds two int64 fields with one writer each:

- ``pos``: the next byte the slot's worker will write (worker writes, coordinator reads);
- ``end``: where the slot's range stops (coordinator writes, worker reads; it only ever
  moves in, when another worker takes over the tail of the range).

Aligned 8-byte stores and loads do not tear on the platforms we run on, so no lock.
"""

from __future__ import annotations

import mmap

_FIELDS = 2  # pos, end
_WORD = 8


class CounterTable:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, max(1, slots) * _FIELDS * _WORD)
        self._words = memoryview(self._map).cast("q")

    def pos(self, slot: int) -> int:
        return int(self._words[slot * _FIELDS])

    def set_pos(self, slot: int, value: int) -> None:
        self._words[slot * _FIELDS] = value

    def end(self, slot: int) -> int:
        return int(self._words[slot * _FIELDS + 1])

    def set_end(self, slot: int, value: int) -> None:
        self._words[slot * _FIELDS + 1] = value

    def close(self) -> None:
        self._words.release()
        self._map.close()
