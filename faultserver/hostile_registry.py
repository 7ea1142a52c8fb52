"""A scriptable OCI registry for ``blobdl pull``'s property tests: one process, four origins.

Run from the repo root::

    python -m faultserver.hostile_registry [--certfile CERT --keyfile KEY]

It prints one line ``READY <ctl> <registry> <storage> <auth>`` (four loopback ports) and
serves until SIGTERM. Each port is its own origin, with a role (with a certificate, the
registry and the token realm speak TLS; storage and the control port stay plain HTTP, so a
test can see what a client sends from https down to http):

- ``registry``: ``/v2/<repo>/manifests/<ref>`` and ``/v2/<repo>/blobs/<digest>``, behind
  Bearer tokens (a 401 naming the ``auth`` realm), Basic credentials, or nothing; a blob is
  served with ranges, or answered 307 to ``storage``;
- ``storage``: ``/blobs/<digest>?sig=…`` with ranges, no auth (a presigned URL's origin);
- ``auth``: ``/token``, a token for Basic credentials (or for nothing);
- ``ctl``: ``POST /script`` (the script below; it also clears the log), ``GET /log``.

A script is JSON: ``repo``, ``tag``, ``manifest`` (the exact bytes, base64),
``content_type``, ``digest_header`` (send ``Docker-Content-Digest``), ``blobs`` ({digest:
base64 bytes}), ``auth`` ("none", "bearer", "basic"), ``credentials`` ("user:pass" the
registry's Basic and the token server require, or null), ``token``, ``redirect`` (blobs 307
to storage), ``storage_host`` (how the 307 names storage, e.g. "localhost"), and ``faults``:
rules walked in order, ``{"role", "match" (a substring of the path, "" for any), "skip",
"times" (null: always), "status", "headers", "body" (UTF-8 text) or "repeat": [text, n],
or "trickle_head": S (a head that never ends, a byte every S seconds), or "close": true
(the connection closed under the request, no byte of an answer); "kept": true or false
matches only requests that come on a connection that carried one before, or only those
that do not}``; the first matching rule that is not used up answers instead of the script.
``kept`` with ``close`` scripts a server closing an idle connection as a request crosses
it on the wire, as every server does at its keep-alive timeout. A rule ``"delay": S`` answers as the
script does, S seconds late; ``GET /log`` also says the most requests each role answered
at once (``peak``).

Every request is logged as ``{"role", "method", "path", "headers"}``: a test checks which
origin saw which credential.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .nodelay import NoDelayServer

ROLES = ("ctl", "registry", "storage", "auth")
TLS_ROLES = ("registry", "auth")  # the ones that speak TLS when given a certificate
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_WRITE_CHUNK = 64 * 1024


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.script: dict[str, Any] = {"faults": []}
        self.blobs: dict[str, bytes] = {}
        self.hits: list[int] = []
        self.log: list[dict[str, Any]] = []
        self.active: dict[str, int] = dict.fromkeys(ROLES, 0)  # this script's being answered now
        self.peak: dict[str, int] = dict.fromkeys(ROLES, 0)  # the most at once since the load
        self.loads = 0  # scripts loaded so far: the number of the one playing
        self.ports: dict[str, int] = {}
        self.schemes: dict[str, str] = dict.fromkeys(ROLES, "http")

    def load(self, script: dict[str, Any]) -> None:
        with self.lock:
            self.script = script
            self.blobs = {d: base64.b64decode(b) for d, b in script.get("blobs", {}).items()}
            self.hits = [0] * len(script.get("faults", []))
            self.log = []
            # A request of the script before may still be answered (a trickling head learns
            # its client left only at its second write after): the next test's pull never
            # had it at once with its own, so the count starts again without it.
            self.loads += 1
            self.active = dict.fromkeys(ROLES, 0)
            self.peak = dict.fromkeys(ROLES, 0)

    def note(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.log.append(entry)

    def answering(self, role: str) -> int:
        """A request of ``role`` begins being answered: counted under the script playing,
        whose number is returned (for ``answered``)."""
        with self.lock:
            self.active[role] += 1
            self.peak[role] = max(self.peak[role], self.active[role])
            return self.loads

    def answered(self, role: str, script: int) -> None:
        """A request of ``role`` counted under ``script`` (``answering``) is answered: no
        longer counted, unless another script was loaded since (its count began without it)."""
        with self.lock:
            if script == self.loads:
                self.active[role] -= 1

    def fault(self, role: str, path: str, kept: bool) -> dict[str, Any] | None:
        """The first rule for this request that is not used up, counting its hit. ``kept``:
        the request came on a connection that carried one before."""
        with self.lock:
            for i, rule in enumerate(self.script.get("faults", [])):
                if rule.get("role", role) != role or rule.get("match", "") not in path:
                    continue
                if rule.get("kept", kept) != kept:
                    continue
                self.hits[i] += 1
                skip, times = rule.get("skip", 0), rule.get("times", 1)
                if self.hits[i] <= skip:
                    return None
                if times is None or self.hits[i] <= skip + times:
                    return rule
        return None


STATE = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    role = "registry"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    served = 0  # requests read on this connection before this one (a handler a connection)
    # The script under which a request of this connection is being answered and counted
    # (``peak``); None: none is.
    counted: int | None = None

    def do_GET(self) -> None:
        if self.role == "ctl":
            self._control()
            return
        headers = {k: v for k, v in self.headers.items()}
        STATE.note({"role": self.role, "method": "GET", "path": self.path, "headers": headers})
        kept, self.served = self.served > 0, self.served + 1
        self.counted = STATE.answering(self.role)
        try:
            self._answer(STATE.fault(self.role, self.path, kept))
        finally:
            self._answered()

    def _answered(self) -> None:
        """The request is answered: counted as the head goes out (``_head``), not after its
        bytes, which the client may have read, asking its next, before this thread went on
        (a loaded CI's ``peak`` read one more request at once than the client ever sent)."""
        if self.counted is not None:
            STATE.answered(self.role, self.counted)
            self.counted = None

    def _answer(self, rule: dict[str, Any] | None) -> None:
        if rule is not None and "delay" in rule:  # the script's answer, that much later
            time.sleep(float(rule["delay"]))
            rule = None
        if rule is not None:
            self._scripted(rule)
        elif self.role == "registry":
            self._registry()
        elif self.role == "storage":
            self._blob(urlsplit(self.path).path.rpartition("/")[2])
        else:
            self._token()

    do_POST = do_GET

    # --- the roles --------------------------------------------------------------------------

    def _registry(self) -> None:
        script = STATE.script
        path = urlsplit(self.path).path
        prefix = f"/v2/{script.get('repo', '')}/"
        if not path.startswith(prefix):
            self._send(404, {"Content-Type": "application/json"}, b'{"errors":[]}')
            return
        if not self._authorized(script):
            return  # answered 401
        kind, _, ref = path[len(prefix) :].partition("/")
        if kind == "manifests" and ref in (script.get("tag"), _digest(self._manifest())):
            self._manifest_reply(script)
        elif kind == "blobs" and ref in STATE.blobs and script.get("redirect"):
            host = script.get("storage_host", "127.0.0.1")
            where = f"http://{host}:{STATE.ports['storage']}/blobs/{ref}?sig=presigned"
            self._send(307, {"Location": where}, b"")
        elif kind == "blobs":
            self._blob(ref)
        else:
            self._send(404, {"Content-Type": "application/json"}, b'{"errors":[]}')

    def _authorized(self, script: dict[str, Any]) -> bool:
        mode, given = script.get("auth", "none"), self.headers.get("Authorization", "")
        if mode == "bearer" and given != f"Bearer {script.get('token')}":
            realm = f"{STATE.schemes['auth']}://127.0.0.1:{STATE.ports['auth']}/token"
            scope = f"repository:{script.get('repo')}:pull"
            challenge = f'Bearer realm="{realm}",service="hostile",scope="{scope}"'
            self._send(401, {"WWW-Authenticate": challenge}, b"")
            return False
        if mode == "basic" and given != _basic(script.get("credentials")):
            self._send(401, {"WWW-Authenticate": 'Basic realm="hostile"'}, b"")
            return False
        return True

    def _manifest(self) -> bytes:
        return base64.b64decode(STATE.script.get("manifest", ""))

    def _manifest_reply(self, script: dict[str, Any]) -> None:
        raw = self._manifest()
        headers = {"Content-Type": script.get("content_type", "application/json")}
        if script.get("digest_header", True):
            headers["Docker-Content-Digest"] = _digest(raw)
        self._send(200, headers, raw)

    def _token(self) -> None:
        script = STATE.script
        wanted = script.get("credentials")
        if wanted and self.headers.get("Authorization") != _basic(wanted):
            self._send(401, {"Content-Type": "application/json"}, b'{"error":"credentials"}')
            return
        body = json.dumps({"token": script.get("token", "t")}).encode()
        self._send(200, {"Content-Type": "application/json"}, body)

    def _blob(self, digest: str) -> None:
        data = STATE.blobs.get(digest)
        if data is None:
            self._send(404, {}, b"")
            return
        headers = {"ETag": f'"{digest}"', "Accept-Ranges": "bytes"}
        match = _RANGE.fullmatch(self.headers.get("Range", ""))
        if match is None:
            self._send(200, headers, data)
            return
        start = int(match.group(1))
        end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
        if start >= len(data):
            self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"")
            return
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(206, headers, data[start : end + 1])

    # --- scripted answers and the control port -----------------------------------------------

    def _scripted(self, rule: dict[str, Any]) -> None:
        if rule.get("close"):
            self.close_connection = True  # nothing written: the client reads EOF
            return
        if "trickle_head" in rule:
            self._trickle_head(float(rule["trickle_head"]))
            return
        headers = dict(rule.get("headers", {}))
        if "repeat" in rule:
            text, count = rule["repeat"]
            chunk = str(text).encode()
            self._head(
                rule.get("status", 200), {**headers, "Content-Length": str(len(chunk) * count)}
            )
            sent = 0
            block = chunk * max(1, _WRITE_CHUNK // max(1, len(chunk)))
            per = len(block) // max(1, len(chunk))
            while sent < count:
                n = min(per, count - sent)
                self.wfile.write(block[: n * len(chunk)])
                sent += n
            return
        self._send(rule.get("status", 200), headers, str(rule.get("body", "")).encode())

    def _trickle_head(self, step: float) -> None:
        """A status line, then one header whose value comes a byte every ``step`` seconds,
        never ending: the socket is never silent, and the head never complete."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while True:
            self.wfile.write(b"a")
            self.wfile.flush()
            time.sleep(step)

    def _control(self) -> None:
        if self.command == "POST" and self.path == "/script":
            length = int(self.headers.get("Content-Length", "0"))
            STATE.load(json.loads(self.rfile.read(length)))
            self._send(200, {}, b"{}")
        elif self.path == "/log":
            with STATE.lock:
                answer = {"log": STATE.log, "hits": STATE.hits, "peak": STATE.peak}
                body = json.dumps(answer).encode()
            self._send(200, {"Content-Type": "application/json"}, body)
        else:
            self._send(404, {}, b"")

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self._head(status, {"Content-Length": str(len(body)), **headers})
        self.wfile.write(body)

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self._answered()
        self.send_response_only(status)
        for name, value in headers.items():
            # Raw: a hostile header value may hold what send_header would refuse to encode.
            self._headers_buffer.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
        self.end_headers()


class HostileRegistry:
    """A running ``faultserver.hostile_registry`` and its control port."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        """``tls``: (certificate chain, key) for the registry and token realm roles."""
        pem = ["--certfile", tls[0], "--keyfile", tls[1]] if tls else []
        self.tls = tls is not None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faultserver.hostile_registry", *pem],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        word, *ports = self.proc.stdout.readline().decode().split()
        if word != "READY":
            self.stop()
            raise RuntimeError(f"hostile registry did not start: {word!r}")
        self.ports = dict(zip(ROLES, map(int, ports), strict=True))
        # No proxy: an HTTP_PROXY a test sets for blobdl must not carry the control calls.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def origin(self, role: str, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls and role in TLS_ROLES else "http"
        return f"{scheme}://{host}:{self.ports[role]}"

    def load(self, script: dict[str, Any]) -> None:
        """Play ``script`` from now on (the log starts empty)."""
        self._call("/script", json.dumps(script).encode())

    def log(self) -> list[dict[str, Any]]:
        """Every request since the script was loaded: role, method, path, headers."""
        answer: list[dict[str, Any]] = self._call("/log", None)["log"]
        return answer

    def peak(self, role: str) -> int:
        """The most requests of ``role`` answered at once since the script was loaded (read
        since: one read before, still being answered, belongs to the test before)."""
        answer: int = self._call("/log", None)["peak"][role]
        return answer

    def hits(self) -> list[int]:
        """How many requests each fault rule of the script has matched so far."""
        answer: list[int] = self._call("/log", None)["hits"]
        return answer

    def _call(self, path: str, data: bytes | None) -> Any:
        ctl = f"http://127.0.0.1:{self.ports['ctl']}"
        with self._opener.open(ctl + path, data, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _basic(credentials: str | None) -> str:
    return "Basic " + base64.b64encode((credentials or "").encode()).decode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Server(NoDelayServer, ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-answer is what a hostile test is about


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m faultserver.hostile_registry")
    p.add_argument("--certfile")
    p.add_argument("--keyfile")
    args = p.parse_args(argv)
    tls = None
    if args.certfile:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.certfile, args.keyfile)
    servers = []
    for role in ROLES:
        handler = type(f"{role.title()}Handler", (Handler,), {"role": role})
        server = _Server(("127.0.0.1", 0), handler)
        if tls is not None and role in TLS_ROLES:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
            STATE.schemes[role] = "https"
        STATE.ports[role] = server.server_address[1]
        servers.append(server)
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("READY " + " ".join(str(STATE.ports[r]) for r in ROLES), flush=True)
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
