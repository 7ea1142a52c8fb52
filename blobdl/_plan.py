"""Pure range arithmetic: how many parts, and where each starts and ends. No I/O here."""

from __future__ import annotations

import itertools
from typing import NamedTuple

from .config import Settings


class Span(NamedTuple):
    """A half-open byte range ``[start, end)``."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def plan(size: int, settings: Settings) -> list[Span]:
    """Split ``[0, size)`` into parts.

    By default Ollama's plan: part size = size / target_parts clamped to
    [min_part_size, max_part_size]; every part has that size but the last, which is
    smaller or equal. With ``settings.parts`` the blob is cut into that many near-equal
    parts instead (fewer only if the blob has fewer bytes than parts).
    """
    if size < 0:
        raise ValueError(f"negative size {size}")
    if size == 0:
        return []
    if settings.parts is not None:
        count = min(settings.parts, size)
        cuts = [i * size // count for i in range(count + 1)]
        return [Span(a, b) for a, b in itertools.pairwise(cuts)]
    step = part_size(size, settings)
    return [Span(start, min(start + step, size)) for start in range(0, size, step)]


def part_count(size: int, settings: Settings) -> int:
    """``len(plan(size, settings))``, computed: a server-supplied size may be 2**62."""
    if size <= 0:
        return 0
    if settings.parts is not None:
        return min(settings.parts, size)
    return -(-size // part_size(size, settings))


def part_size(size: int, settings: Settings) -> int:
    """Ollama's part size: size / target_parts, clamped to the configured bounds."""
    return max(settings.min_part_size, min(settings.max_part_size, size // settings.target_parts))
