"""A range's body: the GET, its checks before a byte is read, and how it is read."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable
from typing import NamedTuple

import urllib3

from ..errors import (
    BadResponse,
    HTTPStatusError,
    RemoteChanged,
)
from ._headers import (
    parse_content_range,
    range_header,
)
from ._remote import Remote
from ._request import (
    Response,
    base_headers,
    content_length,
    require_identity,
    retry_after,
    send_get,
)
from ._span import Span


def _conditional_headers(remote: Remote) -> dict[str, str]:
    etag = remote.etag
    if etag and not etag.startswith("W/"):
        return {"If-Match": etag}
    if remote.last_modified:
        return {"If-Unmodified-Since": remote.last_modified}
    return {}


def open_range(pool: urllib3.PoolManager, remote: Remote, span: Span) -> Response:
    """GET ``span`` of the pinned remote; the response is checked before a byte is read."""
    headers = {
        **base_headers(remote.headers),
        **_conditional_headers(remote),
        "Range": range_header(span.start, span.end),
    }
    response = send_get(pool, remote.final_url, headers)
    try:
        _check_range_response(remote, span, response)
    except BaseException:
        response.close()
        raise
    return response


def _check_range_response(remote: Remote, span: Span, response: Response) -> None:
    url = remote.final_url
    if response.status == 412:
        raise RemoteChanged(url, "the pinned validator no longer matches (412)")
    if response.status == 200:
        raise BadResponse(url, "answered 200 (the whole blob) to a range request")
    if response.status != 206:
        raise HTTPStatusError(response.status, url, retry_after(response))
    _check_validators(remote, response)
    require_identity(url, response)
    text = response.headers.get("Content-Range", "")
    content_range = parse_content_range(text)
    if content_range and content_range.total is not None and content_range.total != remote.size:
        raise RemoteChanged(url, f"size changed from {remote.size} to {content_range.total}")
    if not content_range or content_range.span != span:
        raise BadResponse(url, f"asked for {range_header(*span)}, got Content-Range {text!r}")
    length = content_length(response)
    if length is not None and length != span.length:
        raise BadResponse(url, f"Content-Length {length} for a {span.length}-byte range")


def _check_validators(remote: Remote, response: Response) -> None:
    for name, pinned in (("ETag", remote.etag), ("Last-Modified", remote.last_modified)):
        seen = response.headers.get(name)
        if pinned and seen and seen != pinned:
            raise RemoteChanged(remote.final_url, f"{name} changed from {pinned} to {seen}")


def open_whole(pool: urllib3.PoolManager, remote: Remote) -> Response:
    """GET the whole blob (the fallback for servers without range support)."""
    response = send_get(pool, remote.final_url, base_headers(remote.headers))
    try:
        if response.status != 200:
            raise HTTPStatusError(response.status, remote.final_url, retry_after(response))
        require_identity(remote.final_url, response)
        _check_validators(remote, response)
        length = content_length(response)
        if remote.size is not None and length is not None and length != remote.size:
            raise RemoteChanged(remote.final_url, f"size changed from {remote.size} to {length}")
    except BaseException:
        response.close()
        raise
    return response


Reader = Callable[[memoryview], int]


def body_reader(response: Response) -> Reader:
    """A ``readinto``-style function over the body that returns as soon as *some* bytes
    arrived (so progress is visible on slow links) and copies straight into our buffer."""
    inner = getattr(response, "_fp", None)
    sock_file = getattr(inner, "fp", None)
    if isinstance(inner, http.client.HTTPResponse) and not inner.chunked and sock_file is not None:
        # A length-delimited (or read-to-close) body is the raw stream after the headers;
        # the caller never asks for more than the body holds.
        return sock_file.readinto1  # type: ignore[no-any-return]

    def read_decoded(view: memoryview) -> int:
        data = response.read1(len(view)) if hasattr(response, "read1") else response.read(len(view))
        view[: len(data)] = data
        return len(data)

    return read_decoded


def finish(response: Response, complete: bool) -> None:
    """Done with a ranged response: when its whole body was read, hand its connection back
    to the pool for the lane's next request; otherwise close it (unread bytes would be
    read as the next response)."""
    inner = getattr(response, "_fp", None)
    if not complete or not isinstance(inner, http.client.HTTPResponse) or inner.chunked:
        response.close()
        return
    # body_reader read the body past http.client's back: tell it the body is over, which
    # frees the connection for another request (http.client refuses one before that).
    inner.length = 0
    inner.read()
    response.release_conn()


class RawBody(NamedTuple):
    """A length-delimited body read straight off its socket, once ``buffered`` bytes
    (already read past the headers into http.client's buffer) are taken the ordinary way."""

    sock: socket.socket
    buffered: int
    tls: bool  # an ssl.SSLSocket: its bytes must be decrypted (never spliced)


def raw_body(response: Response) -> RawBody | None:
    """The socket under a length-delimited body (None for a chunked or decoded one, or a
    connection that is not a socket of ours, such as one through a TLS-in-TLS proxy).

    http.client's reader may already hold the first body bytes: ``peek`` tells how many
    (reading once from the socket if it holds none), so no byte is skipped or read twice."""
    inner = getattr(response, "_fp", None)
    sock_file = getattr(inner, "fp", None)
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if not isinstance(inner, http.client.HTTPResponse) or inner.chunked or sock_file is None:
        return None
    if not isinstance(sock, socket.socket) or type(sock) not in (socket.socket, ssl.SSLSocket):
        return None
    return RawBody(sock, len(sock_file.peek()), isinstance(sock, ssl.SSLSocket))
