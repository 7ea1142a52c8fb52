"""Batches and pulls on a real Dask cluster: ``dask scheduler`` and two ``dask worker``
processes started with Dask's own command line (``faultserver/dask_cluster.py``), one cluster
for the module; the embedded ``LocalCluster`` for the library path.

The client is always a process of its own (the CLI, or a short script): Dask leaves threads
behind in any process that ran a client, and the rest of the session must not inherit them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from blobdl._version import __version__
from faultserver.dask_cluster import QUIET, DaskCluster, start_cluster
from faultserver.registry import Registry, start_registry
from faultserver.serverctl import ServerHandle, start_server
from tests.conftest import (
    REPO,
    Blob,
    interrupted_once_under_way,
    pipe_line,
    run_cli,
    sha256_file,
    spawn_cli,
)
from tests.integration.test_batch_names import named
from tests.integration.test_pull import assert_store, ref

# Installed by `make install` (the dask extra). Looked up, never imported here: importing
# distributed starts a thread, and the rest of the session must stay single-threaded.
if importlib.util.find_spec("distributed") is None:
    pytest.skip("distributed is not installed (pip install -e '.[dask]')", allow_module_level=True)

KB = 1024
PART = 256 * KB  # larger than the server's first unpaced step (64 KiB) of each request
SMALL = ("--min-part-size", str(PART), "--max-part-size", str(PART), "--progress-interval", "0.1")
Make = Callable[..., Blob]
#: Less than the 30 s a stopped run gives its running tasks: ending sooner shows it waited
#: for none.
STOP_GRACE_LESS = 20.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    root = tmp_path_factory.mktemp("dask")
    (root / "tmp").mkdir()  # the workers' temporary directory, one machine's: see worker_tmp
    stores = {
        name: {"OLLAMA_MODELS": str(root / f"models-{name}"), "TMPDIR": str(root / "tmp")}
        for name in ("w-a", "w-b")
    }
    handle = start_cluster(root, stores)
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _nothing_stray(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, nothing blobdl started on a worker is still running, orphans too."""
    yield
    if "cluster" in request.fixturenames:
        assert _settled(request.getfixturevalue("cluster")) == []


def _settled(
    cluster: DaskCluster, within: float = 10.0, but: Callable[[str], bool] = lambda _: False
) -> list[str]:
    """The command lines of what still runs in the cluster's folder (``cluster.strays``)
    after ``within`` seconds at most, leaving out those ``but`` accepts: a process a test
    expects to outlive the settle must not hold it to its end."""
    deadline = time.monotonic() + within
    while (strays := _lines(cluster.strays(), but)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return strays


def _lines(procs: list[psutil.Process], but: Callable[[str], bool]) -> list[str]:
    lines = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # it ended as it was looked at
            lines.append(" ".join(proc.cmdline()))
    return [line for line in lines if not but(line)]


def _spare(command: str) -> bool:
    """A spare interpreter on a worker (``_spare``): one the scheduler cannot reach to drop
    ends by itself once idle (``_spare.IDLE``: a minute)."""
    return "blobdl.processes._spare:spare_main" in command


def worker_tmp(cluster: DaskCluster) -> list[str]:
    """What is in the temporary directory the workers share."""
    return sorted(p.name for p in (cluster.root / "tmp").iterdir() if p.name.startswith("blobdl"))


def manifest(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "manifest.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def paced(server: ServerHandle, bps: int) -> None:
    """Every data request is served at ``bps`` (after its first 64 KiB): items last long
    enough to overlap."""
    server.set_faults({"path": "/files/*", "times": None, "action": "rate", "bps": bps})


def both_started(server: ServerHandle, blobs: list[Blob], bps: int) -> None:
    """Like ``paced``, and no data request of either blob is answered until the other blob's
    first one has come (the first request of each is its probe, served as it comes)."""
    one, other = (f"/files/{blob.name}" for blob in blobs)
    rule = {"skip": 1, "times": None, "action": "rate", "bps": bps}
    server.set_faults(rule | {"path": one, "after": {"path": other, "requests": 2}},
                      rule | {"path": other, "after": {"path": one, "requests": 2}})  # fmt: skip


# --- the scheduler's address ----------------------------------------------------------------

REACH = """
import json, sys
import blobdl
from blobdl.batch import _cluster_connect
_cluster_connect.CONNECT_TIMEOUT = 1.0  # the test's patience, not the user's 10 s
answers = []
for address in sys.argv[1:]:
    try:
        blobdl.download_many([blobdl.Item("http://127.0.0.1:9/x.bin", "x.bin")], cluster=address)
    except blobdl.BlobdlError as exc:
        answers.append([type(exc).__name__, exc.exit_code, str(exc)])
print(json.dumps(answers))
"""


def test_an_address_that_is_not_a_dask_scheduler_is_one_clear_error_not_a_hang(
    tmp_path: Path,
) -> None:
    """Something that accepts connections and never answers as Dask does (a hung or foreign
    server: Dask's own connect waits for its handshake's reply for ever), a TLS address
    without Dask's TLS settings, an address without a port: one error each, in time."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # never accepted: the kernel still completes each connection
        port = silent.getsockname()[1]
        script = tmp_path / "client.py"
        script.write_text(textwrap.dedent(REACH))
        addresses = [f"tcp://127.0.0.1:{port}", f"tls://127.0.0.1:{port}", "tcp://127.0.0.1"]
        done = subprocess.run([sys.executable, str(script), *addresses], capture_output=True,
                              text=True, timeout=30, cwd=tmp_path, env={**os.environ,
                              "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    silent_one, tls, no_port = json.loads(done.stdout.splitlines()[-1])
    assert silent_one[:2] == ["ClusterError", 3], silent_one
    assert "no Dask scheduler answered within 1 s" in silent_one[2]
    assert tls[:2] == ["UsageError", 2] and "TLS" in tls[2], tls
    assert no_port[:2] == ["UsageError", 2], no_port


FOREIGN = """
import contextlib, json, socket, sys, threading
import blobdl
from blobdl.batch import _cluster_connect
_cluster_connect.CONNECT_TIMEOUT = 5.0  # nothing here may need it: each answers at once

def serving(reply):  # a port whose every connection is sent reply, then closed
    listener = socket.create_server(("127.0.0.1", 0))
    def serve():
        while True:
            conn, _ = listener.accept()
            with conn, contextlib.suppress(OSError):  # the client may close first
                conn.sendall(reply)
    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]

banner = serving(b"SSH-2.0-OpenSSH_9.6\\r\\n")  # a frame count of 3e18: 2.8 EiB to allocate
ones = serving(b"\\xff" * 65536)  # a frame count that is not one
web = serving(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nhi")  # to any request
addresses = [f"tcp://127.0.0.1:{banner}", f"tcp://127.0.0.1:{ones}", f"ws://127.0.0.1:{web}",
             *sys.argv[1:]]
answers = []
for address in addresses:
    try:
        blobdl.download_many([blobdl.Item("http://127.0.0.1:9/x.bin", "x.bin")], cluster=address)
    except Exception as exc:
        answers.append([type(exc).__name__, getattr(exc, "exit_code", None), str(exc)])
print(json.dumps(answers))
"""

DASK_ROLES = """
def probe(dask_worker):
    return [dask_worker.address, dask_worker.nanny]
"""


def test_an_address_where_something_else_answers_is_one_clear_error_naming_it(
    cluster: DaskCluster, tmp_path: Path
) -> None:
    """What answers at once, and not as a Dask scheduler does: another protocol's bytes (an
    SSH banner, whose first 8 bytes Dask reads as a frame count), a web server asked over
    ws://, a Dask worker's or its nanny's address given for the scheduler's (each answers
    Dask's handshake, then refuses the client's first question). And addresses Dask takes
    and cannot use: a port out of range, a scheme this Dask cannot connect over. One line
    each, at once: never a traceback, never a usage error for what is a real address."""
    worker, nanny = cluster.on_workers(DASK_ROLES)["w-a"]
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(FOREIGN))
    addresses = [worker, nanny, "tcp://127.0.0.1:99999", "ucx://127.0.0.1:8786"]
    done = subprocess.run([sys.executable, str(script), *addresses], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path, env={**os.environ,
                          "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    banner, ones, ws, on_worker, on_nanny, port, ucx = json.loads(done.stdout.splitlines()[-1])
    foreign = "is not a Dask scheduler: what answers there does not speak Dask's protocol"
    for answer in (banner, ones, ws):
        assert answer[:2] == ["ClusterError", 3] and foreign in answer[2], answer
    assert on_worker == [
        "ClusterError", 3,
        f"{worker} is a Dask worker, not a scheduler: its scheduler is at {cluster.address}",
    ]  # fmt: skip
    assert on_nanny == ["ClusterError", 3, f"{nanny} is a Dask worker's nanny, not a scheduler"]
    assert port[:2] == ["UsageError", 2] and "port" in port[2], port
    assert ucx[:2] == ["UsageError", 2] and "ucx" in ucx[2], ucx


# --- workers that cannot run this blobdl --------------------------------------------------------


def without_blobdl() -> dict[str, Any]:
    """A Dask process whose Python imports Dask and not blobdl: no site (so no editable install's
    finder), the environment's site-packages on its path alone."""
    return {"flags": ("-S",), "env": {"PYTHONPATH": sysconfig.get_path("purelib")}}


def with_blobdl_version(root: Path, version: str) -> dict[str, Any]:
    """A worker whose blobdl is this one under another version number."""
    shutil.copytree(REPO / "blobdl", root / "blobdl", ignore=shutil.ignore_patterns("__pycache__"))
    source = root / "blobdl" / "_version.py"
    source.write_text(source.read_text().replace(f'"{__version__}"', f'"{version}"'))
    return {"env": {"PYTHONPATH": str(root)}}


def test_workers_that_cannot_run_this_blobdl_are_one_clear_error_naming_them_not_a_wait(
    tmp_path: Path,
) -> None:
    """A task reaching a worker without blobdl kills the worker (Dask cannot read the task),
    and the run would wait for a worker for ever; one with another blobdl would run other
    code. Each is named, before anything is submitted, and the workers live on."""
    own = DaskCluster(tmp_path / "dask", QUIET)
    try:
        own.start_scheduler()
        own.start_worker("bare", **without_blobdl())
        own.start_worker("old", **with_blobdl_version(tmp_path / "old", "0.0.1"))
        pids = own.worker_pids()
        lines = ["http://127.0.0.1:9/x.bin " + str(tmp_path / "x.bin")]
        runs = [
            ("-i", manifest(tmp_path, lines), "--scheduler", own.address),
            ("pull", "llama3.2:1b", "--scheduler", own.address),
            ("pull", "llama3.2:1b", "--scheduler", own.address, "--every-worker"),
        ]
        for args in runs:
            done = run_cli(*args, timeout=STOP_GRACE_LESS)
            assert done.returncode == 3, (args, done.stdout, done.stderr)
            assert done.stderr.splitlines() == [
                f"blobdl: error: the Dask cluster must run this blobdl ({__version__}): worker bare"
                " cannot import it (No module named 'blobdl'); worker old"
                " runs blobdl 0.0.1"
            ]
        # None was killed by a task: each is the process that joined (a nanny restarts one).
        assert own.worker_pids() == pids
    finally:
        own.stop()


def test_a_workers_hostile_answer_is_said_escaped_and_cut(tmp_path: Path) -> None:
    """What a worker answers (its blobdl's version) is its own text: a terminal escape, a CR
    or a flood in it is shown escaped and cut, in the error line as in a library's error."""
    own = DaskCluster(tmp_path / "dask", QUIET)
    hostile = "0.0.1\x1b]0;pwned\x07\r\u202e" + "9" * 60_000
    root = tmp_path / "hostile"
    shutil.copytree(REPO / "blobdl", root / "blobdl", ignore=shutil.ignore_patterns("__pycache__"))
    source = root / "blobdl" / "_version.py"
    source.write_text(source.read_text().replace(f'"{__version__}"', repr(hostile)))
    try:
        own.start_scheduler()
        own.start_worker("w-h", env={"PYTHONPATH": str(root)})
        own.worker_pids()
        lines = ["http://127.0.0.1:9/x.bin " + str(tmp_path / "x.bin")]
        done = run_cli("-i", manifest(tmp_path, lines), "--scheduler", own.address)
    finally:
        own.stop()
    assert done.returncode == 3, (done.stdout, done.stderr[:2000])
    [line] = done.stderr.splitlines()
    assert len(line) < 1_000 and line.isprintable(), line[:2000]
    assert "worker w-h runs blobdl 0.0.1\\x1b]0;pwned\\x07\\r\\u202e999" in line, line[:2000]


def test_a_scheduler_that_cannot_run_this_blobdl_is_one_clear_error_naming_it(
    tmp_path: Path,
) -> None:
    """The scheduler reads every task (ours are blobdl's functions and records): without
    blobdl it would fail each item with Dask's words about environments."""
    own = DaskCluster(tmp_path / "dask", QUIET)
    try:
        own.start_scheduler(**without_blobdl())
        own.start_worker("w-a")
        own.worker_pids()
        lines = ["http://127.0.0.1:9/x.bin " + str(tmp_path / "x.bin")]
        done = run_cli("-i", manifest(tmp_path, lines), "--scheduler", own.address)
    finally:
        own.stop()
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [
        f"blobdl: error: the Dask cluster must run this blobdl ({__version__}): the scheduler"
        " cannot import it (No module named 'blobdl')"
    ]
    assert done.stdout == ""


# --- the budget, measured at the server ----------------------------------------------------


def test_the_connection_budget_holds_across_the_whole_cluster(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    blobs = [make(2 * PART, seed) for seed in range(4)]
    lines = [f"{b.url} {tmp_path / b.name} sha256:{b.sha256}" for b in blobs]
    paced(server, 256 * KB)
    done = run_cli("-i", manifest(tmp_path, lines), "--scheduler", cluster.address,
                   "--connections", "3", "--per-host", "8", "--json", *SMALL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for blob in blobs:
        assert sha256_file(tmp_path / blob.name) == blob.sha256
    # Two workers of two threads each could run 4 items of 2 connections: 8 at once.
    assert server.stats()["max_concurrent"] <= 3
    workers = {e["worker"] for e in json_lines(done.stdout) if e.get("event") == "finished"}
    assert workers == {"w-a", "w-b"}


def test_the_per_host_cap_holds_across_the_whole_cluster(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    other = start_server(tmp_path / "other")
    try:
        blobs = [make(2 * PART, seed) for seed in range(3)]
        lines = [f"{b.url} {tmp_path / b.name}" for b in blobs]
        for b in blobs:
            (tmp_path / "other" / b.name).write_bytes((server.root / b.name).read_bytes())
            # Another origin by name: localhost is another host than 127.0.0.1.
            url = other.url(b.name).replace("127.0.0.1", "localhost")
            lines.append(f"{url} {tmp_path / ('other-' + b.name)}")
        paced(server, 256 * KB)
        paced(other, 256 * KB)
        done = run_cli("-i", manifest(tmp_path, lines), "--scheduler", cluster.address,
                       "--connections", "16", "--per-host", "2", "-q", *SMALL)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert server.stats()["max_concurrent"] <= 2
        assert other.stats()["max_concurrent"] <= 2
    finally:
        other.stop()


def test_the_limit_rate_is_the_batchs_whole_rate_though_its_items_hold_fewer_connections(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """--limit-rate is the batch's total, shared by what runs, as on one machine: an item
    alone (one host, so at most --per-host 8 of the 16 connections) gets all of it, not
    the share of connections that nobody holds (half: 8 s for 4 MiB at 1 MiB/s)."""
    blob = make(16 * PART, 48)
    limit = 1024 * KB
    done = run_cli("-i", manifest(tmp_path, [f"{blob.url} {tmp_path / blob.name}"]),
                   "--scheduler", cluster.address, "--limit-rate", str(limit), "--json",
                   *SMALL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sha256_file(tmp_path / blob.name) == blob.sha256
    (finished,) = [e for e in json_lines(done.stdout) if e.get("event") == "finished"]
    # Bounds with room for a loaded machine: 4 s at the whole rate, 8 s at half of it.
    assert 0.8 * blob.size / limit <= finished["elapsed"] < 1.5 * blob.size / limit, finished


# The lease refreshers running on a worker: one per distributed.Semaphore object there that
# was never stopped (Dask stops one only when its object is collected, which the refresher
# itself prevents).
LEASE_REFRESHERS = """
def probe():
    import gc
    from distributed import Semaphore
    from tornado.ioloop import PeriodicCallback
    return sum(1 for o in gc.get_objects() if isinstance(o, PeriodicCallback) and o.is_running()
               and isinstance(getattr(o.callback, "__self__", None), Semaphore))
"""


def test_a_batch_leaves_no_lease_refresher_running_on_the_workers(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    blobs = [make(64 * KB, seed) for seed in range(41, 47)]
    lines = [f"{b.url} {tmp_path / b.name}" for b in blobs]
    done = run_cli("-i", manifest(tmp_path, lines), "--scheduler", cluster.address, "-q", *SMALL)
    assert done.returncode == 0, done.stderr
    # Every item took leases on a worker (its probe's, its download's): a long-lived cluster
    # must not keep a timer per lease ever taken.
    assert cluster.on_workers(LEASE_REFRESHERS) == {"w-a": 0, "w-b": 0}


# --- faults -----------------------------------------------------------------------------------


def test_a_worker_killed_mid_item_resumes_on_a_worker_from_the_partial(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """... and what the killed attempt left in the temporary directory (its share of the
    budget, which its SIGKILLed task never removed) is swept by the attempt that follows."""
    blob = make(3 * 1024 * KB, 7)
    rate, connections, interval = 512 * KB, 2, 0.2
    pids = cluster.worker_pids()
    paced(server, rate)
    proc = spawn_cli("-i", manifest(tmp_path, [f"{blob.url} {tmp_path / 'big.bin'}"]),
                     "--scheduler", cluster.address, "--connections", str(connections),
                     "--checkpoint-interval", str(interval), "--json", *SMALL)  # fmt: skip
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(json.loads(line))
        if seen[-1].get("event") == "progress" and seen[-1]["done"] >= 1024 * KB:
            victim = seen[-1]["worker"]
            landed = seen[-1]["done"]
            os.kill(pids[victim], signal.SIGKILL)  # mid-item: its nanny starts a new one
            break
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, [e for e in json_lines(out) if e.get("event") != "progress"]
    events = seen + json_lines(out)
    finished = [e for e in events if e.get("event") == "finished"]
    assert sha256_file(tmp_path / "big.bin") == blob.sha256
    # The rerun resumed from what had landed (less what the lanes had not yet checkpointed).
    assert len(finished) == 1 and finished[0]["resumed"] >= landed - connections * PART
    # What the server sent beyond the blob: what the lanes had in flight, no more than about
    # one checkpoint interval of the download's rate.
    refetched = server.stats()["bytes_sent"] - blob.size
    assert refetched <= connections * rate * interval + connections * PART, refetched
    cluster.worker_pids()  # the nanny's new worker has joined again
    assert worker_tmp(cluster) == []


# In a worker's interpreters (a sitecustomize on its PYTHONPATH): the first task to finish
# its download kills its worker process once its events have gone, before its outcome does.
KILLED_AFTER_FINISHED = """
import os, signal, time

from blobdl.batch import _cluster_task

_fetch = _cluster_task._fetch


def _fetch_then_killed(job, remote, relay):
    result = _fetch(job, remote, relay)
    try:  # once for the whole run: the rerun goes on
        os.close(os.open(os.environ["KILL_ONCE"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return result
    time.sleep(1.0)  # its Finished reaches the client
    os.kill(os.getpid(), signal.SIGKILL)


_cluster_task._fetch = _fetch_then_killed
"""


def test_an_item_whose_worker_dies_after_it_told_finished_has_finished(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """An item's outcome follows its ``Finished`` (the task's value). Its worker killed
    between the two, Dask runs the task again, which finds the file in place: found whole
    where its record vouches for it, else refused as there (``DestinationExists``), though
    the item had finished. Here nothing can vouch (the blob's Last-Modified is not a second
    older than the server's Date): the item's result is the one its ``Finished`` told."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(KILLED_AFTER_FINISHED))
    env = {"PYTHONPATH": str(hook), "KILL_ONCE": str(tmp_path / "killed-once")}
    own = start_cluster(tmp_path / "dask", {"solo": env})
    try:
        blob = make(512 * KB, 71)
        served = Path(server.root) / blob.name
        later = time.time() + 3600  # modified "after" the server's Date: no record vouches
        os.utime(served, (later, later))
        out = tmp_path / "x.bin"
        done = run_cli("-i", manifest(tmp_path, [f"{blob.url} {out}"]), "--scheduler",
                       own.address, "--json", *SMALL)  # fmt: skip
        assert (tmp_path / "killed-once").exists(), "the worker was never killed"
        events = json_lines(done.stdout)
        ends = [e for e in events if e.get("event") in ("finished", "failed")]
        assert [e["event"] for e in ends] == ["finished"], (events, done.stderr[-3000:])
        assert events[-1] == {"event": "summary", "ok": 1, "failed": 0}, events
        assert done.returncode == 0 and sha256_file(out) == blob.sha256
    finally:
        own.stop()


def test_a_rerun_waits_for_the_killed_attempt_still_saving_its_state(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """The killed worker's download (in a process of its own) saves its state as it dies,
    holding the destination's lock meanwhile: the rerun on another worker waits for it
    (``RERUN_LOCK_WAIT``), never fails at once as another download of the destination.
    Here that download is held stopped for a while after its worker was killed."""
    blob = make(3 * 1024 * KB, 8)
    paced(server, 512 * KB)
    proc = spawn_cli("-i", manifest(tmp_path, [f"{blob.url} {tmp_path / 'big.bin'}"]),
                     "--scheduler", cluster.address, "--connections", "2",
                     "--checkpoint-interval", "0.2", "--json", *SMALL)  # fmt: skip
    assert proc.stdout is not None
    held: list[psutil.Process] = []
    try:
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("event") == "progress" and event["done"] >= 1024 * KB:
                worker = psutil.Process(cluster.worker_pids()[event["worker"]])
                held = worker.children(recursive=True)
                for child in held:
                    child.suspend()
                worker.kill()
                break
        # Past the dead worker's leases (2 s here): the rerun has met the lock by now.
        time.sleep(5)
    finally:
        for child in held:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.resume()
    out, err = proc.communicate(timeout=60)
    told = [e for e in json_lines(out) if e.get("event") in ("finished", "failed")]
    assert proc.returncode == 0, (err[-2000:], told)
    assert sha256_file(tmp_path / "big.bin") == blob.sha256
    cluster.worker_pids()  # the nanny's new worker has joined again


HOLD_A_SHARE_FOLDER = """
import time
from blobdl.batch._share_folder import ShareFolder
print(ShareFolder().path, flush=True)
time.sleep(60)
"""


def test_a_share_folder_is_swept_once_its_holder_is_dead_and_never_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blobdl.batch._share_folder import ShareFolder, sweep

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_SHARE_FOLDER], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None
        theirs = Path(holder.stdout.readline().strip())
        mine = ShareFolder()  # sweeps first: the other holder is alive
        assert theirs.is_dir()
    finally:
        holder.kill()
        holder.communicate()
    sweep()
    assert not theirs.exists() and Path(mine.path).is_dir()  # held by this live process
    mine.close()
    assert list(tmp_path.iterdir()) == []


def test_a_share_folder_swept_before_its_task_could_lock_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks on one machine: one sweeps just as the other has made its folder and has
    not locked it yet (unlocked, it looks like a dead task's). The second gets another."""
    import tempfile

    from blobdl.batch._share_folder import ShareFolder, sweep

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    made: list[str] = []

    def another_task_sweeps(frame: Any, event: str, arg: Any) -> None:
        if event == "return" and frame.f_code is tempfile.mkdtemp.__code__ and not made:
            made.append(arg)
            sweep()

    sys.setprofile(another_task_sweeps)
    try:
        folder = ShareFolder()
    finally:
        sys.setprofile(None)
    assert made and not Path(made[0]).exists()
    assert Path(folder.path).is_dir() and folder.path != made[0]
    folder.close()
    assert list(tmp_path.iterdir()) == []


def test_an_item_failing_on_its_merits_is_reported_once_and_never_rerun(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    good, bad = make(128 * KB, 1), make(128 * KB, 2)
    lines = [
        f"{server.url('missing.bin')} {tmp_path / 'missing.bin'}",
        f"{bad.url} {tmp_path / 'bad.bin'} sha256:{'0' * 64}",
        f"{good.url} {tmp_path / 'good.bin'} sha256:{good.sha256}",
    ]
    done = run_cli("-i", manifest(tmp_path, lines), "--scheduler", cluster.address, "--json",
                   "--retries", "2", *SMALL)  # fmt: skip
    assert done.returncode == 3, done.stderr  # the first failure in the manifest's order
    failed = [e for e in json_lines(done.stdout) if e.get("event") == "failed"]
    assert sorted((e["item"], e["exit_code"]) for e in failed) == [(0, 3), (1, 4)]
    stats = server.stats()["per_path"]
    assert stats["/files/missing.bin"] == 1  # its probe, once: no retry, no rerun
    assert stats[f"/files/{bad.name}"] == stats[f"/files/{good.name}"]  # one download each
    assert sha256_file(tmp_path / "good.bin") == good.sha256
    assert not (tmp_path / "bad.bin").exists()


def _two_items_under_way(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path, seeds: tuple[int, int]
) -> tuple[subprocess.Popen[str], list[Blob], set[int]]:
    """``blobdl -i --scheduler`` of two paced blobs, both under way: the process, the blobs
    and the items that have started (both)."""
    blobs = [make(2 * 1024 * KB, seed) for seed in seeds]
    paced(server, 32 * KB)  # seconds a part: neither item ends before both have started
    lines = [f"{b.url} {tmp_path / b.name}" for b in blobs]
    # Room for both items' 8 parts at once: under the default 8 per host, the first item
    # to take its leases can hold them all, and the other starts only as it ends.
    proc = spawn_cli("-i", manifest(tmp_path, lines), "--scheduler", cluster.address,
                     "--per-host", "16", "--json", *SMALL)  # fmt: skip
    assert proc.stdout is not None
    started: set[int] = set()
    # A byte at a time (``pipe_line``): the callers' communicate() gets every event after
    # these whole, where a buffered reader's read-ahead would cut one in two.
    while len(started) < 2 and (line := pipe_line(proc.stdout.fileno())):
        event = json.loads(line)
        if event.get("event") == "progress" and event["done"] > 0:
            started.add(event["item"])
    return proc, blobs, started


def _each_told_it_was_cut(out: str, started: set[int], err: str) -> None:
    """Every item that started has its last word, as on one machine: each was cut."""
    last = {r["item"]: r for r in map(json.loads, out.splitlines())
            if r.get("event") in ("finished", "failed") and r.get("item") is not None}  # fmt: skip
    assert set(last) == started, (started, last, err[-2000:])
    assert all(r["event"] == "failed" and r["exit_code"] == 130 for r in last.values()), last


def test_the_client_interrupted_keeps_partials_and_stops_every_download(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    proc, blobs, started = _two_items_under_way(cluster, server, make, tmp_path, (11, 12))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("blobdl: error: interrupted")
    _each_told_it_was_cut(out, started, err)
    for blob in blobs:
        assert (tmp_path / (blob.name + ".blobdl-tmp")).exists(), (
            sorted(p.name for p in tmp_path.iterdir()),
            err[-3000:],
        )
        assert (tmp_path / (blob.name + ".blobdl-state")).exists()
        assert not (tmp_path / blob.name).exists()


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_while_the_client_stops_its_tasks_still_tells_every_cut_item(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path, second: int
) -> None:
    """Ctrl-C, then Ctrl-C (or SIGTERM) again while the client waits for the running tasks
    to save their state: the run still ends as one interrupt, and every item that started
    still hears that it was cut (the second signal used to skip the last words)."""
    proc, _, started = _two_items_under_way(cluster, server, make, tmp_path, (13, 14))
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)  # the client is now stopping the tasks (each saves its state first)
    proc.send_signal(second)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    _each_told_it_was_cut(out, started, err)


# How the interrupt scripts below end: the batch on the cluster, every event noted as
# [item, kind]; interrupted, what was noted, on stdout (argv: the scheduler, the rows).
NOTED_RUN = """
    said = []
    items = [blobdl.Item(url, path) for url, path in json.loads(sys.argv[2])]
    try:
        blobdl.download_many(items, cluster=sys.argv[1], per_host=16,
                             min_part_size=262144, max_part_size=262144, progress_interval=0.1,
                             on_event=lambda e: said.append([e.item, type(e.event).__name__]))
    except blobdl.Interrupted:
        print(json.dumps(said))
"""


TRAILING = (
    """
import json, os, pickle, signal, sys, threading
import blobdl
from blobdl.batch import _cluster_run

TRAIL = 3.0  # a finished item's last event comes this long after its result (< EVENTS_GRACE)


class Trailing:
    \"\"\"The run's inbox: a Finished event lands TRAIL s late; Ctrl-C as it is sent.\"\"\"

    def __init__(self, inbox):
        self.inbox = inbox

    def put(self, record):
        if isinstance(pickle.loads(record[1]["event"]), blobdl.Finished):
            late = threading.Timer(TRAIL, self.inbox.put, (record,))
            late.daemon = True
            late.start()
            os.kill(os.getpid(), signal.SIGINT)  # the item's file is in place by now
        else:
            self.inbox.put(record)

    def get(self, *args, **kwargs):
        return self.inbox.get(*args, **kwargs)

    def get_nowait(self):
        return self.inbox.get_nowait()


real_init = _cluster_run.Run.__init__


def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    self.relay.inbox = Trailing(self.relay.inbox)


if __name__ == "__main__":
    _cluster_run.Run.__init__ = init
"""
    + NOTED_RUN
)


def test_an_item_that_finished_as_the_client_was_interrupted_is_told_finished(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """A task's last events may trail its result (``Run.settle`` waits for them): stopped
    just as an item finished, the client must relay that item's own Finished, not tell it
    'failed' (exit 130) while its file is in place, as one machine never does."""
    _stopped_as_the_small_item_finishes(cluster, server, make, tmp_path, TRAILING, (41, 42))


def _stopped_as_the_small_item_finishes(
    cluster: DaskCluster,
    server: ServerHandle,
    make: Make,
    tmp_path: Path,
    script: str,
    seeds: tuple[int, int],
    *args: str,
) -> None:
    """A small and a paced large item on the cluster, run by ``script`` (it ends with
    ``NOTED_RUN``), which interrupts the client as the small one's Finished comes: the small
    item is told Finished (its file in place), the large one Failed, each told once."""
    small, large = make(128 * KB, seeds[0]), make(2 * 1024 * KB, seeds[1])
    paced(server, 32 * KB)  # the large item runs on when the small one has finished
    rows = [[small.url, str(tmp_path / "small.bin")], [large.url, str(tmp_path / "large.bin")]]
    client = tmp_path / "client.py"
    client.write_text(textwrap.dedent(script))
    command = [sys.executable, str(client), cluster.address, json.dumps(rows), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.splitlines()[-1])
    last = {item: kind for item, kind in said if kind in ("Finished", "Failed")}
    assert sha256_file(tmp_path / "small.bin") == small.sha256
    assert last == {0: "Finished", 1: "Failed"}, said
    assert sorted(item for item, kind in said if kind in ("Finished", "Failed")) == [0, 1], said


TAKEN = (
    """
import json, os, pickle, signal, sys
import blobdl
from blobdl.batch import _cluster_run, _outcomes

WHERE = sys.argv[3]


class Taken:
    \"\"\"The run's inbox: with WHERE 'taken', Ctrl-C as a Finished event is taken off it,
    before it is returned.\"\"\"

    def __init__(self, inbox):
        self.inbox = inbox

    def put(self, record):
        self.inbox.put(record)

    def _taken(self, taken):
        if WHERE == "taken" and isinstance(pickle.loads(taken[1]["event"]), blobdl.Finished):
            os.kill(os.getpid(), signal.SIGINT)  # the item's file is in place by now
        return taken

    def get(self, *args, **kwargs):
        return self._taken(self.inbox.get(*args, **kwargs))

    def get_nowait(self):
        return self._taken(self.inbox.get_nowait())


real_init, real_event = _cluster_run.Run.__init__, _outcomes.Outcomes.event


def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    self.relay.inbox = Taken(self.relay.inbox)


def event(self, index, event, worker=""):
    \"\"\"With WHERE 'told': Ctrl-C as a Finished event's telling returns.\"\"\"
    real_event(self, index, event, worker)
    if WHERE == "told" and isinstance(event, blobdl.Finished):
        os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    _cluster_run.Run.__init__ = init
    _outcomes.Outcomes.event = event
"""
    + NOTED_RUN
)


@pytest.mark.parametrize("where", ["taken", "told"])
def test_a_stop_as_an_items_finished_event_is_relayed_tells_it_once(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path, where: str
) -> None:
    """The client takes each event off its inbox, then tells it: a signal between the two
    took effect at once, and an item's Finished, already taken, was never told (the item
    was told 'failed' with its file in place). The stop now takes effect once it is noted
    as taken, and what was taken is told as the run stops; told just before the stop
    ('told'), it is not told again."""
    _stopped_as_the_small_item_finishes(cluster, server, make, tmp_path, TAKEN, (43, 44), where)


def test_the_client_killed_mid_item_leaves_no_spare_process_on_the_workers(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """A task thread starts a spare interpreter for its next item while its item runs; the
    client SIGKILLed never drops it, but the task whose item it stops knows no item of its
    run comes next."""
    blob = make(2 * 1024 * KB, 15)
    paced(server, 32 * KB)  # 8 s a part: the item runs, and its spare waits, as the client dies
    proc = spawn_cli("-i", manifest(tmp_path, [f"{blob.url} {tmp_path / blob.name}"]),
                     "--scheduler", cluster.address, "--json", *SMALL)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "progress" and event["done"] > 0:
            break
    proc.kill()
    proc.communicate()
    assert _settled(cluster) == []  # well before a spare's own idle time (60 s) runs out
    assert (tmp_path / (blob.name + ".blobdl-state")).exists()  # the item stopped, state saved


def test_the_scheduler_lost_is_one_clear_error_and_leaves_nothing_running(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    own = start_cluster(tmp_path / "dask", {"solo": {}})
    try:
        blob = make(2 * 1024 * KB, 21)
        paced(server, 128 * KB)
        proc = spawn_cli("-i", manifest(tmp_path, [f"{blob.url} {tmp_path / 'x.bin'}"]),
                         "--scheduler", own.address, "--json", *SMALL)  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line).get("event") == "progress":
                break
        assert own.scheduler is not None
        own.scheduler.kill()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, err
        assert err.strip().splitlines() == [err.strip().splitlines()[-1]]
        assert "lost the Dask scheduler" in err
        assert (tmp_path / "x.bin.blobdl-tmp").exists()
        assert _settled(own, within=20.0) == []
    finally:
        own.stop()


QUEUED = """
import sys, time
from distributed import Client
with Client(sys.argv[1], timeout=30) as client:
    deadline = time.monotonic() + float(sys.argv[2])
    while not client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
        assert time.monotonic() < deadline, "no task reached the scheduler"
        time.sleep(0.1)
print("[]")
"""


def _ended(proc: subprocess.Popen[str], timeout: float) -> str:
    """The stderr of ``proc`` once it has ended within ``timeout`` (killed otherwise, and
    the wait's error raised)."""
    try:
        return proc.communicate(timeout=timeout)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_does_not_wait_for_tasks_that_never_started(tmp_path: Path) -> None:
    """With no worker (none joined yet, or every one died), the tasks wait in the
    scheduler's queue. Ctrl-C waits up to 30 s for the *running* tasks to stop; tasks that
    never started are dropped at once, not waited for. A cluster with no worker is said
    so at once: the batch waits for one to join, not silently."""
    own = DaskCluster(tmp_path / "dask", QUIET)
    try:
        own.start_scheduler()
        lines = ["http://127.0.0.1:9/x.bin " + str(tmp_path / "x.bin")]
        proc = spawn_cli("-i", manifest(tmp_path, lines), "--scheduler", own.address)
        try:
            own._ask("queue", QUEUED, "30")
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=STOP_GRACE_LESS)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 130, err
        assert err.splitlines()[0] == (
            f"blobdl: warning: the Dask cluster at {own.address} has no worker yet: the batch"
            " waits for one to join"
        ), err
    finally:
        own.stop()


def test_a_worker_that_stopped_answering_does_not_hold_up_the_end_of_a_run(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """A run ends by asking every worker to end its spare interpreters; a worker that does
    not answer (stopped, swapping; the scheduler still counts it) is not waited for."""
    own = start_cluster(tmp_path / "dask", {"w-a": {}, "w-b": {}})
    stopped: list[psutil.Process] = []
    try:
        pids = own.worker_pids()
        blob = make(1024 * KB, 22)
        paced(server, 256 * KB)
        proc = spawn_cli("-i", manifest(tmp_path, [f"{blob.url} {tmp_path / 'x.bin'}"]),
                         "--scheduler", own.address, "--json", *SMALL)  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("event") == "progress":  # the item's download runs on one worker:
                idle = psutil.Process(pids[({"w-a", "w-b"} - {event["worker"]}).pop()])
                idle.suspend()  # the other has done its part (the probe, if any)
                stopped.append(idle)
                break
        err = _ended(proc, 60)
        assert proc.returncode == 0, err
        assert sha256_file(tmp_path / "x.bin") == blob.sha256
    finally:
        for idle in stopped:
            idle.resume()
        own.stop()


# A process that stops answering: stopped before the check that asks every worker and the
# scheduler (``when`` = before), just after it (after), as the first item is told finished
# (finished), once every item is done, as the run ends (end), or as the client, interrupted,
# waits for the running tasks to stop (stopping), from inside the client, so that the moment
# is the test's, not a race's.
FROZEN = """
import json, logging, os, signal, sys
import blobdl
from blobdl.batch import _cluster, _cluster_run

# The end of a run asks the workers the scheduler names to drop their spares, each given
# DROP_WAIT (5 s): a worker silent only from then on would hold every run here that long.
# The test's patience with a worker that answers is the runs' stall timeout, as for every
# question, unless the test says otherwise (a worker the run knows is silent is not asked).
_cluster_run.DROP_WAIT = float(os.environ.get("DROP_WAIT", "2.0"))

def freezing(real, pid, when):
    def checked(client, within):
        if when == "before":
            os.kill(pid, signal.SIGSTOP)
        workers = real(client, within)
        if when == "after":
            os.kill(pid, signal.SIGSTOP)
        return workers

    return checked


if __name__ == "__main__":
    address, pid, when, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    logging.basicConfig(format="%(levelname)s: %(message)s")  # blobdl's warnings, on stderr
    _cluster.checked = freezing(_cluster.checked, pid, when)
    items = [blobdl.Item(url, path) for url, path in rows]
    ending = _cluster_run.drop_spares  # the first thing the end of a run asks the cluster

    def end(*args):
        os.kill(pid, signal.SIGSTOP)
        ending(*args)

    if when == "end":
        _cluster_run.drop_spares = end
    dropping = _cluster_run.Run._drop_unstarted  # the stop's step before its wait

    def stopping(run):
        dropping(run)
        os.kill(pid, signal.SIGSTOP)

    if when == "stopping":
        _cluster_run.Run._drop_unstarted = stopping

    def on_event(told):
        if when == "finished" and isinstance(told.event, blobdl.events.Finished):
            os.kill(pid, signal.SIGSTOP)  # once the first item is whole on disk
        if when == "stopping" and getattr(told.event, "done", 0):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, once an item is under way

    try:
        results = blobdl.download_many(items, cluster=address, stall_timeout=2, on_event=on_event)
    except blobdl.BlobdlError as exc:
        print(json.dumps({"raised": [type(exc).__name__, exc.exit_code, str(exc)]}))
    else:
        print(json.dumps({"results": [[r.ok, r.error and str(r.error)] for r in results]}))
"""
#: Far below Dask's own patience with a silent worker (``worker-ttl``: 5 minutes), far
#: above the 2 s stall timeout the runs are given.
FROZEN_BOUND = 40.0


def _frozen_run(
    cluster: DaskCluster,
    pid: int,
    when: str,
    rows: list[list[str]],
    tmp_path: Path,
    bound: float = FROZEN_BOUND,
    drop_wait: float = 2.0,
) -> tuple[dict[str, Any], str]:
    """What the FROZEN client printed within ``bound`` seconds, and its stderr; ``pid`` is
    resumed after it ends. ``drop_wait``: how long its run's end waits for each worker it
    asks to drop its spares."""
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(FROZEN))
    env = {**os.environ, "DROP_WAIT": str(drop_wait)}
    try:
        done = subprocess.run([sys.executable, str(script), cluster.address, str(pid), when,
                               json.dumps(rows)], capture_output=True, text=True,
                              timeout=bound, cwd=REPO, env=env)  # fmt: skip
    finally:
        psutil.Process(pid).resume()
    assert done.returncode == 0, done.stderr[-3000:]
    said: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return said, done.stderr


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_batch_goes_on_on_the_other_workers_when_one_stops_answering(
    make: Make, tmp_path: Path, when: str
) -> None:
    """Before the check, the silent worker is named (a warning) and given nothing; after
    it, what Dask sent or sends there is moved to a worker that answers once the worker has
    been silent for the stall timeout: neither waits for Dask to drop the worker (minutes).
    Nor does the run's end wait for it: a worker the run knows is silent is not asked to
    drop its spares (so its wait for an answer may be endless here)."""
    own = start_cluster(tmp_path / "dask", {"w-a": {}, "w-b": {}})
    try:
        blobs = [make(128 * KB, seed) for seed in range(51, 57)]
        rows = [[b.url, str(tmp_path / b.name)] for b in blobs]
        said, err = _frozen_run(own, own.worker_pids()["w-b"], when, rows, tmp_path,
                                drop_wait=3600)  # fmt: skip
        assert said == {"results": [[True, None]] * len(blobs)}, (said, err[-3000:])
        for blob in blobs:
            assert sha256_file(tmp_path / blob.name) == blob.sha256
        assert "worker w-b of the Dask cluster did not answer within 2 s" in err
        assert _settled(own) == []
    finally:
        own.stop()


def test_a_batch_whose_only_worker_stops_answering_fails_naming_it(
    make: Make, tmp_path: Path
) -> None:
    own = start_cluster(tmp_path / "dask", {"solo": {}})
    try:
        blobs = [make(128 * KB, seed) for seed in range(61, 63)]
        rows = [[b.url, str(tmp_path / b.name)] for b in blobs]
        said, err = _frozen_run(own, own.worker_pids()["solo"], "after", rows, tmp_path)
        silent = "worker solo of the Dask cluster did not answer within 2 s"
        assert said == {"results": [[False, silent]] * len(blobs)}, (said, err[-3000:])
        assert _settled(own) == []
    finally:
        own.stop()


def test_a_scheduler_that_stops_answering_is_one_clear_error_naming_it(
    make: Make, tmp_path: Path
) -> None:
    """The check asks the scheduler for its blobdl, and waits the stall timeout for the
    answer, as for each worker's; then the whole run ends, nothing left running."""
    own = start_cluster(tmp_path / "dask", {"w-a": {}})
    try:
        blob = make(128 * KB, 64)
        assert own.scheduler is not None
        rows = [[blob.url, str(tmp_path / blob.name)]]
        said, err = _frozen_run(own, own.scheduler.pid, "before", rows, tmp_path)
        assert said == {
            "raised": [
                "ClusterError",
                3,
                f"the Dask scheduler at {own.address} did not answer within 2 s",
            ]
        }, (said, err[-3000:])
        assert not (tmp_path / blob.name).exists()
        assert _settled(own) == []
    finally:
        own.stop()


@pytest.mark.parametrize("when", ["after", "finished"])
def test_a_scheduler_that_stops_answering_mid_run_is_one_clear_error_naming_it(
    server: ServerHandle, make: Make, tmp_path: Path, when: str
) -> None:
    """Past the check, the run asks the scheduler which workers hold its tasks each
    second, each question within the stall timeout: the run ends with the same error, the
    client exits, and what a worker finished is whole on disk (never a part)."""
    own = start_cluster(tmp_path / "dask", {"w-a": {}, "w-b": {}})
    try:
        blobs = [make(512 * KB, seed) for seed in range(65, 68)]
        paced(server, 512 * KB)  # items overlap: some end after the scheduler stopped
        assert own.scheduler is not None
        rows = [[b.url, str(tmp_path / b.name)] for b in blobs]
        said, err = _frozen_run(own, own.scheduler.pid, when, rows, tmp_path)
        assert said == {
            "raised": [
                "ClusterError",
                3,
                f"the Dask scheduler at {own.address} did not answer within 2 s",
            ]
        }, (said, err[-3000:])
        whole = [b for b in blobs if (tmp_path / b.name).exists()]
        for blob in whole:
            assert sha256_file(tmp_path / blob.name) == blob.sha256
        assert (whole != []) == (when == "finished")
        # The workers' spare interpreters are dropped through the scheduler: cut off from it,
        # they end by themselves once idle (``_spare.IDLE``); nothing else of the run is left.
        assert _settled(own, but=_spare) == []
    finally:
        own.stop()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_while_the_scheduler_is_stopped_ends_within_the_stall_timeout_saying_so(
    server: ServerHandle, make: Make, tmp_path: Path, stop: signal.Signals
) -> None:
    """Stopping a run goes through the scheduler (the stop flag, the tasks no worker holds
    yet, the running tasks' ends), and so does closing the client: with the scheduler
    stopped, each would wait for its answer (for ever, or Dask's own 20 s). The stop is given
    the stall timeout, then the client exits 130 in one line that says the downloads its
    workers run may go on; a file they finish is whole."""
    own = start_cluster(tmp_path / "dask", {"w-a": {}})
    assert own.scheduler is not None
    address, scheduler = own.address, psutil.Process(own.scheduler.pid)
    try:
        blobs = [make(128 * KB, 73), make(2 * 1024 * KB, 74)]
        paced(server, 128 * KB)  # the large item runs on as the client is stopped
        lines = [f"{b.url} {tmp_path / b.name}" for b in blobs]
        # A stall timeout far above the moment between the two signals below: the client
        # cannot have found the scheduler silent before it is interrupted.
        proc = spawn_cli("-i", manifest(tmp_path, lines), "--scheduler", address,
                         "--stall-timeout", "5", "--json", *SMALL)  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line).get("event") == "progress":
                break
        scheduler.suspend()
        proc.send_signal(stop)
        err = _ended(proc, STOP_GRACE_LESS)
    finally:
        scheduler.resume()
        own.stop()
    assert proc.returncode == 130, err
    assert err.splitlines() == [
        f"blobdl: error: interrupted by signal {int(stop)}; the Dask scheduler at {address}"
        " did not answer within 5 s: the downloads running on its workers may go on (a file"
        " they finish is whole)"
    ]
    for blob in blobs:
        if (tmp_path / blob.name).exists():
            assert sha256_file(tmp_path / blob.name) == blob.sha256


def test_a_scheduler_that_stops_answering_as_ctrl_c_waits_for_the_running_tasks_is_not_waited_for(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """The stop flag is set, and the client waits up to 30 s for the running tasks to stop:
    their ends come through the scheduler. One that stops answering meanwhile is asked
    within the stall timeout, as before the stop, and the wait ends there, saying so."""
    own = start_cluster(tmp_path / "dask", {"w-a": {}})
    try:
        blob = make(2 * 1024 * KB, 77)
        paced(server, 128 * KB)  # the item runs on as the client is stopped
        assert own.scheduler is not None
        rows = [[blob.url, str(tmp_path / blob.name)]]
        address = own.address
        said, err = _frozen_run(own, own.scheduler.pid, "stopping", rows, tmp_path, STOP_GRACE_LESS)
        assert said == {
            "raised": [
                "Interrupted",
                130,
                f"interrupted by signal {int(signal.SIGINT)}; the Dask scheduler at {address} did"
                " not answer within 2 s: the downloads running on its workers may go on (a file"
                " they finish is whole)",
            ]
        }, (said, err[-3000:])
    finally:
        own.stop()


def test_a_scheduler_that_stops_answering_as_the_run_ends_does_not_hold_up_its_end(
    make: Make, tmp_path: Path
) -> None:
    """Every item is done: the end of the run tidies up through the scheduler (the workers'
    spare interpreters, the batch's semaphores) and closes the client, which waits for the
    scheduler too (Dask's own limit: 20 s). Each is given the stall timeout, then skipped:
    the results stand."""
    own = start_cluster(tmp_path / "dask", {"w-a": {}})
    try:
        blobs = [make(128 * KB, seed) for seed in range(75, 77)]
        assert own.scheduler is not None
        rows = [[b.url, str(tmp_path / b.name)] for b in blobs]
        said, err = _frozen_run(own, own.scheduler.pid, "end", rows, tmp_path, STOP_GRACE_LESS)
        assert said == {"results": [[True, None]] * len(blobs)}, (said, err[-3000:])
        for blob in blobs:
            assert sha256_file(tmp_path / blob.name) == blob.sha256
    finally:
        own.stop()


# held: 8 parts at once at 128 KiB/s each (2 s); growing: one connection at a time, at 256
# KiB/s (8 s: its questions for more, each 2 s unanswered, go out several times over).
@pytest.mark.parametrize(
    ("budget", "bps"), [((), 128 * KB), (("--per-host", "1"), 256 * KB)], ids=["held", "growing"]
)
def test_a_download_running_on_a_worker_lands_whole_while_the_scheduler_is_stopped(
    server: ServerHandle, make: Make, tmp_path: Path, budget: tuple[str, ...], bps: int
) -> None:
    """The worker holds all a running download needs (its URL, its path, its settings): the
    scheduler stopped mid-item, the bytes go on landing, and the file is whole on the
    worker's disk while the scheduler is still stopped. Each question the task asks it (the
    stop flag; more connections, when the item holds fewer than it can use: ``growing``) is
    given the stall timeout, and a flag it cannot read is no stop; the events it cannot
    send are lost, never waited for."""
    own = start_cluster(tmp_path / "dask", {"w-a": {}})
    assert own.scheduler is not None
    scheduler = psutil.Process(own.scheduler.pid)
    target = tmp_path / "x.bin"
    try:
        blob = make(2 * 1024 * KB, 78)
        paced(server, bps)  # 8 parts of 256 KiB: seconds of download
        # Progress told often: the events the task cannot pass on fill the socket from the
        # download's coordinator within the test's seconds, as a long download's would.
        proc = spawn_cli("-i", manifest(tmp_path, [f"{blob.url} {target}"]),
                         "--scheduler", own.address, "--stall-timeout", "2", "--json",
                         *budget, *SMALL, "--progress-interval", "0.002")  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line).get("event") == "progress":
                break
        scheduler.suspend()
        deadline = time.monotonic() + FROZEN_BOUND
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert target.exists(), sorted(p.name for p in tmp_path.iterdir())
        assert sha256_file(target) == blob.sha256
        assert scheduler.status() == psutil.STATUS_STOPPED  # landed while it was stopped
        _ended(proc, 30)  # the client: "did not answer" (its own side, tested above)
    finally:
        scheduler.resume()
        own.stop()


# --- pull on every worker ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    handle = start_registry(tmp_path_factory.mktemp("registry"))
    yield handle
    handle.stop()


def test_every_worker_gets_the_model_in_its_store_once_and_a_second_run_fetches_nothing(
    cluster: DaskCluster, registry: Registry
) -> None:
    model = registry.push_model("library/fleet", "v1", (300 * KB, 2 * KB, 100))
    args = ("pull", ref(registry, model), "--scheduler", cluster.address, "--every-worker")
    first = run_cli(*args, "--json", *SMALL)
    assert first.returncode == 0, first.stderr
    for name in ("w-a", "w-b"):
        assert_store(cluster.root / f"models-{name}", registry, model)
    summaries = [e for e in json_lines(first.stdout) if e.get("event") == "pull_finished"]
    assert sorted(s["worker"] for s in summaries) == ["w-a", "w-b"]
    before = len(registry.requests())
    again = run_cli(*args, "--json")
    assert again.returncode == 0, again.stderr
    blob_gets = [r for r in registry.requests()[before:] if "/blobs/" in r[1]]
    assert blob_gets == []
    summaries = [e for e in json_lines(again.stdout) if e.get("event") == "pull_finished"]
    assert [s["bytes_fetched"] for s in summaries] == [0, 0]


def test_workers_that_see_one_store_get_the_model_into_it_once(
    registry: Registry, tmp_path: Path
) -> None:
    """Two workers of one host that see the same store (one ``$OLLAMA_MODELS``) are one
    store: one pull runs for both, and each blob is fetched once, not once per worker (the
    cluster fixture gives every worker a store of its own, so it never shows this)."""
    store = tmp_path / "shared-store"
    own = start_cluster(
        tmp_path / "dask", {n: {"OLLAMA_MODELS": str(store)} for n in ("w-a", "w-b")}
    )
    try:
        model = registry.push_model("library/one-store", "v1", (600 * KB, 3 * KB, 100))
        done = run_cli("pull", ref(registry, model), "--scheduler", own.address,
                       "--every-worker", "--json", *SMALL)  # fmt: skip
    finally:
        own.stop()
    assert done.returncode == 0, done.stderr
    assert_store(store, registry, model)
    events = json_lines(done.stdout)
    started = [e for e in events if e.get("event") == "pull_started"]
    assert len(started) == 1, started  # one pull, for both workers
    summaries = [e for e in events if e.get("event") == "pull_finished"]
    assert sorted(s["worker"] for s in summaries) == ["w-a", "w-b"], summaries
    # What the registry served for the blobs: each byte once (a range probe at most beside).
    fetched = {s["bytes_fetched"] for s in summaries}
    assert fetched == {sum(map(len, model.blobs.values()))}, summaries


def test_pull_on_every_worker_shares_one_limit_rate_among_its_stores(
    cluster: DaskCluster, registry: Registry
) -> None:
    """--limit-rate is one budget across all connections, as for a batch on the cluster:
    two stores' pulls of 2 MiB at 1 MiB/s take 4 s together, not 2 s each side by side
    (twice the limit at the registry)."""
    model = registry.push_model("library/rated", "v1", (2 * 1024 * KB, 2 * KB))
    limit = 1024 * KB
    done = run_cli("pull", ref(registry, model), "--scheduler", cluster.address,
                   "--every-worker", "--limit-rate", str(limit), "--json", *SMALL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("w-a", "w-b"):
        assert_store(cluster.root / f"models-{name}", registry, model, alone=False)
    summaries = [e for e in json_lines(done.stdout) if e.get("event") == "pull_finished"]
    assert len(summaries) == 2, done.stdout
    assert max(s["elapsed"] for s in summaries) >= 0.8 * 2 * 2 * 1024 * KB / limit, summaries


def test_a_worker_killed_mid_pull_does_not_leave_the_pull_waiting_for_ever(
    cluster: DaskCluster, registry: Registry
) -> None:
    """Each store's pull is bound to the worker that sees it. Killed, that worker comes
    back from its nanny under a new address: its pull must end (done there again, or
    failed), never wait for the old address."""
    # 2 MiB at half the 512 KiB/s the two stores share: 8 s (4 s while the other store's
    # pull has not begun) for the first progress to reach the test and the worker to be
    # killed. The survivor's pull, which the test waits for, lasts as long (3 MiB: 12 s).
    model = registry.push_model("library/killed", "v1", (2 * 1024 * KB, 2 * KB))
    pids = cluster.worker_pids()
    proc = spawn_cli("pull", ref(registry, model), "--scheduler", cluster.address,
                     "--every-worker", "--limit-rate", str(512 * KB), "--json", *SMALL)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("worker") and event.get("event") == "progress" and event.get("done", 0):
            victim = event["worker"]
            os.kill(pids[victim], signal.SIGKILL)  # its nanny starts a new one
            break
    err = _ended(proc, 60)
    cluster.worker_pids()  # the nanny's new worker has joined again
    assert proc.returncode == 3, err
    assert err.splitlines() == [
        f"blobdl: error: worker {victim} left the cluster during its pull (what it fetched"
        " stays in its store: run the pull again)"
    ]
    survivor = ({"w-a", "w-b"} - {victim}).pop()
    # (the module's cluster: its stores hold the models of earlier tests too)
    assert_store(cluster.root / f"models-{survivor}", registry, model, alone=False)
    again = run_cli("pull", ref(registry, model), "--scheduler", cluster.address,
                    "--every-worker", "-q")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert_store(cluster.root / f"models-{victim}", registry, model, alone=False)


def test_pull_on_every_worker_with_a_worker_that_never_answers_names_it_and_pulls_nowhere(
    registry: Registry, tmp_path: Path
) -> None:
    """Each worker is asked which store it sees; one that never answers (stopped; the
    scheduler still counts it) is given the stall timeout, then named: no store is said to
    have the model that was not looked at."""
    stores = {name: {"OLLAMA_MODELS": str(tmp_path / name)} for name in ("w-a", "w-b")}
    own = start_cluster(tmp_path / "dask", stores)
    stopped = psutil.Process(own.worker_pids()["w-b"])
    try:
        model = registry.push_model("library/silent", "v1", (100 * KB,))
        stopped.suspend()
        args = ("--scheduler", own.address, "--every-worker", "--stall-timeout", "2")
        done = run_cli("pull", ref(registry, model), *args, timeout=STOP_GRACE_LESS)
    finally:
        stopped.resume()
        own.stop()
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [
        "blobdl: error: worker w-b of the Dask cluster did not answer within 2 s"
    ]
    assert done.stdout == ""
    assert not (tmp_path / "w-a").exists()


@pytest.mark.parametrize("every", [False, True], ids=["one-worker", "every-worker"])
def test_a_scheduler_that_stops_answering_mid_pull_is_one_clear_error_naming_it(
    registry: Registry, tmp_path: Path, every: bool
) -> None:
    """As a batch's: the pull asks the scheduler which workers hold its task, each question
    within the stall timeout; one unanswered ends the pull naming the scheduler, exit 3."""
    own = start_cluster(tmp_path / "dask", {"w-a": {"OLLAMA_MODELS": str(tmp_path / "w-a")}})
    assert own.scheduler is not None
    address, scheduler = own.address, psutil.Process(own.scheduler.pid)
    try:
        model = registry.push_model(
            f"library/scheduler-stopped-{int(every)}", "v1", (3 * 1024 * KB,)
        )
        args = ["pull", ref(registry, model), "--scheduler", address, "--stall-timeout", "2",
                "--limit-rate", str(256 * KB), "--json", *SMALL]  # fmt: skip
        proc = spawn_cli(*args, *(["--every-worker"] if every else []))
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("event") == "progress" and event.get("done", 0):
                break
        scheduler.suspend()
        err = _ended(proc, STOP_GRACE_LESS)
    finally:
        scheduler.resume()
        own.stop()
    assert proc.returncode == 3, err
    assert err.splitlines() == [
        f"blobdl: error: the Dask scheduler at {address} did not answer within 2 s"
    ]


# --- the library, on an embedded LocalCluster ---------------------------------------------------


# A pull whose worker stops answering just after the check (it answered): on one worker
# (``one``), or in every worker's store (``every``, after each said which store it sees).
FROZEN_PULL = """
import json, os, signal, sys
import blobdl
from blobdl.batch import _cluster_run
from blobdl.registry import _pull_cluster

_cluster_run.DROP_WAIT = 2.0  # the stall timeout, as in FROZEN

def freezing(real, pid):
    def checked(*args):
        answered = real(*args)
        os.kill(pid, signal.SIGSTOP)
        return answered

    return checked


if __name__ == "__main__":
    address, pid, ref, models, where = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
    try:
        if where == "one":
            _pull_cluster.checked = freezing(_pull_cluster.checked, pid)
            blobdl.pull(ref, models, cluster=address, stall_timeout=2)
        else:
            _pull_cluster._stores = freezing(_pull_cluster._stores, pid)
            blobdl.pull_every_worker(ref, address, stall_timeout=2)
    except blobdl.BlobdlError as exc:
        print(json.dumps([type(exc).__name__, exc.exit_code, str(exc)]))
"""


def _frozen_pull(cluster: DaskCluster, pid: int, ref: str, where: str, tmp_path: Path) -> Any:
    """What the FROZEN_PULL client printed; ``pid`` is resumed after it ends."""
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(FROZEN_PULL))
    try:
        done = subprocess.run([sys.executable, str(script), cluster.address, str(pid), ref,
                               str(tmp_path / "models"), where], capture_output=True,
                              text=True, timeout=FROZEN_BOUND, cwd=REPO)  # fmt: skip
    finally:
        psutil.Process(pid).resume()
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_pull_whose_only_worker_stops_answering_fails_naming_it(
    registry: Registry, tmp_path: Path
) -> None:
    own = start_cluster(tmp_path / "dask", {"solo": {}})
    try:
        model = registry.push_model("library/frozen", "v1", (100 * KB,))
        said = _frozen_pull(own, own.worker_pids()["solo"], ref(registry, model), "one", tmp_path)
    finally:
        own.stop()
    assert said == ["ClusterError", 3, "worker solo of the Dask cluster did not answer within 2 s"]


def test_pull_on_every_worker_with_a_worker_that_stops_answering_names_it_and_fills_the_others(
    registry: Registry, tmp_path: Path
) -> None:
    """Each store's pull is bound to a worker that sees it: it cannot go elsewhere, and
    fails naming its worker once that has been silent for the stall timeout."""
    stores = {name: {"OLLAMA_MODELS": str(tmp_path / name)} for name in ("w-a", "w-b")}
    own = start_cluster(tmp_path / "dask", stores)
    try:
        model = registry.push_model("library/frozen-every", "v1", (100 * KB,))
        pid = own.worker_pids()["w-b"]
        said = _frozen_pull(own, pid, ref(registry, model), "every", tmp_path)
    finally:
        own.stop()
    assert said == ["ClusterError", 3, "worker w-b of the Dask cluster did not answer within 2 s"]
    assert_store(tmp_path / "w-a", registry, model)


def test_pull_on_every_worker_of_a_cluster_without_workers_is_an_error_not_exit_0(
    tmp_path: Path,
) -> None:
    """No worker, no store: the model was put nowhere, which is no success."""
    own = DaskCluster(tmp_path / "dask", QUIET)
    try:
        own.start_scheduler()
        address = own.address
        done = run_cli("pull", "llama3.2:1b", "--scheduler", address, "--every-worker")
    finally:
        own.stop()
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [
        f"blobdl: error: the Dask cluster at {address} has no worker to pull into"
    ]


WHERE = """
import json, sys
import blobdl
items = [blobdl.Item(url, path) for url, path in json.loads(sys.argv[2])]
results = blobdl.download_many(items, cluster=sys.argv[1])
print(json.dumps([[r.ok, str(r.error), r.result and str(r.result.path)] for r in results]))
"""


def test_a_destination_the_worker_resolves_comes_back_as_where_its_bytes_are(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """A relative path, or none (the server names the file), is resolved by the worker that
    writes it, in its own working directory: the path the caller gets back is that one,
    absolute, not a name the caller would look for in its own directory."""
    blobs = [make(64 * KB, 3400), make(64 * KB, 3401)]
    rows = [[blobs[0].url, "relative.bin"], [named(server, blobs[1], "named.bin"), None]]
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(WHERE))
    done = subprocess.run([sys.executable, str(script), cluster.address, json.dumps(rows)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.splitlines()[-1])
    try:
        assert answers == [
            [True, "None", str(cluster.cwd / "relative.bin")],
            [True, "None", str(cluster.cwd / "named.bin")],
        ]
        for blob, answer in zip(blobs, answers, strict=True):
            assert sha256_file(Path(answer[2])) == blob.sha256
    finally:
        for name in ("relative.bin", "named.bin"):  # the module's cluster runs there
            (cluster.cwd / name).unlink(missing_ok=True)


LIBRARY = """
import json, sys
import blobdl
if __name__ == "__main__":
    items = [blobdl.Item(*row) for row in json.loads(sys.argv[1])]
    results = blobdl.download_many(items, cluster="local:2", base_dir=sys.argv[2],
                                   max_connections=4, min_part_size=65536, max_part_size=65536)
    print(json.dumps([[r.item.path, r.ok, r.error and type(r.error).__name__,
                       r.result and r.result.size] for r in results]))
"""


def test_the_library_on_a_local_cluster_answers_in_order_and_confines_paths_on_the_worker(
    make: Make, tmp_path: Path
) -> None:
    blobs = [make(200 * KB, 31), make(600 * KB, 32), make(100 * KB, 33)]
    base = tmp_path / "base"
    base.mkdir()
    (base / "out").symlink_to(tmp_path)  # a link leading out of the base directory
    rows = [[b.url, f"f{n}.bin", f"sha256:{b.sha256}"] for n, b in enumerate(blobs)]
    rows.insert(1, [blobs[0].url, "out/escaped.bin"])
    rows.append(rows[0])  # the same request twice: fetched once
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(LIBRARY))
    done = subprocess.run([sys.executable, str(script), json.dumps(rows), str(base)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.splitlines()[-1])
    assert [a[0] for a in answers] == [row[1] for row in rows]  # the caller's order
    assert answers[1][1:3] == [False, "UsageError"]
    assert not (tmp_path / "escaped.bin").exists()
    for n, blob in enumerate(blobs):
        assert sha256_file(base / f"f{n}.bin") == blob.sha256
    assert [a[3] for a in answers] == [200 * KB, None, 600 * KB, 100 * KB, 200 * KB]


NAMES = """
import json, sys
import blobdl
if __name__ == "__main__":
    items = [blobdl.Item(url, path, digest) for url, path, digest in json.loads(sys.argv[1])]
    results = blobdl.download_many(items, cluster="local:2", base_dir=sys.argv[2])
    print(json.dumps([[r.ok, r.error and r.error.exit_code, r.error and str(r.error)]
                      for r in results]))
"""


def test_items_the_server_names_alike_never_overwrite_each_other_on_a_cluster(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """As on one machine: a name the manifest, or an earlier item, gives already fails the
    later item alone, though the two would run on two workers."""
    blobs = [make(128 * KB, seed=3300 + n) for n in range(4)]
    base = tmp_path / "base"
    base.mkdir()
    rows = [
        [named(server, blobs[0], "same.bin"), None, f"sha256:{blobs[0].sha256}"],
        [named(server, blobs[1], "same.bin"), None, f"sha256:{blobs[1].sha256}"],
        [blobs[2].url, "given.bin", f"sha256:{blobs[2].sha256}"],
        [named(server, blobs[3], "given.bin"), None, f"sha256:{blobs[3].sha256}"],
    ]
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(NAMES))
    done = subprocess.run([sys.executable, str(script), json.dumps(rows), str(base)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.splitlines()[-1])
    assert [a[0] for a in answers] == [True, False, True, False], answers
    for answer in (answers[1], answers[3]):
        assert answer[1] == 5 and "writes it too" in answer[2], answer
    assert sha256_file(base / "same.bin") == blobs[0].sha256
    assert sha256_file(base / "given.bin") == blobs[2].sha256


GROWING = """
import json, sys
import blobdl
if __name__ == "__main__":
    seen = []
    def tell(e):
        seen.append([e.item, type(e.event).__name__, getattr(e.event, "active", None)])
    items = [blobdl.Item(url, path) for url, path in json.loads(sys.argv[1])]
    results = blobdl.download_many(items, cluster="local:1", max_connections=3, connections=2,
                                   min_part_size=262144, max_part_size=262144,
                                   progress_interval=0.1, on_event=tell)
    assert all(r.ok for r in results), [r.error for r in results]
    print(json.dumps(seen))
"""


def test_an_item_grows_into_the_connections_a_finished_item_frees(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A budget of 3, two items that can each use 2: one starts with 2, the other with the
    1 left. Once the first is done, the second takes the connection it freed (and its share
    of the rate), as on one machine, instead of finishing on the one it started with.

    The order is the server's, not the clock's: neither item's data is answered until both
    have asked (under load one item's process may start a second or more after the other's,
    and the other then started all its parts before the first was done). From there, at
    0.75 s a part, the first is done after 4 parts' time and the second has 3 parts' time
    (2.25 s) left to grow before its last part starts."""
    blobs = [make(8 * PART, seed) for seed in (41, 42)]
    both_started(server, blobs, 256 * KB)
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(GROWING))
    rows = [[b.url, str(tmp_path / b.name)] for b in blobs]
    done = subprocess.run([sys.executable, str(script), json.dumps(rows)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for blob in blobs:
        assert sha256_file(tmp_path / blob.name) == blob.sha256
    seen = json.loads(done.stdout.splitlines()[-1])
    first = next(item for item, kind, _ in seen if kind == "Finished")
    after = seen[[kind for _, kind, _ in seen].index("Finished") + 1 :]
    last = [active for item, kind, active in after if item != first and kind == "Progress"]
    assert last and max(last) == 2, seen


CLOSED = """
import json
import blobdl, distributed
if __name__ == "__main__":
    with distributed.LocalCluster(1, processes=False, dashboard_address="127.0.0.1:0") as local:
        client = distributed.Client(local)
        client.close()
        item = blobdl.Item("http://127.0.0.1:9/x", "x")
        answers = []
        for call in (lambda: blobdl.download_many([item], cluster=client),
                     lambda: blobdl.pull("llama3.2:1b", "models", cluster=client)):
            try:
                call()
            except Exception as exc:
                answers.append([type(exc).__name__, getattr(exc, "exit_code", None), str(exc)])
    print(json.dumps(answers))
"""


def test_a_closed_client_given_as_the_cluster_is_one_clear_error(tmp_path: Path) -> None:
    """A ``distributed.Client`` the caller closed (or whose scheduler was lost) reaches no
    scheduler: said so, a ClusterError, not Dask's AttributeError from inside the run."""
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(CLOSED))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env={**os.environ,
                          "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = ["ClusterError", 3, "the distributed.Client given is closed: it reaches no scheduler"]
    assert json.loads(done.stdout.splitlines()[-1]) == [said, said]


def test_without_dask_a_cluster_is_one_line_exit_2(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['distributed'] = None; from blobdl.cli import main; "
        f"sys.exit(main(['-i', {str(tmp_path / 'm.txt')!r}, '--scheduler', 'local']))"
    )
    (tmp_path / "m.txt").write_text("http://127.0.0.1:9/x.bin\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "blobdl: error: a cluster needs Dask's distributed package: pip install 'blobdl[dask]'"
    ]


def test_what_dask_s_event_loop_logs_is_not_shown_beside_the_one_error_line() -> None:
    """Dask runs its client on a Tornado event loop, which logs a callback's exception
    itself (Dask's own ``sync`` raises one when Ctrl-C lands just as a question to the
    scheduler starts): the CLI's stderr stays its one line."""
    code = (
        "import logging; from blobdl.cli._display import quiet_dask; quiet_dask(); "
        "logging.getLogger('tornado.application').error('Exception in callback')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


SIDECAR = """
import json, sys
import blobdl
address, url_a, out_a, url_b, out_b = sys.argv[1:6]

def b_event(event):
    if type(event).__name__ == "Progress" and not b_event.said:
        b_event.said = True
        print("B under way", flush=True)

def on_event(batch_event):
    if type(batch_event.event).__name__ == "Progress" and not on_event.asked:
        on_event.asked = True
        try:
            blobdl.download(url_b, out_b, on_event=b_event, parts=1, progress_interval=0.05)
        except blobdl.BlobdlError as exc:  # optional: its failure is only said
            print("B", type(exc).__name__, flush=True)

on_event.asked = b_event.said = False
try:
    blobdl.download_many([blobdl.Item(url_a, out_a)], cluster=address, on_event=on_event,
                         min_part_size=262144, max_part_size=262144, progress_interval=0.1)
except blobdl.BlobdlError as exc:
    print("A", type(exc).__name__, flush=True)
else:
    print("A finished", flush=True)
"""


def test_a_stop_that_a_callbacks_own_download_lets_pass_still_stops_the_run(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """A SIGINT while B (a download in the run's callback, on the client) is under way stops
    B; the callback lets B's ``Interrupted`` pass. The signal was the run's too: it stops,
    never running on to its item's end first (it ran on, and the run said it finished)."""
    a, b = make(4 * 1024 * KB, 45), make(1024 * KB, 46)
    paced(server, 16 * KB)
    args = [cluster.address, a.url, str(tmp_path / "a"), b.url, str(tmp_path / "b")]
    said, errors = interrupted_once_under_way(SIDECAR, args, STOP_GRACE_LESS)  # a guard
    assert "Traceback" not in errors, errors[-3000:]
    assert said.splitlines() == ["B Interrupted", "A Interrupted"]
    assert not (tmp_path / "a").exists()


OWN_INTERRUPT = """
import json, sys
import blobdl
items = [blobdl.Item(url, path) for url, path in json.loads(sys.argv[2])]
after = []  # events told once the callback had raised

def on_event(told):
    if after:
        after.append(type(told.event).__name__)
    elif getattr(told.event, "done", 0):
        after.append("raised")
        raise KeyboardInterrupt("the job's own cancel")  # no signal was sent

try:
    blobdl.download_many(items, cluster=sys.argv[1], on_event=on_event)
except BaseException as exc:
    print(json.dumps([type(exc).__name__, str(exc), after[1:]]))
"""


def test_a_callbacks_own_keyboardinterrupt_on_a_cluster_comes_back_unchanged_and_told_no_more(
    cluster: DaskCluster, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """A callback's own KeyboardInterrupt (a job's cancel) is no signal: the run stops its
    tasks and gives it back as it was raised, as a run on this machine does, and the
    callback that raised is told no more (it was told its event again, and a callback that
    raised once got ``Interrupted``, a signal nobody sent)."""
    blob = make(2 * 1024 * KB, 47)
    paced(server, 64 * KB)
    rows = json.dumps([[blob.url, str(tmp_path / "a")]])
    done = subprocess.run([sys.executable, "-c", OWN_INTERRUPT, cluster.address, rows],
                          capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    said = json.loads(done.stdout.splitlines()[-1])
    assert said == ["KeyboardInterrupt", "the job's own cancel", []]
    assert not (tmp_path / "a").exists()
