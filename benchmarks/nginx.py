"""A real nginx for the HTTP and HTTPS cases, started and stopped by the harness.

One nginx process (``master_process off``, ``daemon off``) serves a directory on loopback,
over plain HTTP and over HTTPS with a certificate generated for the run (trustme). Each rate
cap is a location of its own, ``/r/<bytes per s>/<name>``, with ``limit_rate``: nginx caps
every response (one per connection at a time) at that rate; ``/r/0/`` is uncapped.

Wire bytes (issue #14) come from nginx's own access log: every request is logged with
``$bytes_sent`` (all the bytes nginx handed to the socket for it, headers included, also for a
response the client hung up on) and the run marker the harness puts in the query string, so
one run's bytes and requests are the sum of its lines. Over HTTPS the figure is the plaintext
nginx wrote into TLS, not the (slightly larger) ciphertext.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from faultserver.nginx import HTTP_PREAMBLE, PREAMBLE

from .pacing import PacingCheck

READY_TIMEOUT = 10.0
#: After a tool exits, nginx may still be finishing a response the tool hung up on; the
#: run's log lines are read once nginx has no connection open but the status probe's.
QUIET_TIMEOUT = 10.0
LOG_FORMAT = "$arg_run\\t$status\\t$bytes_sent\\t$body_bytes_sent\\t$connection\\t$http_range"

_CONF = (
    PREAMBLE
    + """\
user root root;
http {{
    access_log off;
"""
    + HTTP_PREAMBLE
    + """\
    sendfile on;
    tcp_nopush on;
    # Over TLS nginx cannot sendfile: it reads the file through these buffers. The default
    # (2 × 32 KiB) paces 16 × 20 MiB/s of HTTPS at ~55 % of limit_rate on a 2-core machine,
    # which would measure nginx, not the clients; 2 × 1 MiB reaches the cap (pace() checks).
    output_buffers 2 1m;
    keepalive_requests 100000;
    keepalive_timeout 60s;
    log_format run "{log_format}";
    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {tmp}/cert.pem;
        ssl_certificate_key {tmp}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:1m;
        location = /_status {{ stub_status; }}
{locations}
    }}
}}
"""
)
_LOCATION = """\
        location /r/{bps}/ {{
            alias {root}/;
            limit_rate {bps};
            access_log {tmp}/access.log run;
        }}
"""


@dataclass(frozen=True)
class Nginx:
    """A running nginx: its ports, the CA that signed its certificate, its log."""

    proc: subprocess.Popen[bytes]
    tmp: Path
    http_port: int
    https_port: int
    ca_file: Path

    def url(self, name: str, *, https: bool, bps: float | None, run: str) -> str:
        scheme, port = ("https", self.https_port) if https else ("http", self.http_port)
        return f"{scheme}://127.0.0.1:{port}/r/{int(bps or 0)}/{name}?run={run}"

    def cpu_s(self) -> float:
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def wire(self, run: str) -> tuple[int, int]:
        """(bytes nginx sent, requests) for one run marker, once nginx has gone quiet."""
        self._await_quiet()
        sent = requests = 0
        log = self.tmp / "access.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            fields = line.split("\t")
            if fields[0] == run and len(fields) > 2 and fields[2].isdigit():
                sent += int(fields[2])
                requests += 1
        return sent, requests

    def _await_quiet(self) -> None:
        deadline = time.monotonic() + QUIET_TIMEOUT
        while time.monotonic() < deadline:
            if self._active_connections() <= 1:  # the status request itself
                return
            time.sleep(0.05)

    def _active_connections(self) -> int:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        url = f"http://127.0.0.1:{self.http_port}/_status"
        with opener.open(url, timeout=5) as resp:
            first = resp.read().decode().splitlines()[0]  # "Active connections: N"
        return int(first.rpartition(":")[2])


def pace(
    ngx: Nginx, name: str, size: int, connections: int, bps: float, *, https: bool
) -> PacingCheck | None:
    """Can nginx alone serve ``connections`` × ``bps`` here? ``connections`` curl processes read
    one part each to /dev/null (no disk, no blobdl); returns a PacingCheck, or None without
    curl. nginx's one-second allowance per request is included, as it is for every tool."""
    if shutil.which("curl") is None:
        return None
    part = size // connections
    url = ngx.url(name, https=https, bps=bps, run="pacing-check")
    cpu0, started = ngx.cpu_s(), time.monotonic()
    curl = ["curl", "-sS", "-k", "--noproxy", "*", "-o", "/dev/null", "-w", "%{time_total}"]
    procs = [
        subprocess.Popen(
            [*curl, "-r", f"{i * part}-{(i + 1) * part - 1}", url],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(connections)
    ]
    times = [float(p.communicate()[0] or 0) for p in procs]
    seconds = time.monotonic() - started
    slowest = part / max(times) if min(times) > 0 else 0.0
    achieved = part * connections / seconds
    return PacingCheck(connections, bps, seconds, achieved, slowest, ngx.cpu_s() - cpu0)


def available() -> bool:
    return shutil.which("nginx") is not None


@contextlib.contextmanager
def start_nginx(root: Path, rates: set[float | None]) -> Iterator[Nginx]:
    """Serve ``root`` at ``/r/<bps>/`` for each rate (None: uncapped) until the block ends."""
    exe = shutil.which("nginx")
    if exe is None:
        raise RuntimeError("nginx is not installed (make bench installs it)")
    with tempfile.TemporaryDirectory(prefix="blobdl-nginx-") as tmp_name:
        tmp = Path(tmp_name)
        ca_file = _certificate(tmp)
        http_port, https_port = _free_port(), _free_port()
        locations = "".join(
            _LOCATION.format(bps=int(bps or 0), root=root, tmp=tmp)
            for bps in sorted({int(r or 0) for r in rates} | {0})
        )
        conf = _CONF.format(
            tmp=tmp,
            http_port=http_port,
            https_port=https_port,
            locations=locations,
            log_format=LOG_FORMAT,
        )
        (tmp / "nginx.conf").write_text(conf)
        err = (tmp / "stderr.log").open("wb")
        proc = subprocess.Popen(
            [exe, "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
        )
        server = Nginx(proc, tmp, http_port, https_port, ca_file)
        try:
            _await_ready(server)
            yield server
        finally:
            _stop(proc)
            err.close()


def _certificate(tmp: Path) -> Path:
    import trustme  # a test dependency; imported here so the harness loads without it

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(tmp / "cert.pem"), append=True)
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    return tmp / "ca.pem"


def _free_port() -> int:
    # Racy in principle (another process may take it before nginx binds), harmless here.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _await_ready(server: Nginx) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        with contextlib.suppress(OSError, ValueError):
            server._active_connections()
            return
        time.sleep(0.05)
    _stop(server.proc)
    log = (server.tmp / "error.log", server.tmp / "stderr.log")
    detail = "\n".join(p.read_text(errors="replace") for p in log if p.exists())
    raise RuntimeError(f"nginx did not start:\n{detail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        # SIGQUIT: graceful; nginx with master_process off exits once idle.
        os.kill(proc.pid, signal.SIGQUIT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
