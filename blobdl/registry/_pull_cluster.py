"""``pull`` on a Dask cluster: whole on one worker, or once into every worker's store.

The pull runs on a worker as it would on one machine (``pull`` itself, handed in by
``_pull``), so the store is the one that worker sees: its ``models_dir``, or its own
``$OLLAMA_MODELS`` or home when none is given. For every worker, the workers are grouped by
the store they see (host and real path), and one pull runs per store, on one worker of it:
a fleet gets the model once per node, and a second run finds every blob in place.
Events, stopping and the scheduler's loss are the batch's (``batch._cluster_run``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ..batch._cluster_ask import Silent, Workers, ask, checked, present, said_if_silent
from ..batch._cluster_connect import connect
from ..batch._cluster_run import Run, task_error
from ..batch._cluster_worker import Channel, Leaving, Relay, Sent, Stopped, rescheduled
from ..config import Settings
from ..errors import BlobdlError, ClusterError, Interrupted
from ._pull_events import WorkerEvent

T = TypeVar("T")
#: How often a pull's client looks whether the workers of the running pulls are still there.
WORKERS_LOOK = 1.0
Pull = Callable[..., Any]  # blobdl.pull: (ref, models_dir, *, settings, on_event) -> PullResult


class _Done(NamedTuple):
    sent: Sent
    result: Any  # the PullResult, or None
    error: BlobdlError | None


def on_one_worker(
    cluster: Any,
    pull: Pull,
    ref: str,
    models_dir: str | os.PathLike[str] | None,
    settings: Settings,
    on_event: Callable[[Any], None] | None,
) -> Any:
    """``pull(ref, models_dir)`` on one of the cluster's workers; its PullResult."""
    tell = None if on_event is None else _events(on_event, tagged=False)
    with connect(cluster, threads=1) as client:
        workers = checked(client, settings.stall_timeout)  # (a silent scheduler raises)
        said_if_silent(workers)
        with Run(client, tell, settings.stall_timeout, workers.silent).open() as run:
            return _on_one(run, pull, ref, models_dir, settings)


def _on_one(
    run: Run, pull: Pull, ref: str, models_dir: str | os.PathLike[str] | None, settings: Settings
) -> Any:
    args = (pull, run.channel, ref, _fspath(models_dir), settings)
    future = run.submit(_pull_here, *args, key="blobdl-pull")
    return _outcome(run, next(run.gather([future]))[1])


def on_every_store(
    cluster: Any,
    pull: Pull,
    default_dir: Callable[[], Path],
    ref: str,
    models_dir: str | os.PathLike[str] | None,
    settings: Settings,
    on_event: Callable[[WorkerEvent], None] | None,
) -> dict[str, Any]:
    """``pull(ref, models_dir)`` once per store the workers see; {worker name: PullResult}.
    A worker that shares its store with another has that pull's result."""
    tell = None if on_event is None else _events(on_event, tagged=True)
    given = _fspath(models_dir)
    with connect(cluster, threads=1) as client:
        names, stores = _stores(client, given, default_dir, settings.stall_timeout)
        with Run(client, tell, settings.stall_timeout).open() as run:
            results, errors = _on_each(run, names, stores, pull, ref, given, settings)
    if errors:
        raise errors[0]
    return results


def _on_each(
    run: Run,
    names: dict[str, str],
    stores: dict[str, tuple[str, str]],
    pull: Pull,
    ref: str,
    given: str | None,
    settings: Settings,
) -> tuple[dict[str, Any], list[BlobdlError]]:
    """Each store's pull, on one worker of it: ({worker name: PullResult}, the errors)."""
    by_store: dict[tuple[str, str], list[str]] = {}
    for address, store in sorted(stores.items()):
        by_store.setdefault(store, []).append(address)
    futures = {}
    settings = _shared(settings, len(by_store))
    for n, addresses in enumerate(by_store.values()):
        args = (pull, run.channel, ref, given, settings)
        options = {"workers": addresses[:1], "allow_other_workers": False}
        futures[run.submit(_pull_here, *args, key=f"blobdl-pull-{n}", **options)] = addresses
    results: dict[str, Any] = {}
    errors: list[BlobdlError] = []
    lost = _Left(run.client, {f: a[0] for f, a in futures.items()}, names, run.within)
    for future, value in run.gather(list(futures), lost):
        try:
            result = _outcome(run, value)
        except BlobdlError as exc:
            errors.append(exc)
            continue
        results.update({names.get(a, a): result for a in futures[future]})
    return results, errors


def _shared(settings: Settings, pulls: int) -> Settings:
    """``--connections`` and ``--limit-rate`` are one budget across the cluster, as for a
    batch's items: the stores' pulls, side by side, share them (each its part: at least one
    connection, and a byte a second)."""
    if pulls <= 1:
        return settings
    connections = max(1, settings.connections // pulls)
    limit_rate = None if settings.limit_rate is None else max(1, settings.limit_rate // pulls)
    return dataclasses.replace(settings, connections=connections, limit_rate=limit_rate)


def _stores(
    client: Any, given: str | None, default_dir: Callable[[], Path], within: float
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """The workers' names, and {worker address: the store it sees}; a ClusterError unless
    every worker runs this blobdl and says which store it sees within ``within`` seconds:
    no store is said to have the model unless it was looked at."""
    workers = checked(client, within)
    if not workers.names:  # "every worker" of none: the model would be put nowhere, exit 0
        address = client.scheduler.address
        raise ClusterError(f"the Dask cluster at {address} has no worker to pull into")
    if workers.silent:
        raise workers.unanswered()
    seen = ask(client, _store_seen, given, default_dir, within=within)
    names = {a: workers.names.get(a, a) for a in seen}
    silent = [a for a, store in seen.items() if isinstance(store, Silent)]
    if silent:
        raise Workers(names, silent, within).unanswered()
    for address, store in seen.items():
        if isinstance(store, BaseException):
            raise ClusterError(f"worker {names[address]} cannot say which store it sees: {store}")
    return names, seen


class _Left:
    """The pulls whose worker left the cluster. Each is bound to its store's worker by
    address, and a worker its nanny restarts comes back under another: Dask would hold the
    pull for that address for ever. It fails instead; what it landed stays in the store, and
    the same command resumes it."""

    def __init__(
        self, client: Any, bound: dict[Any, str], names: dict[str, str], within: float
    ) -> None:
        self.client, self.bound, self.names, self.within = client, bound, names, within
        self.last = 0.0

    def __call__(self, pending: set[Any]) -> dict[Any, BaseException]:
        now = time.monotonic()
        if now - self.last < WORKERS_LOOK:
            return {}
        self.last = now
        here = set(present(self.client, within=self.within))
        left = {f: self.bound[f] for f in pending if self.bound[f] not in here}
        for future in left:
            future.cancel()
        return {
            future: ClusterError(
                f"worker {self.names.get(address, address)} left the cluster during its pull"
                " (what it fetched stays in its store: run the pull again)"
            )
            for future, address in left.items()
        }


def _events(on_event: Callable[[Any], None], *, tagged: bool) -> Callable[[int, Any, str], None]:
    def tell(place: int, event: Any, worker: str) -> None:
        on_event(WorkerEvent(worker, event) if tagged else event)

    return tell


def _outcome(run: Run, value: Any) -> Any:
    if not isinstance(value, _Done):
        raise task_error(value)
    run.relay.settle(value.sent)
    if value.error is not None:
        raise value.error
    return value.result


def _fspath(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


# --- on the worker ------------------------------------------------------------------------------


def _pull_here(
    pull: Pull, channel: Channel, ref: str, models_dir: str | None, settings: Settings
) -> _Done:
    relay = Relay(channel, 0)
    try:
        result = pull(ref, models_dir, settings=settings, on_event=relay)
    except BlobdlError as exc:
        return _Done(relay.summary(), None, exc)
    except Leaving:  # its worker is closing: the pull saved its state, to go on elsewhere
        raise rescheduled() from None
    except Stopped:
        return _Done(relay.summary(), None, Interrupted(signal.SIGTERM))
    return _Done(relay.summary(), result, None)


def _store_seen(models_dir: str | None, default_dir: Callable[[], Path]) -> tuple[str, str]:
    """The store this worker would pull into: its host, and the store's real path."""
    return socket.gethostname(), os.path.realpath(models_dir or default_dir())
