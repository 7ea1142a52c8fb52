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

from .._said import escaped
from ..errors import ClusterError, UsageError
from ..processes._spawn import start_thread

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
    """``"local"`` -> one worker per CPU, ``"local:N"`` -> N; None for anything else.
    ``"local:"`` is refused: most likely ``local:$N`` with ``N`` empty, not a wish for a
    worker per CPU (``"local"`` says that)."""
    name, colon, count = cluster.partition(":")
    if name != "local":
        return None
    if not colon:
        return os.cpu_count() or 1
    # isdigit() alone holds for "²", which int() refuses, and for other scripts' digits.
    if not (count.isascii() and count.isdigit()) or not 1 <= int(count) <= 256:
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
        # Closed by its caller, or by a scheduler lost: Dask's own calls would fail inside
        # the run with an AttributeError (its scheduler's handle is None).
        if cluster.status == "closed":
            raise ClusterError("the distributed.Client given is closed: it reaches no scheduler")
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
    _usable(distributed, address)
    _answers(distributed, address)
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:  # Dask's words may quote what answered: escaped
        said = f"cannot reach the Dask scheduler at {address}: {escaped(str(exc))}"
        raise ClusterError(said) from None
    except Exception as exc:  # it answered as a scheduler, then not as one
        said = f"the Dask scheduler at {address} failed: {escaped(repr(exc))}"
        raise ClusterError(said) from None


#: The schemes whose location is HOST:PORT.
_HOST_PORT = ("tcp", "tls", "ws", "wss")


def _usable(distributed: ModuleType, address: str) -> None:
    """A UsageError unless ``address`` is one this Dask can connect to: its scheme known and
    usable here (ucx:// needs Dask's UCX support), its port a port."""
    try:
        scheme, location = distributed.comm.parse_address(address)
        distributed.comm.registry.get_backend(scheme).get_connector()
        if scheme in _HOST_PORT:
            _, port = distributed.comm.addressing.parse_host_port(location)
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is not a port (1-65535)")
    except Exception as exc:  # ValueError, or the TypeError of a scheme without its support
        raise UsageError(f"not a Dask scheduler address: {address}: {exc}") from None
    if (
        scheme == "tls"
        and distributed.Security().get_connection_args("client").get("ssl_context") is None
    ):
        raise UsageError(
            f"{address} is a TLS address, and Dask's TLS settings are missing "
            "(distributed.comm.tls.ca-file, .client.cert, .client.key)"
        )


def _answers(distributed: ModuleType, address: str) -> None:
    """Raise a ClusterError unless a Dask scheduler answers at ``address`` within
    ``CONNECT_TIMEOUT``. Dask's own connect bounds only the TCP connection, then waits for
    the handshake's reply for ever: a hung or foreign server would hang the batch. And
    what answers may be no scheduler: another protocol (whose bytes Dask reads as a frame
    count, up to a MemoryError), or a Dask worker or nanny (whose handshake is Dask's, and
    which then refuses the client's first question): it is asked who it is. Asked from a
    thread of its own, whose event loop is its own (the caller may run one: Jupyter)."""
    args = distributed.Security().get_connection_args("client")

    async def hello() -> Any:
        comm = await distributed.comm.connect(address, timeout=CONNECT_TIMEOUT, **args)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            await comm.close()

    async def bounded() -> Any:
        asking = asyncio.ensure_future(hello())
        done, _ = await asyncio.wait([asking], timeout=CONNECT_TIMEOUT)
        if not done:
            asking.cancel()
            raise TimeoutError(f"no Dask scheduler answered within {CONNECT_TIMEOUT:g} s")
        return asking.result()

    said: list[Any] = []

    def ask() -> None:
        try:
            said.append(asyncio.run(bounded()))
        except BaseException as exc:  # raised on the caller's thread
            said.append(exc)

    asking = threading.Thread(target=ask, name="blobdl-reach-scheduler", daemon=True)
    start_thread(asking)  # refused (a task limit): OutOfResources, one line
    asking.join()
    _said_scheduler(address, said[0])


def _said_scheduler(address: str, said: Any) -> None:
    """A ClusterError unless ``said`` (what ``address`` answered when asked who it is, or
    the exception asking it raised) is a scheduler's answer."""
    if isinstance(said, (OSError, TimeoutError)):  # Dask's CommClosedError is an OSError
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {escaped(str(said))}")
    if isinstance(said, BaseException) and not isinstance(said, Exception):
        raise said  # KeyboardInterrupt, SystemExit
    kind = said.get("type") if isinstance(said, dict) else None
    if kind == "Worker":
        scheduler = escaped(str(said.get("scheduler", "")))  # the worker's own text
        raise ClusterError(
            f"{address} is a Dask worker, not a scheduler: its scheduler is at {scheduler}"
        )
    if kind == "Nanny":
        raise ClusterError(f"{address} is a Dask worker's nanny, not a scheduler")
    if kind is None:
        raise ClusterError(
            f"{address} is not a Dask scheduler: what answers there does not speak Dask's protocol"
        )
