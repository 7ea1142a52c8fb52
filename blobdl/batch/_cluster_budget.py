"""The connection budget of a batch on a Dask cluster, held across every worker at once.

One ``distributed.Semaphore`` lease is one connection: a semaphore of ``max_connections``
leases for the whole batch, and one of ``per_host`` leases for each host, named after the
batch, so every worker's tasks draw on the same counts (the scheduler keeps them). An item
takes one lease of its host, then one of the batch (blocking: the probe is a connection
too), then as many more pairs as it can use without waiting; it holds them while it runs,
and takes more as they come free (``Held.grow``), so that what finished items give back goes
to the items still running.

Deadlock-free by order: a task waiting holds at most one host lease and no batch lease, so
every batch lease is held by a task that is running, which will give it back.

A worker that dies does not give its leases back: they expire when its refreshes stop,
after the scheduler's ``distributed.scheduler.locks.lease-timeout`` (30 s by default) and up
to one ``lease-validation-interval`` more. Meanwhile the budget is that much smaller, never
larger: the dead worker's connections are gone, so the server sees fewer, not more.

Each question to the scheduler is given the stall timeout (``_cluster_later``): Dask's own
calls would wait for a stopped scheduler for ever. A running item asks for more leases in
the background and never waits for the answer, so its download goes on while the scheduler
is silent. A lease the scheduler grants after its question was given up is not refreshed,
and expires as a dead worker's does.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from ._cluster_ask import on_scheduler
from ._cluster_connect import dask
from ._cluster_later import answer, later

#: How often a task waiting for a lease looks whether it should stop instead (seconds).
WAIT_SLICE = 0.5


class Budget(NamedTuple):
    """A batch's budget, as its tasks carry it to the workers."""

    run: str  # the batch's unique name: its semaphores are named after it
    connections: int  # leases of the whole batch (max_connections)
    per_host: int  # leases of each host
    # The most leases its downloads can hold at once (``most_held``): ``--limit-rate`` is
    # shared among those, so the connections no item can take do not thin every share.
    held_at_most: int

    def everyone(self) -> str:
        return f"blobdl-{self.run}-connections"

    def host(self, host: str) -> str:
        # Hashed: a host name is the server's or the user's text, a semaphore name is ours.
        return f"blobdl-{self.run}-host-{hashlib.sha256(host.encode()).hexdigest()[:16]}"


def most_held(budget: Budget, wanted: Iterable[tuple[str, int]]) -> int:
    """The most leases a batch's downloads can hold at once, ``wanted`` being each item's
    host and the connections it can use: each host's items hold at most ``per_host``, and
    the batch at most ``connections``."""
    by_host: dict[str, int] = {}
    for host, count in wanted:
        by_host[host] = by_host.get(host, 0) + count
    held = sum(min(budget.per_host, count) for count in by_host.values())
    return max(1, min(budget.connections, held))


class Held:
    """The leases an item holds: one pair (its host's and the batch's) per connection."""

    def __init__(self, pair: tuple[Any, Any], within: float) -> None:
        self.pair, self.within = pair, within
        self.leases: list[Any] = []
        self.taking: concurrent.futures.Future[bool] | None = None  # asked, not yet read

    @property
    def granted(self) -> int:
        return len(self.leases) // 2

    def grow_now(self) -> bool:
        """One more connection, if a pair is free now (waits for the scheduler's answer,
        within ``within``: before the download starts)."""
        try:
            took = answer(self.pair[0].loop, lambda: _take_pair(self.pair), self.within)
        except Exception:  # the scheduler silent: the item goes on with what it holds
            return False
        return self._took(took)

    def grow(self) -> bool:
        """One more connection, if the last question found a pair free; never waits: the
        question goes out in the background, and again as soon as one found none."""
        taking = self.taking
        if taking is not None and not taking.done():
            return False
        self.taking = None
        if taking is not None and taking.exception() is None and self._took(taking.result()):
            return True
        self.taking = later(self.pair[0].loop, lambda: _take_pair(self.pair), self.within)
        return False

    def settle(self) -> None:
        """A question still out is given up (a pair it took meanwhile is counted)."""
        taking, self.taking = self.taking, None
        if taking is None:
            return
        if taking.done() and taking.exception() is None:
            self._took(taking.result())
        else:
            taking.cancel()

    def _took(self, took: bool) -> bool:
        if took:
            self.leases += list(self.pair)
        return took


@contextlib.contextmanager
def leases(
    budget: Budget, host: str, wanted: int, stop: Callable[[], None], within: float
) -> Iterator[Held]:
    """Hold between 1 and ``wanted`` connections to ``host`` (``Held.granted``).

    Waits for the first one (``stop()`` is called between waits: it raises ``Stopped``);
    takes the others only if they are free now; ``Held.grow`` takes more later. Each
    question to the scheduler is given ``within`` seconds."""
    distributed = dask()
    pair = (
        distributed.Semaphore(max_leases=budget.per_host, name=budget.host(host)),
        distributed.Semaphore(max_leases=budget.connections, name=budget.everyone()),
    )
    held = Held(pair, within)
    try:
        for semaphore in pair:
            _wait_for(semaphore, stop, within)
            held.leases.append(semaphore)
        while held.granted < wanted and held.grow_now():
            pass
        yield held
    finally:
        held.settle()
        for semaphore in reversed(held.leases):
            with contextlib.suppress(Exception):  # the scheduler gone: the leases expire there
                answer(semaphore.loop, functools.partial(_release, semaphore), within)
        for semaphore in pair:
            _retire(semaphore)


def _retire(semaphore: Any) -> None:
    """Stop the object's lease refresher. Dask stops it only when the object is collected,
    which the running refresher itself prevents: every task would leave two timers behind
    on its worker's event loop, for as long as the worker lives."""
    refresher = getattr(semaphore, "refresh_callback", None)  # none with lease-timeout: inf
    if refresher is not None:
        with contextlib.suppress(Exception):  # the worker closing: its loop with it
            semaphore.loop.add_callback(refresher.stop)  # the loop's own thread stops it


def _wait_for(semaphore: Any, stop: Callable[[], None], within: float) -> None:
    while not _acquired(semaphore, within):
        stop()


def _acquired(semaphore: Any, within: float) -> bool:
    """A lease, if one comes within ``WAIT_SLICE`` (and the scheduler answers)."""
    try:
        took: bool = answer(
            semaphore.loop, lambda: semaphore._acquire(timeout=WAIT_SLICE), WAIT_SLICE + within
        )
    except TimeoutError:
        return False
    return took


# Dask's Semaphore keeps the ids of the leases it holds (``_leases``, refreshed while held)
# and asks the scheduler in coroutines (``_acquire``, ``_release``); its public methods are
# those coroutines run and waited for on the caller's thread, without a bound.


async def _take_pair(pair: tuple[Any, Any]) -> bool:
    """One more lease of the host and of the batch, if both are free now (a host lease
    without its batch lease is given back: kept, another item of the host would wait for a
    connection nobody uses)."""
    host, everyone = pair
    if not await host._acquire(timeout=0):
        return False
    try:
        if await everyone._acquire(timeout=0):
            return True
    except BaseException:  # given up: the host lease is no more refreshed, and expires
        host._leases.pop()
        raise
    await _release(host)
    return False


async def _release(semaphore: Any) -> None:
    """Give back the newest lease ``semaphore`` holds (they are alike)."""
    await semaphore._release(semaphore._leases.pop())


def close(client: Any, budget: Budget, hosts: set[str], *, within: float) -> None:
    """Drop the batch's semaphores from the scheduler (a long-lived cluster keeps them),
    each asked within ``within`` seconds: a ClusterError naming a scheduler that does not
    answer (the others are not asked)."""
    if client.status != "running":
        return  # the scheduler is gone, and its semaphores with it
    names = [budget.everyone(), *(budget.host(h) for h in hosts)]
    for name in names:
        on_scheduler(client, "semaphore_close", within=within, name=name)
