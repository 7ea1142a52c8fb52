"""In which order a batch's items start on a cluster (pure).

Large items first, since the longest download decides when the batch ends; and one host's
items interleaved with the others', so that the items handed to the workers side by side
come from different hosts and no worker ends up holding all of a slow host's work: each
host's largest item, the largest of those first, then each host's second largest, and so on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Sized(NamedTuple):
    place: int  # the item's place in the batch
    host: str  # the host its connections count against
    size: int | None  # None: unknown (no length, or a cache hit)


def start_order(items: Sequence[Sized]) -> list[int]:
    """The items' indices in the order they should start."""
    by_host: dict[str, list[Sized]] = {}
    for item in items:
        by_host.setdefault(item.host, []).append(item)
    ranked = []
    for group in by_host.values():
        group.sort(key=_largest_first)
        ranked += [(round_, _largest_first(item), item.place) for round_, item in enumerate(group)]
    return [index for _, _, index in sorted(ranked)]


def _largest_first(item: Sized) -> tuple[int, int]:
    return (-(item.size or 0), item.place)
