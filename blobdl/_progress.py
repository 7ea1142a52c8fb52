"""Progress records handed to ``on_progress`` callbacks (small, immutable)."""

from __future__ import annotations

from typing import NamedTuple


class PartProgress(NamedTuple):
    part: int  # the part's slot in the counter table
    start: int  # first byte of the part
    end: int  # one past its last byte (-1 while the size is unknown)
    done: int  # bytes of the part on disk
    state: str  # "pending", "running", "waiting" (backing off) or "done"
    attempts: int  # requests started for this part so far


class Progress(NamedTuple):
    done: int  # bytes of the blob on disk
    total: int | None  # the blob's size (None: the server did not say)
    rate: float  # bytes per second over the last few seconds
    elapsed: float  # seconds since the parts started
    active: int  # parts with a worker running now
    retries: int  # failed attempts retried so far, all parts
    parts: tuple[PartProgress, ...]
