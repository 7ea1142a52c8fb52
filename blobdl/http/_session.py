"""A lane's session with the server: the one object through which a lane speaks HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import urllib3

from ..config import Settings
from ._body import RangeBody
from ._connections import Sockets, noted_in
from ._pool import make_pool
from ._remote import Remote
from ._span import Span
from ._translate import translate_errors


class Session:
    """One lane's connections to the server, and what ends them from another thread.

    ``opened`` gives the lane, for its attempt, a pool of its own (built in the lane's
    thread: pools never cross a fork), with every socket noted so that ``cut`` can wake the
    lane wherever it waits on the network, and any error translated into ours. Bodies come
    from ``range`` and ``whole``."""

    def __init__(self) -> None:
        self._sockets = Sockets()
        self._open: tuple[urllib3.PoolManager, Remote] | None = None  # within ``opened``

    def cut(self) -> None:
        """Shut down every socket the session opened; any thread may call it."""
        self._sockets.cut()

    @contextmanager
    def opened(self, settings: Settings, remote: Remote) -> Iterator[Session]:
        """The session, for one attempt at ``remote`` in the block; nothing of it lingers
        after (the process goes on with other lanes)."""
        with noted_in(self._sockets):
            pool = make_pool(settings)
            self._open = (pool, remote)
            try:
                with translate_errors(remote.final_url):
                    yield self
            finally:
                self._open = None
                pool.clear()

    def range(self, span: Span) -> RangeBody:
        """The body of ``span`` (see ``RangeBody.open``)."""
        pool, remote = self._opened()
        return RangeBody.open(pool, remote, span)

    def whole(self, start: int) -> RangeBody:
        """The whole blob's body, for the file from ``start`` (see ``RangeBody.whole``)."""
        pool, remote = self._opened()
        return RangeBody.whole(pool, remote, start)

    def _opened(self) -> tuple[urllib3.PoolManager, Remote]:
        assert self._open is not None, "a session's bodies come within `opened` only"
        return self._open
