"""Real HTTP/1.1 file server with scripted, deterministic faults for blobdl tests.

Run from the repo root::

    python -m faultserver.server --root DIR [--port 0] [--certfile F --keyfile K] [--link-bps N]

It prints exactly one line ``READY <port>`` once listening and serves until
SIGTERM/SIGINT.  Tests drive it through ``faultserver.serverctl``; the routes, the
``/_ctl`` JSON endpoints and the fault rule format are described in that
module's docstring and below in ``ACTIONS``.
"""

from __future__ import annotations

import argparse
import email.utils
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import ssl
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from .framing import ends_with_close, framed
from .nodelay import NoDelayServer

SENDFILE_CHUNK = 8 << 20  # big enough to amortise syscalls, small enough for live stats
TLS_CHUNK = 1 << 20
PACE_CHUNK = 64 << 10  # small steps keep `rate` pacing smooth
FRAMED_STEP = 4 << 10  # a paced framed message: a chunk then arrives in pieces
HOLD_STEP = 0.1  # granularity of sleeps, so shutdown never waits long
DRAIN_TIMEOUT = 2.0

#: action name -> allowed parameter names
ACTIONS: dict[str, frozenset[str]] = {
    "status": frozenset({"status", "headers", "body"}),
    "reset_after": frozenset({"bytes"}),
    "close_after": frozenset({"bytes"}),
    "stall_after": frozenset({"bytes", "hold"}),
    # Nothing answered: the connection held silent for ``hold`` seconds (default 60), then
    # closed (``reset``: with an RST, its unread bytes discarded).
    "no_response": frozenset({"hold", "reset"}),
    # A status line and header block that never end: a byte every ``step`` seconds (never
    # silent for a read timeout), until ``hold`` seconds have passed.
    "trickle_head": frozenset({"step", "hold"}),
    "ttfb": frozenset({"delay"}),
    # ``step``: bytes a paced step sends at once (default PACE_CHUNK, 64 KiB). A step goes out
    # whole before the pace waits, so a request smaller than a step is not paced at all: a
    # lane's 16 KiB chunk requests need a smaller one to be slow.
    "rate": frozenset({"bps", "step"}),
    "ignore_range": frozenset(),
    # A 200 of the whole file with no Content-Length (it ends at EOF); ``bytes``: cut
    # after that many, the TCP connection closed without TLS's close_notify (a truncation).
    "no_length": frozenset({"bytes"}),
    "shift_range": frozenset({"by"}),
    "wrong_content_range": frozenset({"by"}),
    "etag": frozenset({"value"}),
    "full_200": frozenset(),
    # One CDN lane: optional ttfb delay, bps pacing, and a cut (stall or reset) after N bytes.
    "shape": frozenset({"bps", "ttfb", "stall_after", "reset_after", "hold"}),
    # A file reply whose Content-Length header is off by ``by`` (the body is sent as is).
    "wrong_length": frozenset({"by"}),
    # A file reply labelled Content-Encoding: ``value`` (the body is still the raw bytes).
    "encoding": frozenset({"value"}),
    # An otherwise normal response with headers set ({name: value}) or dropped ([names]);
    # ``ignore``: request headers served as if not sent (["If-Match"]: a CDN or mirror that
    # does not honour it).
    "headers": frozenset({"set", "drop", "ignore"}),
    # A 3xx (default 302) to `location`; `endless`: a body that never ends (for `hold` s),
    # read to EOF, or announced with a Content-Length of `length` bytes; `bps`: sent at
    # that pace (a redirect body that trickles).
    "redirect": frozenset({"location", "status", "endless", "hold", "length", "bps"}),
    # A lane that goes silent at a byte offset, however the client cuts its requests: the
    # first request whose range holds ``offset`` sends up to it (at ``bps``), then holds.
    "stall_at": frozenset({"offset", "hold", "bps"}),
    # A slow path: the matched request's connection sends at ``bps`` for every later
    # request on it too (a client that asks in chunks over keep-alive stays slow).
    "slow_conn": frozenset({"bps"}),
    # Framing: the reply's body sent under ``Transfer-Encoding: value`` (as given: spaces,
    # case, lists); chunk-encoded unless ``chunked`` is false; its Content-Length dropped
    # unless ``length`` is true; ``whole``: the whole file, 200, whatever the Range. The
    # connection closes after it.
    "transfer_encoding": frozenset({"value", "chunked", "length", "whole"}),
    # Interim responses before the real one: one per code of ``statuses`` (default [103]),
    # each with a Link header, then the reply as usual (101 included, if asked for).
    "interim": frozenset({"statuses"}),
    # Exact bytes on the wire: the reply as it would go (or ``send`` in its place), then
    # ``trail`` glued on in the same write (bytes past its end: extra body, a second
    # response); strings of latin-1, one character a byte. ``split``: offsets at which the
    # whole is cut into separate writes, ``gap`` seconds apart (a status line in pieces).
    # The connection stays open for the next request unless ``close`` (``reset``: closed
    # with an RST once the bytes are sent: an answer begun, then cut).
    "raw": frozenset({"send", "trail", "split", "gap", "close", "reset"}),
    # The reply's bytes (the range asked for; the whole file, 200, if ``whole``) framed as
    # ``spec`` says, right or wrong: see faultserver/framing.py. The connection closes after,
    # unless ``keep`` (then only if the framing ends the body with it): what a client makes
    # of an answer's end decides what it reads as the next answer on that connection.
    # ``bps``: the message sent at that pace, in steps of ``FRAMED_STEP`` bytes.
    "framing": frozenset({"spec", "whole", "keep", "bps"}),
}
#: parameters an action cannot do without (checked when rules are posted)
REQUIRED: dict[str, tuple[str, ...]] = {
    "status": ("status",),
    "reset_after": ("bytes",),
    "close_after": ("bytes",),
    "stall_after": ("bytes",),
    "ttfb": ("delay",),
    "rate": ("bps",),
    "shift_range": ("by",),
    "wrong_content_range": ("by",),
    "etag": ("value",),
    "wrong_length": ("by",),
    "encoding": ("value",),
    "redirect": ("location",),
    "stall_at": ("offset",),
    "slow_conn": ("bps",),
    "transfer_encoding": ("value",),
    "framing": ("spec",),
}
# ``after``: {"path": P, "requests": N}, with any action: the reply waits (before its status
# line) until P has been asked N times, so that two clients' requests start together however
# late one of them asks (a barrier scripted by the test, not a race against the clock).
# ``kept``: true matches only requests that come on a connection that carried an earlier
# one (kept alive), false only a connection's first: ``no_response`` there is a server
# whose close of an idle connection crossed the client's next request on it.
_RULE_KEYS = frozenset({"path", "skip", "times", "action", "method", "after", "kept"})
_CUT_ACTIONS = frozenset({"reset_after", "close_after", "stall_after"})
_NO_BODY_STATUSES = frozenset({204, 304})


# --------------------------------------------------------------------------- rules


class RuleError(ValueError):
    """A fault rule sent to /_ctl/faults is malformed."""


@dataclass
class Rule:
    path: str
    action: str
    params: dict[str, Any]
    skip: int = 0
    times: int | None = 1
    method: str | None = None
    after: tuple[str, int] | None = None  # (path, requests) to wait for; see _RULE_KEYS
    kept: bool | None = None  # only requests on a kept (True) or a new (False) connection
    seen: int = 0  # matching requests so far; guarded by State.lock

    @classmethod
    def from_json(cls, raw: object) -> Rule:
        if not isinstance(raw, dict):
            raise RuleError(f"rule must be an object: {raw!r}")
        path, action = raw.get("path"), raw.get("action")
        if not isinstance(path, str) or not path.startswith("/"):
            raise RuleError(f"rule needs a 'path' starting with '/': {raw!r}")
        if action not in ACTIONS:
            raise RuleError(f"unknown action {action!r}; known: {sorted(ACTIONS)}")
        params = {k: v for k, v in raw.items() if k not in _RULE_KEYS}
        unknown = set(params) - ACTIONS[action]
        if unknown:  # typos in tests should fail loudly, not silently do nothing
            raise RuleError(f"unknown params {sorted(unknown)} for action {action!r}")
        missing = [k for k in REQUIRED.get(action, ()) if k not in params]
        if missing:
            raise RuleError(f"action {action!r} needs {missing}")
        if action == "shape" and {"stall_after", "reset_after"} <= set(params):
            raise RuleError("shape takes stall_after or reset_after, not both")
        step = params.get("step", 1) if action == "rate" else 1
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise RuleError(f"rate's step must be a whole number of bytes >= 1: {step!r}")
        if action == "raw":  # bytes that cannot be sent fail when posted, not when asked
            for name in ("send", "trail"):
                if name in params:
                    _latin1(params[name], name)
            _offsets(params.get("split", []))
        skip, times, method = raw.get("skip", 0), raw.get("times", 1), raw.get("method")
        if not isinstance(skip, int) or skip < 0:
            raise RuleError(f"bad skip: {skip!r}")
        if times is not None and (not isinstance(times, int) or times < 0):
            raise RuleError(f"bad times: {times!r}")
        if method is not None and not isinstance(method, str):
            raise RuleError(f"bad method: {method!r}")
        method = method.upper() if method else None
        kept = raw.get("kept")
        if kept is not None and not isinstance(kept, bool):
            raise RuleError(f"bad kept: {kept!r}")
        after = _after(raw.get("after"))
        return cls(path, action, params, skip, times, method, after, kept)

    def fault(self) -> Fault:
        return Fault(self.action, self.params, self.after)

    def matches(self, path: str, method: str, kept: bool) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.kept is not None and self.kept != kept:
            return False
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path

    def exhausted(self) -> bool:
        return self.times is not None and self.seen >= self.skip + self.times


def _after(raw: object) -> tuple[str, int] | None:
    if raw is None:
        return None
    path = raw.get("path") if isinstance(raw, dict) else None
    count = raw.get("requests") if isinstance(raw, dict) else None
    if not isinstance(path, str) or not path.startswith("/") or not isinstance(count, int):
        raise RuleError(f"after needs a 'path' starting with '/' and 'requests': {raw!r}")
    if count < 1 or set(cast(dict[str, Any], raw)) != {"path", "requests"}:
        raise RuleError(f"after takes a path and requests >= 1, nothing else: {raw!r}")
    return path, count


@dataclass(frozen=True)
class Fault:
    """The action chosen for one request."""

    action: str
    params: dict[str, Any]
    after: tuple[str, int] | None = None  # (path, requests) the reply waits for

    def num(self, name: str, default: float | None = None) -> float:
        value = self.params.get(name, default)
        if not isinstance(value, (int, float)):
            raise RuleError(f"action {self.action!r} needs numeric {name!r}")
        return value

    def integer(self, name: str, default: int | None = None) -> int:
        return int(self.num(name, default))

    def cut(self) -> tuple[str, int] | None:
        """(cut action, bytes) if this fault ends the body early, else None."""
        if self.action in _CUT_ACTIONS:
            return self.action, self.integer("bytes")
        if self.action == "no_length" and "bytes" in self.params:
            return "close_after", self.integer("bytes")
        if self.action == "shape":
            for name in ("stall_after", "reset_after"):
                if name in self.params:
                    return name, self.integer(name)
        return None

    def bps(self) -> float | None:
        if self.action == "rate" or (self.action == "shape" and "bps" in self.params):
            return self.num("bps")
        return None


class LinkBucket:
    """The server's total egress cap: every paced chunk of every connection books link time.

    Bookings are first come, first served, so connections share the link fairly; idle time is
    not saved up, so there are no bursts above the cap.
    """

    def __init__(self, bps: float) -> None:
        self.bps = bps
        self._lock = threading.Lock()
        self._free_at = 0.0

    def book(self, n: int) -> float:
        """Reserve the link for n bytes; return the monotonic time they may be sent."""
        with self._lock:
            start = max(time.monotonic(), self._free_at)
            self._free_at = start + n / self.bps
            return start


# --------------------------------------------------------------------------- state


@dataclass
class State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    rules: list[Rule] = field(default_factory=list)
    requests: int = 0
    bytes_sent: int = 0
    active: int = 0
    max_concurrent: int = 0
    connections: int = 0
    per_path: dict[str, int] = field(default_factory=dict)
    ranges: list[str | None] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    open_socks: dict[int, socket.socket] = field(default_factory=dict)  # counted in ``active``

    def set_rules(self, rules: list[Rule]) -> None:
        with self.lock:
            self.rules = rules

    def reset(self) -> None:
        with self.lock:
            self.rules = []
            self.requests = self.bytes_sent = self.connections = 0
            # Connections still open stay counted so the next max is honest.
            self.max_concurrent = self.active
            self.per_path, self.ranges, self.headers = {}, [], []

    def record(self, method: str, path: str, headers: dict[str, str], kept: bool) -> Fault | None:
        """Log one non-control request and pick the fault rule for it (``kept``: it came on
        a connection that carried an earlier request)."""
        with self.lock:
            self.requests += 1
            self.per_path[path] = self.per_path.get(path, 0) + 1
            self.ranges.append(_header(headers, "Range"))
            self.headers.append(headers)
            return self._pick(path, method, _header(headers, "Range"), kept)

    def _pick(self, path: str, method: str, asked: str | None, kept: bool) -> Fault | None:
        for rule in self.rules:
            if rule.exhausted() or not rule.matches(path, method, kept):
                continue
            if rule.action == "stall_at" and _offset_in(asked, rule.params["offset"]) is None:
                continue  # not the request that reaches the offset
            rule.seen += 1
            # Skipped matches are served normally and do not fall through to later rules.
            if rule.seen <= rule.skip:
                return None
            if rule.action == "stall_at":
                return _stall_at(rule.params, cast(int, _offset_in(asked, rule.params["offset"])))
            return rule.fault()
        return None

    def asked(self, path: str) -> int:
        """Requests for ``path`` so far."""
        with self.lock:
            return self.per_path.get(path, 0)

    def add_bytes(self, n: int) -> None:
        with self.lock:
            self.bytes_sent += n

    def conn_opened(self, sock: socket.socket) -> None:
        with self.lock:
            # A client that closed one socket and then opened another has done so in that
            # order; the old socket's handler thread may just not have seen its FIN yet.
            # Count it closed now, or max_concurrent would depend on thread scheduling.
            for key, other in list(self.open_socks.items()):
                if _peer_closed(other):
                    del self.open_socks[key]
                    self.active -= 1
            self.open_socks[id(sock)] = sock
            self.connections += 1
            self.active += 1
            self.max_concurrent = max(self.max_concurrent, self.active)

    def conn_closed(self, sock: socket.socket) -> None:
        with self.lock:
            if self.open_socks.pop(id(sock), None) is not None:
                self.active -= 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "bytes_sent": self.bytes_sent,
                "max_concurrent": self.max_concurrent,
                "active": self.active,
                "connections": self.connections,
                "per_path": dict(self.per_path),
                "ranges": list(self.ranges),
                "headers": list(self.headers),
                "rule_hits": [r.seen for r in self.rules],
            }


def _offset_in(asked: str | None, offset: int) -> int | None:
    """How far into a ``Range: bytes=a-b`` request ``offset`` lies (None: not inside)."""
    span = parse_range(asked, 2**62)
    if not isinstance(span, tuple) or not span[0] <= offset <= span[1]:
        return None
    return offset - span[0]


def _stall_at(params: dict[str, Any], into: int) -> Fault:
    shape: dict[str, Any] = {"stall_after": into, "hold": params.get("hold", 60)}
    if "bps" in params:
        shape["bps"] = params["bps"]
    return Fault("shape", shape)


def _peer_closed(sock: socket.socket) -> bool:
    """True if the peer has closed or reset ``sock`` (plain sockets only: no peek in TLS)."""
    if isinstance(sock, ssl.SSLSocket):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def _latin1(text: object, name: str) -> bytes:
    """A ``raw`` rule's bytes: JSON carries them as text, one latin-1 character a byte."""
    if not isinstance(text, str):
        raise RuleError(f"raw needs {name!r} as a string: {text!r}")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise RuleError(f"raw needs {name!r} in latin-1, one character a byte") from None


def _offsets(split: object) -> list[int]:
    if not isinstance(split, list) or not all(isinstance(n, int) and n > 0 for n in split):
        raise RuleError(f"raw needs 'split' as a list of positive offsets: {split!r}")
    return sorted(set(split))


def _header(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


# --------------------------------------------------------------------------- replies


@dataclass
class Reply:
    """A response to send: status, headers and a body (bytes or a file slice)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: bytes = b""
    file: Path | None = None
    start: int = 0
    length: int = 0

    @property
    def body_len(self) -> int:
        return self.length if self.file is not None else len(self.data)


def simple_reply(status: int, body: str = "", headers: dict[str, str] | None = None) -> Reply:
    data = b"" if status in _NO_BODY_STATUSES else body.encode()
    hdrs = list((headers or {}).items())
    if status not in _NO_BODY_STATUSES:
        hdrs.append(("Content-Length", str(len(data))))
    return Reply(status, hdrs, data)


def not_found() -> Reply:
    return simple_reply(404, "not found\n", {"Content-Type": "text/plain"})


def make_etag(st: os.stat_result) -> str:
    digest = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    return f'"{digest[:32]}"'


def quote_etag(value: str) -> str:
    return value if value.startswith(('"', "W/")) else f'"{value}"'


def parse_range(value: str | None, size: int) -> tuple[int, int] | str | None:
    """Return (first, last), "unsatisfiable", or None (serve the whole body)."""
    if value is None or not value.startswith("bytes=") or "," in value:
        return None  # absent, foreign unit or multi-range: a 200 is allowed
    first_s, sep, last_s = value[6:].strip().partition("-")
    if not sep or not (first_s.isdigit() or last_s.isdigit()):
        return None  # syntactically invalid ranges are ignored (RFC 9110 14.2)
    if not first_s:  # suffix range bytes=-n
        n = int(last_s)
        return "unsatisfiable" if n == 0 or size == 0 else (max(0, size - n), size - 1)
    if not first_s.isdigit() or (last_s and not last_s.isdigit()):
        return None
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None
    if first >= size:
        return "unsatisfiable"
    return first, min(last, size - 1)


def etag_matches(header: str, etag: str) -> bool:
    """Strong comparison against a comma separated If-Match list."""
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or (not etag.startswith("W/") and etag in tags)


def if_range_holds(header: str, etag: str, mtime: float) -> bool:
    if header.startswith(('"', "W/")):
        return not header.startswith("W/") and header == etag
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False
    return int(when.timestamp()) == int(mtime)


def safe_file(root: Path, raw_name: str) -> Path | None:
    name = unquote(raw_name)
    if not name or "/" in raw_name or "/" in name or "\\" in name or ".." in name or "\0" in name:
        return None
    path = root / name
    return path if path.is_file() else None


def file_reply(
    path: Path, req: dict[str, str], fault: Fault | None, etag: str | None = None
) -> Reply:
    """The file with ranges and validators; ``etag`` replaces the ETag made from its stat
    (the stand-in Hub serves a file under its git sha1)."""
    st = path.stat()
    size, action = st.st_size, fault.action if fault else None
    if fault and action == "etag":
        etag = quote_etag(str(fault.params["value"]))
    etag = etag or make_etag(st)
    headers = [
        ("ETag", etag),
        ("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True)),
        ("Content-Type", "application/octet-stream"),
    ]
    if_match = _header(req, "If-Match")
    if if_match is not None and not etag_matches(if_match, etag):
        return Reply(412, [*headers, ("Content-Length", "0")])
    whole = action in ("transfer_encoding", "framing") and fault and fault.params.get("whole")
    if action in ("ignore_range", "no_length", "full_200") or whole:
        return whole_body(path, size, headers, action)
    if_range = _header(req, "If-Range")
    honour = if_range is None or if_range_holds(if_range, etag, st.st_mtime)
    rng = parse_range(_header(req, "Range"), size) if honour else None
    if rng is None:
        return whole_body(path, size, headers, action)
    accept = ("Accept-Ranges", "bytes")
    if isinstance(rng, str):
        return Reply(
            416, [*headers, accept, ("Content-Range", f"bytes */{size}"), ("Content-Length", "0")]
        )
    return range_body(path, size, rng, [*headers, accept], fault)


def edit_headers(headers: list[tuple[str, str]], fault: Fault) -> list[tuple[str, str]]:
    """The `headers` action: drop the named headers, then set (replace) the given ones."""
    new = {str(k): str(v) for k, v in dict(fault.params.get("set") or {}).items()}
    gone = {str(n).lower() for n in fault.params.get("drop") or ()} | {k.lower() for k in new}
    return [(k, v) for k, v in headers if k.lower() not in gone] + list(new.items())


def whole_body(path: Path, size: int, headers: list[tuple[str, str]], action: str | None) -> Reply:
    if action == "no_length":
        extra = [("Connection", "close")]  # body ends at EOF, like an HTTP/1.0 server
    elif action == "ignore_range":
        extra = [("Accept-Ranges", "none"), ("Content-Length", str(size))]
    else:
        extra = [("Accept-Ranges", "bytes"), ("Content-Length", str(size))]
    return Reply(200, headers + extra, file=path, start=0, length=size)


def range_body(
    path: Path, size: int, rng: tuple[int, int], headers: list[tuple[str, str]], fault: Fault | None
) -> Reply:
    first, last = rng
    length = last - first + 1
    start, claimed = first, (first, last)
    if fault and fault.action in ("shift_range", "wrong_content_range"):
        # Keep the window inside the file so the length stays right; only the bytes lie.
        start = min(max(first + fault.integer("by"), 0), size - length)
        if fault.action == "wrong_content_range":
            claimed = (start, start + length - 1)
    headers = [
        *headers,
        ("Content-Range", f"bytes {claimed[0]}-{claimed[1]}/{size}"),
        ("Content-Length", str(length)),
    ]
    return Reply(206, headers, file=path, start=start, length=length)


def relabel(reply: Reply, fault: Fault) -> None:
    """Header-only lies about a file reply: the bytes sent stay the file's own."""
    if fault.action == "wrong_length":
        claimed = str(reply.body_len + fault.integer("by"))
        reply.headers = [(k, claimed if k == "Content-Length" else v) for k, v in reply.headers]
    elif fault.action == "encoding":
        reply.headers.append(("Content-Encoding", str(fault.params["value"])))


# --------------------------------------------------------------------------- server


class FaultServer(NoDelayServer, ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        addr: tuple[str, int],
        root: Path,
        tls: ssl.SSLContext | None,
        link: LinkBucket | None = None,
    ) -> None:
        self.root = root
        self.tls = tls
        self.link = link
        self.state = State()
        super().__init__(addr, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), which can hang on reverse DNS.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.tls is not None:
            # Handshake later in the worker thread so a slow client cannot block accept().
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        # A TLS connection that ends cleanly ends with close_notify, as real servers end
        # it (a read-to-close body is complete only then); socketserver's own shutdown of
        # an SSLSocket is TCP's alone. A cut (``_abort``) has shut TCP down already.
        if isinstance(request, ssl.SSLSocket) and request._sslobj is not None:  # type: ignore[attr-defined]
            try:
                request.settimeout(DRAIN_TIMEOUT)
                request = request.unwrap()
            except (OSError, ValueError):
                pass
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return  # clients vanishing mid-response is normal in fault tests
        super().handle_error(request, client_address)

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "blobdl-testserver/1"
    slow_conn: Fault | None = None  # set by a slow_conn rule: this connection stays slow
    paced_from, paced_bytes = 0.0, 0  # its pace: since when, and bytes sent since then
    asked_here = 0  # requests this connection carried (control requests not counted)

    @property
    def srv(self) -> FaultServer:
        return cast(FaultServer, self.server)

    # ---- connection lifecycle

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(10)
            self.connection.do_handshake()
            self.connection.settimeout(None)  # blocking again for bulk writes

    def handle(self) -> None:
        self.srv.state.conn_opened(self.connection)
        try:
            super().handle()
        except OSError:
            pass  # peer reset/closed; nothing useful to report
        finally:
            self.srv.state.conn_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # per-request lines would drown test output

    # ---- dispatch

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path
        if path == "/_ctl/faults":
            self._control(lambda: self._set_faults(body))
        elif path == "/_ctl/reset":
            self._control(self._reset)
        else:
            self._send(
                simple_reply(405, "method not allowed\n", {"Allow": "GET, HEAD"}), None, False
            )

    def _dispatch(self, head: bool) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/_ctl/stats":
            self._control(self._stats)
            return
        req = dict(self.headers.items())
        self.asked_here += 1
        fault = self.srv.state.record(self.command, parts.path, req, self.asked_here > 1)
        if fault is not None and fault.action == "slow_conn":
            self.slow_conn = Fault("rate", {"bps": fault.num("bps")})
        if fault is not None and fault.after is not None and not self._wait_for(*fault.after):
            return
        if self.slow_conn is not None:  # the path stays slow, whatever other rules say
            fault = self.slow_conn
        if fault is not None and not self._pre_fault(fault, head):
            return
        if fault is not None and fault.action == "headers":
            ignored = {str(name).lower() for name in fault.params.get("ignore") or ()}
            req = {k: v for k, v in req.items() if k.lower() not in ignored}
        reply = self._route(parts.path, parts.query, req, fault)
        if fault is not None and fault.action == "headers":
            reply.headers = edit_headers(reply.headers, fault)
            self.close_connection = True  # a lying Content-Length breaks the framing
        if fault is not None and fault.action == "raw":
            self._send_raw(reply, fault, head)
            return
        if fault is not None and fault.action == "framing":
            self._send_framed(reply, fault, head)
            return
        self._send(reply, fault, head)

    def _pre_fault(self, fault: Fault, head: bool) -> bool:
        """Apply faults that act before routing; False means the request is done."""
        if fault.action == "no_response":
            self._hold(fault.num("hold", 60))
            self.close_connection = True
            if fault.params.get("reset"):
                self._abort(rst=True)
            return False
        if fault.action == "trickle_head":
            self._trickle_head(fault.num("step", 0.5), fault.num("hold", 60))
            self.close_connection = True
            return False
        if fault.action == "ttfb":
            self.srv.state.stopping.wait(fault.num("delay"))
        elif fault.action == "shape" and "ttfb" in fault.params:
            self.srv.state.stopping.wait(fault.num("ttfb"))
        elif fault.action == "redirect":
            self._redirect_fault(fault, head)
            return False
        elif fault.action == "interim":
            self._interim(fault.params.get("statuses", [103]))
        elif fault.action == "status":
            hdrs = {str(k): str(v) for k, v in dict(fault.params.get("headers") or {}).items()}
            reply = simple_reply(fault.integer("status"), str(fault.params.get("body", "")), hdrs)
            self._send(reply, None, head)
            return False
        return True

    def _route(self, path: str, query: str, req: dict[str, str], fault: Fault | None) -> Reply:
        segs = path.split("/")[1:]
        kind = segs[0] if segs else ""
        if kind in ("files", "cd") and len(segs) == 2:
            return self._serve_file(segs[1], query if kind == "cd" else None, req, fault)
        if kind in ("redirect", "redirect-abs") and len(segs) == 3 and segs[1].isdigit():
            return self._redirect(kind, int(segs[1]), segs[2], query, req, fault)
        if kind == "status" and len(segs) == 2 and segs[1].isdigit():
            return self._status_route(int(segs[1]))
        return not_found()

    def _serve_file(
        self, raw: str, cd_query: str | None, req: dict[str, str], fault: Fault | None
    ) -> Reply:
        path = safe_file(self.srv.root, raw)
        if path is None:
            return not_found()
        reply = file_reply(path, req, fault)
        if fault is not None:
            relabel(reply, fault)
        if cd_query is not None:
            value = parse_qs(cd_query, keep_blank_values=True).get("filename", [path.name])[0]
            reply.headers.append(("Content-Disposition", f'attachment; filename="{value}"'))
        return reply

    def _redirect(
        self, kind: str, n: int, name: str, query: str, req: dict[str, str], fault: Fault | None
    ) -> Reply:
        if n == 0:  # zero hops left: this *is* the file
            return self._serve_file(name, None, req, fault)
        target = f"/files/{name}" if n == 1 else f"/{kind}/{n - 1}/{name}"
        if query:
            target += "?" + query
        if kind == "redirect-abs":
            target = f"{self.srv.scheme}://127.0.0.1:{self.srv.server_port}{target}"
        return simple_reply(302, "", {"Location": target})

    def _status_route(self, code: int) -> Reply:
        if not 200 <= code <= 599:
            return simple_reply(400, "status must be 200..599\n")
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Custom"
        return simple_reply(code, f"{code} {phrase}\n", {"Content-Type": "text/plain"})

    # ---- control

    def _set_faults(self, body: bytes) -> dict[str, Any]:
        doc = json.loads(body or b"{}")
        raw = doc.get("rules") if isinstance(doc, dict) else None
        if not isinstance(raw, list):
            raise RuleError('body must be {"rules": [...]}')
        rules = [Rule.from_json(r) for r in raw]
        self.srv.state.set_rules(rules)
        return {"ok": True, "rules": len(rules)}

    def _stats(self) -> dict[str, Any]:
        snap = self.srv.state.snapshot()
        snap["active"] -= 1  # the connection asking is not part of the picture
        return snap

    def _reset(self) -> dict[str, Any]:
        self.srv.state.reset()
        return {"ok": True}

    def _control(self, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            status, answer = 200, fn()
        except (RuleError, ValueError) as exc:
            status, answer = 400, {"error": str(exc)}
        data = json.dumps(answer).encode()
        reply = Reply(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))], data
        )
        self._send(reply, None, False)

    # ---- sending

    def _send(self, reply: Reply, fault: Fault | None, head: bool) -> None:
        if fault is not None and fault.action == "transfer_encoding":
            self._send_coded(reply, fault, head)
            return
        self.send_response(reply.status)
        for key, value in reply.headers:
            self.send_header(key, value)
        self.end_headers()
        cut = fault.cut() if fault else None
        limit = cut[1] if cut else None
        sent = 0 if head else self._write_body(reply, limit, fault)
        if cut is None:
            if not head and sent < reply.body_len:
                self.close_connection = True  # file shrank under us; framing is broken
            return
        self._after_cut(cut[0], cast(Fault, fault))

    def _after_cut(self, action: str, fault: Fault) -> None:
        self.close_connection = True
        if action == "stall_after":
            self._hold(fault.num("hold", 60))
        elif action == "reset_after":
            self._abort(rst=True)
        else:
            self._abort(rst=False)

    def _write_body(self, reply: Reply, limit: int | None, fault: Fault | None) -> int:
        total = reply.body_len if limit is None else min(limit, reply.body_len)
        bps = fault.bps() if fault else None
        step = (
            fault.integer("step")
            if fault and fault.action == "rate" and "step" in fault.params
            else None
        )
        if reply.file is None:  # a document (an API's answer): paced as a file would be
            if not bps:
                self.wfile.write(reply.data[:total])
                return total
            t0, chunk = time.monotonic(), step or PACE_CHUNK
            for at in range(0, total, chunk):
                self._pace(t0, at, bps)
                self.wfile.write(reply.data[at : min(total, at + chunk)])
            return total
        with open(reply.file, "rb") as f:
            return self._stream(f.fileno(), reply.start, total, bps, fault is self.slow_conn, step)

    def _stream(
        self,
        fd: int,
        offset: int,
        total: int,
        bps: float | None,
        sticky: bool = False,
        step: int | None = None,
    ) -> int:
        """Send a file slice; only these bytes count as stats["bytes_sent"]. ``sticky``: the
        pace runs on across the connection's requests (a slow path, not a slow request)."""
        tls = isinstance(self.connection, ssl.SSLSocket)
        link = self.srv.link
        chunk = (step or PACE_CHUNK) if bps or link else (TLS_CHUNK if tls else SENDFILE_CHUNK)
        sent, t0, before = 0, time.monotonic(), 0
        if sticky:
            self.paced_from = self.paced_from or t0
            t0, before = self.paced_from, self.paced_bytes
        while sent < total:
            step = min(chunk, total - sent)
            if link is not None:
                self._wait_until(link.book(step))
            if bps:  # wait *before* a chunk: no idle sleep after the last byte, so the
                self._pace(t0, before + sent, bps)  # connection's life matches the client's
            # Counted before the send (and corrected after): a client that has read the
            # last byte and asks for stats at once must never see a count behind it.
            self.srv.state.add_bytes(step)
            try:
                n = self._send_chunk(fd, offset + sent, step, tls)
            except BaseException:
                self.srv.state.add_bytes(-step)
                raise
            if n < step:
                self.srv.state.add_bytes(n - step)
            if n == 0:
                break  # file got shorter than its stat said
            sent += n
        if sticky:
            self.paced_bytes += sent
        return sent

    def _send_chunk(self, fd: int, offset: int, n: int, tls: bool) -> int:
        if tls:  # sendfile cannot encrypt
            buf = os.pread(fd, n, offset)
            self.connection.sendall(buf)
            return len(buf)
        # Zero-copy and GIL-free; the socket is blocking so this only returns short at EOF.
        return os.sendfile(self.connection.fileno(), fd, offset, n)

    def _pace(self, t0: float, sent: int, bps: float) -> None:
        self._wait_until(t0 + sent / bps)

    def _wait_until(self, when: float) -> None:
        """Pace, but end the response as soon as the client is gone: an event-driven server
        learns of a FIN/RST without writing, and a client that abandoned a connection must
        not stay counted in ``max_concurrent`` while we sleep."""
        if self._sleep_while_connected(when):
            raise ConnectionResetError("client went away")

    def _sleep_while_connected(self, when: float) -> bool:
        """Sleep until ``when`` or shutdown; True as soon as the peer closes or resets."""
        sock = self.connection
        while (left := when - time.monotonic()) > 0:
            if isinstance(sock, ssl.SSLSocket):  # no MSG_PEEK through TLS: just sleep
                self.srv.state.stopping.wait(left)
                return False
            try:
                readable, _, _ = select.select([sock], [], [], min(left, HOLD_STEP))
            except (OSError, ValueError):
                return True
            if self.srv.state.stopping.is_set():
                return False
            if readable and self._peer_gone():
                return True
            if readable:  # data we do not read now (a pipelined request): do not spin
                self.srv.state.stopping.wait(min(left, HOLD_STEP))
        return False

    # ---- fault helpers

    def _send_raw(self, reply: Reply, fault: Fault, head: bool) -> None:
        """The ``raw`` action: exact bytes, in the writes the rule cuts them into."""
        send, trail = fault.params.get("send"), fault.params.get("trail", "")
        if send is None:
            data, counted = self._rendered(reply, head)
        else:
            data, counted = _latin1(send, "send"), 0
        data += _latin1(trail, "trail")
        self.srv.state.add_bytes(counted)
        at, gap = 0, fault.num("gap", 0.02)
        cuts = [n for n in _offsets(fault.params.get("split", [])) if n < len(data)]
        for cut in [*cuts, len(data)]:
            if at and self.srv.state.stopping.wait(gap):
                return
            self.wfile.write(data[at:cut])
            at = cut
        self.close_connection = bool(fault.params.get("close", False))
        if fault.params.get("reset"):
            self.close_connection = True
            self._abort(rst=True)

    def _send_framed(self, reply: Reply, fault: Fault, head: bool) -> None:
        """The ``framing`` action (see ACTIONS)."""
        body = b"" if head else reply.data[: reply.body_len]
        if reply.file is not None and not head:
            with open(reply.file, "rb") as f:
                body = os.pread(f.fileno(), reply.length, reply.start)
            self.srv.state.add_bytes(len(body))
        self.log_request(reply.status)
        spec = dict(fault.params["spec"])
        message, held = framed(reply.status, reply.headers, body, spec)
        bps = fault.num("bps", 0)
        self._write_paced(message[:held], bps)
        if held < len(message):  # the spec's ``hold``: the rest after a silence
            self._hold(float(spec["hold"]["seconds"]))
            self._write_paced(message[held:], bps)
        self.close_connection = not fault.params.get("keep") or ends_with_close(spec)

    def _write_paced(self, data: bytes, bps: float) -> None:
        """``data`` at once, or at ``bps`` (> 0) in steps of ``FRAMED_STEP``."""
        if bps <= 0:
            self.wfile.write(data)
            return
        t0 = time.monotonic()
        for at in range(0, len(data), FRAMED_STEP):
            self.wfile.write(data[at : at + FRAMED_STEP])
            self._pace(t0, at + FRAMED_STEP, bps)

    def _rendered(self, reply: Reply, head: bool) -> tuple[bytes, int]:
        """``reply`` as ``_send`` would write it (head, then body), and its file bytes."""
        self.send_response(reply.status)
        for key, value in reply.headers:
            self.send_header(key, value)
        lines, self._headers_buffer = self._headers_buffer, []  # our write, not its flush
        body = b"" if head else reply.data[: reply.body_len]
        if reply.file is not None and not head:
            with open(reply.file, "rb") as f:
                body = os.pread(f.fileno(), reply.length, reply.start)
        return b"".join(lines) + b"\r\n" + body, len(body) if reply.file is not None else 0

    def _interim(self, statuses: object) -> None:
        """1xx responses (header block only) before the real one."""
        if not isinstance(statuses, list) or not all(isinstance(c, int) for c in statuses):
            raise RuleError(f"interim needs a list of status codes: {statuses!r}")
        for code in statuses:
            self.wfile.write(
                f"HTTP/1.1 {code} Interim\r\nLink: </files/x>; rel=preload\r\n\r\n".encode()
            )
        self.wfile.flush()

    def _send_coded(self, reply: Reply, fault: Fault, head: bool) -> None:
        """The reply under a scripted Transfer-Encoding (see ACTIONS)."""
        self.close_connection = True
        keep_length = bool(fault.params.get("length", False))
        self.send_response(reply.status)
        for key, value in reply.headers:
            if keep_length or key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Transfer-Encoding", str(fault.params["value"]))
        self.end_headers()
        if head:
            return
        data = reply.data[: reply.body_len]
        if reply.file is not None:
            with open(reply.file, "rb") as f:
                data = os.pread(f.fileno(), reply.length, reply.start)
        self.srv.state.add_bytes(len(data) if reply.file is not None else 0)
        if not fault.params.get("chunked", True):
            self.wfile.write(data)
            return
        for at in range(0, len(data), PACE_CHUNK):
            piece = data[at : at + PACE_CHUNK]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def _redirect_fault(self, fault: Fault, head: bool) -> None:
        status, location = fault.integer("status", 302), str(fault.params["location"])
        if not fault.params.get("endless"):
            self._send(simple_reply(status, "", {"Location": location}), None, head)
            return
        self.close_connection = True
        self.send_response(status)
        self.send_header("Location", location)
        if "length" in fault.params:  # a length that promises more than will ever come
            self.send_header("Content-Length", str(fault.integer("length")))
        else:
            self.send_header("Connection", "close")  # no length: the body ends at EOF, never
        self.end_headers()
        deadline = time.monotonic() + fault.num("hold", 60)
        bps = fault.num("bps", 0)
        # Paced: endless, but cheap to serve (at `bps`, one byte a step: a trickle).
        chunk, step = (b"x", 1 / bps) if bps else (b"x" * PACE_CHUNK, 0.01)
        while not head and time.monotonic() < deadline:
            self.wfile.write(chunk)  # a peer that hung up ends this with an OSError
            self.wfile.flush()
            if self.srv.state.stopping.wait(step):
                return

    def _trickle_head(self, step: float, hold: float) -> None:
        deadline = time.monotonic() + hold
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while time.monotonic() < deadline:
            self.wfile.write(b"x")  # a peer that hung up ends this with an OSError
            self.wfile.flush()
            if self.srv.state.stopping.wait(step):
                return

    def _wait_for(self, path: str, requests: int, hold: float = 60.0) -> bool:
        """Hold the reply until ``path`` has been asked ``requests`` times (a rule's
        ``after``); False (the request is done, unanswered) on shutdown, on the peer's
        close, or after ``hold`` seconds: a test whose other client never came fails."""
        deadline = time.monotonic() + hold
        state = self.srv.state
        while state.asked(path) < requests:
            if time.monotonic() >= deadline or state.stopping.is_set() or self._peer_gone():
                self.close_connection = True
                return False
            state.stopping.wait(0.01)
        return True

    def _hold(self, seconds: float) -> None:
        """Keep the socket open and silent, but give up early on shutdown or peer close."""
        self._sleep_while_connected(time.monotonic() + seconds)

    def _peer_gone(self) -> bool:
        sock = self.connection
        if isinstance(sock, ssl.SSLSocket):
            return False  # MSG_PEEK is not available through TLS
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _abort(self, rst: bool) -> None:
        sock = self.connection
        try:
            self._drain(sock)  # so the client really receives exactly `bytes` bytes
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # detach+close: socket.close() would be deferred while rfile holds a ref.
                os.close(sock.detach())
            else:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        """Wait until the kernel send queue is empty (an RST would discard it)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        buf = bytearray(4)
        while time.monotonic() < deadline:
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
            if struct.unpack("i", buf)[0] == 0:
                return
            time.sleep(0.005)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1"])
    p.add_argument("--port", default=0, type=int)
    p.add_argument("--certfile")
    p.add_argument("--keyfile")
    p.add_argument(
        "--link-bps", type=float, help="cap on all response bodies together, bytes/s (a link)"
    )
    args = p.parse_args(argv)
    if args.link_bps is not None and args.link_bps <= 0:
        p.error("--link-bps must be positive")
    if (args.certfile is None) != (args.keyfile is None):
        p.error("--certfile and --keyfile go together")
    return args


def tls_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    if certfile is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def install_signal_handlers(server: FaultServer) -> None:
    def stop(signum: int, frame: object) -> None:
        server.state.stopping.set()
        # shutdown() waits for serve_forever(), which runs in this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    link = LinkBucket(args.link_bps) if args.link_bps else None
    server = FaultServer(
        (args.host, args.port),
        args.root.resolve(),
        tls_context(args.certfile, args.keyfile),
        link,
    )
    return serve(server)


def serve(server: FaultServer) -> int:
    """Say ``READY <port>`` and serve until SIGTERM/SIGINT (``faultserver.hub`` too)."""
    install_signal_handlers(server)
    print(f"READY {server.server_port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
