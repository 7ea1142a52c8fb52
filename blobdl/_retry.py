"""The retry policy: an immutable budget per part and the delay before the next attempt.

Like urllib3's ``Retry``, a budget is never mutated: ``after_failure`` returns a new one.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from ._plan import backoff_delay
from .config import Settings


class RetryBudget(NamedTuple):
    """Failures in a row *without progress*: a part that keeps moving is not failing."""

    failures: int = 0  # failed attempts since the part last moved past ``mark``
    mark: int = -1  # the furthest position seen at a failure

    def after_failure(self, position: int) -> RetryBudget:
        """The budget after an attempt failed with the part at ``position``."""
        if position > self.mark:
            return RetryBudget(1, position)
        return RetryBudget(self.failures + 1, self.mark)

    def exhausted(self, retries: int) -> bool:
        """True once the first failure and ``retries`` retries have all failed."""
        return self.failures > retries


def retry_delay(
    failures: int,
    retry_after: float | None,
    settings: Settings,
    rng: random.Random | None = None,
) -> float:
    """Ollama's backoff for retry number ``failures``; a server's ``Retry-After`` is
    honoured when longer, but never beyond ``max_backoff``."""
    delay = backoff_delay(failures, settings, rng)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.max_backoff))
    return delay
