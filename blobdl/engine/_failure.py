"""What to do after a failed attempt at a part. Pure: no I/O, no clock.

``decide`` is the coordinator's "what now?", as a table of facts in, verdict out; the
counting and the backoff are the part's ``Retry`` policy's.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from ..errors import HTTPStatusError
from ..http._retry import Retry, full_refusal

# After a failure the part is ...
REFRESH = "refresh"  # waited for once its (signed, expired) URL is resolved again
AGAIN = "again"  # waited for, uncounted: the URL was refreshed since the attempt began
FULL = "full"  # waited for, uncounted: the server has no room for one more of our connections
RETRY = "retry"  # waited for, counted against the policy
DONE = "done"  # complete: the worker failed after its last byte was written
FAIL = "fail"  # not retried: the error is final
EXHAUSTED = "exhausted"  # not retried: too many failures without progress


class Failure(NamedTuple):
    """The facts about one failed attempt at a part."""

    error: BaseException
    pos: int  # the part's position now
    end: int  # one past its last byte (-1: until EOF)
    retry: Retry  # the part's policy before this failure
    redirected: bool  # the remote's URL was redirected (it may be signed and expire)
    refreshed_since: bool  # the remote was resolved again after this attempt began
    refreshed_at: int | None  # the part's position when it last had the URL refreshed
    # another lane of the download, or another download of its batch at the same origin,
    # receives bytes right now
    others_receiving: bool = False


class Verdict(NamedTuple):
    action: str  # one of REFRESH, AGAIN, FULL, RETRY, DONE, FAIL, EXHAUSTED
    retry: Retry  # the part's policy from now on
    delay: float  # seconds before the next attempt (REFRESH, AGAIN, RETRY)


def decide(failure: Failure, rng: random.Random | None = None) -> Verdict:
    """What to do with a part whose attempt failed.

    A redirected URL (the pinned one, or the attempt's own redirect) answering 403/410
    has most likely expired: it is resolved again, once
    per stretch without progress, without counting. Otherwise a final error fails the
    download; a part whose bytes are all there is done; a 429 or 503 while another lane
    receives (of the download, or of its batch at the same origin: ``_share``) is a server
    with no room for one more connection (nginx's ``limit_conn``), not one failing: waited
    for, uncounted, ever longer; any other failure is retried after a
    backoff until the policy is exhausted."""
    error, retry = failure.error, failure.retry
    if _expired(error, failure.redirected):
        if failure.refreshed_since:
            return Verdict(AGAIN, retry, retry.backoff(1, rng))
        if failure.refreshed_at is None or failure.pos > failure.refreshed_at:
            return Verdict(REFRESH, retry, retry.backoff(1, rng))
    if not getattr(error, "retryable", False):
        return Verdict(FAIL, retry, 0.0)
    if 0 <= failure.end <= failure.pos:
        return Verdict(DONE, retry, 0.0)
    if failure.others_receiving and full_refusal(error):
        retry = retry.full()
        return Verdict(FULL, retry, retry.delay(error, rng))
    retry = retry.increment(failure.pos)
    if retry.exhausted:
        return Verdict(EXHAUSTED, retry, 0.0)
    return Verdict(RETRY, retry, retry.delay(error, rng))


def _expired(error: BaseException, redirected: bool) -> bool:
    """A 403/410 from a redirect's target: the pinned one, or one this request alone was
    sent to (a new signature each time)."""
    if not isinstance(error, HTTPStatusError) or error.status not in (403, 410):
        return False
    return redirected or error.redirected
