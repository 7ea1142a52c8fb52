"""The retry policy. Pure: no I/O, no clock of its own.

``Retry`` is one immutable object, like urllib3's: it counts failures in a row *without
progress*, and says how long to wait (Ollama's backoff, or a server's longer
``Retry-After``, capped). ``increment`` returns a new one. ``retried`` runs a call (a
probe) under it with the sleep it is given; what a part does after a failed attempt is
``engine._failure.decide``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple, TypeGuard, TypeVar

from ..config import Settings
from ..errors import BlobdlError, HTTPStatusError

T = TypeVar("T")


class Retry(NamedTuple):
    """How often and how patiently to retry; never mutated (``increment`` gives a new one)."""

    total: int = Settings.retries  # retries after the first failure, without progress between
    backoff_unit: float = Settings.backoff_unit
    max_backoff: float = Settings.max_backoff
    failures: int = 0  # failed attempts since the position last moved past ``mark``
    mark: int = -1  # the furthest position seen at a failure
    waits: int = 0  # uncounted refusals of a full server (``full``) since the last progress

    @classmethod
    def from_settings(cls, settings: Settings) -> Retry:
        return cls(settings.retries, settings.backoff_unit, settings.max_backoff)

    def increment(self, position: int) -> Retry:
        """The policy after an attempt failed with its part at ``position``: progress since
        the last failure starts the count again (a part that keeps moving is not failing)."""
        if position > self.mark:
            return self._replace(failures=1, mark=position, waits=0)
        return self._replace(failures=self.failures + 1)

    def full(self) -> Retry:
        """The policy after a server with no room for one more connection refused one: no
        failure counted, but each such wait longer than the last (Ollama's schedule)."""
        return self._replace(waits=self.waits + 1)

    @property
    def exhausted(self) -> bool:
        """True once the first failure and ``total`` retries have all failed."""
        return self.failures > self.total

    def backoff(self, failures: int, rng: random.Random | None = None) -> float:
        """Ollama's schedule for retry number ``failures`` (1-based):
        ``min(failures**2 * unit, max_backoff) * uniform(0.5, 1.5)``."""
        base = min(failures * failures * self.backoff_unit, self.max_backoff)
        return base * (rng or random).uniform(0.5, 1.5)

    def delay(self, error: BaseException | None = None, rng: random.Random | None = None) -> float:
        """Seconds before the next attempt; a server's ``Retry-After`` is honoured when
        longer, but never beyond ``max_backoff``."""
        delay = self.backoff(max(1, self.failures, self.waits), rng)
        after = error.retry_after if isinstance(error, HTTPStatusError) else None
        if after is not None:
            delay = max(delay, min(after, self.max_backoff))
        return delay


def retried(
    call: Callable[[], T],
    retry: Retry,
    sleep: Callable[[float], None],
    others_receiving: Callable[[str], bool] | None = None,
) -> T:
    """``call()`` until it succeeds, as a probe is retried: every failure counts (nothing
    moves between two probes), ``sleep`` waits each backoff out, and the last error is
    raised once it is final or ``retry`` is exhausted. A server's refusal of one more
    connection (``full_refusal``) while ``others_receiving(url)`` says another download of
    the caller's receives from that URL's origin (a batch's) is waited for uncounted, as a
    part's is (``engine._failure``)."""
    while True:
        try:
            return call()
        except BlobdlError as exc:
            if full_refusal(exc) and others_receiving is not None and others_receiving(exc.url):
                retry = retry.full()
            else:
                retry = retry.increment(0)
                if not exc.retryable or retry.exhausted:
                    raise
            sleep(retry.delay(exc))


def full_refusal(error: BaseException) -> TypeGuard[HTTPStatusError]:
    """A refusal a server gives when it has too many of our requests at once (nginx's
    ``limit_conn``: 503, or the 429 it is set to)."""
    return isinstance(error, HTTPStatusError) and error.status in (429, 503)
