"""How an item's task takes its connections from the cluster-wide budget
(``_cluster_budget``): the rule for pairs of leases, with a counter standing for a Dask
semaphore (the semaphores themselves are pinned at the server, in test_cluster)."""

from __future__ import annotations

from blobdl.batch._cluster_budget import _take_pair


class Leases:
    """A semaphore's free leases: ``acquire(timeout=0)`` takes one only if one is free."""

    def __init__(self, free: int) -> None:
        self.free = free

    def acquire(self, timeout: float | None = None) -> bool:
        if self.free == 0:
            return False
        self.free -= 1
        return True

    def release(self) -> None:
        self.free += 1


def test_a_further_connection_takes_a_lease_of_its_host_and_one_of_the_batch() -> None:
    host, everyone, held = Leases(2), Leases(2), []
    assert _take_pair((host, everyone), held)
    assert (host.free, everyone.free) == (1, 1)
    assert held == [host, everyone]


def test_a_host_lease_without_a_batch_lease_is_given_back_at_once() -> None:
    # Kept, it would be a connection of that host nobody uses while the item runs, and
    # another item of the host would wait for it.
    host, everyone, held = Leases(1), Leases(0), []
    assert not _take_pair((host, everyone), held)
    assert (host.free, everyone.free, held) == (1, 0, [])
