"""Rates for progress and stealing: each lane's smoothed rate, the download's recent rate.

Pure arithmetic over samples the coordinator takes of the counter table; no I/O, no clock
of its own (every function is given ``now``).
"""

from __future__ import annotations

from collections import deque

WINDOW = 5.0  # seconds of samples behind the reported rate
BEST_DECAY = 0.8  # per sample: the best lane's rate is forgotten slowly when lanes end


def smoothed(rate: float, moved: int, seconds: float, first: bool) -> float:
    """A lane's rate after a sample in which it moved ``moved`` bytes in ``seconds``:
    the first sample of an attempt is taken as it is, later ones are averaged in."""
    current = moved / seconds
    return current if first else 0.5 * rate + 0.5 * current


class RateWindow:
    """The download's rate over the last ``WINDOW`` seconds of samples."""

    def __init__(self, now: float, done: int) -> None:
        self._samples: deque[tuple[float, int]] = deque([(now, done)])

    def rate(self, now: float, done: int) -> float:
        """Record ``done`` bytes at ``now``; the rate since the oldest sample kept."""
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > WINDOW:
            self._samples.popleft()
        then, before = self._samples[0]
        return (done - before) / (now - then) if now > then else 0.0
