"""Signs of life of a batch's pool processes, so that the scheduler can tell one that stalled.

A seat's own socket timeouts end a silent server's request, but not a process that does not
run at all: stopped (SIGSTOP, a debugger), swapped out for good, wedged. Its items would
never end, nor would the batch. Each pool process's main thread counts a beat in shared
memory (its one word, written by it alone) at least every quarter of the stall timeout
(``pool_main``); the scheduler, each time it has waited for news, adds the time it waited to
the quiet of each process whose count has not moved since (``listened``). Only time spent
waiting counts: while the scheduler is busy elsewhere (a slow callback of the caller's,
through which a pool process may block on a full pipe) nobody is judged. A process quiet
for the stall timeout while it runs an item is stalled (``stalled``): killed by the
scheduler's ``_stalls.Stalls``, saying so, and forked again by the pool, where its items run
again, as after any death (``_scheduler``'s ``_again``).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable

_WORD = 8


class Beats:
    """One beat counter per pool process, made before the pool forks (its processes inherit
    the mapping); and, on the scheduler's side, how long each has been quiet."""

    def __init__(self, processes: int) -> None:
        self._map = mmap.mmap(-1, max(1, processes) * _WORD)
        self._words = memoryview(self._map).cast("q")
        self._seen = [0] * processes  # the count last read
        self._quiet = [0.0] * processes  # seconds waited since it last moved

    def beat(self, number: int) -> None:
        """In pool process ``number``: it is alive."""
        self._words[number] += 1

    def listened(self, waited: float, numbers: Iterable[int]) -> None:
        """The scheduler waited ``waited`` seconds for news: processes ``numbers`` that have
        not beaten since its last look are that much quieter."""
        for number in numbers:
            count = int(self._words[number])
            if count != self._seen[number]:
                self._seen[number], self._quiet[number] = count, 0.0
            else:
                self._quiet[number] += waited

    def quiet(self, number: int) -> float:
        return self._quiet[number]

    def restarted(self, number: int) -> None:
        """Process ``number`` was forked again: it starts with a clean slate."""
        self._seen[number], self._quiet[number] = int(self._words[number]), 0.0


def stalled(quiet: float, running: bool, stall_timeout: float) -> bool:
    """Whether a pool process is stalled: quiet for the stall timeout while it runs an item
    (an idle one has nothing to stall, and is judged once it is given one)."""
    return running and quiet >= stall_timeout
