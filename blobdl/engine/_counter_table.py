"""The shared-memory counter table between the coordinator and its workers.

An anonymous ``MAP_SHARED`` mapping created before the first fork, so every worker (and the
prefix hasher) sees the same pages with no file to clean up. Each slot holds seven int64
fields, each with one writer:

- ``start``: the slot's first byte (coordinator, set before the slot's first worker);
- ``pos``: every byte of ``[start, pos)`` is on disk and checked (worker writes, others
  read): a chunked body's current chunk is written ahead of it, and counted once the line
  end after it is read, so what reads ``pos`` as done (a checkpoint, the hasher, a steal,
  a retry) never trusts a byte the lane may have to take back;
- ``end``: where the slot's range stops (coordinator writes, worker reads; it only ever
  moves in, when another worker takes over the tail of the range). -1: until EOF;
- ``cap``: the worker's share of ``limit_rate`` in bytes/s, 0 for none (coordinator writes);
- ``asked``: one past the last byte the worker's current request asked for (worker writes,
  the coordinator reads): a split never cuts below it, so no requested byte is thrown away;
- ``received``: body bytes the slot's workers read off the wire, over all their attempts
  (the slot's worker of the moment writes; kept or not);
- ``slept``: microseconds the slot's workers slept to stay under their ``cap``, over all
  their attempts (the slot's worker of the moment writes): whether their share of the rate
  limit holds the lanes back, or the network does (``_steal.more_lanes``).

Unused slots are all zero and cover nothing. Aligned 8-byte stores and loads do not tear
on the platforms we run on, so no lock.
"""

from __future__ import annotations

import mmap

_FIELDS = 7  # start, pos, end, cap, asked, received, slept
_WORD = 8


class CounterTable:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, max(1, slots) * _FIELDS * _WORD)
        self._words = memoryview(self._map).cast("q")

    def start(self, slot: int) -> int:
        return int(self._words[slot * _FIELDS])

    def pos(self, slot: int) -> int:
        return int(self._words[slot * _FIELDS + 1])

    def end(self, slot: int) -> int:
        return int(self._words[slot * _FIELDS + 2])

    def cap(self, slot: int) -> int:
        return int(self._words[slot * _FIELDS + 3])

    def asked(self, slot: int) -> int:
        return int(self._words[slot * _FIELDS + 4])

    def set_asked(self, slot: int, value: int) -> None:
        self._words[slot * _FIELDS + 4] = value

    def received(self, slot: int) -> int:
        return int(self._words[slot * _FIELDS + 5])

    def add_received(self, slot: int, count: int) -> None:
        self._words[slot * _FIELDS + 5] += count

    def slept(self, slot: int) -> int:
        return int(self._words[slot * _FIELDS + 6])

    def add_slept(self, slot: int, microseconds: int) -> None:
        self._words[slot * _FIELDS + 6] += microseconds

    def set_cap(self, slot: int, value: int) -> None:
        self._words[slot * _FIELDS + 3] = value

    def set_start(self, slot: int, value: int) -> None:
        self._words[slot * _FIELDS] = value

    def set_pos(self, slot: int, value: int) -> None:
        self._words[slot * _FIELDS + 1] = value

    def set_end(self, slot: int, value: int) -> None:
        self._words[slot * _FIELDS + 2] = value

    def done(self, slot: int) -> int:
        """Bytes of the slot's range on disk (a worker may write a little past a moved end)."""
        return _done(self.start(slot), self.pos(slot), self.end(slot))

    def dones(self, count: int) -> list[tuple[int, int]]:
        """``(start, done)`` of the first ``count`` slots, read in bulk: what reads every
        slot at once (a checkpoint, a progress report, the hasher) costs a list, not a call
        per field and slot.

        Positions are read before starts, and ends last: another process (the hasher) may
        read while the coordinator publishes a new slot (``Parts._add``: start, then pos,
        then end). A slot's new pos read with its old start (0) would count
        ``[0, pos)`` as on disk; read pos first, and a new pos comes with its new start
        (stored before it), an old one (0) with a negative ``done`` that covers nothing.
        An end only moves in, so one read late only counts less."""
        words, stop = self._words, count * _FIELDS
        positions = words[1:stop:_FIELDS].tolist()
        starts = words[0:stop:_FIELDS].tolist()
        ends = words[2:stop:_FIELDS].tolist()
        return [(a, _done(a, p, e)) for a, p, e in zip(starts, positions, ends, strict=True)]

    def received_total(self, count: int) -> int:
        """``received`` of the first ``count`` slots, summed in bulk."""
        return sum(self._words[5 : count * _FIELDS : _FIELDS].tolist())

    def ends(self, count: int) -> list[int]:
        """``end`` of the first ``count`` slots, read in bulk."""
        return self._words[2 : count * _FIELDS : _FIELDS].tolist()

    def prefix(self) -> int:
        """The length of the longest prefix ``[0, n)`` of the blob that is on disk."""
        covered = sorted((start, start + done) for start, done in self.dones(self.slots))
        reach = 0
        for start, stop in covered:
            if start > reach:
                break
            reach = max(reach, stop)
        return reach

    def close(self) -> None:
        self._words.release()
        self._map.close()


def _done(start: int, pos: int, end: int) -> int:
    return (pos if end < 0 else min(pos, end)) - start
