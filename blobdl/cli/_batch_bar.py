"""One bar for a batch on a cluster: bytes across every worker, items done and failed, and
what each worker has landed. JSON lines and the rest are the ``Display``'s."""

from __future__ import annotations

from ..batch._scheduler import BatchEvent
from ..events import Failed, Finished, Progress, Started
from ._display import Display


class BatchBar:
    """Feeds the display; in bar mode it draws the cluster's bar from the items' samples."""

    def __init__(self, display: Display) -> None:
        self.display = display
        self.sizes: dict[int, int] = {}  # item -> its size, once started
        self.landed: dict[int, int] = {}  # item -> bytes on disk
        self.by: dict[int, str] = {}  # item -> the worker that runs it
        self.done: set[int] = set()
        self.failed: set[int] = set()

    def event(self, batch_event: BatchEvent) -> None:
        self.display.item_event(batch_event)
        if self.display.mode != "bar" or self.display.dead:
            return
        if self._note(batch_event):
            self._draw()

    def _note(self, batch_event: BatchEvent) -> bool:
        item, event = batch_event.item, batch_event.event
        self.by[item] = batch_event.worker
        if isinstance(event, Started):
            self.sizes[item] = event.size or 0
            self.landed[item] = event.resumed
        elif isinstance(event, Progress):
            self.landed[item] = event.done
        elif isinstance(event, Finished):
            self.done.add(item)
            self.landed[item] = self.sizes[item] = event.result.size
        elif isinstance(event, Failed):
            self.failed.add(item)
        else:
            return False
        return True

    def _draw(self) -> None:
        per_worker: dict[str, int] = {}
        for item, landed in self.landed.items():
            per_worker[self.by[item]] = per_worker.get(self.by[item], 0) + landed
        workers = ", ".join(f"{w} {_mb(n)}" for w, n in sorted(per_worker.items()))
        postfix = f"{len(self.done)} done, {len(self.failed)} failed | {workers}"
        try:
            if self.display.bar is None:
                self.display._open_bar(None, 0)
            bar = self.display.bar
            bar.total = sum(self.sizes.values()) or None
            bar.set_postfix_str(postfix, refresh=False)
            bar.update(sum(self.landed.values()) - bar.n)
        except (OSError, ValueError) as exc:  # the terminal went away: stop drawing, go on
            self.display.bar_broke(exc)


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"
