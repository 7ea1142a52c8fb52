"""The remote one download pins, and its refresh when a signed URL expires.

Every lane fetches from ``remote.final_url``. Where that is a redirect's target it may be
signed and expire before the download ends (403/410, see ``_failure.decide``): ``refresh``
resolves the URL the user gave again and keeps the result only if it is the same blob.
``generation`` counts the refreshes, so a part whose attempt began before the last one
knows it was an old URL that failed, not its own.
"""

from __future__ import annotations

from collections.abc import Callable

from ..http._remote import Remote, require_same


class Pinned:
    """The remote every lane fetches from, refreshed in place when its URL expires."""

    def __init__(self, remote: Remote, resolve: Callable[[str], Remote]) -> None:
        self.remote = remote
        self.generation = 0  # bumped each time the remote is resolved again
        self._resolve = resolve  # the probe: a URL as the user gave it -> the remote now

    @property
    def redirected(self) -> bool:
        """The URL the lanes fetch from is a redirect's target (it may be signed, and expire)."""
        return self.remote.final_url != self.remote.url

    def refresh(self) -> None:
        """Resolve the original URL again (it blocks the caller: rare and short); raise
        ``RemoteChanged`` unless it is still the same blob."""
        fresh = self._resolve(self.remote.url)
        require_same(self.remote, fresh)
        # Probed while lanes run: a late status line is this machine's load (see _lane).
        answer_time = min(fresh.answer_time, self.remote.answer_time)
        self.remote = fresh._replace(answer_time=answer_time)
        self.generation += 1
