"""The scheduler's decisions about sizes (pure, but for ``seats_that_fit``, which reads the
open-file limit): each item's settings, which items skip the seats, how many lanes a large
item can keep busy, and how large the pool is."""

from __future__ import annotations

import dataclasses
import os
import resource

from ..config import Settings
from ..engine._plan import one_request, useful_lanes
from ..http._remote import Remote
from ._items import Item

# A batch of this many items or fewer gets one pool process (a model's config and template
# beside its large layer, say). Measured: with 5 items, the 512 MiB one is 1.035x a plain
# download with one, 1.060x with two; with 3,000 small items, one is 1.4x slower than two.
FEW = 8
# Descriptors one seat holds at once: its socket, its splice pipe (two), its item's
# temporary and lock files, its pipe to the scheduler (measured: 4.5 a seat), rounded up.
SEAT_FILES = 6
# A pool process's own, besides what it inherits: its control pipe, its sentinel, logging.
POOL_FILES = 16


def within_limit(limit: int | None, max_connections: int, per_host: int) -> tuple[int, int]:
    """The batch's connections (and those to one host) under a rate limit of ``limit``
    bytes/s: at most one per byte a second. Each running connection is given at least one
    byte a second of the limit, so more of them would take more than the limit together
    (four seats at a 2 B/s limit took 4 B/s)."""
    if limit is None:
        return max_connections, per_host
    return min(max_connections, limit), min(per_host, limit)


def settings_for(settings: Settings, item: Item) -> Settings:
    """The batch's settings, with the item's own headers: one the item names replaces the
    batch's of that name, in any letter case (both went out, and the server picked one)."""
    if not item.headers:
        return settings
    named = {name.lower() for name, _ in item.headers}
    kept = tuple(header for header in settings.headers if header[0].lower() not in named)
    return dataclasses.replace(settings, headers=kept + item.headers)


def said_large(item: Item, settings: Settings) -> bool:
    """An item whose caller says it is larger than one request skips the seats: its own
    child probes it at once (unless it is to be named after the probe: a seat's probe,
    of one byte, gives the batch the name to check). ``settings``: the item's own."""
    if item.size is None or item.size <= one_request(settings):
        return False
    return item.path is not None


def wanted(item: Item, remote: Remote | None, settings: Settings) -> int:
    """Lanes a large item can keep busy: by what its probe learned, or by its size."""
    hashing = item.digest is not None
    if remote is None:
        return useful_lanes(item.size, True, settings, hashing=hashing)
    return useful_lanes(remote.size, remote.ranges, settings, hashing=hashing)


def pool_size(
    settings: Settings,
    max_connections: int,
    per_host: int,
    queued: dict[str, int],
    room: int | None = None,
) -> tuple[int, int]:
    """The pool's seats and processes, for ``queued`` items per host. ``room``: the seats
    one process can hold within the open-file limit (``seats_that_fit``; None: no limit),
    so that more processes share them instead of their items failing for descriptors."""
    waiting = sum(queued.values())
    seats = min(max_connections, per_host * len(queued), waiting)
    processes = settings.worker_processes(max(1, seats))
    if waiting <= FEW:
        processes = 1  # a second process would cost more (its fork) than it brings
    if room is not None:
        processes = max(processes, min(seats, -(-seats // max(1, room))))
    return seats, processes


def seats_that_fit() -> int | None:
    """The seats a pool process can hold within the soft open-file limit, beside what it
    inherits from this process (None: no limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        inherited = len(os.listdir("/proc/self/fd"))
    except OSError:
        inherited = 0
    return max(1, (soft - inherited - POOL_FILES) // SEAT_FILES)
