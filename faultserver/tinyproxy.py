"""tinyproxy on loopback, for tests: the proxy users meet (Debian's ``tinyproxy``), beside our
scriptable ``proxy.ForwardProxy``.

Usage::

    with start_tinyproxy(folder, auth=("alice", "s3cret")) as proxy:
        ...  # download through proxy.url_with(("alice", "s3cret"))
        assert proxy.requests()  # "GET http://..." and "CONNECT host:port" lines it logged

It forwards absolute-form requests (adding ``Via: 1.1 tinyproxy``) and tunnels CONNECT to
any port; ``auth`` makes it ask for Basic credentials (407 without them); ``directives`` are
more lines of its configuration (``ConnectPort 443``, ``Filter "<file>"``...), its policy.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .registry import free_port, stop_process

READY_TIMEOUT = 10.0
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+ \S+) HTTP/")


@dataclass
class TinyProxy:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, auth: tuple[str, str]) -> str:
        return f"http://{auth[0]}:{auth[1]}@127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        """``METHOD TARGET`` of every request it has read, in order."""
        return _REQUEST.findall(self.log.read_text(errors="replace"))


@contextmanager
def start_tinyproxy(
    folder: Path, auth: tuple[str, str] | None = None, directives: Sequence[str] = ()
) -> Iterator[TinyProxy]:
    binary = shutil.which("tinyproxy")
    assert binary is not None, "needs tinyproxy: `make test` installs it (apt-get)"
    folder.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), folder / "tinyproxy.log"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 30",
        "MaxClients 100",
        f'LogFile "{log}"',
        "LogLevel Connect",
        f'PidFile "{folder / "tinyproxy.pid"}"',
        "Allow 127.0.0.1",
    ]
    if auth is not None:
        lines.append(f"BasicAuth {auth[0]} {auth[1]}")
    lines.extend(directives)
    conf = folder / "tinyproxy.conf"
    conf.write_text("\n".join(lines) + "\n")
    out = (folder / "tinyproxy.out").open("wb")
    proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_accepting(port, proc, "tinyproxy")
        yield TinyProxy(proc, port, log)
    finally:
        stop_process(proc)
        out.close()


def wait_accepting(port: int, proc: subprocess.Popen[bytes], name: str) -> None:
    """Until ``proc`` (a server called ``name``) accepts connections at ``port``."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} is not accepting connections")
