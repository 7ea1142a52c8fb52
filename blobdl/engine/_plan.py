"""Pure range arithmetic: how many parts, and where each starts and ends. No I/O here."""

from __future__ import annotations

import dataclasses
import itertools

from ..config import MAX_PARTS, Settings
from ..http._span import Span
from ..store._resume import PartRecord, State, coalesced

# sha256 is sequential: the hasher can only follow the on-disk prefix. Parts that all finish
# at once leave the whole blob to hash after the last byte; more parts than connections
# finish roughly in order, so hashing keeps up (measured: +18 % -> +4 % wall for 2 GiB).
HASHING_PARTS_PER_CONNECTION = 4
STEAL_SLOTS_PER_CONNECTION = 32  # room in the table for the slots that steals create


def download_parts(
    size: int | None, ranges: bool, settings: Settings, *, hashing: bool
) -> list[Span]:
    """The parts of one download, single or batch item alike. Without proven range
    support or a known size it is one stream: ``[0, size)``, or ``[0, -1)`` until EOF."""
    if not ranges or size is None:
        return [Span(0, -1 if size is None else size)]
    return plan(size, _shaped(settings, hashing))


def download_part_count(
    size: int | None, ranges: bool, settings: Settings, *, hashing: bool
) -> int:
    """``len(download_parts(...))``, computed: a server-supplied size may be 2**62."""
    if not ranges or size is None:
        return 1
    return part_count(size, _shaped(settings, hashing))


def one_request(settings: Settings) -> int:
    """The largest blob a download fetches with a single request, so the batch fetches it
    whole with its first GET (its probe): planned as one part, and smaller than a lane's
    first request, which no steal splits (0: none, ``parts`` forces several)."""
    if settings.parts is not None and settings.parts > 1:
        return 0
    first = settings.min_steal_size if settings.steal else settings.min_part_size
    return min(settings.min_part_size, first)


def resumed_parts(previous: State, settings: Settings, *, hashing: bool) -> tuple[PartRecord, ...]:
    """A record's parts as a rerun takes them: no more than a fresh run of ``settings``
    could have had (its plan, and a table's room for steals), so that a record of a blob's
    worth of tiny parts is not a request each; finished parts fold into their neighbours."""
    planned = download_part_count(previous.size, True, settings, hashing=hashing)
    most = planned + STEAL_SLOTS_PER_CONNECTION * settings.connections
    return coalesced(previous.parts, most)


def useful_lanes(size: int | None, ranges: bool, settings: Settings, *, hashing: bool) -> int:
    """Lanes a download can keep busy, up to its ``connections``: one per part, and, where
    idle lanes steal, one per ``min_steal_size`` of the blob (a steal splits off no less)."""
    parts = download_part_count(size, ranges, settings, hashing=hashing)
    if ranges and size is not None and settings.steal:
        parts = max(parts, size // settings.min_steal_size)
    return max(1, min(parts, settings.connections))


def _shaped(settings: Settings, hashing: bool) -> Settings:
    """The settings a plan is cut with: a download that is hashed gets more parts."""
    target = HASHING_PARTS_PER_CONNECTION * settings.connections
    if not hashing or settings.target_parts >= target:
        return settings
    return dataclasses.replace(settings, target_parts=target)


def plan(size: int, settings: Settings) -> list[Span]:
    """Split ``[0, size)`` into parts.

    By default Ollama's plan: part size = size / target_parts clamped to
    [min_part_size, max_part_size]; every part has that size but the last, which is
    smaller or equal. With ``settings.parts`` the blob is cut into that many near-equal
    parts instead (fewer only if the blob has fewer bytes than parts). Never more than
    ``MAX_PARTS``: a size plan that would cut more gets larger parts than its maximum.
    """
    if size < 0:
        raise ValueError(f"negative size {size}")
    if size == 0:
        return []
    if settings.parts is not None:
        count = min(settings.parts, size, MAX_PARTS)
        cuts = [i * size // count for i in range(count + 1)]
        return [Span(a, b) for a, b in itertools.pairwise(cuts)]
    step = part_size(size, settings)
    return [Span(start, min(start + step, size)) for start in range(0, size, step)]


def part_count(size: int, settings: Settings) -> int:
    """``len(plan(size, settings))``, computed: a server-supplied size may be 2**62."""
    if size <= 0:
        return 0
    if settings.parts is not None:
        return min(settings.parts, size, MAX_PARTS)
    return -(-size // part_size(size, settings))


def part_size(size: int, settings: Settings) -> int:
    """Ollama's part size: size / target_parts, clamped to the configured bounds, and large
    enough that there are at most ``MAX_PARTS`` parts."""
    ollama = max(settings.min_part_size, min(settings.max_part_size, size // settings.target_parts))
    return max(ollama, -(-size // MAX_PARTS))
