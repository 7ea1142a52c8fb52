"""What the caller of a batch learns: each item's events, passed on as they come (a
``BatchEvent`` to its callback), and each item's result once it ends. A duplicate shares its
first's outcome, but fetched nothing itself."""

from __future__ import annotations

import dataclasses

from .._redact import redact_url
from ..errors import BlobdlError, WorkerCrashed
from ..events import DownloadResult, Event, Failed, Finished
from ..processes._spawn import Child
from ._items import BatchCallback, BatchEvent, Item, ItemResult


class Outcomes:
    """The batch's callback, and the result of every item that has ended (by index)."""

    def __init__(self, tell: BatchCallback | None) -> None:
        self.tell = tell
        self.results: dict[int, ItemResult] = {}
        # Items whose last word (``Finished`` or ``Failed``) was passed on: their outcome
        # follows it in a message of its own, which a stop may leave unread.
        self.ended: set[int] = set()

    @property
    def heard(self) -> bool:
        """Whether anyone hears events (else seats need not send them)."""
        return self.tell is not None

    def event(self, index: int, event: Event) -> None:
        if isinstance(event, Finished | Failed):
            self.ended.add(index)
        if self.tell is not None:
            self.tell(BatchEvent(index, event))

    def said_last(self, index: int) -> bool:
        """Whether the item has had its last word: its outcome, or the event that ends it."""
        return index in self.results or index in self.ended

    def store(self, index: int, item: Item, outcome: DownloadResult | BlobdlError) -> None:
        if isinstance(outcome, DownloadResult):
            self.results[index] = ItemResult(item, outcome, None)
        else:
            self.results[index] = ItemResult(item, None, outcome)

    def failed(self, index: int, item: Item, exc: BlobdlError) -> None:
        """An item failed where no download of it could report it (before it started, or
        its process died under it): say so for it."""
        if self.tell is not None:
            failed = Failed(redact_url(item.url), item.path or "", str(exc), exc.exit_code)
            self.tell(BatchEvent(index, failed))
        self.store(index, item, exc)

    def of(self, items: list[Item], first: list[int]) -> list[ItemResult]:
        """One result per item, in order (``first``: each item's first of its kind)."""
        return [self._result_for(index, items, first) for index in range(len(items))]

    def _result_for(self, index: int, items: list[Item], first: list[int]) -> ItemResult:
        """A duplicate shares its first's outcome, but fetched nothing itself."""
        first_result = self.results[first[index]]
        result = first_result.result
        if index != first[index] and result is not None:
            result = dataclasses.replace(
                result, bytes_fetched=0, bytes_received=0, retries=0, steals=0
            )
        return ItemResult(items[index], result, first_result.error)


def died(proc: Child) -> BlobdlError:
    """The error of an item whose process (its own, or its seat's) died under it: a crashed
    child (killed, out of memory), as a worker can be; not a bug of ours."""
    return WorkerCrashed(proc.exitcode, "download process")
