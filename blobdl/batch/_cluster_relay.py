"""A cluster run's events on the client, relayed to its caller.

Events come back through Dask's event log (``Worker.log_event`` -> ``Client.subscribe_topic``);
the handler runs on the client's IO thread and only queues them (``Relay.inbox``), so callbacks
run on the calling thread, while it waits for the tasks. A finished task's last events may
trail its result (they travel apart), so ``settle`` relays them before the result is used. An
event is taken off the inbox as one step (``whole``): a stop as it is taken takes effect once
it is noted as ``taken``, and one noted but not told to its end (a stop cut its telling
short) is told again as the run stops (``tell_taken``), as an item's cut-short last word is
(``Outcomes.cut``).
"""

from __future__ import annotations

import pickle
import queue
import time
from collections.abc import Callable
from typing import Any

from ..processes._signals import whole
from ._cluster_worker import Sent

#: How often the client wakes to relay events while it waits for tasks (seconds).
TICK = 0.1
#: How long a finished task's last events may trail its result before they are given up.
EVENTS_GRACE = 5.0

#: What the run tells: (the task's place, the event, the name of the worker it came from).
Tell = Callable[[int, Any, str], None]


class Relay:
    """The run's inbox, and what of it has been told: the events relayed per attempt
    (``seen``), and the one taken off the inbox but not yet told to its end (``taken``)."""

    def __init__(self, tell: Tell | None) -> None:
        self.tell = tell
        self.inbox: queue.SimpleQueue[tuple[float, dict[str, Any]]] = queue.SimpleQueue()
        self.seen: dict[str, int] = {}  # events relayed, per attempt
        self.taken: tuple[int, Any, str] | None = None  # off the inbox, not yet told to its end

    def settle(self, sent: Sent, deadline: float | None = None) -> None:
        """Relay what an attempt sent before its result is used (or give up after a while:
        ``EVENTS_GRACE``, or at ``deadline``)."""
        deadline = time.monotonic() + EVENTS_GRACE if deadline is None else deadline
        while self.seen.get(sent.attempt, 0) < sent.events and time.monotonic() < deadline:
            self.next(TICK)

    def queued(self) -> None:
        """Relay every event on the inbox now."""
        while self.next(None):
            pass

    def next(self, wait: float | None) -> bool:
        """The next event on the inbox (waited for up to ``wait`` s; None: one there now)
        taken and told; False if none came."""
        with whole():  # a stop as it is taken takes effect once it is noted
            try:
                _, record = (
                    self.inbox.get_nowait() if wait is None else self.inbox.get(timeout=wait)
                )
            except queue.Empty:
                return False
            self.seen[record["attempt"]] = self.seen.get(record["attempt"], 0) + 1
            self.taken = record["place"], pickle.loads(record["event"]), record["by"]
        self.tell_taken()
        return True

    def tell_taken(self) -> None:
        """Tell the event taken off the inbox; it stays ``taken`` until told to its end."""
        if self.taken is not None and self.tell is not None:
            self.tell(*self.taken)
        self.taken = None
