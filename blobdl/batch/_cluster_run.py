"""A run's side of the cluster, on the client: its tasks, its events (relayed by
``_cluster_relay.Relay`` while it waits for the tasks), its stop flag.

Stopping: Dask cannot cancel a running task. On Ctrl-C, or a callback that raises, the run
sets its stop flag and waits for the running tasks to stop their work (a download saves its
state; see ``_cluster_worker``). Each step goes through the scheduler, within the stall
timeout: one that stopped answering ends the stop, which says so (``Interrupted``'s detail).
The scheduler lost is one ``ClusterError``: its workers, and the downloads they started, stop
with it.

A worker that stops answering (stopped, swapping, cut off) keeps its connection open, and the
scheduler counts it until its heartbeats have been missed for ``distributed.scheduler.
worker-ttl`` (5 minutes by default): what Dask gave it, or gives it meanwhile, waits that long.
So while the run waits, the workers holding its tasks are asked, each within the stall
timeout, whether they answer; the tasks of one that does not are cancelled and submitted
again, restricted to the workers that answer (or fail naming it, with none, or when a task
belongs to that worker). The worker itself is left to Dask: the cluster may serve others.

The scheduler that stops answering (stopped, swapping) keeps its connection open too, and
the run would wait for its tasks for ever: each question the run asks it is given the stall
timeout (``on_scheduler``), and one left unanswered ends the run with a ``ClusterError``
naming it; the end of the run then asks it nothing more (``Run.answers``). A download a
worker runs meanwhile goes on to its end, whole (its task never waits for the scheduler:
``_cluster_worker``); its spare interpreters, which only the scheduler can reach, end by
themselves once idle (``_spare``).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from .._said import escaped
from ..errors import BlobdlError, ClusterError, Interrupted
from ..processes import _spare
from ..processes._signals import Stop, interrupted, unheard
from ._cluster_ask import Workers, ask, holding, names, on_scheduler, present, silent_among
from ._cluster_connect import dask
from ._cluster_relay import EVENTS_GRACE, TICK, Relay, Tell
from ._cluster_worker import Channel, Sent

log = logging.getLogger("blobdl")

#: How long the running tasks get to stop their work (and save it) after a stop.
STOP_GRACE = 30.0

#: What a stop says when the scheduler did not pass it on to the workers.
GOING_ON = "the downloads running on its workers may go on (a file they finish is whole)"

#: How long the end of a run waits for the workers to end their spare interpreters (at
#: most: never longer than the stall timeout, after which a worker is silent anyway).
DROP_WAIT = 5.0
#: How often the run asks the workers holding its tasks whether they still answer (seconds).
LOOK_EVERY = 1.0

#: Which of the pending futures will never end, each with the error it ends in instead.
Lost = Callable[[set[Any]], dict[Any, BaseException]]


class Moved(NamedTuple):
    """A task taken from a worker that stopped answering: it runs again as ``future``."""

    future: Any


class _Call(NamedTuple):
    """A task as it was submitted, to submit it again elsewhere."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    key: str  # without the run's name
    options: dict[str, Any]


class Run:
    """One run of tasks on a cluster; ``with run.open():`` around its use."""

    def __init__(
        self, client: Any, tell: Tell | None, within: float, silent: Iterable[str] = ()
    ) -> None:
        """``within``: how long a worker holding our tasks may take to answer; ``silent``:
        the workers that already did not (given nothing while others answer)."""
        self.client, self.within = client, within
        self.silent = set(silent)
        self.calls: dict[str, _Call] = {}  # by key
        self.looked = time.monotonic()
        self.answering: list[str] | None = None  # the workers not silent, once asked
        self.name = uuid.uuid4().hex
        self.channel = Channel(f"blobdl-{self.name}", f"blobdl-{self.name}-stop", within)
        self.relay = Relay(tell)  # the run's events, told to ``tell``
        self.futures: list[Any] = []
        self.answers = True  # whether the scheduler answered every question of the run

    @property
    def tidy(self) -> bool:
        """Whether the end of the run may ask the scheduler to tidy up (it answers)."""
        return self.answers and reachable(self.client)

    @contextlib.contextmanager
    def open(self) -> Iterator[Run]:
        """Subscribed to the run's events; anything raised inside stops the run's tasks."""
        self.client.subscribe_topic(self.channel.topic, self.relay.inbox.put)
        try:
            yield self
        except BaseException as exc:
            raise self._stopped(exc) from None
        finally:
            if self.tidy:  # else every call would wait to reconnect (or an answer) first
                with contextlib.suppress(Exception):
                    self.client.unsubscribe_topic(self.channel.topic)
                self._drop_spares()

    def _drop_spares(self) -> None:
        """The workers' spare interpreters ended (``drop_spares``), the workers named by a
        scheduler that answers within ``within``: one that does not is asked nothing more,
        and neither is a worker this run found silent (its wait would only hold up the end;
        its spares end by themselves)."""
        with contextlib.suppress(Exception), self._asking():
            workers = present(self.client, within=self.within)
            answering = [w for w in workers if w not in self.silent]
            drop_spares(self.client, answering, min(DROP_WAIT, self.within))

    def submit(self, fn: Callable[..., Any], *args: Any, key: str, **options: Any) -> Any:
        """``fn(*args)`` as a task, on a worker that answers (``options`` may name others)."""
        call = _Call(fn, args, key, options)
        if self.silent and "workers" not in options:
            options = {**options, **self._elsewhere()}
        # retries=0: a task returns an item's own failure as a value; only a worker's death
        # reruns it (up to the scheduler's allowed-failures).
        future = self.client.submit(fn, *args, key=f"{key}-{self.name}", retries=0, **options)
        self.calls[future.key] = call
        self.futures.append(future)
        return future

    def _elsewhere(self) -> dict[str, Any]:
        """Restricted to the workers that answer; loosely: should they all leave, another
        that joins may run it (a silent one is asked again, as any)."""
        if self.answering is None:
            with self._asking():
                workers = present(self.client, within=self.within)
            self.answering = [a for a in workers if a not in self.silent]
        if not self.answering:
            return {}
        return {"workers": self.answering, "allow_other_workers": True}

    def gather(self, futures: list[Any], lost: Lost | None = None) -> Iterator[tuple[Any, Any]]:
        """(future, its value or the exception it ended in), as they finish; events are
        relayed meanwhile. ``lost(pending)`` may end some early, each with its error; a task
        held by a worker that stops answering runs again elsewhere under the same future, for
        the caller (``_unanswered``)."""
        distributed = dask()
        pending = set(futures)
        first: dict[Any, Any] = {}  # {a moved task's future: the future the caller knows}
        while pending:
            self.relay.queued()
            unheard()  # one a download the callback made heard, and the callback let pass
            with self._asking():
                ended = {**self._unanswered(pending), **(lost(pending) if lost else {})}
            for future, error in ended.items():
                pending.discard(future)
                if isinstance(error, Moved):
                    first[error.future] = first.pop(future, future)
                    pending.add(error.future)
                else:
                    yield first.pop(future, future), error
            if not pending:
                return
            try:
                done, _ = distributed.wait(list(pending), TICK, "FIRST_COMPLETED")
            except (TimeoutError, distributed.TimeoutError):
                continue
            except Exception as exc:
                raise self._lost(exc) from None
            for future in done:
                pending.discard(future)
                yield first.pop(future, future), self._value(future)

    @contextlib.contextmanager
    def _asking(self) -> Iterator[None]:
        """Around the run's questions to the scheduler: the only ClusterError they raise is
        its silence (``on_scheduler``), and the run asks it nothing more."""
        try:
            yield
        except ClusterError:
            self.answers = False
            raise

    def _unanswered(self, pending: set[Any]) -> dict[Any, Moved | BaseException]:
        """The pending tasks held by workers that do not answer within ``within``, each
        moved to the workers that do, or failed naming its worker."""
        if time.monotonic() - self.looked < LOOK_EVERY:
            return {}
        by_key = {future.key: future for future in pending}
        held = holding(self.client, set(by_key), within=self.within)
        silent = silent_among(self.client, sorted(held), self.within) if held else []
        self.looked = time.monotonic()
        if silent:
            self.silent.update(silent)
            self.answering = None
        ended: dict[Any, Moved | BaseException] = {}
        for address in silent:
            moved = {by_key[key]: self._again(by_key[key], address) for key in held[address]}
            if any(isinstance(m, Moved) for m in moved.values()):
                known = names(self.client, within=self.within)
                said = Workers(known, [address], self.within).unanswered()
                log.warning("%s: its tasks of this run go to the workers that answer", said)
            ended.update(moved)
        return ended

    def _again(self, future: Any, worker: str) -> Moved | BaseException:
        """The task of ``future``, taken from the silent ``worker``, on one that answers."""
        future.cancel()  # should the worker wake, the task sees it and stops (``StopCheck``)
        call = self.calls[future.key]
        elsewhere = {} if "workers" in call.options else self._elsewhere()
        if not elsewhere:  # bound to that worker, or no other answers
            known = names(self.client, within=self.within)
            return Workers(known, [worker], self.within).unanswered()
        key = f"{call.key}-again{len(self.futures)}"
        return Moved(self.submit(call.fn, *call.args, key=key, **call.options))

    def _value(self, future: Any) -> Any:
        try:
            return future.result()
        except Exception as exc:
            if self.client.status not in ("running", "connecting") or _scheduler_lost(exc):
                raise self._lost(exc) from None
            return exc

    def _lost(self, exc: BaseException) -> BaseException:
        """The scheduler gone is one line; anything else raised while waiting is a bug."""
        if self.client.status not in ("running", "connecting") or _scheduler_lost(exc):
            address = getattr(self.client.scheduler, "address", "")
            return ClusterError(f"lost the Dask scheduler {address}".rstrip())
        return exc

    def _stopped(self, why: BaseException) -> BaseException:
        """Stop every task's work (a download saves its state); return what to raise."""
        if isinstance(why, ClusterError):
            return why  # the scheduler is gone: its workers stop with it
        silence = self._stop_tasks()
        if not isinstance(why, Stop):  # a callback that raised is told no more: its own
            return why  # KeyboardInterrupt too (a job's cancel), which no signal raised
        stop = interrupted(why)  # Ctrl-C, or our own SIGINT/SIGTERM
        if silence is not None:  # its workers' tasks never saw the flag
            return Interrupted(stop.signum, f"{silence}: {GOING_ON}")
        with contextlib.suppress(Exception):  # what the tasks said as they stopped
            self._relay_ended()
        return stop

    def _stop_tasks(self) -> ClusterError | None:
        """Set the run's stop flag, drop the tasks no worker holds, wait for the running
        ones: each through the scheduler, each question within ``within``. The error of a
        scheduler that did not answer (the run asks it nothing more), or None."""
        for step in (self._flag_stop, self._drop_unstarted, self._wait_running):
            try:
                with self._asking():
                    step()
            except ClusterError as silence:
                return silence
            except Exception:  # one step that failed does not keep the next from running
                continue
        return None

    def _flag_stop(self) -> None:
        """The run's stop flag set (``distributed.Event.set``, asked within ``within``)."""
        on_scheduler(self.client, "event_set", within=self.within, name=self.channel.stop)

    def _drop_unstarted(self) -> None:
        """Cancel the tasks no worker holds (queued, or no worker at all): the grace is for
        running ones to save their state; these have none, and might wait for a worker for
        ever. One handed to a worker meanwhile sees itself cancelled, or the flag, and stops."""
        given = holding(self.client, {f.key for f in self.futures}, within=self.within)
        held = {key for keys in given.values() for key in keys}
        waiting = [f for f in self.futures if not f.done() and f.key not in held]
        if waiting:
            self.client.cancel(waiting)  # (a message on the client's stream: never waits)

    def _wait_running(self) -> None:
        """Up to ``STOP_GRACE`` for the running tasks to end, the scheduler asked every
        ``LOOK_EVERY`` whether it still answers: their ends come through it, and one that
        stops meanwhile would hold the wait to the grace's end."""
        distributed = dask()
        deadline = time.monotonic() + STOP_GRACE
        running = [f for f in self.futures if not f.done()]
        while running and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError, distributed.TimeoutError):
                distributed.wait(running, min(LOOK_EVERY, left))
            running = [f for f in running if not f.done()]
            if running:
                present(self.client, within=self.within)

    def _relay_ended(self) -> None:
        """Relay what the tasks said as they ended or stopped: all of what each that
        returned says it sent (its last events may trail its result, as ``settle`` knows:
        an item that finished just as the run stopped must be told so), ``EVENTS_GRACE``
        in all; then whatever else came."""
        self.relay.tell_taken()  # its telling cut short by the stop: told again
        deadline = time.monotonic() + EVENTS_GRACE
        for future in self.futures:
            with contextlib.suppress(Exception):
                if not future.done():  # still running after the grace: it says no more
                    continue
                left = max(TICK, deadline - time.monotonic())  # its value comes from its worker
                sent = getattr(future.result(timeout=left), "sent", None)
                if isinstance(sent, Sent):
                    self.relay.settle(sent, deadline)
        self.relay.queued()


def drop_spares(client: Any, workers: list[str], within: float = DROP_WAIT) -> None:
    """Each of ``workers`` ends the interpreters its task threads started ahead (``_spare``),
    each given ``within`` (``DROP_WAIT``, or the stall timeout if shorter): one that does
    not answer (stopped, swapping; the scheduler still counts it) must not hold up the end
    of the run. Its spares end by themselves, unused, after their idle time."""
    with contextlib.suppress(Exception):
        ask(client, _spare.drop_all, within=within, workers=workers)


def reachable(client: Any) -> bool:
    """Whether the client is still connected to its scheduler."""
    return bool(client.status == "running")


def task_error(exc: BaseException) -> BlobdlError:
    """A task that ended in an exception: its workers kept dying, or a bug of ours."""
    if type(exc).__name__ == "KilledWorker":
        return ClusterError(f"the workers running it died: {escaped(str(exc))}")
    if isinstance(exc, BlobdlError):
        return exc
    return BlobdlError(f"its task failed on the cluster: {escaped(repr(exc))}")


def _scheduler_lost(exc: BaseException) -> bool:
    return "scheduler-connection-lost" in str(exc)
