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
import logging
from typing import Any
from urllib.parse import urlsplit

from ..config import Settings
from ..errors import BlobdlError, Interrupted, LocalFileError
from ..processes._signals import Stop, held, interrupted
from ._cluster_ask import Workers, checked, said_if_silent
from ._cluster_budget import Budget, close, most_held
from ._cluster_connect import connect
from ._cluster_order import Sized, start_order
from ._cluster_run import Run, task_error
from ._cluster_task import Job, Outcome, Probed, fetch, host_of, probe, wanted_by
from ._destinations import Destinations
from ._items import BY_INDEX, BatchCallback, Item, ItemResult, Numbering, first_of_each
from ._outcomes import Outcomes
from ._sizing import settings_for

log = logging.getLogger("blobdl")


def download_many_on(
    cluster: Any,
    batch: list[Item],
    settings: Settings,
    max_connections: int,
    per_host: int,
    on_event: BatchCallback | None,
    base_dir: str | None,
    numbering: Numbering = BY_INDEX,
) -> list[ItemResult]:
    """``download_many`` on ``cluster`` (a Client, a scheduler address or local[:N]); its
    errors name an item as ``numbering`` does."""
    firsts = first_of_each(batch, numbering=numbering)  # usage errors before anything is submitted
    outcomes = Outcomes(on_event)
    with connect(cluster, threads=max_connections) as client:
        workers = checked(client, settings.stall_timeout)
        _said_if_no_worker(client, workers)
        said_if_silent(workers)
        tell = None if on_event is None else outcomes.event
        run = Run(client, tell, settings.stall_timeout, workers.silent)
        budget = Budget(run.name, max_connections, per_host, max_connections)
        channel = run.channel
        jobs = [
            Job(i, numbering.one(i), item, settings_for(settings, item), budget, base_dir, channel)
            for i, item in enumerate(batch)
            if firsts[i] == i
        ]
        hosts: set[str] = set()
        try:
            with run.open():
                _Batch(run, outcomes, hosts, numbering).all(jobs)
        except (Interrupted, Stop) as exc:  # the items it cut are told so, as on one machine
            # (a Stop: a second signal landed while the run stopped its tasks)
            stop = interrupted(exc)
            with held(drop=True):  # a further signal must not cut the last words short
                outcomes.cut(outcomes.under_way(batch), {}, stop)
            raise stop from None
        finally:
            if run.tidy:  # a scheduler that stopped answering is asked nothing more
                with contextlib.suppress(Exception):  # the results stand
                    close(client, budget, hosts, within=settings.stall_timeout)
    return outcomes.of(batch, firsts)


def _said_if_no_worker(client: Any, workers: Workers) -> None:
    """A cluster with no worker runs nothing until one joins (an adaptive cluster starts
    them as tasks come): the batch waits, and says so rather than wait in silence."""
    if not workers.names:
        address = client.scheduler.address
        log.warning(
            "the Dask cluster at %s has no worker yet: the batch waits for one to join", address
        )


class _Batch:
    def __init__(self, run: Run, outcomes: Outcomes, hosts: set[str], numbering: Numbering) -> None:
        self.run, self.outcomes, self.hosts = run, outcomes, hosts
        self.numbering = numbering

    def all(self, jobs: list[Job]) -> None:
        """Probe every item, then download them in the order that suits the cluster."""
        probed = self._probe(jobs)
        self._fetch(self._named(jobs, probed), probed)

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

    def _named(self, jobs: list[Job], probed: dict[int, Probed]) -> list[Job]:
        """The jobs left to download, each item given no path named now, in the caller's
        order, as on one machine: a name the manifest or an earlier item gives already fails
        the later item alone (its workers, side by side, would overwrite one another). The
        name goes with the job, so the worker writes what was claimed; paths are compared
        as given (relative ones against one directory, as every worker resolves them
        against its own), and ``base_dir`` is applied on the worker."""
        cached = any(job.settings.cache_dir for job in jobs)
        given = {job.place: job.item.path for job in jobs if job.item.path is not None}
        destinations = Destinations(given, None, cached, numbering=self.numbering)
        left = []
        for job in jobs:
            if job.place in self.outcomes.results:
                continue
            try:
                item = destinations.by_url(job.place, job.item)
                remote = probed[job.place].remote
                if item.path is None and remote is not None:
                    item = destinations.after_probe(job.place, item, remote)
            except LocalFileError as exc:
                self._failed(job, probed[job.place].worker, exc)
                continue
            left.append(job._replace(item=item))
        return left

    def _fetch(self, jobs: list[Job], probed: dict[int, Probed]) -> None:
        jobs = _rated(jobs, probed)
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
                self.run.relay.settle(value.sent)
            finished = self.outcomes.finished(job.place)
            if finished is not None:  # what it told, whatever a rerun (its worker died) says
                self.outcomes.store(job.place, job.item, finished)
            elif isinstance(value, Outcome):
                outcome = value.result if value.error is None else value.error
                assert outcome is not None
                self.outcomes.store(job.place, job.item, outcome)
            else:
                self._failed(job, "", task_error(value))

    def _failed(self, job: Job, worker: str, error: BlobdlError) -> None:
        """An item that failed where its download could not say so (its probe, its workers)."""
        self.outcomes.failed(job.place, job.item, error, worker)


def _rated(jobs: list[Job], probed: dict[int, Probed]) -> list[Job]:
    """The jobs, their budget knowing the most connections their downloads can hold at
    once: --limit-rate is shared among those."""
    if not jobs:
        return jobs
    wanted = [
        (host_of(job, probed[job.place].remote), wanted_by(job, probed[job.place].remote))
        for job in jobs
    ]
    budget = jobs[0].budget
    budget = budget._replace(held_at_most=most_held(budget, wanted))
    return [job._replace(budget=budget) for job in jobs]


def _sized(job: Job, probed: Probed) -> Sized:
    remote = probed.remote
    url = remote.final_url if remote is not None else job.item.url
    return Sized(job.place, urlsplit(url).hostname or "", remote.size if remote else None)
