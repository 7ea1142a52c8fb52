"""The large items' lanes, under the batch's budget: which waiting item is granted lanes
and when, the room made for them, and what every running thing may use now.

A large item waits here (``Waiting``: probed on a seat, or said to be large and probing in
its own child) until the budget grants it lanes at its host (``start``); it is then forked
(``LargeItems.start``) with its lanes and its share of the rate already in its slot
(``share``). Kept-alive idle seats make room (``_drop``), but while items are queued for
the seats, a large item leaves them what they need (``_room_for``). A child whose probe, or
refresh (an expired URL resolved again), a redirect leads to another host waits for room
there (``hop``) and goes on once its grant moved (``hops``). Once nothing waits, running
items get the lanes that ended items left (``more``). The scheduler (``_scheduler``) calls
these in its launch step; the budget (``_budget``) is the pure arithmetic they act on.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import NamedTuple

from ..config import Settings
from ..http._remote import Remote
from ._budget import Budget
from ._item_process import LargeItems
from ._items import Item
from ._seats import Seats
from ._sizing import settings_for, wanted
from ._watch import Watch


class Waiting(NamedTuple):
    """A large item waiting for lanes: probed by its seat, or said to be large."""

    item: int
    remote: Remote | None  # what its seat's probe learned (None: its own child probes)
    host: str  # the host its lanes connect to (after redirects, once probed)


class Lanes:
    """The scheduler's grants of lanes: the items ``waiting`` for theirs, those whose own
    probe or refresh waits for room at another host (``hopping``), the room made and the shares
    written. ``queued`` is the scheduler's queue of items for seats, by host (read here:
    what the seats will need)."""

    def __init__(
        self,
        items: list[Item],
        settings: Settings,
        budget: Budget,
        seats: Seats,
        large: LargeItems,
        watch: Watch,
        queued: dict[str, deque[int]],
        waiting: deque[Waiting],
    ) -> None:
        self.items, self.settings = items, settings
        self.budget, self.seats, self.large, self.watch = budget, seats, large, watch
        self.queued = queued
        self.waiting = waiting
        self.hopping: dict[int, str] = {}  # item -> where its probe or refresh waits for room
        self.limit = settings.limit_rate

    def wait(self, waiting: Waiting) -> None:
        """An item waits for lanes (after the ones waiting already)."""
        self.waiting.append(waiting)

    def hop(self, index: int, host: str) -> None:
        """Item ``index``'s probe (or refresh) goes on at ``host`` once it has room there
        (``hops``)."""
        self.hopping[index] = host

    def ended(self, index: int) -> None:
        """Item ``index``'s child has ended: its lanes are free."""
        self.hopping.pop(index, None)
        self.budget.finish(index)

    def hops(self) -> None:
        """Let each large item whose probe or refresh a redirect leads to another host go on
        there (``("hop", host)``), once that host has room: its grant moves there (holding
        nothing meanwhile), before anything new starts, as a seat's does (``Seats.hops``)."""
        for index, host in list(self.hopping.items()):
            leave = self._room_for(host, self.budget.wanted(index))
            if self.budget.move(index, host, leave=leave):
                del self.hopping[index]
                self.share()  # its lanes there in its slot before its lanes open
                self.large.go(index)

    def start(self) -> None:
        """Fork each waiting item the budget grants lanes now, in the order they came."""
        for waiting in list(self.waiting):
            item = self.items[waiting.item]
            settings = settings_for(self.settings, item)
            lanes = wanted(item, waiting.remote, settings)
            leave = self._room_for(waiting.host, lanes)
            granted = self.budget.grant(waiting.item, waiting.host, lanes, leave=leave)
            if granted:
                self.waiting.remove(waiting)
                self._fork(waiting, dataclasses.replace(settings, connections=lanes))

    def more(self) -> None:
        """Nothing waits: the running items get the lanes ended items left."""
        for index in self.budget.wants_more():
            self._drop(self.budget.host_of(index), self.settings.connections)
            self.budget.more(index)

    def share(self) -> None:
        """Write what each running thing may use now: the seats' and the items' share of the
        rate limit, and the items' lanes."""
        seats, items = self.budget.rates(self.limit)
        self.seats.cap(seats)
        self.large.share(items, self.budget.granted)

    def _room_for(self, host: str, lanes: int) -> int:
        """Make room at ``host`` for a large item that could keep ``lanes`` busy, and say
        how much of it to leave to the items queued for seats. Kept connections make room;
        while items are queued, just enough for one lane (they would use those connections
        next), and what the seats they need would hold is left to them (the lanes they free
        are granted to it later)."""
        queued = sum(map(len, self.queued.values()))
        self._drop(host, 1 if queued else lanes)
        return min(queued, self.budget.seats)

    def _drop(self, host: str, need: int) -> None:
        """Let idle seats' kept connections go, to make room for ``need`` more to ``host``."""
        if self.budget.free(host) >= need or self.seats.pool is None:
            return
        for seat in self.budget.droppable(host, need):
            self.seats.drop(seat)

    def _fork(self, waiting: Waiting, settings: Settings) -> None:
        """A child for a large item, its lanes and rate in its slot before it starts."""
        self.share()
        _, rates = self.budget.rates(self.limit)
        item = self.items[waiting.item]  # named by now, if it is to be named
        rate, lanes = rates.get(waiting.item), self.budget.granted(waiting.item)
        running = self.large.start(waiting.item, item, waiting.remote, settings, rate, lanes)
        self.watch.item(waiting.item, running.conn)
