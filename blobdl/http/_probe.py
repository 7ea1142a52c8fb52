"""The probe: redirects resolved, size, range support and validators learned, one
``Range: bytes=0-0`` request per hop; ``resolve`` is the probe with the retry policy.
"""

from __future__ import annotations

import http.client
import time

import urllib3

from ..config import Settings
from ..errors import BadResponse, HTTPStatusError, TooManyRedirects
from ._connections import ready_at
from ._headers import content_disposition_filename, parse_content_range, range_header
from ._pool import make_pool, prepare_tls
from ._remote import Remote
from ._request import (
    Response,
    base_headers,
    content_length,
    require_identity,
    retry_after,
    send_get,
)
from ._retry import Retry, retried
from ._span import Span
from ._urls import check_url, headers_for_origin, lift_userinfo, redirect_target, same_origin

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Bytes of a redirect body we read to reuse its connection, and how long they may take to
# come; a longer (or slower) one costs a new connection instead.
_REDIRECT_BODY_LIMIT = 64 * 1024
_REDIRECT_BODY_TIME = 1.0


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
    current, asked = url, range_header(0, want)
    for _hop in range(settings.max_redirects + 1):
        sent = time.monotonic()
        response = send_get(pool, current, {**base_headers(headers), "Range": asked})
        answer_time = time.monotonic() - max(sent, ready_at(response))
        if response.status not in _REDIRECTS:
            try:
                remote = _remote_from(url, current, headers, response, want)
            except BaseException:
                response.close()
                raise
            return remote._replace(answer_time=answer_time), response
        target = None
        try:
            location = response.headers.get("Location")
            if not location:
                raise BadResponse(current, f"redirect {response.status} without Location")
            target = redirect_target(current, location)
        finally:
            # Keep the socket only for a next hop that can use it: one kept alive for
            # another origin would be a second open socket beyond the connection budget.
            _finish_probe_response(
                response, reuse=target is not None and same_origin(current, target)
            )
        headers = headers_for_origin(headers, current, target)
        current = target
    raise TooManyRedirects(url, settings.max_redirects)


def _finish_probe_response(response: Response, reuse: bool) -> None:
    """Reuse the connection after a small redirect body to the same origin; drop it after
    anything else (a redirect body may never end, or trickle: we never read more than a
    small amount, nor for long)."""
    remaining = response.length_remaining
    if (
        reuse
        and response.status in _REDIRECTS
        and remaining is not None
        and remaining <= _REDIRECT_BODY_LIMIT
        and _drained(response, time.monotonic() + _REDIRECT_BODY_TIME)
    ):
        response.release_conn()
        return
    response.close()


def _drained(response: Response, deadline: float) -> bool:
    """Whether the rest of the body (its length said how much) came before ``deadline``.
    Each read waits for what the socket has, at most until then: a body that trickles
    would otherwise hold the probe a socket timeout per byte."""
    sock = getattr(response.connection, "sock", None)
    try:
        while response.length_remaining:
            left = deadline - time.monotonic()
            if sock is None or left <= 0:
                return False
            sock.settimeout(left)  # the next request sets its own again
            if not response.read1(response.length_remaining, decode_content=False):
                return False
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError):
        return False
    response.drain_conn()  # nothing left to read: http.client's own end of the response
    return True


def _remote_from(
    url: str, final: str, headers: tuple[tuple[str, str], ...], response: Response, want: int
) -> Remote:
    status = response.status
    require_identity(final, response)
    if status == 206:
        content_range = parse_content_range(response.headers.get("Content-Range", ""))
        total = content_range.total if content_range else None
        if not content_range or total is None or content_range.span != Span(0, min(want, total)):
            text = response.headers.get("Content-Range")
            raise BadResponse(final, f"probe got Content-Range {text!r}")
        size: int | None = content_range.total
        ranges = True
    elif status == 416:
        # bytes=0-N is unsatisfiable only for an empty blob.
        content_range = parse_content_range(response.headers.get("Content-Range", ""))
        if not content_range or content_range.total != 0:
            raise HTTPStatusError(416, final)
        size, ranges = 0, True
    elif status == 200:
        size, ranges = content_length(response), False
    else:
        raise HTTPStatusError(status, final, retry_after(response))
    return Remote(
        url=url,
        final_url=final,
        size=size,
        ranges=ranges,
        etag=response.headers.get("ETag"),
        last_modified=response.headers.get("Last-Modified"),
        filename=content_disposition_filename(response.headers.get("Content-Disposition")),
        headers=headers,
        date=response.headers.get("Date"),
    )


def resolve(url: str, settings: Settings, *, need_ranges: bool = False) -> Remote:
    """Probe ``url`` with the same retry policy as a part (the pool dies with the call:
    no socket of ours may leak into forked workers). ``need_ranges``: a 200 to the probe's
    range is a bad response (ranges were proven before), retried like one."""
    prepare_tls(settings, url)  # the probe's context, inherited by the workers later
    pool = make_pool(settings)

    def once() -> Remote:
        remote = probe(pool, url, settings)
        if need_ranges and not remote.ranges:
            raise BadResponse(remote.final_url, "answered 200 to the probe's range")
        return remote

    try:
        return retried(once, Retry.from_settings(settings), time.sleep)
    finally:
        pool.clear()
