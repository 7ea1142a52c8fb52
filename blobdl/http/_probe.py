"""The probe: redirects resolved, size, range support and validators learned, one
``Range: bytes=0-0`` request per hop; ``resolve`` is the probe with the retry policy.
"""

from __future__ import annotations

import time

import urllib3

from ..config import Settings
from ..errors import BadResponse, BlobdlError, HTTPStatusError, TooManyRedirects
from ._connections import ready_at
from ._headers import content_disposition_filename, parse_content_range
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
from ._retry import Retry
from ._span import Span
from ._urls import check_url, headers_for_origin, lift_userinfo, redirect_target, same_origin

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Bytes of a redirect body we read to reuse its connection; a longer one costs a new connection.
_REDIRECT_BODY_LIMIT = 64 * 1024


def probe(pool: urllib3.PoolManager, url: str, settings: Settings) -> Remote:
    """Resolve redirects and learn size, range support and validators with one
    ``Range: bytes=0-0`` request per hop."""
    check_url(url)
    url, headers = lift_userinfo(url, settings.headers)
    current = url
    for _hop in range(settings.max_redirects + 1):
        sent = time.monotonic()
        response = send_get(pool, current, {**base_headers(headers), "Range": "bytes=0-0"})
        answer_time = time.monotonic() - max(sent, ready_at(response))
        target = None
        try:
            if response.status not in _REDIRECTS:
                return _remote_from(url, current, headers, response)._replace(
                    answer_time=answer_time
                )
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
    anything else (a redirect body may never end: we never read more than a small bounded
    amount)."""
    remaining = response.length_remaining
    if (
        reuse
        and response.status in _REDIRECTS
        and remaining is not None
        and remaining <= _REDIRECT_BODY_LIMIT
    ):
        try:
            response.drain_conn()  # reads at most `remaining` bytes: the length said so
            response.release_conn()
            return
        except Exception:
            pass
    response.close()


def _remote_from(
    url: str, final: str, headers: tuple[tuple[str, str], ...], response: Response
) -> Remote:
    status = response.status
    require_identity(final, response)
    if status == 206:
        content_range = parse_content_range(response.headers.get("Content-Range", ""))
        if not content_range or content_range.span != Span(0, 1) or content_range.total is None:
            text = response.headers.get("Content-Range")
            raise BadResponse(final, f"probe got Content-Range {text!r}")
        size: int | None = content_range.total
        ranges = True
    elif status == 416:
        # bytes=0-0 is unsatisfiable only for an empty blob.
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
    )


def resolve(url: str, settings: Settings, *, need_ranges: bool = False) -> Remote:
    """Probe ``url`` with the same retry policy as a part (the pool dies with the call:
    no socket of ours may leak into forked workers). ``need_ranges``: a 200 to the probe's
    range is a bad response (ranges were proven before), retried like one."""
    prepare_tls(settings, url)  # the probe's context, inherited by the workers later
    pool = make_pool(settings)
    retry = Retry.from_settings(settings)
    try:
        while True:
            try:
                remote = probe(pool, url, settings)
                if need_ranges and not remote.ranges:
                    raise BadResponse(remote.final_url, "answered 200 to the probe's range")
                return remote
            except BlobdlError as exc:
                retry = retry.increment(0)
                if not exc.retryable or retry.exhausted:
                    raise
                time.sleep(retry.delay(exc))
    finally:
        pool.clear()
