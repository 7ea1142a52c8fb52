"""A task's side of a cluster run, on the Dask worker: its events, and when to stop.

Dask cannot cancel a running task (a thread cannot be interrupted), so a task looks for
itself, between the events its work sends and while it waits for a lease, whether it should
stop: the run's stop flag (a ``distributed.Event``) is set, its own future was cancelled or
released (the client went away), or the scheduler cannot be reached. Then ``Relay`` raises
``Stopped`` from the event callback, and blobdl's coordinator, whose callback raised, saves
its state and exits, as it would on a signal.
"""

from __future__ import annotations

import contextlib
import pickle
import time
import uuid
from typing import Any, NamedTuple

from ._cluster_connect import dask

#: Seconds between looks at the stop flag (each look asks the scheduler).
LOOK_EVERY = 0.5


class Stopped(Exception):
    """The run was stopped (or its client went away) while this task was working."""


class Channel(NamedTuple):
    """Where a run's tasks send their events and look for the stop flag."""

    topic: str  # the Dask event topic
    stop: str  # the name of the run's stop flag, a distributed.Event


class Sent(NamedTuple):
    """What one attempt at a task told the client, so it can wait for all of it."""

    worker: str  # the worker's name (its address if it has none)
    attempt: str  # this run of the task: a rerun after a worker died is another
    events: int


def worker_name() -> str:
    worker = dask().get_worker()
    return str(worker.name if worker.name is not None else worker.address)


class StopCheck:
    """Whether the task should stop; asked often, it looks at most every ``LOOK_EVERY``
    seconds, and once stopped it stays stopped."""

    def __init__(self, stop: str) -> None:
        distributed = dask()
        self.flag = distributed.Event(stop)
        self.worker = distributed.get_worker()
        self.key = distributed.worker.thread_state.key
        self.last = 0.0
        self.stop = False

    def stopped(self) -> bool:
        now = time.monotonic()
        if not self.stop and now - self.last >= LOOK_EVERY:
            self.last = now
            self.stop = self._released() or self._flagged()
        return self.stop

    def _released(self) -> bool:
        """The client cancelled or released our future (or went away)."""
        task = self.worker.state.tasks.get(self.key)
        return task is None or task.state not in ("executing", "long-running")

    def _flagged(self) -> bool:
        try:
            return bool(self.flag.is_set())
        except Exception:  # the scheduler cannot be reached: nobody is waiting for us
            return True


class Relay:
    """Events to the client through Dask's event log, each with the task's place in the
    run, this attempt and its number; raises ``Stopped`` into the work when it must stop."""

    def __init__(self, channel: Channel, place: int) -> None:
        self.channel, self.place = channel, place
        self.worker = dask().get_worker()
        self.name = worker_name()
        self.attempt = uuid.uuid4().hex
        self.sent = 0
        self.watch = StopCheck(channel.stop)

    def __call__(self, event: Any) -> None:
        self.send(event)
        if self.watch.stopped():
            raise Stopped

    def send(self, event: Any) -> None:
        self.sent += 1
        record: dict[str, Any] = {
            "place": self.place,
            "by": self.name,  # Dask adds "worker", the address; this is the worker's name
            "attempt": self.attempt,
            "event": pickle.dumps(event),  # the client trusts its cluster as Dask itself does
        }
        with contextlib.suppress(Exception):  # the scheduler gone: the watch stops us
            self.worker.log_event(self.channel.topic, record)

    def summary(self) -> Sent:
        return Sent(self.name, self.attempt, self.sent)
