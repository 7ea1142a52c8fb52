"""How much of its range a lane asks for in one request. Pure: no I/O, no clock.

A worker asks for its range in chunks over one keep-alive connection (as aria2c and
hf_transfer do) and publishes each request's end in the counter table. A steal then takes
effect at a chunk boundary: the victim is never asked to drop bytes the server is already
sending, so each byte crosses the wire once. The first chunk is small (the lane's rate is
unknown); later ones hold about ``TARGET_SECONDS`` of the lane's measured rate, growing at
most twofold, so requests stay few on fat links (measured: 1 s chunks, or chunks of at most
half of what is left, cost more CPU and requests for no faster tail).
"""

from __future__ import annotations

TARGET_SECONDS = 2.0  # a chunk's length in seconds of the lane's own rate
MAX_CHUNK = 64 * 1024 * 1024  # bytes; past this a request's overhead is already nothing


def next_chunk(previous: int, rate: float, left: int, first: int) -> int:
    """Bytes to ask for next: ``previous`` is the last chunk (0: none yet), ``rate`` the
    lane's rate over it (bytes/s), ``left`` the bytes up to the lane's end, ``first`` the
    smallest chunk (also the first one)."""
    if previous <= 0:
        return max(1, min(first, left))
    size = min(int(rate * TARGET_SECONDS), 2 * previous, MAX_CHUNK)
    return max(1, min(max(size, first), left))
