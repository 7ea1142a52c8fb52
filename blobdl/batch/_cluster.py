"""``download_many(..., cluster=...)``: a batch spread over a Dask cluster's workers.

Each item is two tasks (``_cluster_task``): its probe, then, once every probe is in and the
sizes are known, its download, largest first and one host's items interleaved with the
others' (``_cluster_order``). Each item runs whole on one worker, in blobdl's own processes
there; the connection budget is held across all workers with Dask's semaphores
(``_cluster_budget``); events, stopping and the scheduler's loss are the run's
(``_cluster_run``). The results are ``ItemResult``s, in order, as on one machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any
from urllib.parse import urlsplit

from .._redact import redact_url
from ..config import Settings
from ..errors import BlobdlError, Interrupted
from ..events import Failed, Finished, Started
from ._cluster_budget import Budget, close
from ._cluster_connect import connect
from ._cluster_order import Sized, start_order
from ._cluster_run import Run, task_error
from ._cluster_task import Job, Outcome, Probed, fetch, probe
from ._items import BatchCallback, BatchEvent, Item, ItemResult, first_of_each


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
    firsts = first_of_each(batch)  # usage errors before anything is submitted
    words = None if on_event is None else _LastWords(on_event)
    with connect(cluster, threads=max_connections) as client:
        run = Run(client, None if words is None else _batch_events(words.tell))
        budget = Budget(run.name, max_connections, per_host)
        jobs = [
            Job(i, item, _with_headers(settings, item), budget, base_dir, run.channel)
            for i, item in enumerate(batch)
            if firsts[i] == i
        ]
        hosts: set[str] = set()
        try:
            with run.open():
                outcomes = _Batch(run, None if words is None else words.tell, hosts).all(jobs)
        except Interrupted as stop:
            if words is not None:
                words.cut(batch, stop)
            raise
        finally:
            close(client, budget, hosts)
    return [_result_for(batch, firsts, outcomes, index) for index in range(len(batch))]


class _LastWords:
    """The batch's callback, and what it was told of each item: once the run is stopped,
    every item that started and has not ended gets its last word, ``failed`` (exit 130),
    as on one machine (``_scheduler._cut``); one that ended while the run stopped has had
    its own (its events are relayed before the run gives up its tasks, ``Run._stopped``)."""

    def __init__(self, on_event: BatchCallback) -> None:
        self.on_event = on_event
        self.started: dict[int, BatchEvent] = {}
        self.ended: set[int] = set()

    def tell(self, told: BatchEvent) -> None:
        if isinstance(told.event, Started):
            self.started.setdefault(told.item, told)
        elif isinstance(told.event, Finished | Failed):
            self.ended.add(told.item)
        self.on_event(told)

    def cut(self, batch: list[Item], stop: Interrupted) -> None:
        """A callback that fails now is not heard: the stop is what the caller gets."""
        for place, told in self.started.items():
            if place in self.ended:
                continue
            assert isinstance(told.event, Started)
            failed = Failed(redact_url(batch[place].url), told.event.path, str(stop),
                            stop.exit_code)  # fmt: skip
            with contextlib.suppress(Exception):
                self.tell(BatchEvent(place, failed, told.worker))


def _batch_events(on_event: BatchCallback) -> Any:
    def tell(place: int, event: Any, worker: str) -> None:
        on_event(BatchEvent(place, event, worker))

    return tell


def _with_headers(settings: Settings, item: Item) -> Settings:
    if not item.headers:
        return settings
    return dataclasses.replace(settings, headers=settings.headers + item.headers)


def _result_for(
    batch: list[Item], firsts: list[int], outcomes: dict[int, ItemResult], index: int
) -> ItemResult:
    """A duplicate shares its first's outcome, but fetched nothing itself."""
    first = outcomes[firsts[index]]
    result = first.result
    if index != firsts[index] and result is not None:
        result = dataclasses.replace(result, bytes_fetched=0, bytes_received=0, retries=0)
    return ItemResult(batch[index], result, first.error)


class _Batch:
    def __init__(self, run: Run, on_event: BatchCallback | None, hosts: set[str]) -> None:
        self.run, self.tell, self.hosts = run, on_event, hosts
        self.results: dict[int, ItemResult] = {}

    def all(self, jobs: list[Job]) -> dict[int, ItemResult]:
        """Probe every item, then download them in the order that suits the cluster."""
        probed = self._probe(jobs)
        self._fetch([job for job in jobs if job.place not in self.results], probed)
        return self.results

    def _probe(self, jobs: list[Job]) -> dict[int, Probed]:
        futures = {
            self.run.submit(probe, job, key=f"blobdl-probe-{job.place}"): job for job in jobs
        }
        probed: dict[int, Probed] = {}
        for future, value in self.run.gather(list(futures)):
            job = futures[future]
            if isinstance(value, BaseException):
                value = Probed("", None, task_error(value))
            probed[job.place] = value
            if value.error is not None:
                self._failed(job, value.worker, value.error)
        return probed

    def _fetch(self, jobs: list[Job], probed: dict[int, Probed]) -> None:
        by_place = {job.place: job for job in jobs}
        sized = [_sized(job, probed[job.place]) for job in jobs]
        self.hosts |= {s.host for s in sized}
        order = start_order(sized)
        futures = {}
        for rank, place in enumerate(order):  # submitted in order, and ranked for the queue
            job, remote = by_place[place], probed[place].remote
            key = f"blobdl-fetch-{place}"
            futures[self.run.submit(fetch, job, remote, key=key, priority=len(order) - rank)] = job
        for future, value in self.run.gather(list(futures)):
            job = futures[future]
            if isinstance(value, Outcome):
                self.run.settle(value.sent)
                self.results[job.place] = ItemResult(job.item, value.result, value.error)
            else:
                self._failed(job, "", task_error(value))

    def _failed(self, job: Job, worker: str, error: BlobdlError) -> None:
        """An item that failed where its download could not say so (its probe, its workers)."""
        if self.tell is not None:
            failed = Failed(
                redact_url(job.item.url), job.item.path or "", str(error), error.exit_code
            )
            self.tell(BatchEvent(job.place, failed, worker))
        self.results[job.place] = ItemResult(job.item, None, error)


def _sized(job: Job, probed: Probed) -> Sized:
    remote = probed.remote
    url = remote.final_url if remote is not None else job.item.url
    return Sized(job.place, urlsplit(url).hostname or "", remote.size if remote else None)
