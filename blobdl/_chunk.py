"""How much of its range a lane asks for in one request. Pure: no I/O, no clock.

A worker asks for its range in chunks over one keep-alive connection (as aria2c and
hf_transfer do) and publishes each request's end in the counter table. A steal then takes
effect at a chunk boundary: the victim is never asked to drop bytes the server is already
sending, so each byte crosses the wire once. The first chunk is small (the lane's rate is
unknown); later ones hold about ``TARGET_SECONDS`` of the lane's measured rate, so requests
stay few on fat links, growing at most twofold and never beyond half of what the lane has
left (its last bytes stay in small chunks, which keeps the tail splittable).
"""

from __future__ import annotations

TARGET_SECONDS = 1.0  # a chunk's length in seconds of the lane's own rate
MAX_CHUNK = 64 * 1024 * 1024  # bytes; past this a request's overhead is already nothing


def next_chunk(previous: int, rate: float, left: int, first: int) -> int:
    """Bytes to ask for next: ``previous`` is the last chunk (0: none yet), ``rate`` the
    lane's rate over it (bytes/s), ``left`` the bytes up to the lane's end, ``first`` the
    smallest chunk (also the first one)."""
    if previous <= 0:
        return max(1, min(first, left))
    size = min(int(rate * TARGET_SECONDS), 2 * previous, left // 2, MAX_CHUNK)
    return max(1, min(max(size, first), left))
