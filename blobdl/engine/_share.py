"""What a batch lets each of its running downloads use now: a share of its rate limit and a
number of connections.

``Shares`` is anonymous shared memory created by the batch scheduler before it forks
anything: the scheduler writes each running item's share whenever an item starts or ends,
and the item's coordinator reads its own (``Share``) at every look at its lanes. So the rate
and the connections that finished items free go to the items still running, instead of
staying split as they were when each item started. One writer per word, aligned 8-byte
stores: no lock.
"""

from __future__ import annotations

import mmap

_FIELDS = 2  # rate (bytes/s, 0: no limit), connections
_WORD = 8


class Shares:
    """One slot per download that may run at once; the batch writes, downloads read."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, max(1, slots) * _FIELDS * _WORD)
        self._words = memoryview(self._map).cast("q")

    def set(self, slot: int, rate: int | None, connections: int) -> None:
        self._words[slot * _FIELDS] = rate or 0
        self._words[slot * _FIELDS + 1] = connections

    def rate(self, slot: int) -> int | None:
        return int(self._words[slot * _FIELDS]) or None

    def connections(self, slot: int) -> int:
        return int(self._words[slot * _FIELDS + 1])

    def share(self, slot: int) -> Share:
        return Share(self, slot)


class Share:
    """One download's slot: what it may use now (read at every look, it changes)."""

    def __init__(self, shares: Shares, slot: int) -> None:
        self._shares, self.slot = shares, slot

    def rate(self) -> int | None:
        """Bytes/s for all its lanes together (None: no limit)."""
        return self._shares.rate(self.slot)

    def connections(self) -> int:
        """Lanes it may run at once."""
        return self._shares.connections(self.slot)
