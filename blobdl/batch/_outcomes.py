"""What the caller of a batch learns: each item's events, passed on as they come (a
``BatchEvent`` to its callback), and each item's result once it ends. A duplicate shares its
first's outcome, but fetched nothing itself."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping

from ..engine._tell import failed as failed_event
from ..errors import BlobdlError, Interrupted, WorkerCrashed
from ..events import DownloadResult, Event, Failed, Finished, Started
from ..processes._child import Child
from ._items import BatchCallback, BatchEvent, Item, ItemResult


class Outcomes:
    """The batch's callback, and the result of every item that has ended (by index); on
    one machine or a cluster (where each event names the worker it came from)."""

    def __init__(self, tell: BatchCallback | None) -> None:
        self.tell = tell
        self.results: dict[int, ItemResult] = {}
        # Items whose last word (``Finished`` or ``Failed``) came, and that word: their
        # outcome follows it in a message of its own, which a stop may leave unread.
        self.ended: dict[int, BatchEvent] = {}
        # Of those, the ones whose callback heard it to its end: a stop that cut the callback
        # short (a signal raises in it at once) leaves it to ``cut`` to tell again.
        self.heard_last: set[int] = set()
        # Items told ``Started``: the path they write, and their worker.
        self.started: dict[int, tuple[str, str]] = {}

    @property
    def heard(self) -> bool:
        """Whether anyone hears events (else seats need not send them)."""
        return self.tell is not None

    def event(self, index: int, event: Event, worker: str = "") -> None:
        told = BatchEvent(index, event, worker)
        last = isinstance(event, Finished | Failed)
        if last and index in self.heard_last:
            return  # told again by a stop that came as its callback returned: heard once
        if last:
            self.ended[index] = told
        elif isinstance(event, Started):
            self.started.setdefault(index, (event.path, worker))
        if self.tell is not None:
            self.tell(told)
        if index in self.ended:
            self.heard_last.add(index)

    def said_last(self, index: int) -> bool:
        """Whether the item has had its last word: its outcome, or the event that ends it,
        heard to the end of its callback."""
        return index in self.results or index in self.heard_last

    def finished(self, index: int) -> DownloadResult | None:
        """The result the item's ``Finished`` told, if that was its last word."""
        told = self.ended.get(index)
        return told.event.result if told is not None and isinstance(told.event, Finished) else None

    def told_end(self, index: int) -> DownloadResult | BlobdlError | None:
        """How the item's last word said it ended, if it came: the result ``Finished`` told,
        or the failure ``Failed`` told (its message and exit code; its type stayed with the
        process that raised it)."""
        told = self.ended.get(index)
        if told is None or not isinstance(told.event, Failed):
            return self.finished(index)
        failure = BlobdlError(told.event.error)
        failure.exit_code = told.event.exit_code
        return failure

    def store(self, index: int, item: Item, outcome: DownloadResult | BlobdlError) -> None:
        self.ended.pop(index, None)  # its last word is needed no more: 10,000 items' add up
        if isinstance(outcome, DownloadResult):
            self.results[index] = ItemResult(item, outcome, None)
        else:
            self.results[index] = ItemResult(item, None, outcome)

    def failed(self, index: int, item: Item, exc: BlobdlError, worker: str = "") -> None:
        """An item failed where no download of it could report it (before it started, or
        its process died under it): say so for it."""
        if self.tell is not None:
            self.event(index, failed_event(item.url, item.path, exc), worker)
        self.store(index, item, exc)

    def cut(
        self, items: Mapping[int, Item], finished: Mapping[int, DownloadResult], stop: Interrupted
    ) -> None:
        """The batch was stopped: each item it cut gets its last word, a ``failed`` event
        (exit 130), as one that ended on its own gets ``finished``. One that said
        ``finished`` (or ``failed``) before the stop has had its last word already, and one
        whose result came while the batch stopped (``finished``) is told ``finished``: its
        file is in place. A callback that fails now is not heard: the stop is what the
        caller gets. ``items``: each as named by now (a path-less one: where it wrote).
        One whose last word the stop cut short in its callback is told that word again:
        the callback may have heard it (``held`` lines say it once), or not."""
        for index, item in items.items():
            if self.said_last(index):
                continue
            worker = self.started.get(index, ("", ""))[1]
            with contextlib.suppress(Exception):
                if (last := self.ended.get(index)) is not None:
                    self.event(index, last.event, last.worker)
                elif index in finished:
                    self.store(index, item, finished[index])
                    self.event(index, Finished(finished[index]), worker)
                else:
                    self.failed(index, item, stop, worker)

    def under_way(self, items: list[Item]) -> dict[int, Item]:
        """The items told ``Started`` (at the path they write) that have not ended."""
        return {
            index: items[index]._replace(path=path)
            for index, (path, _) in self.started.items()
            if not self.said_last(index)
        }

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


def died(proc: Child, silent: float | None = None) -> BlobdlError:
    """The error of an item whose process (its own, or its seat's) died under it: a crashed
    child (killed, out of memory), as a worker can be; not a bug of ours. ``silent``: the
    batch killed it, a stalled pool process quiet for that many seconds (``_beats``)."""
    if silent is not None:
        return WorkerCrashed(proc.exitcode, f"download process (silent for {silent:g} s, killed)")
    return WorkerCrashed(proc.exitcode, "download process")
