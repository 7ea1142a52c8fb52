"""A range's body: ``RangeBody`` sends the GET, checks the answer before a byte is read,
lends the lane the fastest way to read it, and finishes it.

The lane's speed rests on http.client's internals (its socket file, its buffer, its notion
of how much body is left); they are used in ``RangeBody`` only.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import urllib3

from .._said import quoted
from ..errors import BadResponse, RemoteChanged
from ._chunks import StrictChunks
from ._connections import answer_time
from ._error_words import status_error
from ._headers import parse_content_range, range_header
from ._redirects import Answer, get_following
from ._remote import Identity, Remote, change
from ._request import Response, content_length, require_identity
from ._socket_reads import gathering
from ._span import Span

Reader = Callable[[memoryview], int]


class RangeBody:
    """One GET's body, checked; it ends at ``stop`` of the file (-1: at EOF).

    ``read`` is a ``readinto``-style function that returns as soon as *some* bytes arrived
    (so progress is visible on slow links) and copies straight into the caller's buffer:
    for a length-delimited body, the socket file's own ``readinto1``, called with no frame
    of ours in between. A ranged body also lends its ``sock`` (None: a chunked body, or a
    connection that is not a socket of ours, such as one through a TLS-in-TLS proxy) for
    reads past http.client: splice, or ``gathering``; the first ``buffered`` bytes are
    already in http.client's buffer and must be taken through ``read``, so no byte is
    skipped or read twice.

    Use it as a context manager, and say where reading stopped (``reached``): on leaving,
    its connection goes back to the pool when the whole body was read, else it is closed
    (unread bytes would be read as the next response)."""

    def __init__(self, response: Response, sent: float) -> None:
        self.answered = time.monotonic()
        # To the status line (the connection idled meanwhile), less setting the connection up.
        self.answer_time = answer_time(response, sent, self.answered)
        self.stop = -1
        self.sock: socket.socket | None = None
        self.buffered, self.tls = 0, False
        self._response, self._reached = response, -1
        self.remote: Remote | None = None  # as it answered: after a redirect, its target
        self._url, self._pinned_end = "", -1  # set for a whole body of no stated length
        inner = getattr(response, "_fp", None)
        # A chunked body, its framing checked chunk by chunk (``StrictChunks``).
        self._chunks = inner if isinstance(inner, StrictChunks) and inner.chunked else None
        if isinstance(inner, http.client.HTTPResponse) and not inner.chunked and inner.fp:
            # A length-delimited (or read-to-close) body is the raw stream after the
            # headers; the caller never asks for more than the body holds.
            self._inner: http.client.HTTPResponse | None = inner
            self.read: Reader = inner.fp.readinto1
        else:  # chunked, or not over http.client; or its body is over already (no fp)
            self._inner, self.read = None, _decoded_reader(response)

    @classmethod
    def open(
        cls,
        pool: urllib3.PoolManager,
        remote: Remote,
        span: Span,
        hops: int,
        hopped: bool,
        within: float,
    ) -> RangeBody:
        """GET ``span`` of the pinned remote, following up to ``hops`` redirects (a CDN or
        mirror that bounces a request): the blob is judged where it answers. ``hopped``:
        ``remote`` is already where an earlier request's redirect led. An error status is
        raised with what the server says of it, read within ``within`` seconds."""
        extra = {**_conditional_headers(remote), "Range": range_header(span.start, span.end)}
        answer = get_following(pool, remote.final_url, remote.headers, extra, hops)
        at, hopped = _at(remote, answer), hopped or answer.url != remote.final_url
        return cls.from_response(answer.response, at, span, answer.sent, within, hopped)

    @classmethod
    def from_response(
        cls,
        response: Response,
        remote: Remote,
        span: Span,
        sent: float,
        within: float,
        hopped: bool = False,
    ) -> RangeBody:
        """The body of ``span`` in ``response``, a ranged answer sent at ``sent`` (the
        probe's own answer, for a blob that fits in it), checked as ``open`` checks it.
        ``hopped``: a redirect of this attempt's own led to ``remote.final_url``."""
        body = cls(response, sent)
        body.remote = remote
        with body._closed_on_error():
            _check_range(remote, span, body._response, hopped, within)
            body.stop = span.end
            body._lend_socket()
        return body

    @classmethod
    def whole(
        cls,
        pool: urllib3.PoolManager,
        remote: Remote,
        start: int,
        hops: int,
        hopped: bool,
        within: float,
    ) -> RangeBody:
        """GET the whole blob (the fallback for servers without range support), into the
        file from ``start``, following up to ``hops`` redirects (``hopped``, ``within``: as
        ``open``); read the ordinary way only."""
        answer = get_following(pool, remote.final_url, remote.headers, {}, hops)
        at, hopped = _at(remote, answer), hopped or answer.url != remote.final_url
        return cls.whole_from_response(answer.response, at, start, answer.sent, within, hopped)

    @classmethod
    def whole_from_response(
        cls,
        response: Response,
        remote: Remote,
        start: int,
        sent: float,
        within: float,
        hopped: bool = False,
    ) -> RangeBody:
        """The whole blob in ``response``, a 200 sent at ``sent``, checked as ``whole``
        checks it (``hopped``: as ``from_response``)."""
        body = cls(response, sent)
        body.remote = remote
        with body._closed_on_error():
            length = _check_whole(remote, body._response, hopped, within)
            # Even when the probe learned no size, this response may state its length:
            # never read past it.
            body.stop = start + length if length is not None else -1
            if length is None and remote.size is not None:
                body._url, body._pinned_end = remote.final_url, start + remote.size
            if length is None and body._inner is not None:
                body._end_only_at_close_notify()
        return body

    def reached(self, pos: int) -> None:
        """Reading stopped at ``pos`` of the file. A whole body that stated no length and
        reached the blob's end as the probe stated it must end there: one that goes on is
        another blob (``RemoteChanged``), and its first bytes are not the one pinned."""
        self._reached = pos
        if self._chunks is not None and 0 <= self.stop == pos:
            self._chunks.ends_here()
        if pos == self._pinned_end and self.stop < 0 and self.read(memoryview(bytearray(1))):
            raise RemoteChanged(self._url, f"the body goes on past the {pos} bytes stated")

    @property
    def framed(self) -> bool:
        """Whether its bytes are handed out before their framing is checked (a chunked
        body): only then may ``unchecked`` be more than 0."""
        return self._chunks is not None

    def unchecked(self) -> int:
        """Bytes read whose framing is not checked yet (the current chunk's, of a chunked
        body): not the blob's until it is, so never counted as done (``Filler.take``)."""
        return self._chunks.unchecked() if self._chunks is not None else 0

    @contextmanager
    def gathering(self) -> Iterator[Reader]:
        """A reader of every record that has already arrived on ``sock`` (one write per
        batch, not per TLS record; see ``_socket_reads``), once ``buffered`` is taken."""
        assert self.sock is not None, "only a body that lends its socket can be gathered"
        with gathering(self.sock) as gatherer:
            yield gatherer.read

    def __enter__(self) -> RangeBody:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        inner = self._inner
        if kind is not None or inner is None or self.stop < 0 or self._reached != self.stop:
            self._response.close()
            return
        # The body was read past http.client's back: tell it the body is over, which frees
        # the connection for another request (http.client refuses one before that).
        inner.length = 0
        inner.read()
        self._response.release_conn()

    def _end_only_at_close_notify(self) -> None:
        """A body read to the connection's close ends, over TLS, only at close_notify: a
        TCP close without it (anyone on the path can forge one) is a truncation. Python
        reads such a close as a clean EOF (``suppress_ragged_eofs``); here it is an error."""
        # (The connection has let go of a socket that closes after this response.)
        sock: Any = getattr(self._inner, "source", None)
        if hasattr(sock, "suppress_ragged_eofs"):  # ssl.SSLSocket, urllib3's SSLTransport
            sock.suppress_ragged_eofs = False  # the connection is never reused after

    def _lend_socket(self) -> None:
        sock = getattr(getattr(self._response, "connection", None), "sock", None)
        # A socket, TLS or not (an https proxy's is ``SetUpSSLSocket``), not TLS in TLS.
        if self._inner is None or not isinstance(sock, socket.socket):
            return
        # http.client's reader may already hold the first body bytes: peek tells how
        # many (reading once from the socket if it holds none).
        self.buffered = len(self._inner.fp.peek())
        self.sock, self.tls = sock, isinstance(sock, ssl.SSLSocket)

    @contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self._response.close()
            raise


def _at(remote: Remote, answer: Answer) -> Remote:
    """``remote`` as ``answer`` found it: the same blob (what it must still be), fetched
    where the redirects led, with the headers still safe to send there."""
    if answer.url == remote.final_url:
        return remote
    return remote._replace(final_url=answer.url, headers=answer.headers)


def _decoded_reader(response: Response) -> Reader:
    """A ``readinto``-style function over a body http.client must decode (chunked)."""

    def read_decoded(view: memoryview) -> int:
        data = response.read1(len(view)) if hasattr(response, "read1") else response.read(len(view))
        view[: len(data)] = data
        return len(data)

    return read_decoded


def _conditional_headers(remote: Remote) -> dict[str, str]:
    etag = remote.etag
    if etag and not etag.startswith("W/"):
        return {"If-Match": etag}
    if remote.last_modified:
        return {"If-Unmodified-Since": remote.last_modified}
    return {}


def _check_range(
    remote: Remote, span: Span, response: Response, hopped: bool, within: float
) -> None:
    url = remote.final_url
    if response.status == 412:
        raise RemoteChanged(url, "the pinned validator no longer matches (412)")
    if response.status == 200:
        raise BadResponse(url, "answered 200 (the whole blob) to a range request")
    if response.status == 416:
        # "bytes */N" with another size than the probe's: the blob changed (as a 206's
        # total would say it), not a range of ours that is wrong.
        refused = parse_content_range(response.headers.get("Content-Range", ""))
        if refused and refused.total is not None and refused.total != remote.size:
            raise RemoteChanged(url, f"size changed from {remote.size} to {refused.total}")
    if response.status != 206:
        raise status_error(remote.final_url, response, within, hopped, remote.headers)
    _check_validators(remote, response)
    require_identity(url, response)
    text = response.headers.get("Content-Range", "")
    content_range = parse_content_range(text)
    if content_range and content_range.total is not None and content_range.total != remote.size:
        raise RemoteChanged(url, f"size changed from {remote.size} to {content_range.total}")
    if content_range and content_range.total is None:
        # The probe sized the blob (a ranged remote always has a size): an answer that no
        # longer states it proves nothing about which blob it is (an edge that lost it, or
        # another blob); like any bad response it is retried, never written.
        said = f"Content-Range {quoted(text)} states no total ({remote.size} probed)"
        raise BadResponse(url, said)
    if not content_range or content_range.span != span:
        raise BadResponse(url, f"asked for {range_header(*span)}, got Content-Range {quoted(text)}")
    length = content_length(response)
    if length is not None and length != span.length:
        raise BadResponse(url, f"Content-Length {length} for a {span.length}-byte range")


def _check_whole(remote: Remote, response: Response, hopped: bool, within: float) -> int | None:
    """The checks of a whole-blob answer; returns the length it states (None: none)."""
    if response.status != 200:
        raise status_error(remote.final_url, response, within, hopped, remote.headers)
    require_identity(remote.final_url, response)
    _check_validators(remote, response)
    length = content_length(response)
    if remote.size is not None and length is not None and length != remote.size:
        raise RemoteChanged(remote.final_url, f"size changed from {remote.size} to {length}")
    return length


def _check_validators(remote: Remote, response: Response) -> None:
    """The response's validators against the pinned ones (``_remote.change``: only one that
    differs is a change, one that is missing is not); the size is checked by the caller."""
    seen = Identity(
        remote.size, response.headers.get("ETag"), response.headers.get("Last-Modified")
    )
    changed = change(remote.identity, seen)
    if changed is not None:
        raise RemoteChanged(remote.final_url, changed)
