"""What one download was asked, and the result it hands back.

``Order`` is fixed when the story starts (``_download``): the URL, the digest the bytes must
have, when it started, whom to tell, and what its batch lets it use (and at which host). The
``DownloadResult`` of a download is built here, from what the order knows and what the run
did, whichever way it ended: fetched (``result``) or found already in place (``in_place``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from ..events import DownloadResult, EventCallback
from ..http._remote import Remote
from ._parts import Tally
from ._share import Share


@dataclasses.dataclass(frozen=True)
class Order:
    url: str
    expected: str | None  # sha256 hex the bytes must have
    started: float
    tell: EventCallback
    share: Share | None = None  # what its batch lets it use now (None: not a batch's item)
    # Its batch's, if it counts the download's connections at one host: called with the
    # host of each request of its probe to another host (``resolve``'s ``to_host``).
    to_host: Callable[[str], None] | None = None
    # Whether the final rename may replace a file at the destination (force, or a digest);
    # else one that appears meanwhile (another program, the user) is refused, as it would
    # have been at the start.
    replace: bool = True

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def in_place(self, dest: Path, size: int, *, verified: bool) -> DownloadResult:
        """A destination already there, which the digest (``verified``) or the record of its
        download vouches for: nothing fetched."""
        return DownloadResult(dest, size, self.elapsed(), 0, 0, 0, self.url, "", verified=verified)

    def result(
        self, dest: Path, remote: Remote, tally: Tally, resumed: int, verified: bool
    ) -> DownloadResult:
        """A download renamed onto ``dest``: what the run did, as ``tally`` counts it."""
        return DownloadResult(
            path=dest,
            size=tally.final_size,
            elapsed=self.elapsed(),
            bytes_fetched=tally.bytes_fetched,
            bytes_received=tally.bytes_received,
            retries=tally.retries,
            parts=tally.parts,
            steals=tally.steals,
            url=remote.url,
            final_url=remote.final_url,
            resumed=resumed,
            verified=verified,
        )
