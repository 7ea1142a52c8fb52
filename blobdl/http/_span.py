"""A half-open byte range: what a part covers and what a Range request asks for."""

from __future__ import annotations

from typing import NamedTuple


class Span(NamedTuple):
    """A half-open byte range ``[start, end)``."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start
