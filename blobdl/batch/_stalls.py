"""The scheduler's judge of its pool's processes (``_beats`` says how it tells one stalled):
how long it may wait for news before it looks, the look, and which process it killed."""

from __future__ import annotations

import logging
from collections.abc import Collection

from ..config import Settings
from ._beats import stalled
from ._pool import Pool

log = logging.getLogger("blobdl")


class Stalls:
    """The scheduler's judge of its pool's processes: how long it may wait for news before
    it looks (``listen_for``), the look itself (``look``), and which it killed (``silent``,
    taken by the scheduler when it hears the process died)."""

    def __init__(self, settings: Settings) -> None:
        self.timeout = settings.stall_timeout
        self.killed: dict[int, float] = {}  # pool process -> how long it was quiet

    def listen_for(self, pool: Pool | None, running: Collection[int]) -> float | None:
        """A quarter of the stall timeout while a seat of ``pool`` runs an item (``running``:
        the busy seats); None (until news) otherwise."""
        if pool is None or pool.closing or not running:
            return None
        return self.timeout / 4

    def look(self, pool: Pool | None, running: Collection[int], waited: float) -> None:
        """The scheduler waited ``waited`` seconds for news: a process of ``pool`` quiet for
        the stall timeout while one of its seats runs an item is killed; its sentinel then
        says it died."""
        if pool is None or pool.closing:
            return
        live = [n for n in range(len(pool.procs)) if n not in pool.ended]
        pool.beats.listened(waited, live)
        for number in live:
            quiet = pool.beats.quiet(number)
            busy = any(seat in running for seat in pool.ranges[number])
            if number not in self.killed and stalled(quiet, busy, self.timeout):
                log.warning("pool process %d silent for %.0f s: killed", number, quiet)
                self.killed[number] = self.timeout
                pool.kill(number)

    def silent(self, number: int) -> float | None:
        """How long process ``number`` was quiet if the batch killed it (said once)."""
        return self.killed.pop(number, None)
