"""A task's side of a cluster run, on the Dask worker: its events, and when to stop.

Dask cannot cancel a running task (a thread cannot be interrupted), so a task looks for
itself, between the events its work sends and while it waits for a lease, whether it should
stop: the run's stop flag (a ``distributed.Event``) is set, its own future was cancelled or
released (the client went away), or its worker is closing (``Leaving``: the task runs
again elsewhere). Then ``Relay`` raises ``Stopped`` from the event callback,
and blobdl's coordinator, whose callback raised, saves its state and exits, as it would on a
signal.

A running download holds all it needs (its URL, its path, its settings): the scheduler
stopped or gone, it goes on to its end. Its look at the stop flag is asked in the
background, within the stall timeout (``_cluster_later``), and a flag it cannot read is no
stop; its events go out on the worker's stream, which never waits (told late, or lost).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import pickle
import time
import uuid
from typing import Any, NamedTuple

from ._cluster_connect import dask
from ._cluster_later import later

#: Seconds between looks at the stop flag (each look asks the scheduler).
LOOK_EVERY = 0.5


#: A worker's states once it is closing (retired, told to close, its scheduler lost): what
#: it runs now is the scheduler's to give to another worker (``Worker.status``).
LEAVING = frozenset({"closing", "closed", "failed"})


class Stopped(Exception):
    """The run was stopped (or its client went away) while this task was working."""


class Leaving(Stopped):
    """This task's worker is closing: its work stops, and the task asks the scheduler to
    run it elsewhere (``distributed.Reschedule``), where it resumes. A retired worker
    gives its threads up to 30 s while the scheduler has already given their tasks to
    others: going on, this attempt would hold the item's destination (its rerun fails
    on the lock) and connections the budget no longer counts."""


class Channel(NamedTuple):
    """Where a run's tasks send their events and look for the stop flag."""

    topic: str  # the Dask event topic
    stop: str  # the name of the run's stop flag, a distributed.Event
    within: float  # how long a task's question to the scheduler is given (the stall timeout)


class Sent(NamedTuple):
    """What one attempt at a task told the client, so it can wait for all of it."""

    worker: str  # the worker's name (its address if it has none)
    attempt: str  # this run of the task: a rerun after a worker died is another
    events: int


def rescheduled() -> Exception:
    """What a task raises for the scheduler to run it on another worker."""
    error: Exception = dask().Reschedule()
    return error


def worker_name() -> str:
    worker = dask().get_worker()
    return str(worker.name if worker.name is not None else worker.address)


class StopCheck:
    """Whether the task should stop; asked often, it never waits: the stop flag is asked
    in the background, every ``LOOK_EVERY`` seconds at most, and read once answered. A
    look left unanswered within ``channel.within`` (the scheduler stopped, or gone) is no
    stop: the download goes on. Once stopped it stays stopped."""

    def __init__(self, channel: Channel) -> None:
        distributed = dask()
        self.client = distributed.get_client()
        self.worker = distributed.get_worker()
        self.key = distributed.worker.thread_state.key
        self.channel = channel
        self.last = 0.0
        self.look: concurrent.futures.Future[Any] | None = None  # asked, not yet read
        self.stop = False
        self.leaving = False

    def stopped(self) -> bool:
        if not self.stop:
            self.leaving = self.worker.status.name in LEAVING
            self.stop = self.leaving or self._released() or self._flagged()
        return self.stop

    def check(self) -> None:
        """``Leaving`` if this worker is closing, ``Stopped`` if the run is."""
        if self.stopped():
            raise Leaving if self.leaving else Stopped

    def _released(self) -> bool:
        """The client cancelled or released our future (or went away)."""
        task = self.worker.state.tasks.get(self.key)
        return task is None or task.state not in ("executing", "long-running")

    def _flagged(self) -> bool:
        """The flag's last answer, once it came (False meanwhile); then asked again."""
        look = self.look
        if look is not None:
            if not look.done():
                return False
            self.look = None
            return look.exception() is None and bool(look.result())
        if time.monotonic() - self.last >= LOOK_EVERY:
            self.last = time.monotonic()
            scheduler, name = self.client.scheduler, self.channel.stop
            self.look = later(
                self.client.loop, lambda: scheduler.event_is_set(name=name), self.channel.within
            )
        return False


class Relay:
    """Events to the client through Dask's event log, each with the task's place in the
    run, this attempt and its number; raises ``Stopped`` into the work when it must stop."""

    def __init__(self, channel: Channel, place: int) -> None:
        self.channel, self.place = channel, place
        self.worker = dask().get_worker()
        self.name = worker_name()
        self.attempt = uuid.uuid4().hex
        self.sent = 0
        self.watch = StopCheck(channel)

    def __call__(self, event: Any) -> None:
        self.send(event)
        self.watch.check()

    def send(self, event: Any) -> None:
        self.sent += 1
        record: dict[str, Any] = {
            "place": self.place,
            "by": self.name,  # Dask adds "worker", the address; this is the worker's name
            "attempt": self.attempt,
            "event": pickle.dumps(event),  # the client trusts its cluster as Dask itself does
        }
        # Never waits (the worker's stream buffers it); the scheduler gone, it is lost.
        with contextlib.suppress(Exception):
            self.worker.log_event(self.channel.topic, record)

    def summary(self) -> Sent:
        return Sent(self.name, self.attempt, self.sent)
