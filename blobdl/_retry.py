"""The retry policy, and what to do after a failed attempt. Pure: no I/O, no clock.

``Retry`` is one immutable object, like urllib3's: it counts failures in a row *without
progress*, and says how long to wait (Ollama's backoff, or a server's longer
``Retry-After``, capped). ``increment`` returns a new one. ``decide`` is the coordinator's
"what now?" after an attempt at a part failed, as a table of facts in, verdict out.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from .config import Settings
from .errors import HTTPStatusError

# After a failure the part is ...
REFRESH = "refresh"  # waited for once its (signed, expired) URL is resolved again
AGAIN = "again"  # waited for, uncounted: the URL was refreshed since the attempt began
RETRY = "retry"  # waited for, counted against the policy
DONE = "done"  # complete: the worker failed after its last byte was written
FAIL = "fail"  # not retried: the error is final
EXHAUSTED = "exhausted"  # not retried: too many failures without progress


class Retry(NamedTuple):
    """How often and how patiently to retry; never mutated (``increment`` gives a new one)."""

    total: int = Settings.retries  # retries after the first failure, without progress between
    backoff_unit: float = Settings.backoff_unit
    max_backoff: float = Settings.max_backoff
    failures: int = 0  # failed attempts since the position last moved past ``mark``
    mark: int = -1  # the furthest position seen at a failure

    @classmethod
    def from_settings(cls, settings: Settings) -> Retry:
        return cls(settings.retries, settings.backoff_unit, settings.max_backoff)

    def increment(self, position: int) -> Retry:
        """The policy after an attempt failed with its part at ``position``: progress since
        the last failure starts the count again (a part that keeps moving is not failing)."""
        if position > self.mark:
            return self._replace(failures=1, mark=position)
        return self._replace(failures=self.failures + 1)

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
        delay = self.backoff(max(1, self.failures), rng)
        after = error.retry_after if isinstance(error, HTTPStatusError) else None
        if after is not None:
            delay = max(delay, min(after, self.max_backoff))
        return delay


class Failure(NamedTuple):
    """The facts about one failed attempt at a part."""

    error: BaseException
    pos: int  # the part's position now
    end: int  # one past its last byte (-1: until EOF)
    retry: Retry  # the part's policy before this failure
    redirected: bool  # the remote's URL was redirected (it may be signed and expire)
    refreshed_since: bool  # the remote was resolved again after this attempt began
    refreshed_at: int | None  # the part's position when it last had the URL refreshed


class Verdict(NamedTuple):
    action: str  # one of REFRESH, AGAIN, RETRY, DONE, FAIL, EXHAUSTED
    retry: Retry  # the part's policy from now on
    delay: float  # seconds before the next attempt (REFRESH, AGAIN, RETRY)


def decide(failure: Failure, rng: random.Random | None = None) -> Verdict:
    """What to do with a part whose attempt failed.

    A redirected URL answering 403/410 has most likely expired: it is resolved again, once
    per stretch without progress, without counting. Otherwise a final error fails the
    download; a part whose bytes are all there is done; any other failure is retried after
    a backoff until the policy is exhausted."""
    error, retry = failure.error, failure.retry
    if failure.redirected and _expired(error):
        if failure.refreshed_since:
            return Verdict(AGAIN, retry, retry.backoff(1, rng))
        if failure.refreshed_at is None or failure.pos > failure.refreshed_at:
            return Verdict(REFRESH, retry, retry.backoff(1, rng))
    if not getattr(error, "retryable", False):
        return Verdict(FAIL, retry, 0.0)
    if 0 <= failure.end <= failure.pos:
        return Verdict(DONE, retry, 0.0)
    retry = retry.increment(failure.pos)
    if retry.exhausted:
        return Verdict(EXHAUSTED, retry, 0.0)
    return Verdict(RETRY, retry, retry.delay(error, rng))


def _expired(error: BaseException) -> bool:
    return isinstance(error, HTTPStatusError) and error.status in (403, 410)
