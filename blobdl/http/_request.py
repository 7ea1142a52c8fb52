"""One GET as every request of ours makes it, and what any response must say.

Our headers (``User-Agent: blobdl/<version>``, identity encoding), no redirect followed,
the body left unread, errors translated; a response must be identity-encoded and declare
a length we can trust.
"""

from __future__ import annotations

import urllib3

from .._version import __version__
from ..errors import BadResponse
from ._headers import parse_length, parse_retry_after
from ._translate import translate_errors

Response = urllib3.BaseHTTPResponse


def base_headers(extra: tuple[tuple[str, str], ...]) -> dict[str, str]:
    # identity: a compressed body would make byte offsets meaningless (pip does the same).
    headers = {"User-Agent": f"blobdl/{__version__}", "Accept-Encoding": "identity"}
    headers.update(extra)
    return headers


def send_get(pool: urllib3.PoolManager, url: str, headers: dict[str, str]) -> Response:
    with translate_errors(url):
        return pool.request(
            "GET", url, headers=headers, redirect=False, preload_content=False, decode_content=False
        )


def content_length(response: Response) -> int | None:
    """The body length the response declares (None: unknown, e.g. chunked); a value that is
    no byte count is a ``BadResponse``: its body framing cannot be trusted."""
    if "chunked" in response.headers.get("Transfer-Encoding", "").lower():
        return None
    return parse_length(response.headers.get("Content-Length"), response_url(response))


def response_url(response: Response) -> str:
    return getattr(response, "url", None) or ""


def require_identity(url: str, response: Response) -> None:
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise BadResponse(url, f"body is {encoding}-encoded although identity was asked")


def retry_after(response: Response) -> float | None:
    """Seconds the server asked us to wait (delta-seconds or an HTTP date), if any."""
    return parse_retry_after(response.headers.get("Retry-After"))
