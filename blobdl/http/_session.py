"""A lane's session with the server: the one object through which a lane speaks HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import urllib3

from ..config import Settings
from ._body import RangeBody
from ._connections import Sockets, noted_in
from ._pool import make_pool
from ._probe import first_answer
from ._redirects import finish
from ._remote import Remote
from ._span import Span
from ._translate import translate_errors


class Session:
    """One lane's connections to the server, and what ends them from another thread.

    ``opened`` gives the lane, for its attempt, a pool of its own (built in the lane's
    thread: pools never cross a fork), with every socket noted so that ``cut`` can wake the
    lane wherever it waits on the network, and any error translated into ours. Bodies come
    from ``range`` and ``whole``.

    ``kept`` is the session of a batch's seat, which runs one small download after another:
    one pool for its whole life, so that its connection stays alive from one item to the
    next (one connection at most, to the origin it spoke to last: ``open_to``). There the
    first GET of an item is its probe too (``first``), and ``pinned`` says which remote the
    bodies of a retry come from. Its budget counts its connection against one host at a
    time (``counted``): a request to another (a redirect to a CDN) first asks it to move
    there (``ask``, which may wait for room, or raise)."""

    def __init__(self) -> None:
        self._sockets = Sockets()
        self._pool: urllib3.PoolManager | None = None
        self._remote: Remote | None = None  # whose bodies ``range`` and ``whole`` give
        # ``_remote`` is where a body's redirect led, not the one given: a 403 there is
        # that target's signature expiring (``_failure.decide``), on any later request too.
        self._hopped = False
        self._hops = 0  # redirects a body's GET follows (Settings.max_redirects)
        self._within = 0.0  # seconds an error answer's words may take (the stall timeout)
        self.counted: str | None = None  # a kept session's: the host its budget counts it at
        self._origin: tuple[str, str, int | None] | None = None  # a kept session's last request's
        self.ask: Callable[[str], None] | None = None  # moves ``counted`` to a host (kept)

    def cut(self) -> None:
        """Shut down every socket the session opened; any thread may call it."""
        self._sockets.cut()

    @contextmanager
    def opened(self, settings: Settings, remote: Remote) -> Iterator[Session]:
        """The session, for one attempt at ``remote`` in the block; nothing of it lingers
        after (the process goes on with other lanes)."""
        with noted_in(self._sockets):
            self._pool, self._remote = make_pool(settings), remote
            self._hops, self._hopped = settings.max_redirects, False
            self._within = settings.stall_timeout
            try:
                with translate_errors(remote.final_url):
                    yield self
            finally:
                pool, self._pool, self._remote = self._pool, None, None
                pool.clear()

    @contextmanager
    def kept(self, settings: Settings) -> Iterator[Session]:
        """The session of a seat, for all the items it runs in the block (its thread's)."""
        with noted_in(self._sockets):
            pool = make_pool(settings, kept=True, gate=self._gate)
            self._pool, self._hops = pool, settings.max_redirects
            self._within = settings.stall_timeout
            try:
                yield self
            finally:
                pool, self._pool, self._remote = self._pool, None, None
                pool.clear()

    def _gate(self, url: str) -> None:
        """A kept session's request to ``url`` goes out. To another origin, the connection
        it kept goes first: that request cannot use it, and one of another route (direct,
        or through a proxy, whose pools are apart) would stay open beside the new one. To
        another host, its budget moves there first (``ask``), holding nothing meanwhile."""
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port)
        if origin != self._origin:
            # Our duplicate of a socket urllib3 closed would keep it open: let go of it too.
            self.drop()
            self._origin = origin
        if origin[1] != self.counted and self.ask is not None:
            self.ask(origin[1])
        self.counted = origin[1]

    def first(self, url: str, settings: Settings, want: int) -> tuple[Remote, RangeBody | None]:
        """Probe ``url`` asking for its first ``want`` bytes (``first_answer``): the remote,
        and the whole blob's body if the answer holds all of it (a 206 of the whole blob, or
        a 200 that states a length up to ``want``). Else None, and the answer is closed
        unread: a larger blob is fetched the ordinary way."""
        pool = self._opened()
        with translate_errors(url):
            sent = time.monotonic()
            remote, response = first_answer(pool, url, settings, want)
            self._remote, self._hopped = remote, False
            size = remote.size
            if size is None or not 0 < size <= want:  # unknown, empty (a 416) or larger
                # Its body read if small (the one byte checking a file in place): the
                # connection stays for the seat's next item, where a close would lose it.
                finish(response, reuse=True)
                return remote, None
            within = settings.stall_timeout
            if remote.ranges:
                span = Span(0, size)
                return remote, RangeBody.from_response(response, remote, span, sent, within)
            return remote, RangeBody.whole_from_response(response, remote, 0, sent, within)

    @contextmanager
    def pinned(self, remote: Remote) -> Iterator[Session]:
        """Bodies of ``remote`` in the block, over a kept session, errors translated."""
        self._remote, self._hopped = remote, False
        with translate_errors(remote.final_url):
            yield self

    def drop(self) -> None:
        """Close a kept session's idle connection (a budget needs it for another item)."""
        self._opened().clear()
        self._sockets.let_go_of_closed()  # our duplicate alone would keep it open

    def open_to(self) -> str | None:
        """The host of the connection the session holds open, if any (a budget counts it)."""
        hosts = self._sockets.open_to()
        return hosts[0] if hosts else None

    def range(self, span: Span) -> RangeBody:
        """The body of ``span`` (see ``RangeBody.open``)."""
        pool, remote = self._opened(), self._pinned()
        hops, hopped = self._hops, self._hopped
        return self._went(RangeBody.open(pool, remote, span, hops, hopped, self._within))

    def whole(self, start: int) -> RangeBody:
        """The whole blob's body, for the file from ``start`` (see ``RangeBody.whole``)."""
        pool, remote = self._opened(), self._pinned()
        hops, hopped = self._hops, self._hopped
        return self._went(RangeBody.whole(pool, remote, start, hops, hopped, self._within))

    def _went(self, body: RangeBody) -> RangeBody:
        """A body redirected: the rest of the attempt asks its target (over the connection
        it holds, not a hop per request); the next attempt starts at the pinned URL again."""
        if body.remote is not self._remote:
            self._remote, self._hopped = body.remote, True
        return body

    def _opened(self) -> urllib3.PoolManager:
        assert self._pool is not None, "a session speaks within `opened` or `kept` only"
        return self._pool

    def _pinned(self) -> Remote:
        assert self._remote is not None, "a session's bodies are of a remote it was given"
        return self._remote
