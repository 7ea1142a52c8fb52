"""Lanes share worker processes (``_worker``): ending one lane leaves the lanes beside it
running; a lane that does not answer its stop costs its whole worker, and only then are
its siblings retried. A lane is ended by cutting its sockets (``http._connections``): that must wake
it wherever it waits on the network, the TLS handshake included.

Real fault servers, forked workers, real files, sha256; the socket tests use real
connections to listeners that accept and then say nothing."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil
import pytest
import urllib3

import blobdl
from blobdl import Downloader, PartRetried
from blobdl.http._connections import Sockets, answer_time, noted_in
from blobdl.http._pool import make_pool
from blobdl.processes._proc import own_thread_id
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file
from tests.integration.conftest import PKI

Make = Callable[..., Blob]
LANE = 4 * PART  # 256 KiB parts: four lanes on one worker process


def workers() -> set[int]:
    """The worker processes of a download running in this process (the servers excluded)."""
    me = psutil.Process()
    return {p.pid for p in me.children() if "faultserver" not in " ".join(p.cmdline())}


def fetch_watching(
    blob: Blob, dest: Path, **overrides: Any
) -> tuple[blobdl.DownloadResult, list[Any], set[int]]:
    """Download with one worker process for four lanes; return the result, the events and
    every worker process seen while it ran."""
    seen: set[int] = set()
    events: list[Any] = []

    def look(event: Any) -> None:
        events.append(event)
        seen.update(workers())

    settings = fast_settings(
        processes=1, connections=4, min_part_size=LANE, max_part_size=LANE, **overrides
    )
    result = Downloader(settings).download(blob.url, dest, on_event=look)
    return result, events, seen


@pytest.fixture(autouse=True)
def in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The coordinator runs here, whatever native threads this process may have."""
    monkeypatch.setattr(blobdl.processes._clean_process, "threaded", lambda: False)


def test_a_silent_lane_is_ended_and_the_lanes_beside_it_carry_on(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(4 * LANE, seed=401)
    # The second part goes silent half-way; the others are slow enough to be running then.
    server.set_faults(
        {"path": f"/files/{blob.name}", "times": 1,
         "action": "stall_at", "offset": LANE + LANE // 2, "hold": 30},
        {"path": f"/files/{blob.name}", "times": None, "action": "rate", "bps": 400_000},
    )  # fmt: skip
    _, events, seen = fetch_watching(blob, tmp_path / "out", stall_timeout=0.5, steal=False)
    assert sha256_file(tmp_path / "out") == blob.sha256
    again = server.stats()["ranges"][5:]  # after the probe and the four parts
    assert again and all(r.startswith(f"bytes={LANE + LANE // 2}") for r in again), again
    retried = {e.part for e in events if isinstance(e, PartRetried)}
    assert retried <= {1}  # ended as a stall (a retry) or as a lagging lane (no retry)
    assert len(seen) == 1  # in the one worker process, which lived on


def test_a_worker_that_cannot_answer_a_stop_is_killed_and_its_lanes_retried(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobdl.engine._worker, "STOP_GRACE", 0.2)
    blob = make(4 * LANE, seed=402)
    slow = {"path": f"/files/{blob.name}", "times": None, "action": "rate", "bps": 400_000}
    server.set_faults(slow)
    frozen: list[int] = []

    def freeze(event: Any) -> None:
        """Stop the worker process (SIGSTOP): its lanes stall, and it answers nothing."""
        if not frozen and isinstance(event, blobdl.Progress) and event.active == 4:
            frozen.extend(workers())
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)

    settings = fast_settings(
        processes=1, connections=4, min_part_size=LANE, max_part_size=LANE, stall_timeout=0.5
    )
    result = Downloader(settings).download(blob.url, tmp_path / "out", on_event=freeze)
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert len(frozen) == 1 and not psutil.pid_exists(frozen[0])  # killed, and reaped
    assert result.retries >= 4  # the lane that stalled first, and the three that died with it


# --- cutting a lane's sockets -----------------------------------------------------------------


@pytest.fixture
def mute() -> Iterator[str]:
    """A listener that accepts connections and never says a word: host:port."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    host, port = listener.getsockname()
    try:
        yield f"{host}:{port}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize("scheme", ["http", "https"], ids=["status line", "tls handshake"])
def test_a_cut_wakes_a_lane_wherever_it_waits_on_the_network(
    mute: str, pki: PKI, scheme: str
) -> None:
    """Over https the wait is the handshake, before urllib3 has a socket to show for it."""
    sockets = Sockets()
    outcome: list[BaseException | None] = []
    settings = fast_settings(stall_timeout=30.0, ca_bundle=pki.ca_pem)  # read timeout: 60 s

    def lane() -> None:
        pool = make_pool(settings)
        with noted_in(sockets):
            try:
                pool.request("GET", f"{scheme}://{mute}/x", retries=False)
                outcome.append(None)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                outcome.append(exc)
            finally:
                pool.clear()

    thread = threading.Thread(target=lane)
    thread.start()
    time.sleep(0.3)  # connected, and waiting
    assert thread.is_alive() and not outcome
    began = time.monotonic()
    sockets.cut()
    thread.join(timeout=5)
    assert not thread.is_alive() and outcome and outcome[0] is not None
    assert time.monotonic() - began < 5  # woken by the cut, not by a timeout


def test_a_lane_keeps_no_duplicate_of_its_sockets_after_it_ends(mute: str) -> None:
    port = int(mute.rpartition(":")[2])

    def ours_to_mute() -> int:
        return sum(1 for c in psutil.Process().net_connections() if c.raddr and c.raddr[1] == port)

    with noted_in(Sockets()):
        pool = make_pool(fast_settings())
        with pytest.raises(urllib3.exceptions.HTTPError):
            pool.request("GET", f"http://{mute}/x", retries=False, timeout=0.2)
        pool.clear()
    assert ours_to_mute() == 0


def test_a_new_connection_tells_when_it_was_ready_so_its_set_up_is_no_request_overhead(
    pki: PKI,
) -> None:
    """A lane sizes its chunks by how long a request takes to its status line. A server
    slow to finish the TLS handshake (0.3 s here) but quick to answer must not look like a
    slow-to-answer server: its answer time (``answer_time``) leaves the set-up out, the
    handshake included, and a reused connection's has none to leave out."""
    listener = socket.create_server(("127.0.0.1", 0))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)

    def serve() -> None:
        raw, _ = listener.accept()
        time.sleep(0.3)
        with context.wrap_socket(raw, server_side=True) as conn:
            for _ in range(2):  # two requests on the one connection
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/9\r\n"
                             b"Content-Length: 1\r\n\r\nx")  # fmt: skip

    thread = threading.Thread(target=serve)
    thread.start()
    url = f"https://localhost:{listener.getsockname()[1]}/x"
    pool = make_pool(fast_settings(ca_bundle=pki.ca_pem))
    try:
        first_sent = time.monotonic()
        first = pool.request("GET", url, preload_content=False)
        first_answered = time.monotonic()
        first_took = answer_time(first, first_sent, first_answered)
        first.read()
        first.release_conn()
        second_sent = time.monotonic()
        second = pool.request("GET", url, preload_content=False)
        second_answered = time.monotonic()
        second_took = answer_time(second, second_sent, second_answered)
        second.read()
    finally:
        pool.clear()
        thread.join(timeout=5)
        listener.close()
    assert first_answered - first_sent >= 0.3
    assert 0 <= first_took < 0.25  # the request itself was answered at once
    assert second_took == second_answered - second_sent  # a reused connection: no set-up


# --- what a long-lived worker holds, and what waits ---------------------------------------


def our_sockets_to(port: int, pid: int | None = None) -> int:
    """Sockets of a process (this one by default) connected to ``port`` on loopback."""
    return len(sockets_to(port, pid))


def sockets_to(port: int, pid: int | None = None) -> set[int]:
    """The local ports of a process's sockets (this one's by default) connected to ``port``."""
    proc = psutil.Process(pid) if pid else psutil.Process()
    return {c.laddr[1] for c in proc.net_connections() if c.raddr and c.raddr[1] == port}


def test_a_lane_lets_go_of_each_connection_the_server_closed(
    make: Make, server: ServerHandle
) -> None:
    """A server that closes every connection after its response (Connection: close, an
    HTTP/1.0 server, nginx's keepalive_requests) makes a lane open a new connection per
    chunk. The ones it is done with must be closed then, not held open by their duplicates
    until the attempt ends: a long attempt would hold one descriptor per chunk.

    Counted: the sockets this lane opened, after each chunk. The server is the session's, and
    this process may hold a socket to it that another test left for the garbage collector."""
    blob = make(64 * 1024, seed=403)
    server.set_faults({"path": f"/files/{blob.name}", "times": None,
                       "action": "headers", "set": {"Connection": "close"}})  # fmt: skip
    others = sockets_to(server.port)
    held = []
    with noted_in(Sockets()):
        pool = make_pool(fast_settings())
        for _ in range(20):  # twenty chunks of one attempt
            response = pool.request("GET", blob.url, headers={"Range": "bytes=0-1023"})
            assert response.status == 206
            held.append(len(sockets_to(server.port) - others))
        pool.clear()
    assert max(held) <= 1, f"connections held open after each of 20 requests: {held}"


def test_a_worker_holds_no_more_sockets_than_lanes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The same through a real download: two lanes in one worker, chunks from 16 KiB up,
    a server that closes after every response and a slow link (so the chunks stay small)."""
    blob = make(2 * LANE * 8, seed=404)  # 4 MiB: two lanes of 2 MiB
    server.set_faults(
        {"path": f"/files/{blob.name}", "times": None, "action": "headers",
         "set": {"Connection": "close"}},
    )  # fmt: skip
    most = [0]

    def look(event: Any) -> None:
        for pid in workers():
            with suppress(psutil.Error):  # a worker that just ended
                most[0] = max(most[0], our_sockets_to(server.port, pid))

    settings = fast_settings(
        processes=1, connections=2, min_part_size=8 * LANE, max_part_size=8 * LANE,
        min_steal_size=16 * 1024, limit_rate=2_000_000, progress_interval=0.05,
    )  # fmt: skip
    Downloader(settings).download(blob.url, tmp_path / "out", on_event=look)
    assert sha256_file(tmp_path / "out") == blob.sha256
    # Each lane: its connection, and for a moment the one it just replaced.
    assert most[0] <= 4, f"the worker held {most[0]} sockets to the server for 2 lanes"


def _two_busy_lanes(tids: Any) -> None:
    """A worker whose two lanes both have Python work to do (bytes to count, to write):
    neither ever blocks on a socket, so neither is waiting on the network."""

    def python_work() -> None:
        while True:
            sum(range(2000))

    def starved() -> None:
        tids.set(0, own_thread_id())
        python_work()

    threading.Thread(target=python_work, daemon=True).start()
    starved()


def test_a_lane_waiting_for_the_gil_is_not_waiting_on_the_network() -> None:
    """``Running.waiting`` guards cuts and restarts: a lane that could run but is starved of
    CPU must not be taken for one blocked on its socket. A thread that waits for the GIL
    sleeps on a futex: its state is S, as if it waited on the network. Fresh workers each
    time: the first looks at a worker are where a starved lane was misread."""
    import multiprocessing
    from types import SimpleNamespace

    from blobdl.engine._worker import Running, _ThreadIds
    from blobdl.processes._child import Forked

    looks = []
    for _ in range(8):
        tids = _ThreadIds(1)
        worker = multiprocessing.get_context("fork").Process(target=_two_busy_lanes, args=(tids,))
        worker.start()
        proc = Forked(worker)
        try:
            while not tids.get(0):
                time.sleep(0.01)
            handle = SimpleNamespace(tids=tids, proc=proc)
            running = Running(handle, 0)  # type: ignore[arg-type]
            for _ in range(25):
                looks.append(running.waiting())
                time.sleep(0.002)
        finally:
            proc.kill()
            proc.join()
    assert not any(looks), f"taken for waiting on the network {sum(looks)} times in 200"


def test_splicing_waits_on_a_socket_whose_descriptor_is_past_1024(tmp_path: Path) -> None:
    """A long-lived worker's descriptors can pass FD_SETSIZE (the leak above does it);
    ``_splice_in`` waits with select(), which refuses them (ValueError: not a network
    error, so the lane reports 'lane failed unexpectedly' and the download fails)."""
    from blobdl.store._writes import _splice_in

    ours, theirs = socket.socketpair()
    high = socket.socket(fileno=os.dup2(ours.fileno(), 1500))  # as a busy worker's would be
    read_end, write_end = os.pipe()
    try:
        high.settimeout(0.2)  # urllib3's sockets have a timeout: non-blocking underneath
        with pytest.raises(TimeoutError):  # nothing arrives: a timeout, like any lane's
            _splice_in(high, write_end, 4096)
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        for sock in (high, ours, theirs):
            sock.close()


class Boom(Exception):
    """The caller's own bug, raised from its callback."""


def test_a_lane_sleeping_in_its_pacer_is_stopped_at_once(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lane may sleep between reads (a tenth of a second's worth, stretched here to 4 s
    per read at 256 B/s); a stop must wake it, not wait the sleep out (or, past STOP_GRACE,
    kill its worker)."""
    monkeypatch.setattr(blobdl.engine._worker, "STOP_GRACE", 30.0)
    monkeypatch.setattr(blobdl.engine._lane._Pacer, "SLICE", 4.0)  # the workers fork it
    blob = make(4 * LANE, seed=405)
    raised: list[float] = []

    def boom(progress: blobdl.Progress) -> None:
        if progress.done > 0:
            raised.append(time.monotonic())
            raise Boom

    settings = fast_settings(processes=1, connections=2, limit_rate=512, stall_timeout=30.0)
    with pytest.raises(Boom):
        Downloader(settings).download(blob.url, tmp_path / "out", on_progress=boom)
    assert raised and time.monotonic() - raised[0] < 2.0  # not the 4 s of a pacer's sleep


@pytest.mark.parametrize(
    ("processes", "connections", "count", "seats"),
    [(None, 16, max(2, os.cpu_count() or 1), -(-16 // max(2, os.cpu_count() or 1))),
     (4, 16, 4, 4), (3, 16, 3, 6), (32, 16, 16, 1), (2, 1, 1, 1)],
)  # fmt: skip
def test_lanes_are_spread_over_at_most_as_many_processes_as_connections(
    processes: int | None, connections: int, count: int, seats: int
) -> None:
    from blobdl.engine._counter_table import CounterTable
    from blobdl.engine._worker import Crew

    crew = Crew(fast_settings(processes=processes, connections=connections), CounterTable(1))
    assert (crew.count, crew.seats) == (count, seats)  # forked only when a lane needs one
    assert crew.count * crew.seats >= connections


@pytest.mark.parametrize(("cpus", "count"), [(None, 2), (1, 2), (2, 2), (3, 3), (64, 16)])
def test_processes_default_to_one_per_cpu_at_least_two(
    cpus: int | None, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's default for ``--processes``: one per CPU, at least 2, never more than the
    connections; for a download's crew and a batch's pool alike. The test above reckons its
    expectation by the same formula on this machine's CPUs, so a changed floor passed it."""
    from blobdl.batch._sizing import pool_size
    from blobdl.engine._counter_table import CounterTable
    from blobdl.engine._worker import Crew

    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert Crew(fast_settings(connections=16), CounterTable(1)).count == count
    assert pool_size(fast_settings(), 16, 16, {"host": 100})[1] == count
