"""Which items of a batch start first on a cluster (``_cluster_order``, pure)."""

from __future__ import annotations

from blobdl.batch._cluster_order import Sized, start_order


def test_large_items_start_first() -> None:
    items = [Sized(0, "a", 10), Sized(1, "b", 300), Sized(2, "c", None), Sized(3, "d", 20)]
    assert start_order(items) == [1, 3, 0, 2]


def test_one_hosts_items_are_interleaved_with_the_others() -> None:
    slow = [Sized(n, "slow", 100 - n) for n in range(4)]
    fast = [Sized(4 + n, "fast", 50 - n) for n in range(2)]
    order = start_order(slow + fast)
    assert order == [0, 4, 1, 5, 2, 3]  # each host's largest, then each one's next


def test_every_item_appears_once_and_ties_keep_the_callers_order() -> None:
    items = [Sized(n, f"h{n % 3}", 7) for n in range(9)]
    order = start_order(items)
    assert sorted(order) == list(range(9))
    assert order[:3] == [0, 1, 2]
