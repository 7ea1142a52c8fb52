"""The remote one download pins, and its refresh when a signed URL expires.

Every lane fetches from ``remote.final_url``. Where that is a redirect's target it may be
signed and expire before the download ends (403/410, see ``_failure.decide``): ``refresh``
resolves the URL the user gave again and keeps the result only if it is the same blob.
``generation`` counts the refreshes, so a part whose attempt began before the last one
knows it was an old URL that failed, not its own. ``Refresh`` is how a coordinator resolves
it again: its item's probe asked again, as its batch has it asked.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Settings
from ..http._probe import resolve
from ..http._remote import Remote, require_same
from ..processes._signals import Interrupts
from ._share import Receiving


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


class Refresh:
    """A coordinator's probe asked again: each backoff cut by a stop (``interrupts()``, the
    coordinator's once it runs), a batch's full server waited for while another of the
    batch receives there (``receiving``), and before a request to another host, the batch
    asked to count the item's lanes there first (``to_host``, a batch item's): a wait that
    only another process ends, which a stop ends at once. The lanes then started there are
    no more than its grant: ``_allowance`` counts those still running at the old host too."""

    def __init__(
        self,
        settings: Settings,
        receiving: Receiving,
        to_host: Callable[[str], None] | None,
        interrupts: Callable[[], Interrupts],
    ) -> None:
        self.settings, self.receiving = settings, receiving
        self.to_host, self.interrupts = to_host, interrupts

    def __call__(self, url: str) -> Remote:
        hop = None if self.to_host is None else self._hop
        return resolve(url, self.settings, sleep=self.interrupts().pause,
                       others_receiving=self.receiving.elsewhere, to_host=hop)  # fmt: skip

    def _hop(self, host: str) -> None:
        assert self.to_host is not None
        with self.interrupts().raising():
            self.to_host(host)
