"""Redirects, as every GET of a blob follows them: the probe's and each part's.

At most ``limit`` hops; each target checked like a user's URL (``redirect_target``: the
credentials a server puts in it are dropped); the user's headers sent on to another origin
only if harmless (``headers_for_origin``), and never again once dropped; a hop's connection
kept only for a next hop on its origin that can use it. The answer that is no redirect is
the caller's to check (for a part: the blob it pinned, by size and validators).
"""

from __future__ import annotations

import http.client
import time
from typing import NamedTuple

import urllib3

from ..errors import BadResponse, TooManyRedirects
from ._request import Response, base_headers, send_get
from ._urls import headers_for_origin, redirect_target, same_origin

REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Bytes of a redirect body we read to reuse its connection, and how long they may take to
# come; a longer (or slower) one costs a new connection instead.
_REDIRECT_BODY_LIMIT = 64 * 1024
_REDIRECT_BODY_TIME = 1.0


class Answer(NamedTuple):
    """The end of a GET's redirects."""

    url: str  # the URL that answered
    headers: tuple[tuple[str, str], ...]  # the user's headers still safe to send there
    response: Response  # its answer (no redirect), unread
    sent: float  # when its request was sent (time.monotonic)


def get_following(
    pool: urllib3.PoolManager,
    url: str,
    headers: tuple[tuple[str, str], ...],
    extra: dict[str, str],
    limit: int,
) -> Answer:
    """GET ``url`` with the user's ``headers`` (safe for ``url``) and ours (``extra``: a
    Range, a validator), following up to ``limit`` redirects; ``TooManyRedirects`` past
    them, a loop included."""
    current = url
    for _hop in range(limit + 1):
        sent = time.monotonic()
        response = send_get(pool, current, base_headers(headers, extra.items()))
        if response.status not in REDIRECTS:
            return Answer(current, headers, response, sent)
        target = None
        try:
            location = response.headers.get("Location")
            if not location:
                raise BadResponse(current, f"redirect {response.status} without Location")
            target = redirect_target(current, location)
        finally:
            # Keep the socket only for a next hop that can use it: one kept alive for
            # another origin would be a second open socket beyond the connection budget.
            finish(response, reuse=target is not None and same_origin(current, target))
        headers = headers_for_origin(headers, current, target)
        current = target
    raise TooManyRedirects(url, limit)


def finish(response: Response, reuse: bool) -> None:
    """Reuse the connection after a small body we do not want (a redirect's to the same
    origin, the one byte that checked a file in place); drop it after anything else (such
    a body may never end, or trickle: we never read more than a small amount, nor for long)."""
    remaining = response.length_remaining
    if (
        reuse
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
    would otherwise hold the request a socket timeout per byte."""
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
