"""The retry policy and the coordinator's "what now after this failure", as tables."""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blobdl import Settings
from blobdl.engine import _failure
from blobdl.engine._failure import Failure, decide
from blobdl.errors import (
    BadResponse,
    ConnectionFailed,
    ConnectionForbidden,
    HTTPStatusError,
    ProxyRefused,
    RemoteChanged,
    Stalled,
    WorkerCrashed,
)
from blobdl.http._retry import Retry, retried

POLICY = Retry(total=2, backoff_unit=0.01, max_backoff=1.0)
DROP = ConnectionFailed("http://h/", "reset")


def failure(error: BaseException = DROP, **facts: object) -> Failure:
    base: dict[str, object] = {
        "pos": 100,
        "end": 200,
        "retry": POLICY,
        "redirected": False,
        "refreshed_since": False,
        "refreshed_at": None,
    }
    base.update(facts)
    return Failure(error, **base)


@pytest.mark.parametrize(
    ("case", "facts", "action", "failures"),
    [
        ("a dropped connection is retried", failure(), _failure.RETRY, 1),
        ("a stall is retried", failure(Stalled(1.0)), _failure.RETRY, 1),
        ("a crash is retried", failure(WorkerCrashed(-9)), _failure.RETRY, 1),
        ("503 is retried", failure(HTTPStatusError(503, "u")), _failure.RETRY, 1),
        ("404 is final", failure(HTTPStatusError(404, "u")), _failure.FAIL, 0),
        ("a changed remote is final", failure(RemoteChanged("u", "etag")), _failure.FAIL, 0),
        ("a bug is final", failure(ValueError("x")), _failure.FAIL, 0),
        ("all bytes there: done", failure(pos=200), _failure.DONE, 0),
        ("past the moved end: done", failure(pos=250), _failure.DONE, 0),
        ("open-ended: never done", failure(pos=200, end=-1), _failure.RETRY, 1),
        (
            "no progress since the last failure counts on",
            failure(retry=POLICY._replace(failures=1, mark=100)),
            _failure.RETRY,
            2,
        ),
        (
            "progress since the last failure starts over",
            failure(retry=POLICY._replace(failures=2, mark=50)),
            _failure.RETRY,
            1,
        ),
        (
            "the first failure and `total` retries: exhausted",
            failure(retry=POLICY._replace(failures=2, mark=100)),
            _failure.EXHAUSTED,
            3,
        ),
        (
            "403 from a redirected URL: refresh, uncounted",
            failure(HTTPStatusError(403, "u"), redirected=True),
            _failure.REFRESH,
            0,
        ),
        (
            "410 from a redirected URL: refresh",
            failure(HTTPStatusError(410, "u"), redirected=True),
            _failure.REFRESH,
            0,
        ),
        (
            "403 after someone else refreshed: again, uncounted",
            failure(HTTPStatusError(403, "u"), redirected=True, refreshed_since=True),
            _failure.AGAIN,
            0,
        ),
        (
            "403 after its own refresh, with progress: refresh again",
            failure(HTTPStatusError(403, "u"), redirected=True, refreshed_at=50),
            _failure.REFRESH,
            0,
        ),
        (
            "403 after its own refresh, no progress: really refused",
            failure(HTTPStatusError(403, "u"), redirected=True, refreshed_at=100),
            _failure.FAIL,
            0,
        ),
        ("403 without a redirect is final", failure(HTTPStatusError(403, "u")), _failure.FAIL, 0),
        (
            "503 while another lane receives: the server is full, waited for uncounted",
            failure(HTTPStatusError(503, "u"), others_receiving=True),
            _failure.FULL,
            0,
        ),
        (
            "429 while another lane receives: the same",
            failure(HTTPStatusError(429, "u"), others_receiving=True),
            _failure.FULL,
            0,
        ),
        (
            "full, however often: still uncounted",
            failure(
                HTTPStatusError(503, "u"),
                others_receiving=True,
                retry=POLICY._replace(failures=2, mark=100, waits=40),
            ),
            _failure.FULL,
            2,
        ),
        (
            "500 while another lane receives is a failure",
            failure(HTTPStatusError(500, "u"), others_receiving=True),
            _failure.RETRY,
            1,
        ),
        (
            "a dropped connection while another lane receives is a failure",
            failure(others_receiving=True),
            _failure.RETRY,
            1,
        ),
        (
            "404 while another lane receives is final",
            failure(HTTPStatusError(404, "u"), others_receiving=True),
            _failure.FAIL,
            0,
        ),
        (
            "403 at the target of the request's own redirect: refresh, uncounted",
            failure(pickle.loads(pickle.dumps(HTTPStatusError(403, "u", None, redirected=True)))),
            _failure.REFRESH,
            0,
        ),
        (
            "404 at the target of the request's own redirect is final",
            failure(HTTPStatusError(404, "u", None, redirected=True)),
            _failure.FAIL,
            0,
        ),
        (
            "a proxy's refusal of CONNECT, from a worker, is final",
            failure(pickle.loads(pickle.dumps(ProxyRefused("u", "proxy p refused CONNECT: 403")))),
            _failure.FAIL,
            0,
        ),
        (
            "a proxy's 403 to CONNECT for a redirected URL is its policy, not an expiry",
            failure(ProxyRefused("u", "proxy p refused CONNECT: 403 Filtered"), redirected=True),
            _failure.FAIL,
            0,
        ),
        (
            "a connection this machine forbids (EACCES, EPERM) is final",
            failure(pickle.loads(pickle.dumps(ConnectionForbidden("u", "Failed to connect")))),
            _failure.FAIL,
            0,
        ),
        ("501: what the server cannot do", failure(HTTPStatusError(501, "u")), _failure.FAIL, 0),
        ("511: a captive portal's login", failure(HTTPStatusError(511, "u")), _failure.FAIL, 0),
        ("504: the upstream may come back", failure(HTTPStatusError(504, "u")), _failure.RETRY, 1),
        (
            "a bad response from a redirected URL is not a refresh",
            failure(BadResponse("u", "x"), redirected=True),
            _failure.RETRY,
            1,
        ),
    ],
)
def test_decide(case: str, facts: Failure, action: str, failures: int) -> None:
    verdict = decide(facts, random.Random(0))
    assert (verdict.action, verdict.retry.failures) == (action, failures), case
    waits = action in (_failure.RETRY, _failure.REFRESH, _failure.AGAIN, _failure.FULL)
    assert (verdict.delay > 0) == waits, case


def test_retry_after_is_honoured_up_to_max_backoff() -> None:
    policy = POLICY.increment(0)
    assert policy.delay(HTTPStatusError(503, "u", 0.5), random.Random(0)) == 0.5
    assert policy.delay(HTTPStatusError(503, "u", 99.0), random.Random(0)) == 1.0
    assert policy.delay(DROP, random.Random(0)) <= 1.5 * POLICY.backoff_unit


@pytest.mark.parametrize("failures", [1, 2, 3, 6])
def test_the_wait_after_failure_n_is_the_backoff_of_retry_n(failures: int) -> None:
    policy = POLICY._replace(failures=failures)
    expected = policy.backoff(failures, random.Random(7))
    assert policy.delay(DROP, random.Random(7)) == expected
    # A server's Retry-After shorter than the backoff does not shorten it.
    assert policy.delay(HTTPStatusError(503, "u", 0.0), random.Random(7)) == expected


def test_the_policy_is_never_mutated() -> None:
    before = Retry.from_settings(Settings(retries=3))
    after = before.increment(10)
    assert (before.failures, after.failures, before.total) == (0, 1, 3)


# --- the budget arithmetic, for any sequence of failures ------------------------------------


@given(st.integers(0, 20), st.integers(0, 10**12))
def test_budget_allows_exactly_retries_failures_in_place(retries: int, position: int) -> None:
    budget = Retry(total=retries)
    for _ in range(retries + 1):
        assert not budget.exhausted
        budget = budget.increment(position)
    assert budget.exhausted


@given(st.integers(0, 20), st.lists(st.integers(0, 50), min_size=1, max_size=200))
def test_budget_counts_failures_since_the_furthest_position(
    retries: int, positions: list[int]
) -> None:
    budget = Retry(total=retries)
    for position in positions:
        budget = budget.increment(position)
    furthest = max(positions)
    since = len(positions) - positions.index(furthest)  # failures since it first got there
    assert budget.failures == since and budget.mark == furthest
    assert budget.exhausted == (since > retries)


def test_a_full_servers_waits_grow_and_progress_starts_them_over() -> None:
    """Each wait for a full server is longer than the last (Ollama's schedule, up to the
    ceiling), a longer Retry-After honoured as ever; progress starts the schedule over, as
    it does the failures."""
    full, retry = HTTPStatusError(503, "u"), POLICY
    delays = []
    for _ in range(12):
        verdict = decide(failure(full, others_receiving=True, retry=retry), random.Random(1))
        retry = verdict.retry
        delays.append(verdict.delay)
    assert (retry.failures, retry.waits) == (0, 12)
    assert delays == sorted(delays) and delays[0] < delays[-1] <= 1.5 * POLICY.max_backoff
    told = decide(failure(HTTPStatusError(503, "u", 0.9), others_receiving=True))
    assert told.delay >= 0.9
    moved = retry.increment(500)
    assert (moved.failures, moved.waits) == (1, 0)


def _refused(times: int, status: int = 503) -> tuple[list[float], Callable[[], str]]:
    """A probe refused ``times`` times with ``status``, then answered; and its sleeps."""
    slept: list[float] = []
    calls = iter(range(times + 1))

    def call() -> str:
        if next(calls) < times:
            raise HTTPStatusError(status, "http://mirror:8080/blob")
        return "remote"

    return slept, call


@pytest.mark.parametrize(
    ("status", "others", "waited"),
    [
        (503, True, True),  # a full server: another of the batch receives there
        (429, True, True),
        (503, False, False),  # nobody receives there: a failing server, counted
        (500, True, False),  # not a refusal of one more connection: counted
    ],
)
def test_a_probe_refused_by_a_full_server_waits_uncounted_while_others_receive(
    status: int, others: bool, waited: bool
) -> None:
    """A batch item's probe (``retried``) refused as often as it takes while another download
    of its batch receives from that origin: uncounted, each wait longer (up to the ceiling);
    once nobody receives there, or for any other failure, every refusal counts."""
    slept, call = _refused(10, status)
    asked: list[str] = []

    def receiving(url: str) -> bool:
        asked.append(url)
        return others

    if not waited:
        with pytest.raises(HTTPStatusError):
            retried(call, POLICY, slept.append, receiving)
        assert len(slept) == POLICY.total
        return
    assert retried(call, POLICY, slept.append, receiving) == "remote"
    assert len(slept) == 10 and asked == ["http://mirror:8080/blob"] * 10
    assert slept[0] < slept[-1] <= 1.5 * POLICY.max_backoff


def test_a_probe_without_a_batch_counts_every_refusal() -> None:
    slept, call = _refused(10)
    with pytest.raises(HTTPStatusError):
        retried(call, POLICY, slept.append)
    assert len(slept) == POLICY.total
