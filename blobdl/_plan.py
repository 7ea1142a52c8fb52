"""Pure range arithmetic: parts, Range and Content-Range text, backoff. No I/O here."""

from __future__ import annotations

import itertools
import random
import re
from typing import NamedTuple

from .config import MAX_BYTES, Settings


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


def range_header(start: int, end: int) -> str:
    """The ``Range`` value asking for ``[start, end)``."""
    return f"bytes={start}-{end - 1}"


# At most 19 ASCII digits: every offset fits an int64 (MAX_BYTES), and int() stays cheap.
_CONTENT_RANGE = re.compile(
    r"^[ \t]*bytes[ \t]+(?:([0-9]{1,19})-([0-9]{1,19})|\*)/([0-9]{1,19}|\*)[ \t]*$", re.IGNORECASE
)


class ContentRange(NamedTuple):
    """A parsed ``Content-Range``: ``span`` is None for ``bytes */total``."""

    span: Span | None
    total: int | None


def parse_content_range(text: str) -> ContentRange | None:
    """Parse ``bytes a-b/total`` (``b`` inclusive); None when malformed."""
    match = _CONTENT_RANGE.match(text)
    if not match:
        return None
    first, last, total_text = match.groups()
    total = None if total_text == "*" else int(total_text)
    if total is not None and total > MAX_BYTES:
        return None
    if first is None:
        return ContentRange(None, total)
    span = Span(int(first), int(last) + 1)
    if span.end <= span.start or span.end > (MAX_BYTES if total is None else total):
        return None
    return ContentRange(span, total)


def backoff_delay(attempt: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds to sleep before retry number ``attempt`` (1-based), Ollama's schedule:
    ``min(attempt**2 * unit, max_backoff) * uniform(0.5, 1.5)``."""
    base = min(attempt * attempt * settings.backoff_unit, settings.max_backoff)
    return base * (rng or random).uniform(0.5, 1.5)
