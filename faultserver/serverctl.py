"""Start and drive the fault-injecting test server (``faultserver/server.py``).

Usage::

    with start_server(tmp_path) as srv:
        digest = make_blob(tmp_path, "blob.bin", 10 << 20)
        srv.set_faults({"path": "/files/blob.bin", "action": "reset_after", "bytes": 1000})
        ...  # download srv.url("blob.bin")
        assert srv.stats()["requests"] == 2

Routes: ``/files/<name>`` (ranges, ETag, If-Match, If-Range), ``/cd/<name>?filename=v``
(adds Content-Disposition), ``/redirect/<n>/<name>`` and ``/redirect-abs/<n>/<name>``
(exactly n 302 hops to /files/<name>), ``/status/<code>``.

A fault rule is ``{"path": "/files/x" or "/files/*", "skip": 0, "times": 1 or None,
"method": None or "GET", "action": NAME, **params}``; rules are walked in order and the
first matching, not yet exhausted rule owns the request (its first ``skip`` matches are
served normally); ``"after": {"path": P, "requests": N}`` with any action holds the reply
(before its status line) until P has been asked N times: a barrier that makes two clients'
requests start together, however late one of them asks.  Actions: status[status, headers,
body], reset_after[bytes],
close_after[bytes], stall_after[bytes, hold], no_response[hold], ttfb[delay], rate[bps],
ignore_range, no_length, shift_range[by], wrong_content_range[by], etag[value], full_200,
shape[bps, ttfb, stall_after | reset_after, hold] (one CDN lane: all of these on one request),
wrong_length[by] (Content-Length off by ``by``), encoding[value] (a Content-Encoding label),
headers[set: {name: value}, drop: [names]] (an otherwise normal response with headers
replaced or removed; the connection closes after it), redirect[location, status=302,
endless, hold, length, bps] (a 3xx to ``location``; ``endless``: a body that never ends,
for ``hold`` s, read to EOF or announced as ``length`` bytes, trickled at ``bps``),
stall_at[offset, hold, bps] (the first
request whose range holds byte ``offset`` sends up to it, then holds: a lane that goes silent
there however the client cuts its requests), slow_conn[bps] (the matched request's
connection serves every later request at ``bps`` too: a slow path, not a slow request),
transfer_encoding[value, chunked=true, length=false,
whole=false] (the body under ``Transfer-Encoding: value`` exactly as given, chunk-encoded
unless ``chunked`` is false, its Content-Length kept only with ``length``; ``whole``: a 200
with the whole file), interim[statuses=[103]] (1xx responses before the real one),
raw[send, trail, split, gap=0.02, close=false] (exact bytes: the reply, or ``send`` in its
place, with ``trail`` glued on in the same write, as latin-1 text; cut into separate writes
``gap`` s apart at the ``split`` offsets; the connection kept alive unless ``close``).

``start_server(root, link_bps=N)`` also caps all response bodies together at N bytes/s (a
shared link), on top of any per-request ``rate``/``shape`` pacing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import selectors
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
CTL_TIMEOUT = 10.0
BLOB_CHUNK = 1 << 20


class ServerHandle:
    """A running ``faultserver.server`` subprocess plus its control API."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        port: int,
        root: Path,
        tls: ssl.SSLContext | None,
        stderr: IO[bytes],
    ) -> None:
        self.proc = proc
        self.port = port
        self.root = root
        self.base_url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self._stderr = stderr
        self._stderr_tail = ""
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if tls is not None:
            handlers.append(urllib.request.HTTPSHandler(context=tls))
        # No proxies: an http_proxy in the environment must not intercept loopback calls.
        self._opener = urllib.request.build_opener(*handlers)

    def url(self, name: str) -> str:
        return f"{self.base_url}/files/{quote(name)}"

    def route(self, path: str) -> str:
        """Absolute URL for any server path, e.g. ``route("/redirect/3/x")``."""
        return self.base_url + path

    def set_faults(self, *rules: dict[str, object]) -> None:
        """Replace the rule list (hit counters restart from zero)."""
        self._call("/_ctl/faults", {"rules": list(rules)})

    def reset(self) -> None:
        """Clear rules and stats."""
        self._call("/_ctl/reset", {})

    def stats(self) -> dict[str, Any]:
        return self._call("/_ctl/stats", None)

    def stderr_text(self) -> str:
        """What the server wrote to stderr so far (tracebacks, if any)."""
        if self._stderr.closed:
            return self._stderr_tail
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL after STOP_TIMEOUT. Safe to call twice."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if not self._stderr.closed:
            self._stderr_tail = self.stderr_text()
            self._stderr.close()

    def _call(self, path: str, body: dict[str, object] | None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path, data=data, method="GET" if data is None else "POST"
        )
        req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=CTL_TIMEOUT) as resp:
                answer: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # surface the server's reason (e.g. a bad rule)
            raise RuntimeError(f"{path}: {exc.code} {exc.read().decode(errors='replace')}") from exc
        return answer

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_server(
    root: Path,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    ca: str | None = None,
    link_bps: float | None = None,
    module: str = "faultserver.server",
    extra: tuple[str, ...] = (),
) -> ServerHandle:
    """Start ``python -m faultserver.server`` serving ``root``; wait for its READY line.

    For TLS, control calls trust ``ca`` (default: ``certfile`` itself, i.e. self-signed).
    ``link_bps`` caps all response bodies together (bytes/s), like one shared link.
    ``module`` and ``extra``: another server built on it (``faultserver.hub``) and its
    own arguments.
    """
    cmd = [sys.executable, "-m", module, "--root", str(root), "--port", "0", *extra]
    if certfile is not None:
        cmd += ["--certfile", certfile, "--keyfile", keyfile or certfile]
    if link_bps is not None:
        cmd += ["--link-bps", str(link_bps)]
    # A file, not a pipe: nobody drains stderr, and a full pipe would wedge the server.
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the handle
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
    )
    try:
        port = _await_ready(proc)
    except RuntimeError as exc:
        proc.kill()
        proc.wait()
        stderr.seek(0)
        detail = stderr.read().decode(errors="replace")
        raise RuntimeError(f"{exc}; cmd={cmd}; stderr:\n{detail}") from None
    return ServerHandle(proc, port, root, _client_tls(certfile, ca), stderr)


def _client_tls(certfile: str | None, ca: str | None) -> ssl.SSLContext | None:
    if certfile is None:
        return None
    ctx = ssl.create_default_context(cafile=ca or certfile)
    ctx.check_hostname = False  # control plane only; hostname checks are the client's test
    return ctx


def _await_ready(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + READY_TIMEOUT
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"server not READY within {READY_TIMEOUT}s (got {buf!r})")
            if not sel.select(left):
                continue
            chunk = os.read(
                fd, 4096
            )  # raw reads: a buffered readline could block past the deadline
            if not chunk:
                raise RuntimeError(f"server exited with {proc.wait()} before READY")
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
    word, _, port = line.partition(" ")
    if word != "READY" or not port.isdigit():
        raise RuntimeError(f"unexpected first line from server: {line!r}")
    return int(port)


def make_blob(root: Path, name: str, size: int, seed: int = 0) -> str:
    """Write ``size`` deterministic pseudo-random bytes to ``root/name``; return sha256 hex.

    Every 1 MiB chunk differs, so a download that fetched the wrong offset cannot
    accidentally produce the right digest.
    """
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with open(root / name, "wb") as f:
        left = size
        while left > 0:
            chunk = rng.randbytes(min(BLOB_CHUNK, left))
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()
