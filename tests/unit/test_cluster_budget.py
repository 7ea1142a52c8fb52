"""How an item's task takes its connections from the cluster-wide budget
(``_cluster_budget``): the rule for pairs of leases, with a counter standing for a Dask
semaphore (the semaphores themselves are pinned at the server, in test_cluster)."""

from __future__ import annotations

import asyncio

import pytest

from blobdl.batch._cluster_budget import _take_pair


class Leases:
    """A semaphore's free leases, asked as Dask's ``Semaphore`` asks its scheduler: its
    coroutine ``_acquire(timeout=0)`` takes one only if one is free, and keeps its id in
    ``_leases`` (refreshed while there); ``_release`` gives one back."""

    def __init__(self, free: int, *, silent: bool = False) -> None:
        self.free, self.silent = free, silent
        self._leases: list[str] = []

    async def _acquire(self, timeout: float | None = None) -> bool:
        if self.silent:  # a scheduler stopped: no answer
            await asyncio.Event().wait()
        if self.free == 0:
            return False
        self.free -= 1
        self._leases.append(f"lease-{len(self._leases)}")
        return True

    async def _release(self, lease_id: str) -> bool:
        self.free += 1
        return True


def test_a_further_connection_takes_a_lease_of_its_host_and_one_of_the_batch() -> None:
    host, everyone = Leases(2), Leases(2)
    assert asyncio.run(_take_pair((host, everyone)))
    assert (host.free, everyone.free) == (1, 1)
    assert (len(host._leases), len(everyone._leases)) == (1, 1)


def test_a_host_lease_without_a_batch_lease_is_given_back_at_once() -> None:
    # Kept, it would be a connection of that host nobody uses while the item runs, and
    # another item of the host would wait for it.
    host, everyone = Leases(1), Leases(0)
    assert not asyncio.run(_take_pair((host, everyone)))
    assert (host.free, everyone.free, host._leases) == (1, 0, [])


def test_a_further_connection_given_up_unanswered_keeps_no_host_lease_alive() -> None:
    # The scheduler silent as the batch's lease is asked: the question is given up (the
    # stall timeout), and the host lease is no longer refreshed, so it expires there.
    host, everyone = Leases(1), Leases(1, silent=True)

    async def given_up() -> bool:
        return await asyncio.wait_for(_take_pair((host, everyone)), 0.01)

    with pytest.raises(TimeoutError):
        asyncio.run(given_up())
    assert host._leases == []
