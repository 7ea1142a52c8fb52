"""How much of its range a lane asks for in one request. Pure: no I/O, no clock.

A worker asks for its range in chunks over one keep-alive connection (as aria2c and
hf_transfer do) and publishes each request's end in the counter table. A steal then takes
effect at a chunk boundary: the victim is never asked to drop bytes the server is already
sending, so each byte crosses the wire once. The first chunk is small (the lane's rate is
unknown); later ones hold about ``TARGET_SECONDS`` of the lane's measured rate, growing at
most twofold, so requests stay few on fat links (measured: 1 s chunks, or chunks of at most
half of what is left, cost more CPU and requests for no faster tail).

Each request also has an overhead: the time from sending it to its status line (a round
trip, plus whatever the server does before it answers), while the connection carries
nothing. Where ``1 / OVERHEAD_SHARE`` times the overhead of the lane's previous request is
longer than the 2 s target, a chunk holds that many seconds of the lane's rate instead, and
a remainder shorter than that is asked for with it, not on its own; but only once the
lane's rate was measured over at least as long as that overhead. At 50 ms to the status
line a chunk holds at least 5 s. On loopback the overhead is about a millisecond and nothing
changes. The trade: behind a slow-to-answer server, a steal may wait longer for a victim's
request to end (measured, 2 GiB at 16 × 20 MiB/s, 50 ms to the status line: six requests per
lane cost 0.3 s of the 6.4 s ideal, two cost 0.05 s).
"""

from __future__ import annotations

TARGET_SECONDS = 2.0  # a chunk's length in seconds of the lane's own rate
MAX_CHUNK = 64 * 1024 * 1024  # bytes; past this a request's overhead is usually nothing
OVERHEAD_SHARE = 0.01  # the most of a chunk's time its request's overhead may take


def next_chunk(previous: int, rate: float, left: int, first: int, overhead: float = 0.0) -> int:
    """Bytes to ask for next: ``previous`` is the last chunk (0: none yet), ``rate`` the
    lane's rate over its body (bytes/s), ``left`` the bytes up to the lane's end, ``first``
    the smallest chunk (also the first one), ``overhead`` the seconds the previous request
    took to its first byte."""
    if previous <= 0:
        return max(1, min(first, left))
    size = max(min(int(rate * TARGET_SECONDS), 2 * previous, MAX_CHUNK), first)
    seconds = overhead / OVERHEAD_SHARE
    # A slow-to-answer server: fewer, longer requests. Only on a rate measured over at least
    # as long as the overhead: a small chunk read out of socket buffers in a few ms says
    # nothing of the link (and a lane that asked for all of its range could not be split).
    if seconds > TARGET_SECONDS and previous >= rate * overhead:
        floor = int(rate * seconds)
        size = max(size, floor)
        if left - size < floor:  # what would be left is too short for a request of its own
            size = left
    return max(1, min(size, left))
