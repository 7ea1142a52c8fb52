"""nginx on loopback, for tests: the web server users meet (Debian's ``nginx``), serving one
folder under locations that each carry their own directives (``limit_conn``, ``max_ranges``,
``etag off``...), so a test shows what blobdl does with nginx's own answers.

Usage::

    with start_nginx(folder, root, {"lc": "limit_conn perip 2;"}) as ngx:
        ngx.url("lc", "blob.bin")  # http://127.0.0.1:PORT/lc/blob.bin
        ngx.statuses("lc")  # the status of every request nginx logged there, in order

``benchmarks/nginx.py`` is the benchmark's (rates, HTTPS, wire bytes); this one is the tests'.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .registry import free_port, stop_process
from .tinyproxy import wait_accepting

#: What every nginx started here needs (the tests' and the benchmark's): one process in the
#: foreground, and each path it writes (pid, logs, temp folders) inside ``{tmp}``.
PREAMBLE = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
"""
#: Inside ``http {}``: the temp paths, and every file served as bytes.
HTTP_PREAMBLE = """\
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ }}
    default_type application/octet-stream;
"""
_CONF = (
    PREAMBLE
    + """\
http {{
    access_log {tmp}/access.log;
"""
    + HTTP_PREAMBLE
    + """\
    limit_conn_zone $binary_remote_addr zone=perip:1m;
    server {{
        listen 127.0.0.1:{port};
{locations}
    }}
}}
"""
)
_LOG_LINE = re.compile(r'"GET /([^/ ]+)/\S* HTTP/[\d.]+" (\d{3}) ')
_LOG_NAME = re.compile(r'"GET /([^/ ]+)/(\S*) HTTP/[\d.]+" ')


@dataclass(frozen=True)
class Nginx:
    proc: subprocess.Popen[bytes]
    port: int
    folder: Path

    def url(self, location: str, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{location}/{name}"

    def statuses(self, location: str) -> list[int]:
        """The status of every GET nginx logged at ``location``, in order."""
        log = (self.folder / "access.log").read_text(errors="replace")
        return [int(s) for loc, s in _LOG_LINE.findall(log) if loc == location]

    def asked(self, location: str) -> Counter[str]:
        """How many GETs nginx logged at ``location``, by the name asked for."""
        log = (self.folder / "access.log").read_text(errors="replace")
        return Counter(name for loc, name in _LOG_NAME.findall(log) if loc == location)


@contextmanager
def start_nginx(folder: Path, root: Path, locations: Mapping[str, str]) -> Iterator[Nginx]:
    """Serve ``root`` at ``/<name>/`` for each location, with its directives."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(binary).exists(), "needs nginx: `make test` installs it (apt-get)"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    blocks = "".join(
        f"        location /{name}/ {{ alias {root}/; {directives} }}\n"
        for name, directives in locations.items()
    )
    (folder / "nginx.conf").write_text(_CONF.format(tmp=folder, port=port, locations=blocks))
    out = (folder / "nginx.out").open("wb")
    proc = subprocess.Popen(
        [binary, "-p", str(folder), "-c", str(folder / "nginx.conf")],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_accepting(port, proc, "nginx")
        yield Nginx(proc, port, folder)
    finally:
        stop_process(proc)
        out.close()
