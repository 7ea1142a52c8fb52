"""Which Dask cluster a batch runs on, and the one place that imports ``distributed``.

``cluster`` is a ``distributed.Client`` (used as it is, never closed here), a scheduler
address (``tcp://HOST:8786``; connected for the call, then closed) or ``"local"`` /
``"local:N"`` (an embedded ``LocalCluster`` of N workers, started and stopped for the call).
``distributed`` is optional: without it, asking for a cluster is a usage error that says how
to install it, never an ImportError.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from ..errors import ClusterError, UsageError

#: How long reaching a scheduler may take before the batch gives up (Dask's default is 30 s).
CONNECT_TIMEOUT = 10.0
INSTALL_HINT = "pip install 'blobdl[dask]'"


def dask() -> ModuleType:
    """``distributed``, or a UsageError saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise UsageError(f"a cluster needs Dask's distributed package: {INSTALL_HINT}") from None
    return distributed


def local_workers(cluster: str) -> int | None:
    """``"local"`` -> one worker per CPU, ``"local:N"`` -> N; None for anything else."""
    name, _, count = cluster.partition(":")
    if name != "local":
        return None
    if not count:
        return os.cpu_count() or 1
    if not count.isdigit() or not 1 <= int(count) <= 256:
        raise UsageError(f"not a local cluster: {cluster!r} (try local or local:4)")
    return int(count)


@contextlib.contextmanager
def connect(cluster: Any, *, threads: int) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster``; one we started is closed on the way out.

    An embedded cluster's workers are threads of this process (``processes=False``): the
    downloads run in blobdl's own clean processes anyway (a Dask worker always has threads),
    and worker processes would be spawned, re-importing the caller's ``__main__``. Each
    worker gets ``threads`` threads, so that as many items can run as the budget allows."""
    distributed = dask()
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    if not isinstance(cluster, str) or not cluster:
        raise UsageError(
            f"cluster must be a distributed.Client, an address or local[:N]: {cluster!r}"
        )
    with _started(distributed, cluster, threads) as client:
        try:
            yield client
        finally:
            if client.status != "running":  # lost: closing would wait to reconnect first
                client.close(timeout=1)


@contextlib.contextmanager
def _started(distributed: ModuleType, cluster: str, threads: int) -> Iterator[Any]:
    workers = local_workers(cluster)
    with contextlib.ExitStack() as stack:
        if workers is not None:
            local = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=threads,
                processes=False,
                memory_limit=0,
                dashboard_address="127.0.0.1:0",  # None would still bind :8787
                silence_logs=logging.ERROR,
            )
            stack.enter_context(local)
            client = stack.enter_context(distributed.Client(local))
        else:
            client = stack.enter_context(_reach(distributed, cluster))
        yield client


def _reach(distributed: ModuleType, address: str) -> Any:
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
