"""What one download may run now: how many lanes, and the rate they share.

A single download runs under its settings; a batch item under the ``Share`` its batch writes,
read afresh at every look (it grows as the batch's other items end). Its lanes are bounded
further by what its crew can seat and, under a rate limit, by the lanes the running ones call
for (``_steal.more_lanes``: none more while they fill the limit, so the parts run in order and
a digest keeps up with the blob; enough more where they do not), and by the limit's bytes/s
(a lane's share is a byte a second at least). The coordinator asks here before it starts a
lane, and hands ``limit`` to ``Parts.share``.
"""

from __future__ import annotations

from ..config import Settings
from ._parts import Parts
from ._pinned import Pinned
from ._share import Share
from ._steal import CUT_LONG, CUT_QUIET, MAX_LANES, more_lanes
from ._worker import Crew

ADD_GRACE = 0.3  # seconds a new lane has to show its rate before another may start beside it


class Allowance:
    """One download's lanes and rate limit now, as its settings or its batch allow."""

    def __init__(
        self, settings: Settings, share: Share | None, crew: Crew, parts: Parts, pinned: Pinned
    ) -> None:
        self.settings, self.share = settings, share  # share: a batch item's live grant
        self.crew, self.parts, self.pinned = crew, parts, pinned
        self.wanted = 0  # lanes it runs under a rate limit (``room``): only ever more

    def limit(self) -> int | None:
        """Bytes/s for all its lanes now: its settings', or its share of its batch's."""
        return self.settings.limit_rate if self.share is None else self.share.rate()

    def lanes(self) -> int:
        """Lanes it may run now: its connections (or what its batch grants), as far as its
        crew can seat them, as many as ``room`` wants under a rate limit, and no more than
        the limit's bytes/s."""
        connections = self.settings.connections
        if self.share is not None:
            connections = max(1, min(connections, self.share.connections()))
        seats = self.crew.room()
        if seats is not None:
            connections = min(connections, self.parts.running() + seats)
        return min(connections, self.wanted, self.limit() or MAX_LANES)

    def room(self, now: float) -> int:
        """Lanes that may start now (``lanes`` less those running): under a rate limit, as
        many as ran so far (a lane that ends is replaced), or more where ``_steal.more_lanes``
        says the running ones leave part of the limit unused."""
        running, limit = self.parts.running(), self.limit()
        if limit is None:
            self.wanted = MAX_LANES
        else:
            # A lane awaiting its first bytes that long is slow (as a steal judges it).
            answer_time = min(self.pinned.remote.answer_time, CUT_LONG)
            lanes = self.parts.lanes(now)
            more = more_lanes(limit, lanes, ADD_GRACE, CUT_QUIET + answer_time)
            self.wanted = max(self.wanted, running + more)
        return self.lanes() - running
