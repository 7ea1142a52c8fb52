"""How fast things move: one attempt's pace, the best lane's rate, the download's rate.

Every rate the coordinator acts on is computed here, from counts it samples off the
counter table: the steal's yardsticks and the lag verdict's from the bytes each lane
received (a lane inside a long chunk moves, though none of the chunk counts as done until
its end is checked), the progress report's from the bytes done. Pure
arithmetic; no I/O, no clock of its own (every method is given ``now``).
"""

from __future__ import annotations

from collections import deque

WINDOW = 5.0  # seconds of samples behind the reported rate
BEST_DECAY = 0.8  # per progress report: the best lane's rate is forgotten slowly when lanes end
# A lane's recent rate (what the lag verdict compares with its peers') is taken over this
# window, not a single sample, so a bursty server's pauses do not look like lag (measured,
# silent lane at 256 MiB: 0.15 s 1.04-1.07x the plain case, 0.2 s 1.09-1.11x).
LAG_WINDOW = 0.15
# A lane's steady rate (whether the running lanes fill a rate limit, ``_steal.more_lanes``)
# is taken over this window: paced reads come a buffer at a time (1 MiB: 30 ms at 33 MB/s),
# so a shorter one reads a lane at its cap as 20 % above or below it.
STEADY_WINDOW = 1.0


class Pace:
    """How fast one attempt at a part moves, measured from the slot's count of bytes received
    (``received``: a count that only grows, checked bytes or not), sampled while it runs.

    Four rates, each for its own question: ``rate`` (smoothed over samples) is the lane
    slow next to the best one?; ``recent`` (over the last ``LAG_WINDOW``) is it far below its
    peers?; ``request_rate`` (its current request's body) how long will that request run?;
    ``steady`` (over the last ``STEADY_WINDOW``) do the lanes fill a rate limit? And over
    that window too, ``sleeping``: the share of its time it slept to stay under its cap,
    from the slot's count of microseconds slept (``slept``, a count that only grows); both
    from the attempt's first bytes at the earliest (``measured``).
    """

    def __init__(self, now: float, received: int, slept: int = 0) -> None:
        self.started, self.origin = now, received  # when the attempt started, the count then
        self.received, self.moved_at = received, now  # at the last sample; when it last grew
        self.rate = 0.0  # bytes/s, smoothed over samples
        self.recent = 0.0  # bytes/s over the last LAG_WINDOW seconds
        self._sampled_at = now  # when ``rate`` was last updated
        self._history: deque[tuple[float, int]] = deque([(now, received)])  # samples
        self._steady: deque[tuple[float, int, int]] = deque([(now, received, slept)])
        self.steady = 0.0  # bytes/s over the last STEADY_WINDOW seconds
        self.sleeping = 0.0  # the share of those seconds it slept for its cap
        self._request_end = -1  # the current request's end (``asked``) as last seen; -1: none
        self._body_at = -1.0  # when a sample first saw that request's bytes; -1: not yet
        self._body_received = 0  # the count at the request's first sample, then at ``_body_at``

    def age(self, now: float) -> float:
        """Seconds since the attempt started."""
        return now - self.started

    def quiet(self, now: float) -> float:
        """Seconds since the count last grew (or the attempt started)."""
        return now - self.moved_at

    def observe(self, now: float, received: int, asked: int, slept: int = 0) -> None:
        """A sample: the lane has received ``received`` bytes by ``now`` and slept ``slept``
        µs for its cap in all; its current request ends at ``asked``."""
        self._smooth(now, received)
        self._time_request(now, received, asked)
        self._slide(now, received)
        self._settle(now, received, slept)
        if received != self.received:
            self.received, self.moved_at = received, now

    def awaiting(self) -> bool:
        """Whether the current request (or the attempt, before any) has shown no byte yet."""
        return self._body_at < 0

    def request_rate(self, now: float, received: int, settle: float) -> float:
        """Bytes/s of the current request's body since a sample first saw it move; 0 until
        that was ``settle`` seconds ago."""
        if self._body_at < 0 or now - self._body_at < settle:
            return 0.0
        return (received - self._body_received) / (now - self._body_at)

    def overall(self, now: float, received: int) -> float:
        """Bytes/s since the attempt started (0 when no time has passed)."""
        seconds = now - self.started
        return (received - self.origin) / seconds if seconds > 0 else 0.0

    def measured(self) -> float:
        """Seconds ``steady`` and ``sleeping`` are taken over (at most about STEADY_WINDOW):
        0 until the attempt's first bytes, since the wait for an answer is no rate."""
        history = self._steady
        return history[-1][0] - history[0][0]

    def _settle(self, now: float, received: int, slept: int) -> None:
        """``steady`` and ``sleeping`` over the last ``STEADY_WINDOW`` (or since the last
        sample before the attempt's first bytes, when that is shorter: a server slow to
        answer would read as a lane that moves a fraction of its rate)."""
        history = self._steady
        if received == self.origin:  # nothing yet: measured from here
            history.clear()
        history.append((now, received, slept))
        while len(history) > 2 and now - history[1][0] >= STEADY_WINDOW:
            history.popleft()
        then, before, slept_then = history[0]
        if now > then:
            self.steady = (received - before) / (now - then)
            self.sleeping = (slept - slept_then) / 1e6 / (now - then)

    def _smooth(self, now: float, received: int) -> None:
        """The first sample of an attempt is taken as it is, later ones are averaged in."""
        if now <= self._sampled_at:
            return
        current = (received - self.received) / (now - self._sampled_at)
        first = self._sampled_at == self.started
        self.rate = current if first else 0.5 * self.rate + 0.5 * current
        self._sampled_at = now

    def _time_request(self, now: float, received: int, asked: int) -> None:
        """A new request is timed from its first bytes (not from the status line's wait)."""
        if asked != self._request_end:
            self._request_end, self._body_at, self._body_received = asked, -1.0, received
        elif self._body_at < 0 and received > self._body_received:
            self._body_at, self._body_received = now, received

    def _slide(self, now: float, received: int) -> None:
        """``recent`` becomes the rate over the last ``LAG_WINDOW`` (or since the attempt
        started, when that is shorter)."""
        history = self._history
        history.append((now, received))
        while len(history) > 2 and now - history[1][0] >= LAG_WINDOW:
            history.popleft()
        then, before = history[0]
        self.recent = (received - before) / (now - then) if now > then else 0.0


class BestRate:
    """The best lane's rate lately: the yardstick a slow lane is judged by (``_steal``)."""

    def __init__(self) -> None:
        self.value = 0.0

    def saw(self, rate: float) -> None:
        self.value = max(self.value, rate)

    def fade(self) -> None:
        """Forget lanes that have ended, slowly."""
        self.value *= BEST_DECAY


class RateWindow:
    """The download's rate over the last ``WINDOW`` seconds of samples."""

    def __init__(self, now: float, done: int) -> None:
        self.started = now
        self._samples: deque[tuple[float, int]] = deque([(now, done)])

    def rate(self, now: float, done: int) -> float:
        """Record ``done`` bytes at ``now``; the rate since the oldest sample kept."""
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > WINDOW:
            self._samples.popleft()
        then, before = self._samples[0]
        return (done - before) / (now - then) if now > then else 0.0
