"""One GET as every request of ours makes it, and what any response must say.

Our headers (``User-Agent: blobdl/<version>``, identity encoding), no redirect followed,
the body left unread, errors translated; a response must be framed in a way we read one
way only (``require_framing``), be identity-encoded and declare a length we can trust.
"""

from __future__ import annotations

import http.client
import itertools
import time
from collections.abc import Iterable, Mapping

import urllib3
from urllib3 import HTTPHeaderDict

from .._said import escaped, quoted
from .._version import __version__
from ..errors import BadResponse
from ._headers import parse_length, parse_retry_after, transfer_codings
from ._logged import ours
from ._translate import translate_errors

Response = urllib3.BaseHTTPResponse


def base_headers(*layers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Our headers, then each layer's (the user's, a request's own), a later one replacing
    an earlier one of the same name in any case: names are case-insensitive, and a user's
    ``user-agent`` beside our ``User-Agent`` would reach the server as a second line."""
    # identity: a compressed body would make byte offsets meaningless (pip does the same).
    ours = {"User-Agent": f"blobdl/{__version__}", "Accept-Encoding": "identity"}
    by_name: dict[str, tuple[str, str]] = {}
    for name, value in itertools.chain(ours.items(), *layers):
        by_name.pop(name.lower(), None)  # the later one's spelling, and its place
        by_name[name.lower()] = (name, value)
    return dict(by_name.values())


def send_get(pool: urllib3.PoolManager, url: str, headers: dict[str, str]) -> Response:
    with translate_errors(url), ours():  # urllib3's log lines about it: redacted
        response = pool.request(
            "GET", url, headers=headers, redirect=False, preload_content=False, decode_content=False
        )
    response.headers = _trimmed(response.headers)
    try:
        require_framing(url, response)
    except BaseException:
        response.close()  # where its body ends is unknown: the connection cannot be reused
        raise
    return response


def _trimmed(headers: HTTPHeaderDict) -> HTTPHeaderDict:
    """``headers`` with each value's leading and trailing spaces and tabs taken off: RFC
    9110 5.5 puts them outside the field value, and every client trims them (curl,
    browsers). http.client keeps the trailing ones, which made a padded ``Location`` a URL
    with spaces, and a padded ETag another ETag than the same one unpadded."""
    if not any(v[:1] in _OWS or v[-1:] in _OWS for _, v in headers.items()):
        return headers  # as nearly every answer is: nothing rebuilt on a small item's path
    return HTTPHeaderDict([(name, value.strip(" \t")) for name, value in headers.items()])


_OWS = (" ", "\t")


def require_framing(url: str, response: Response) -> None:
    """Where the body ends, read one way by every reader: a ``BadResponse`` unless the
    response has no ``Transfer-Encoding`` (its length frames it, or the connection's close)
    or exactly ``chunked`` however spelled (RFC 9112 6.1: any case, whitespace, empty list
    elements). We send no ``TE``, so any other coding (``gzip, chunked``, ``identity``)
    breaks the protocol; like any bad response it is retried, and never written.

    http.client decodes chunks only when the header is exactly the word ("chunked " with
    a trailing space is read raw, chunk lines and all): it is told here, before any read."""
    value = response.headers.get("Transfer-Encoding")  # several header lines: joined
    codings = transfer_codings(value)
    if codings is None:
        return
    if codings != ("chunked",):
        shown = quoted(value or "", 60)
        raise BadResponse(url, f"Transfer-Encoding {shown} is not one we read (chunked)")
    inner = getattr(response, "_fp", None)
    if isinstance(inner, http.client.HTTPResponse) and inner.fp is not None and not inner.chunked:
        inner.chunked, inner.chunk_left, inner.length = True, None, None


def content_length(response: Response) -> int | None:
    """The body length the response declares (None: unknown, e.g. chunked: RFC 9112 6.3,
    a Transfer-Encoding overrides any Content-Length); a value that is no byte count is a
    ``BadResponse``: its body framing cannot be trusted."""
    if transfer_codings(response.headers.get("Transfer-Encoding")) is not None:
        return None
    return parse_length(response.headers.get("Content-Length"), response_url(response))


def response_url(response: Response) -> str:
    return getattr(response, "url", None) or ""


def identity_encoded(headers: Mapping[str, str]) -> bool:
    """Whether a response's body (``headers``: its own) is as stored (no ``Content-Encoding``,
    or ``identity``): the value as ``send_get`` left it, its HTTP padding (spaces, tabs)
    trimmed there (``_trimmed``) and nothing else (``identity`` and a no-break space is
    another coding)."""
    return headers.get("Content-Encoding", "").lower() in ("", "identity")


def require_identity(url: str, response: Response) -> None:
    if not identity_encoded(response.headers):
        shown = escaped(response.headers["Content-Encoding"], 60)  # the server's text
        raise BadResponse(url, f"body is {shown}-encoded although identity was asked")


def retry_after(response: Response) -> float | None:
    """Seconds the server asked us to wait (delta-seconds or an HTTP date), if any."""
    return parse_retry_after(response.headers.get("Retry-After"))


def read_upto(url: str, response: Response, most: int, deadline: float) -> bytes:
    """At most ``most`` bytes of the body, each read as it comes. A socket silent for its
    read timeout ends a read, but one paced to never fall silent would not: a few bytes a
    second make a 4 MiB document last weeks, so past ``deadline`` it is a ``BadResponse``."""
    chunks: list[bytes] = []
    size = 0
    while size < most:
        if chunks and time.monotonic() > deadline:
            raise BadResponse(url, "the document did not arrive whole within the stall timeout")
        chunk = response.read1(most - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
