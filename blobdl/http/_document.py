"""Small documents (a manifest, a token, a registry's answer): one GET as every request of
ours makes it, its body read only up to a cap, and the retry policy around it.

The pool is ``_pool.make_pool``'s (our TLS context, client certificate, CA bundle, proxy
routes with ``NO_PROXY``), the headers ``_request.base_headers`` (``User-Agent:
blobdl/<version>``, identity), errors are translated by ``_translate``, and ``fetch``
retries what ``errors`` calls retryable with ``_retry.Retry`` (jitter, ``Retry-After``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import urllib3

from ..config import Settings
from ..errors import BadResponse, BlobdlError, HTTPStatusError
from ._connections import answer_time
from ._error_words import error_body
from ._headers import parse_retry_after
from ._request import base_headers, read_upto, require_identity, send_get
from ._retry import Retry
from ._translate import translate_errors


class Document(NamedTuple):
    url: str  # the URL that answered
    status: int
    headers: Mapping[str, str]  # case-insensitive (urllib3's HTTPHeaderDict)
    body: bytes  # a 2xx's (never more than the cap), an error's first ERROR_BODY bytes; or b""
    answer_time: float = 0.0  # to its status line, less the set-up of a new connection


def get_document(
    pool: urllib3.PoolManager, url: str, headers: Mapping[str, str], limit: int, within: float
) -> Document:
    """One GET of ``url``, no redirect followed. A 2xx body is read up to ``limit`` bytes
    (one more is a ``BadResponse``: a small document was expected), and must arrive whole
    within ``within`` seconds of the headers; a 2xx body is left unread when ``limit`` is 0.
    An error's (4xx, 5xx) first ``_error_words.ERROR_BODY`` bytes are read for what the
    server says, as far as they come within ``within`` (nothing if they fail to); a
    redirect's, never."""
    sent = time.monotonic()
    response = send_get(pool, url, base_headers(headers.items()))
    took = answer_time(response, sent, time.monotonic())
    body, whole = b"", False
    try:
        if response.status >= 400:
            body = error_body(url, response, within)
            return Document(url, response.status, response.headers, body, took)
        with translate_errors(url):
            if limit and 200 <= response.status < 300:
                require_identity(url, response)
                body = read_upto(url, response, limit + 1, time.monotonic() + within)
                whole = len(body) <= limit
                if not whole:
                    raise BadResponse(
                        url, f"more than {limit} bytes where a small document was expected"
                    )
    finally:
        if whole:
            response.release_conn()  # read to its end: the connection can serve the next one
        else:
            response.close()  # an unread body (a blob, an error page) never returns to the pool
    return Document(url, response.status, response.headers, body, took)


def fetch(settings: Settings, attempt: Callable[[], Document]) -> Document:
    """``attempt()`` until it answers with a status that is not worth another try, as the
    engine retries a part: connection failures and the statuses ``errors`` calls retryable,
    with Ollama's backoff and a server's ``Retry-After``. When the retries run out, the last
    answer is returned for the caller to judge (or the last error raised)."""
    retry = Retry.from_settings(settings)
    while True:
        try:
            document = attempt()
        except BlobdlError as exc:
            if not exc.retryable:
                raise
            error: BlobdlError = exc
            answer = None
        else:
            after = parse_retry_after(document.headers.get("Retry-After"))
            error = HTTPStatusError(document.status, document.url, after)
            answer = document
            if not error.retryable:
                return document
        retry = retry.increment(0)
        if retry.exhausted:
            if answer is not None:
                return answer
            raise error
        time.sleep(retry.delay(error))
