"""The probe: redirects resolved, size, range support and validators learned, one
``Range: bytes=0-0`` request per hop; ``resolve`` is the probe with the retry policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import urllib3

from .._said import quoted
from ..config import Settings
from ..errors import BadResponse
from ._connections import answer_time
from ._error_words import status_error
from ._headers import content_disposition_filename, parse_content_range, range_header
from ._pool import make_pool, prepare_tls
from ._redirects import Answer, get_following
from ._remote import Remote
from ._request import Response, content_length, identity_encoded, require_identity
from ._retry import Retry, retried
from ._span import Span
from ._urls import check_url, lift_userinfo


def probe(pool: urllib3.PoolManager, url: str, settings: Settings) -> Remote:
    """Resolve redirects and learn size, range support and validators with one
    ``Range: bytes=0-0`` request per hop."""
    remote, response = first_answer(pool, url, settings, 1)
    response.close()
    return remote


def first_answer(
    pool: urllib3.PoolManager, url: str, settings: Settings, want: int
) -> tuple[Remote, Response]:
    """The probe, asking each hop for the blob's first ``want`` bytes; the last answer is
    returned unread, with what it says about the blob. A small blob is all in that answer
    (``RangeBody.answered`` reads it): its first GET was its probe, too."""
    check_url(url)
    url, headers = lift_userinfo(url, settings.headers)
    extra = {"Range": range_header(0, want)}
    answer = get_following(pool, url, headers, extra, settings.max_redirects)
    if answer.response.status == 416 and _size_stated(answer.response) is None:
        answer = _empty_or_refused(pool, url, headers, answer, settings)
    response = answer.response
    took = answer_time(response, answer.sent, time.monotonic())
    try:
        remote = _remote_from(url, answer, want, settings.stall_timeout)
    except BaseException:
        response.close()
        raise
    return remote._replace(answer_time=took), response


def _size_stated(response: Response) -> int | None:
    """The size a 416's ``Content-Range: bytes */N`` states, if it states one."""
    content_range = parse_content_range(response.headers.get("Content-Range", ""))
    return content_range.total if content_range else None


def _empty_or_refused(
    pool: urllib3.PoolManager,
    url: str,
    headers: tuple[tuple[str, str], ...],
    refused: Answer,
    settings: Settings,
) -> Answer:
    """A 416 to ``bytes=0-N`` that states no size: S3 (AWS, MinIO, moto) so answers any
    range of an empty object. The blob is asked for once more without a range, as curl
    asks: a 200 stating 0 bytes is the empty blob; anything else, the 416 as refused."""
    try:
        error = status_error(
            refused.url, refused.response, settings.stall_timeout, sent=refused.headers
        )
    finally:
        refused.response.close()
    whole = get_following(pool, url, headers, {}, settings.max_redirects)
    empty = False
    try:
        empty = whole.response.status == 200 and content_length(whole.response) == 0
    finally:
        if not empty:
            whole.response.close()
    if not empty:
        raise error
    return whole


def _remote_from(url: str, answer: Answer, want: int, within: float) -> Remote:
    """What ``answer`` says of the blob; an error status is raised with what the server
    says of it (its body's words, read within ``within`` seconds)."""
    final, headers, response = answer.url, answer.headers, answer.response
    status = response.status
    require_identity(final, response)
    if status == 206:
        content_range = parse_content_range(response.headers.get("Content-Range", ""))
        total = content_range.total if content_range else None
        if not content_range or total is None or content_range.span != Span(0, min(want, total)):
            text = response.headers.get("Content-Range")
            shown = "None" if text is None else quoted(text)
            raise BadResponse(final, f"probe got Content-Range {shown}")
        size: int | None = content_range.total
        ranges = True
    elif status == 416:
        # bytes=0-N is unsatisfiable only for an empty blob.
        content_range = parse_content_range(response.headers.get("Content-Range", ""))
        if not content_range or content_range.total != 0:
            raise status_error(final, response, within, sent=headers)
        size, ranges = 0, True
    elif status == 200:
        size, ranges = content_length(response), False
    else:
        raise status_error(final, response, within, sent=headers)
    return _described(url, final, size, ranges, response.headers, headers)


def first_byte_answer(
    url: str,
    headers: tuple[tuple[str, str], ...],
    status: int,
    answer: Mapping[str, str],
    took: float,
) -> Remote | None:
    """What an answer of ``url`` itself (no redirect) to ``Range: bytes=0-0``, sent with
    ``headers``, says of the blob, as the probe would have learned it (``took``: its
    ``answer_time``); a registry's look-up of a blob is such a request. Only a 206 of the
    first byte of a blob of a stated size, as stored (identity), says all a probe learns;
    else None: the download probes, and judges the answer itself."""
    if status != 206 or not identity_encoded(answer):
        return None
    content_range = parse_content_range(answer.get("Content-Range", ""))
    if not content_range or not content_range.total or content_range.span != Span(0, 1):
        return None
    described = _described(url, url, content_range.total, True, answer, headers)
    return described._replace(answer_time=took)


def _described(
    url: str,
    final: str,
    size: int | None,
    ranges: bool,
    answer: Mapping[str, str],
    headers: tuple[tuple[str, str], ...],
) -> Remote:
    """The blob as ``answer``'s headers (from ``final``) describe it."""
    return Remote(
        url=url,
        final_url=final,
        size=size,
        ranges=ranges,
        etag=answer.get("ETag"),
        last_modified=answer.get("Last-Modified"),
        filename=content_disposition_filename(answer.get("Content-Disposition")),
        headers=headers,
        date=answer.get("Date"),
    )


def resolve(
    url: str,
    settings: Settings,
    *,
    need_ranges: bool = False,
    to_host: Callable[[str], None] | None = None,
    others_receiving: Callable[[str], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Remote:
    """Probe ``url`` with the same retry policy as a part (the pool dies with the call:
    no socket of ours may leak into forked workers). ``need_ranges``: a 200 to the probe's
    range is a bad response (ranges were proven before), retried like one. ``to_host``:
    called with the host of the probe's first request, and of each request to another
    host than the last one's (a redirect's, a retry's), once the connections to that one
    are closed: a budget of connections per host moves with the probe (it may wait).
    ``others_receiving``: whether another download of a batch receives from a URL's origin,
    for a refusal of one more connection there (``retried``). ``sleep``: how its backoffs
    are waited out (a coordinator's refresh: cut short by a stop)."""
    prepare_tls(settings, url)  # the probe's context, inherited by the workers later
    at: list[str] = []  # the host the last request went to

    def gate(to: str) -> None:
        assert to_host is not None
        host = urlsplit(to).hostname or ""
        if at == [host]:
            return
        if at:
            pool.clear()  # its connection to the last host: the budget no longer counts it
        at[:] = [host]
        to_host(host)

    pool = make_pool(settings, gate=None if to_host is None else gate)

    def once() -> Remote:
        remote = probe(pool, url, settings)
        if need_ranges and not remote.ranges:
            raise BadResponse(remote.final_url, "answered 200 to the probe's range: the server "
                              "no longer answers ranges, which the partial download needs to "
                              "resume; --no-resume (resume=False) starts over")  # fmt: skip
        return remote

    try:
        return retried(once, Retry.from_settings(settings), sleep, others_receiving)
    finally:
        pool.clear()
