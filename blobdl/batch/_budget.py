"""A batch's connection budget: who holds which connections, and what may start. Pure: the
scheduler says what happened and asks what fits; no I/O, no clock.

A connection is held by a seat of the batch's pool while it runs a small download, and
while it keeps its connection alive for the next one (the server still counts that socket),
and by a large download once per lane it is granted (at the host its probe's redirects
led it to: ``move``, holding none while it waits for room there). ``total`` bounds them all
and ``per_host`` those to any one host. An idle seat's kept connection is the first thing let
go when a large download needs room. The rate limit is shared by what runs, lane by lane.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple


class _Seat(NamedTuple):
    busy: bool  # running a small download
    host: str | None  # whose connection it holds (None: none)


class _Grant(NamedTuple):
    host: str
    granted: int  # lanes it may run now
    wanted: int  # lanes it could keep busy


class Budget:
    """The connections of one batch: ``seats`` seats, and the large items running."""

    def __init__(self, total: int, per_host: int, seats: int) -> None:
        self.total, self.per_host = total, per_host
        self._seats = [_Seat(False, None)] * seats
        self._retired: set[int] = set()  # seats whose process is gone for good
        self._grants: dict[int, _Grant] = {}  # item index -> its grant
        self._held: Counter[str] = Counter()  # host -> connections held to it
        self._used = 0

    # --- what is held -----------------------------------------------------------------------

    def free(self, host: str) -> int:
        """Connections to ``host`` that may open now."""
        return max(0, min(self.total - self._used, self.per_host - self._held[host]))

    def used(self) -> int:
        return self._used

    @property
    def seats(self) -> int:
        return len(self._seats)

    def busy_seats(self) -> int:
        return sum(1 for n, seat in enumerate(self._seats) if self._running(n, seat))

    def idle_seat(self) -> bool:
        return not all(seat.busy for seat in self._seats)

    # --- seats ------------------------------------------------------------------------------

    def seat_for(self, host: str) -> int | None:
        """An idle seat that may start an item of ``host`` now: one kept alive to ``host``
        (nothing more is held), else one that holds nothing, else one kept alive elsewhere
        (that connection goes: the total stays the same); None if the budget has no room."""
        idle = [n for n, seat in enumerate(self._seats) if not seat.busy]
        for n in idle:
            if self._seats[n].host == host:
                return n
        for n in idle:
            if self._seats[n].host is None and self.free(host) > 0:
                return n
        for n in idle:
            if self._seats[n].host is not None and self.per_host - self._held[host] > 0:
                return n
        return None

    def start(self, seat: int, host: str) -> None:
        """The seat runs an item of ``host``."""
        self._hold(seat, _Seat(True, host))

    def end(self, seat: int, kept: str | None) -> None:
        """The seat's item is over; it keeps a connection to ``kept`` alive (None: none)."""
        self._hold(seat, _Seat(False, kept))
        self._retired.discard(seat)

    def hop(self, seat: int, host: str) -> bool:
        """Busy ``seat``'s item goes on at ``host`` (a redirect): whether its connection is
        counted there now. If ``host`` has no room, it holds none until it has (asked again)."""
        if self._seats[seat].host == host:
            return True
        self._hold(seat, _Seat(True, None))
        if self.free(host) <= 0:
            return False
        self._hold(seat, _Seat(True, host))
        return True

    def retire(self, seat: int) -> None:
        """The seat is gone for good (its process died, and no other takes its place): it
        holds no connection, and is never idle again."""
        self._hold(seat, _Seat(True, None))
        self._retired.add(seat)

    def retired(self) -> bool:
        """Whether every seat is gone for good."""
        return len(self._retired) == len(self._seats)

    def droppable(self, host: str, need: int) -> list[int]:
        """Idle seats whose kept connections, let go, make room for ``need`` more to
        ``host`` (as much room as they can): those kept to ``host`` first."""
        short_total = need - (self.total - self._used)
        short_host = need - (self.per_host - self._held[host])
        chosen: list[int] = []
        for n, seat in enumerate(self._seats):
            if not seat.busy and seat.host == host and max(short_total, short_host) > 0:
                chosen.append(n)
                short_total, short_host = short_total - 1, short_host - 1
        for n, seat in enumerate(self._seats):
            if not seat.busy and seat.host not in (None, host) and short_total > 0:
                chosen.append(n)
                short_total -= 1
        return chosen

    def kept(self) -> list[int]:
        """Idle seats that keep a connection alive."""
        return [n for n, seat in enumerate(self._seats) if not seat.busy and seat.host]

    # --- large items ------------------------------------------------------------------------

    def grant(self, item: int, host: str, wanted: int, leave: int = 0) -> int:
        """Lanes for a large item starting now (0: no room yet), leaving ``leave`` of the
        room to others if that still grants one."""
        granted = self._room(host, wanted, leave)
        if granted > 0:
            self._grants[item] = _Grant(host, granted, wanted)
            self._take(host, granted)
        return granted

    def move(self, item: int, host: str, leave: int = 0) -> int:
        """Running ``item``'s lanes go to ``host`` instead (its own probe was redirected
        there, before any lane connected): its lanes counted there now, as many as ``grant``
        would give (0: it holds none until ``host`` has room, asked again)."""
        grant = self._grants[item]
        if grant.host == host and grant.granted > 0:
            return grant.granted
        self._take(grant.host, -grant.granted)
        granted = self._room(host, grant.wanted, leave)
        self._grants[item] = _Grant(host, granted, grant.wanted)
        self._take(host, granted)
        return granted

    def more(self, item: int) -> int:
        """Raise a running item's grant as far as the room and its wants go; its new grant."""
        grant = self._grants[item]
        extra = min(grant.wanted - grant.granted, self.free(grant.host))
        if extra > 0:
            self._grants[item] = grant._replace(granted=grant.granted + extra)
            self._take(grant.host, extra)
        return self._grants[item].granted

    def wants_more(self) -> list[int]:
        """Running items granted fewer lanes than they could keep busy (not one that waits
        for room at the host it moves to: ``move`` gives it its lanes)."""
        return [item for item, g in self._grants.items() if 0 < g.granted < g.wanted]

    def finish(self, item: int) -> None:
        grant = self._grants.pop(item)
        self._take(grant.host, -grant.granted)

    def host_of(self, item: int) -> str:
        return self._grants[item].host

    def wanted(self, item: int) -> int:
        return self._grants[item].wanted

    def granted(self, item: int) -> int:
        return self._grants[item].granted

    # --- the rate limit ---------------------------------------------------------------------

    def rates(self, limit: int | None) -> tuple[dict[int, int], dict[int, int]]:
        """``limit`` shared by lane among what runs: (busy seat -> bytes/s, item ->
        bytes/s); empty without a limit."""
        if limit is None:
            return {}, {}
        lanes = self.busy_seats() + sum(g.granted for g in self._grants.values())
        if lanes == 0:
            return {}, {}
        running = [n for n, seat in enumerate(self._seats) if self._running(n, seat)]
        seats = {n: max(1, limit // lanes) for n in running}
        grants = self._grants.items()
        items = {i: max(1, limit * g.granted // lanes) for i, g in grants if g.granted}
        return seats, items

    # --- bookkeeping ------------------------------------------------------------------------

    def _running(self, n: int, seat: _Seat) -> bool:
        """Whether seat ``n`` runs an item now."""
        return seat.busy and n not in self._retired

    def _room(self, host: str, wanted: int, leave: int) -> int:
        """Lanes a large item may have at ``host`` now: up to ``wanted``, leaving ``leave``
        of the room to others if that still gives it one."""
        free = self.free(host)
        return min(wanted, max(min(free, 1), free - leave))

    def _hold(self, seat: int, now: _Seat) -> None:
        before = self._seats[seat]
        if before.host is not None:
            self._take(before.host, -1)
        if now.host is not None:
            self._take(now.host, 1)
        self._seats[seat] = now

    def _take(self, host: str, count: int) -> None:
        self._held[host] += count
        self._used += count
