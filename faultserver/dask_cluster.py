"""A real Dask cluster on loopback, started with Dask's own command line: ``dask scheduler``
and one ``dask worker`` (with its nanny) per name, for ``tests/`` and ``benchmarks/``.

Every process of the cluster runs in one folder of its own (``root/cwd``), and so does
everything they start, blobdl's processes on the workers included: ``strays()`` lists
whatever runs there that is not the cluster itself, across the whole machine (a download
orphaned by a worker that died has left the cluster's process tree, not that folder).

Timeouts are shrunk as tests need them (``TEST_CONFIG``): a dead worker's leases expire in
about 2 s, not 40; a client gives up 5 s after losing its scheduler. What only watches the
cluster (its event loops' health, its machines' load, the tasks' profiles) is slowed or off:
it is the CPU an idle cluster burns, and no test reads it (``QUIET``; not in the benchmarks).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

_ROUTES = ("scheduler.prometheus", "scheduler.info", "scheduler.json", "health", "proxy",
           "statics", "scheduler.api")  # fmt: skip

TEST_CONFIG = {
    "DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_TIMEOUT": "2s",
    "DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_VALIDATION_INTERVAL": "0.5s",
    "DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING": "False",  # placement stays put
    "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s",
    # Dask's own routes, and its API's: /api/v1/get_workers answers worker_pids() without a
    # client (an interpreter importing Dask to ask, half a CPU-second each time).
    "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES": repr([f"distributed.http.{r}" for r in _ROUTES]),
}


#: Diagnostics only, each a timer in every scheduler, nanny and worker process: at Dask's
#: 20 ms ticks, 500 ms samples and 10 ms profiles a 2-worker cluster burns 0.09 cores idle,
#: 0.016 without. A loop blocked past the tick limit (3 s) is still logged. The tests' clusters
#: run without them (``start_cluster``'s ``quiet``); the benchmarks' as users run Dask.
QUIET = {
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "5s",
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
}


def dask_command(*flags: str) -> list[str]:
    """The ``dask`` command of this interpreter's environment (run with Python's ``flags``)."""
    return [sys.executable, *flags, str(Path(sys.executable).with_name("dask"))]


class DaskCluster:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.cwd = root / "cwd"
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.scheduler_file = root / "scheduler.json"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}  # name -> its nanny

    @property
    def address(self) -> str:
        address: str = json.loads(self.scheduler_file.read_text())["address"]
        return address

    def start_scheduler(
        self, env: dict[str, str] | None = None, flags: tuple[str, ...] = (), *, wait: bool = True
    ) -> None:
        """The scheduler; ``flags`` are its Python's, ``env`` added to its environment;
        ``wait``: return once it has written its address file (``scheduler_up``)."""
        command = [*dask_command(*flags), "scheduler", "--host", "127.0.0.1", "--port", "0"]
        command += ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
        command += ["--scheduler-file", str(self.scheduler_file)]
        self.scheduler = self._popen(command, {**self.env, **(env or {})}, "scheduler")
        if wait:
            self.scheduler_up()

    def scheduler_up(self) -> None:
        """Once the scheduler has written its address file."""
        _until(self._address_written, "the scheduler's address file")

    def _address_written(self) -> bool:
        """Dask writes its address file in place (open, then dump): it may exist empty, or
        half written, for a moment."""
        try:
            return bool(self.address)
        except (OSError, ValueError, KeyError):  # json.JSONDecodeError is a ValueError
            return False

    def start_worker(
        self,
        name: str,
        threads: int = 2,
        env: dict[str, str] | None = None,
        flags: tuple[str, ...] = (),
    ) -> None:
        """A worker (with its nanny); ``flags`` are its Python's, ``env`` added to its
        environment."""
        command = [*dask_command(*flags), "worker", "--scheduler-file", str(self.scheduler_file)]
        command += ["--host", "127.0.0.1", "--nthreads", str(threads), "--memory-limit", "0"]
        command += ["--no-dashboard", "--name", name, "--local-directory", str(self.root / name)]
        self.workers[name] = self._popen(command, {**self.env, **(env or {})}, name)

    def _popen(self, command: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        with (self.root / f"{log}.log").open("ab") as out:
            return subprocess.Popen(
                command,
                cwd=self.cwd,
                env={**os.environ, **TEST_CONFIG, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def worker_pids(self, count: int | None = None) -> dict[str, int]:
        """{worker name: the pid of its worker process}, once ``count`` (default: every
        worker started) have joined: the scheduler's own list of its workers (over its HTTP
        API: no Dask client, so no Dask thread lingers in the caller and no interpreter
        imports Dask to ask), each found as the process listening at its address. A worker
        the scheduler still lists and nothing listens for (killed, not yet dropped) has not
        joined."""
        count = len(self.workers) if count is None else count
        found: dict[str, int] = {}

        def joined() -> bool:
            nonlocal found
            found = self._running_workers()
            return len(found) >= count

        _until(joined, f"{count} joined workers")
        return found

    def _running_workers(self) -> dict[str, int]:
        """{name: pid} of the workers the scheduler counts, or {} while one it counts has no
        live process listening at its address."""
        port = json.loads(self.scheduler_file.read_text())["services"]["dashboard"]
        url = f"http://127.0.0.1:{port}/api/v1/get_workers"
        with _DIRECT.open(url, timeout=READY_TIMEOUT) as answer:
            workers = json.load(answer)["workers"]
        listening = self._listening()
        pids = {}
        for worker in workers:
            pid = listening.get(int(worker["address"].rsplit(":", 1)[1]))
            if pid is None:
                return {}
            pids[str(worker["name"])] = pid
        return pids

    def _listening(self) -> dict[int, int]:
        """{port: pid} of every port a process of the workers' trees listens on."""
        ports: dict[int, int] = {}
        for nanny in self.workers.values():
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(nanny.pid)
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        # psutil 6 renamed connections(); setup.cfg allows 5.9
                        listed = getattr(proc, "net_connections", None) or proc.connections
                        for conn in listed("tcp"):
                            if conn.status == psutil.CONN_LISTEN:
                                ports[conn.laddr.port] = proc.pid
        return ports

    def on_workers(self, source: str) -> dict[str, Any]:
        """{worker name: what ``probe()`` returned there}, where ``source`` defines
        ``probe()`` (it is shipped by value, and must return JSON); asked by a client of its
        own process, as ``worker_pids``."""
        found: dict[str, Any] = self._ask("probe failed", _ASK_PROBE, source)
        return found

    def _ask(self, failure: str, program: str, *args: str) -> Any:
        """What ``program`` (a client of its own process, given the scheduler's address and
        ``args``) printed as JSON."""
        ask = [sys.executable, "-c", program, self.address, *args]
        env = {**os.environ, **TEST_CONFIG}
        done = subprocess.run(ask, capture_output=True, text=True, env=env, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{failure}: {done.stderr[-2000:]}")
        return json.loads(done.stdout)

    def own_pids(self) -> set[int]:
        """The cluster's own processes: scheduler, nannies, worker processes, their trackers."""
        pids: set[int] = set()
        for proc in [self.scheduler, *self.workers.values()]:
            if proc is None or proc.poll() is not None:
                continue
            pids.add(proc.pid)
            with contextlib.suppress(psutil.Error):
                kids = psutil.Process(proc.pid).children(recursive=True)
                pids |= {c.pid for c in kids if _is_dask_helper(c)}
        return pids

    def strays(self) -> list[psutil.Process]:
        """Processes anywhere that run in the cluster's folder and are not the cluster."""
        own, found = self.own_pids(), []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.pid not in own and Path(proc.cwd()).is_relative_to(self.cwd):
                    found.append(proc)
        return found

    def stop(self) -> None:
        """The workers first (a worker whose scheduler went first would try to reconnect)."""
        for group in (list(self.workers.values()), [self.scheduler]):
            for proc in group:
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                if proc is None:
                    continue
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    _kill_tree(proc.pid)
                    proc.wait()
        for stray in self.strays():
            stray.kill()


def start_cluster(
    root: Path, workers: dict[str, dict[str, str]], threads: int = 2, *, quiet: bool = True
) -> DaskCluster:
    """A scheduler and one worker per name (each with its own extra environment); ``quiet``:
    without Dask's diagnostics (``QUIET``), as the tests run it."""
    cluster = DaskCluster(root, QUIET if quiet else {})
    # The workers start beside the scheduler, not after it: each nanny waits for the address
    # file (Dask's ``--scheduler-file``), so the interpreters import Dask at once (~1 s each).
    cluster.scheduler_file.unlink(missing_ok=True)
    try:
        cluster.start_scheduler(wait=False)
        for name, env in workers.items():
            cluster.start_worker(name, threads, env)
        cluster.scheduler_up()
        cluster.worker_pids()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _is_dask_helper(proc: psutil.Process) -> bool:
    """A process Dask itself starts under a nanny: the worker process, multiprocessing's
    resource tracker."""
    return "multiprocessing" in " ".join(_cmdline(proc))


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _kill_tree(pid: int) -> None:
    with contextlib.suppress(psutil.Error):
        for proc in [*psutil.Process(pid).children(recursive=True), psutil.Process(pid)]:
            with contextlib.suppress(psutil.Error):
                proc.kill()


_ASK_PROBE = """
import json, sys
from distributed import Client
address, source = sys.argv[1], sys.argv[2]
exec(source)
with Client(address, timeout=30) as client:
    found = client.run(probe)
    names = {a: str(w["name"]) for a, w in client.scheduler_info()["workers"].items()}
    print(json.dumps({names[a]: value for a, value in found.items()}))
"""


#: Loopback, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _until(ready: Any, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {READY_TIMEOUT} s")
        time.sleep(0.05)
