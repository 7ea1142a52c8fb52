"""Which Dask cluster a batch runs on, and the one place that imports ``distributed``.

``cluster`` is a ``distributed.Client`` (used as it is, never closed here), a scheduler
address (``tcp://HOST:8786``; connected for the call, then closed) or ``"local"`` /
``"local:N"`` (an embedded ``LocalCluster`` of N workers, started and stopped for the call).
``distributed`` is optional: without it, asking for a cluster is a usage error that says how
to install it, never an ImportError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
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
        _answers(distributed, address)
        return distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except UsageError:
        raise
    except ValueError as exc:  # Dask's parse of the address: no port, an unknown scheme
        raise UsageError(f"not a Dask scheduler address: {address}: {exc}") from None
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def _answers(distributed: ModuleType, address: str) -> None:
    """Raise unless something at ``address`` answers Dask's handshake within
    ``CONNECT_TIMEOUT``. Dask's own connect bounds only the TCP connection, then waits for
    the handshake's reply for ever: a hung or foreign server would hang the batch. Asked
    from a thread of its own, whose event loop is its own (the caller may run one: Jupyter)."""
    args = distributed.Security().get_connection_args("client")
    if address.startswith("tls://") and args.get("ssl_context") is None:
        raise UsageError(
            f"{address} is a TLS address, and Dask's TLS settings are missing "
            "(distributed.comm.tls.ca-file, .client.cert, .client.key)"
        )

    async def hello() -> None:
        comm = await distributed.comm.connect(address, timeout=CONNECT_TIMEOUT, **args)
        await comm.close()

    async def bounded() -> None:
        asking = asyncio.ensure_future(hello())
        done, _ = await asyncio.wait([asking], timeout=CONNECT_TIMEOUT)
        if not done:
            asking.cancel()
            raise TimeoutError(f"no Dask scheduler answered within {CONNECT_TIMEOUT:g} s")
        asking.result()

    failed: list[BaseException] = []

    def ask() -> None:
        try:
            asyncio.run(bounded())
        except BaseException as exc:  # raised on the caller's thread
            failed.append(exc)

    asking = threading.Thread(target=ask, name="blobdl-reach-scheduler", daemon=True)
    asking.start()
    asking.join()
    if failed:
        raise failed[0]
