"""Check that the Python test server can pace N connections × R bytes/s on this machine.

Plain threads read the ranges straight off the sockets and throw the bytes away, so the
figure measures the server, not blobdl. If it falls short of the ideal, blobdl cannot
reach the ideal either, and the report says so.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from faultserver.serverctl import ServerHandle

SECONDS = 3.0  # long enough to swamp connection set-up, short enough not to matter
READ = 1 << 20


@dataclass(frozen=True)
class PacingCheck:
    connections: int
    bps_each: float
    seconds: float
    achieved_bps: float
    slowest_bps: float
    server_cpu_s: float

    @property
    def ratio(self) -> float:
        return self.achieved_bps / (self.connections * self.bps_each)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio}


def check_pacing(
    srv: ServerHandle, path: str, size: int, connections: int, bps: float
) -> PacingCheck:
    length = max(1, min(size // connections, int(bps * SECONDS)))
    srv.set_faults({"path": path, "times": None, "action": "shape", "bps": bps})
    rates: list[float] = []
    cpu0 = srv_cpu(srv)
    started = time.monotonic()
    threads = [
        threading.Thread(target=_fetch, args=(srv.port, path, i * length, length, rates))
        for i in range(connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    srv.reset()
    slowest = min(rates) if len(rates) == connections else 0.0
    achieved = length * len(rates) / seconds
    return PacingCheck(connections, bps, seconds, achieved, slowest, srv_cpu(srv) - cpu0)


def _fetch(port: int, path: str, first: int, length: int, rates: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        started = time.monotonic()
        conn.request("GET", path, headers={"Range": f"bytes={first}-{first + length - 1}"})
        resp = conn.getresponse()
        got = 0
        while chunk := resp.read(READ):
            got += len(chunk)
        if got == length:
            rates.append(length / (time.monotonic() - started))  # list.append is atomic
    finally:
        conn.close()


def srv_cpu(srv: ServerHandle) -> float:
    """CPU seconds the server process has used so far (all its threads)."""
    times = psutil.Process(srv.proc.pid).cpu_times()
    return times.user + times.system
