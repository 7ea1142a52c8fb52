"""``download_many(..., cluster=...)``: a batch spread over a Dask cluster's workers.

The client (this module, in the caller's process) submits each item as two tasks
(``_cluster_task``): its probe, then, once every probe is in and the sizes are known, its
download, largest first and one host's items interleaved with the others' (``_cluster_order``).
Each item runs whole on one worker, in blobdl's own processes there. The connection budget
is held across all workers with Dask's semaphores (``_cluster_budget``).

Events come back through Dask's event log (``Worker.log_event`` -> ``Client.subscribe_topic``);
the handler runs on the client's IO thread and only queues them, so callbacks run here, on
the calling thread, each item's in order. The results are ``ItemResult``s as on one machine.

Stopping: Dask cannot cancel a running task. On Ctrl-C, or a callback that raises, the client
sets the batch's stop flag (a ``distributed.Event``) and waits for the running tasks to stop
their downloads (each saves its state); a task whose future is released stops the same way.
The scheduler lost is one ``ClusterError``; its workers' downloads stop with them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import queue
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .._redact import redact_url
from ..config import Settings
from ..errors import BlobdlError, ClusterError, Interrupted
from ..events import Event, Failed
from ._cluster_budget import Budget, close
from ._cluster_connect import connect, dask
from ._cluster_order import Sized, start_order
from ._cluster_task import Job, Outcome, Probed, fetch, probe
from ._scheduler import BatchCallback, BatchEvent, Item, ItemResult, _first_of_each

#: How often the client wakes to relay events while it waits for tasks (seconds).
TICK = 0.1
#: How long a finished item's last events may trail its result before they are given up.
EVENTS_GRACE = 5.0
#: How long the running tasks get to stop their downloads (and save them) after a stop.
STOP_GRACE = 30.0


def download_many_on(
    cluster: Any,
    batch: list[Item],
    settings: Settings,
    max_connections: int,
    per_host: int,
    on_event: BatchCallback | None,
    base_dir: str | None,
) -> list[ItemResult]:
    """``download_many`` on ``cluster`` (a Client, a scheduler address or local[:N])."""
    firsts = _first_of_each(batch)  # usage errors before anything is submitted
    with connect(cluster, threads=max_connections) as client:
        run = _Run(client, Budget(uuid.uuid4().hex, max_connections, per_host), on_event)
        jobs = [_job(run, index, item, settings, base_dir) for index, item in enumerate(batch)]
        with run.open():
            outcomes = run.all([jobs[i] for i in sorted(set(firsts))])
    return [_result_for(batch, firsts, outcomes, index) for index in range(len(batch))]


def _job(run: _Run, index: int, item: Item, settings: Settings, base_dir: str | None) -> Job:
    if item.headers:
        settings = dataclasses.replace(settings, headers=settings.headers + item.headers)
    return Job(index, item, settings, run.budget, base_dir, run.topic, run.stop_name)


def _result_for(
    batch: list[Item], firsts: list[int], outcomes: dict[int, ItemResult], index: int
) -> ItemResult:
    """A duplicate shares its first's outcome, but fetched nothing itself."""
    first = outcomes[firsts[index]]
    result = first.result
    if index != firsts[index] and result is not None:
        result = dataclasses.replace(result, bytes_fetched=0, bytes_received=0, retries=0)
    return ItemResult(batch[index], result, first.error)


class _Run:
    """One batch on the cluster: its tasks, its events, its stop flag."""

    def __init__(self, client: Any, budget: Budget, on_event: BatchCallback | None) -> None:
        self.client, self.budget, self.tell = client, budget, on_event
        self.topic = f"blobdl-{budget.run}"
        self.stop_name = f"blobdl-{budget.run}-stop"
        self.inbox: queue.SimpleQueue[tuple[float, dict[str, Any]]] = queue.SimpleQueue()
        self.seen: dict[str, int] = {}  # events relayed, per attempt
        self.hosts: set[str] = set()

    @contextlib.contextmanager
    def open(self) -> Any:
        self.client.subscribe_topic(self.topic, self.inbox.put)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # the scheduler may be gone
                self.client.unsubscribe_topic(self.topic)
                close(self.client, self.budget, self.hosts)

    def all(self, jobs: list[Job]) -> dict[int, ItemResult]:
        """Probe every item, then download them in the order that suits the cluster."""
        results: dict[int, ItemResult] = {}
        try:
            probed = self._probe(jobs, results)
            self._fetch([j for j in jobs if j.place not in results], probed, results)
        except BaseException as exc:
            raise self._stopped(exc) from None
        return results

    # --- the two phases ---------------------------------------------------------------------

    def _probe(self, jobs: list[Job], results: dict[int, ItemResult]) -> dict[int, Probed]:
        futures = {self._submit(probe, job, "probe"): job for job in jobs}
        probed: dict[int, Probed] = {}
        for future, value in self._gather(futures):
            job = futures[future]
            if isinstance(value, BaseException):
                value = Probed("", None, _lost_item(value))
            probed[job.place] = value
            if value.error is not None:
                self._failed(job, value.worker, value.error, results)
        return probed

    def _fetch(
        self, jobs: list[Job], probed: dict[int, Probed], results: dict[int, ItemResult]
    ) -> None:
        by_index = {job.place: job for job in jobs}
        sized = [_sized(job, probed[job.place]) for job in jobs]
        self.hosts |= {s.host for s in sized}
        order = start_order(sized)
        futures = {}
        for rank, index in enumerate(order):  # submitted in order, and ranked for the queue
            job = by_index[index]
            remote = probed[index].remote
            future = self._submit(fetch, job, "fetch", remote, priority=len(order) - rank)
            futures[future] = job
        for future, value in self._gather(futures):
            job = futures[future]
            if isinstance(value, BaseException):
                self._failed(job, "", _lost_item(value), results)
                continue
            self._settle(value)
            results[job.place] = ItemResult(job.item, value.result, value.error)

    # --- tasks --------------------------------------------------------------------------------

    def _submit(
        self, fn: Callable[..., Any], job: Job, what: str, *args: Any, priority: int = 0
    ) -> Any:
        key = f"blobdl-{what}-{self.budget.run}-{job.place}"
        # retries=0: an item that failed on its merits returned its error; only a worker's
        # death reruns a task (up to the scheduler's allowed-failures).
        return self.client.submit(fn, job, *args, key=key, priority=priority, retries=0)

    def _gather(self, futures: dict[Any, Job]) -> Any:
        """Yield (future, its value or exception) as they finish; relay events meanwhile."""
        distributed = dask()
        pending = set(futures)
        while pending:
            self._relay_queued()
            with contextlib.suppress(TimeoutError, distributed.TimeoutError):
                done, _ = distributed.wait(
                    list(pending), timeout=TICK, return_when="FIRST_COMPLETED"
                )
                for future in done:
                    pending.discard(future)
                    yield future, self._value(future)

    def _value(self, future: Any) -> Any:
        try:
            return future.result()
        except Exception as exc:
            if self.client.status not in ("running", "connecting") or _scheduler_lost(exc):
                raise ClusterError(f"lost the Dask scheduler: {exc}") from None
            return exc

    # --- events -------------------------------------------------------------------------------

    def _relay_queued(self) -> None:
        while True:
            try:
                _, record = self.inbox.get_nowait()
            except queue.Empty:
                return
            self._relay(record)

    def _settle(self, outcome: Outcome) -> None:
        """Relay a finished item's events before its result: they travel apart (the events
        through the scheduler's log), and its last one, Finished or Failed, may trail."""
        deadline = time.monotonic() + EVENTS_GRACE
        while self.seen.get(outcome.attempt, 0) < outcome.events and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self._relay(self.inbox.get(timeout=TICK)[1])

    def _relay(self, record: dict[str, Any]) -> None:
        self.seen[record["attempt"]] = self.seen.get(record["attempt"], 0) + 1
        if self.tell is not None:
            event: Event = pickle.loads(record["event"])
            self.tell(BatchEvent(record["item"], event, record["by"]))

    def _failed(
        self, job: Job, worker: str, error: BlobdlError, results: dict[int, ItemResult]
    ) -> None:
        """An item that failed before its download could say so (its probe, its workers)."""
        if self.tell is not None:
            failed = Failed(
                redact_url(job.item.url), job.item.path or "", str(error), error.exit_code
            )
            self.tell(BatchEvent(job.place, failed, worker))
        results[job.place] = ItemResult(job.item, None, error)

    # --- stopping -----------------------------------------------------------------------------

    def _stopped(self, why: BaseException) -> BaseException:
        """Stop every task's download (each saves its state); return what to raise."""
        if isinstance(why, ClusterError):
            return why  # the scheduler is gone: its workers stop with it
        with contextlib.suppress(Exception):
            dask().Event(self.stop_name, self.client).set()
        running = [f for f in self.client.futures.values() if f.key.startswith("blobdl-")]
        with contextlib.suppress(Exception):
            dask().wait(running, timeout=STOP_GRACE)
        if isinstance(why, KeyboardInterrupt):
            return Interrupted(signal.SIGINT)
        return why


def _sized(job: Job, probed: Probed) -> Sized:
    remote = probed.remote
    url = remote.final_url if remote is not None else job.item.url
    return Sized(job.place, urlsplit(url).hostname or "", remote.size if remote else None)


def _lost_item(exc: BaseException) -> BlobdlError:
    """A task that ended in an exception: its workers kept dying, or a bug of ours."""
    if type(exc).__name__ == "KilledWorker":
        return ClusterError(f"the workers running this item died: {exc}")
    if isinstance(exc, BlobdlError):
        return exc
    return BlobdlError(f"the item's task failed on the cluster: {exc!r}")


def _scheduler_lost(exc: BaseException) -> bool:
    return "scheduler-connection-lost" in str(exc)
