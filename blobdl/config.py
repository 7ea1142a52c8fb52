"""Settings: one frozen, validated dataclass; the defaults are Ollama's numbers."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from ._redact import redact_url, shown_fields
from .errors import UsageError

T = TypeVar("T")
MB = 1000 * 1000  # Ollama sizes parts in decimal megabytes
#: Largest byte count or offset we accept anywhere (sizes live in int64 shared counters).
MAX_BYTES = 2**63 - 1
#: Longest time setting: finite, and small enough for every sleep, select and socket timeout.
#: poll(2) takes milliseconds as a C int (24.8 days at most), and a fresh connection's read
#: timeout is twice the stall timeout: 11.6 days leaves room (10**7 s killed a batch's pool).
MAX_SECONDS = 10.0**6
#: Ceilings a machine can honour: each connection is a process, each part a table slot.
MAX_CONNECTIONS = 1024
# A download's coordinator keeps every part, and each part costs one request at least: a
# checkpoint and a progress report read them all (measured: ~10 ms per 1,000 parts), so
# the count stays where that is small. A plan never cuts more (larger parts instead).
MAX_PARTS = 10_000
MAX_BUFFER = 1 << 30
MAX_COUNT = 1_000_000  # retries, redirects
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": MB,
    "mb": MB,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
# ASCII digits only: ``\d`` and float() read other scripts' digits too (an Arabic-Indic
# zero is a dot, a bold or fullwidth digit passes for an ASCII one).
_SIZE_RE = re.compile(r"\s*([0-9]+)(?:\.([0-9]+))?\s*([a-zA-Z]*)\s*", re.ASCII)


def parse_size(text: str) -> int:
    """``"100MB"`` -> 100_000_000, ``"1GiB"`` -> 1_073_741_824, ``"512"`` -> 512; a part
    of a byte is dropped (``"0.1KiB"`` -> 102). Exact: whole numbers, never a float."""
    check_text("text", text)
    match = _SIZE_RE.fullmatch(text)
    unit = match.group(3).lower() if match else ""
    if not match or unit not in _UNITS:
        raise UsageError(f"not a size: {text!r} (try 100MB, 1GiB or a byte count)")
    whole, fraction = match.group(1).lstrip("0") or "0", match.group(2) or ""
    # More digits than the largest count has is too large (int() of thousands of digits is
    # an error of its own), and no digit of a fraction past 1/1024**4's 40 changes a byte.
    too_long = len(whole) > len(str(MAX_BYTES))
    if too_long or (value := _bytes(whole, fraction[:40], _UNITS[unit])) > MAX_BYTES:
        raise UsageError(f"size too large: {text!r} (at most {MAX_BYTES} bytes)")
    return value


def plain(value: T) -> T:
    """``value`` as its built-in type if it is a str, int or float of a subclass (an
    enum's member, numpy's ``float64``, a class of the caller's script), anything else as it
    is. What a caller gives is kept as plain values: a threaded caller's download sends them
    to a fresh interpreter, which cannot import a class of the caller's ``__main__``, and
    one made in a function does not pickle at all. Read as the built-in reads it (no
    ``__str__`` or ``__index__`` of the subclass's own)."""
    kind = type(value)
    if kind in (str, int, float, bool) or value is None:
        return value
    if isinstance(value, str):
        return str.__str__(value)  # type: ignore[return-value]
    if isinstance(value, int):
        return int.__index__(value)  # type: ignore[return-value]
    if isinstance(value, float):
        return float.__float__(value)  # type: ignore[return-value]
    return value


def _bytes(whole: str, fraction: str, unit: int) -> int:
    """``whole.fraction`` units, in whole bytes (rounded down)."""
    scale: int = 10 ** len(fraction)
    return int(whole) * unit + int(fraction or "0") * unit // scale


@dataclass(frozen=True)
class Settings:
    """How one download behaves. Every number is a knob; tests shrink the timeouts.

    Immutable: derive a variant with ``dataclasses.replace(settings, retries=3)``.
    """

    #: Parts the planner aims for; each part is then clamped to [min, max]_part_size.
    #: More parts means more parallelism and more requests.
    target_parts: int = 16
    #: Force exactly this many parts (None: plan by target_parts and the size bounds).
    parts: int | None = None
    #: Smallest part, in bytes (Ollama: 100 MB). Smaller parts cost more requests.
    min_part_size: int = 100 * MB
    #: Largest part, in bytes (Ollama: 1000 MB). Larger parts lose more on a failure.
    max_part_size: int = 1000 * MB
    #: Lanes running at once, each on its own connection.
    connections: int = 16
    #: Worker processes the lanes run in, as threads (None: one per CPU, at least 2; never
    #: more than ``connections``). Each process costs ~5 MB of its own memory and the
    #: switches between them; the threads of one share a process's CPU time.
    processes: int | None = None
    #: Let idle workers take over slow lanes and split the largest remaining range.
    steal: bool = True
    #: Smallest range a steal splits off, in bytes, and the first request of each lane (a
    #: lane asks in chunks that then grow with its rate). Smaller: a shorter tail, more
    #: requests.
    min_steal_size: int = 4 * 1024 * 1024
    #: Failed attempts in a row (without progress) a part may have before the download fails.
    retries: int = 6
    #: Backoff before attempt n is min(n**2 * backoff_unit, max_backoff) * uniform(0.5, 1.5).
    backoff_unit: float = 0.010
    #: Ceiling of one backoff sleep, in seconds (also caps a server's Retry-After).
    max_backoff: float = 10.0
    #: Seconds without a byte (including before the status line) before a part is stalled.
    stall_timeout: float = 30.0
    #: Seconds between two samples of the shared counters (progress, stall checks).
    progress_interval: float = 1.0
    #: Seconds between two resume checkpoints (each flushes written data, then the state file).
    checkpoint_interval: float = 1.0
    #: Keep a partial download and its state so that a rerun resumes it (False: start over).
    resume: bool = True
    #: Seconds to wait for another download of the same destination to finish (0: fail).
    lock_timeout: float = 0.0
    #: Replace an existing destination that nothing vouches for (a digest, or the record
    #: of blobdl's own finished download of it: ``store._source``).
    force: bool = False
    #: On a digest mismatch keep the bad bytes as DEST.blobdl-bad instead of deleting them.
    keep_bad: bool = False
    #: A content-addressed cache (DIR/sha256-<hex>) for downloads with a digest: a hit costs
    #: no network and the destination becomes a hard link (or a copy) of the entry.
    cache_dir: str | None = None
    #: Hash a cache entry again on every hit (costs a full read of the blob).
    verify_cache: bool = False
    #: Bytes/s for the whole download across all connections (None: as fast as it goes).
    #: Shared out evenly among the running workers every progress sample.
    limit_rate: int | None = None
    #: Redirects the probe follows before giving up.
    max_redirects: int = 10
    #: Seconds allowed to open a connection, as a whole: the name's lookup, the TCP connect
    #: (a host's addresses share it), a proxy's TLS and its answer to CONNECT, the TLS
    #: handshake.
    connect_timeout: float = 30.0
    #: Bytes read from the socket per system call; one reused buffer per worker.
    buffer_size: int = 1024 * 1024
    #: Extra request headers, e.g. (("Authorization", "Bearer x"),); never one blobdl sets
    #: itself (``Range``, the ``If-*`` validators, ``Accept-Encoding`` other than identity,
    #: the framing headers): that is a UsageError naming it.
    headers: tuple[tuple[str, str], ...] = field(default=())
    #: Verify TLS certificates (turn off only for testing).
    verify_tls: bool = True
    #: A PEM file of CA certificates to trust instead of the system's.
    ca_bundle: str | None = None
    #: HTTP(S) proxy for every URL, e.g. ``http://user:pass@proxy:3128`` (``proxy:3128``:
    #: http://, as curl reads it; None: the environment's, if trust_env). Costs a hop;
    #: https URLs are tunnelled with CONNECT.
    proxy: str | None = None
    #: Read HTTP_PROXY/HTTPS_PROXY/ALL_PROXY/NO_PROXY from the environment, as curl does
    #: (NO_PROXY also exempts hosts from ``proxy``). False: ``proxy`` alone decides.
    trust_env: bool = True
    #: A PEM client certificate to present to servers that ask for one (may hold the key).
    client_cert: str | None = None
    #: The PEM private key of client_cert, if not in the same file (unencrypted).
    client_key: str | None = None

    def __repr__(self) -> str:  # no header value, no proxy password: jobs log settings
        return shown_fields("Settings", {f.name: getattr(self, f.name) for f in fields(self)})

    def __post_init__(self) -> None:
        for name in _FIELDS:  # checked and kept as the built-ins they are (``plain``)
            value = getattr(self, name)
            if type(value) not in _BUILT_INS:
                object.__setattr__(self, name, plain(value))
        for name, low, high in _INT_BOUNDS:
            check_int(name, getattr(self, name), low, high)
        if self.parts is not None:
            check_int("parts", self.parts, 1, MAX_PARTS)
        if self.processes is not None:
            check_int("processes", self.processes, 1, MAX_CONNECTIONS)
        if self.limit_rate is not None:
            check_int("limit_rate", self.limit_rate, 1, MAX_BYTES)
        _require(self.min_part_size <= self.max_part_size, "min_part_size exceeds max_part_size")
        for name, positive in _SECONDS:
            _check_seconds(name, getattr(self, name), positive)
        for name in _FLAGS:
            _require(isinstance(getattr(self, name), bool), f"{name} must be true or false")
        for name in _FILES:  # a path-like taken as its text, as ``download(path=)`` takes it
            value = getattr(self, name)
            if isinstance(value, os.PathLike) and isinstance(text := os.fspath(value), str):
                object.__setattr__(self, name, plain(text))
        for name in _PATHS:
            check_text(name, getattr(self, name), optional=True)
            # No file (nor URL) is named so: said here, not by every item that opens it.
            _require("\0" not in (getattr(self, name) or ""), f"{name} holds a NUL byte")
            # An empty one names nothing: it read as no cache, the system's CAs, no
            # certificate. A variable that expanded to nothing, not what was meant.
            _require(getattr(self, name) != "", f"{name} is empty (did a variable expand to "
                     "nothing? None means none)")  # fmt: skip
        for name in _FILES:
            problem = unnameable(getattr(self, name) or ".")
            _require(problem is None, f"{name}: {problem}")
        check_pairs(self.headers)
        for header in self.headers:
            check_header(*header)
        # Frozen, hashable and picklable whatever sequence the caller gave.
        headers = tuple(tuple(plain(text) for text in h) for h in self.headers)
        object.__setattr__(self, "headers", headers)
        if self.proxy is not None:
            check_proxy_url(self.proxy)
        _require(
            self.client_key is None or self.client_cert is not None,
            "client_key needs client_cert",
        )

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    def worker_processes(self, most: int) -> int:
        """The processes to run at most ``most`` lanes (or seats) in: ``processes``, or one
        per CPU, at least 2; never more than ``most``."""
        return min(self.processes or max(2, os.cpu_count() or 1), most)


def overridden(settings: Settings | None, overrides: Mapping[str, Any]) -> Settings:
    """``settings`` (the defaults if None) with ``overrides`` applied, as every entry point
    that takes ``**settings`` applies them: an unknown name is a ``UsageError``, and the
    result is validated as any ``Settings`` is."""
    if settings is not None and not isinstance(settings, Settings):
        raise UsageError(f"settings must be a blobdl.Settings, not {type(settings).__name__}")
    base = settings or Settings()
    if not overrides:  # a batch's seat makes a downloader per item: nothing to check then
        return base
    unknown = set(overrides) - Settings.field_names()
    if unknown:
        raise UsageError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return replace(base, **overrides)


# (field, lowest, highest) for the int settings.
_INT_BOUNDS = (
    ("target_parts", 1, MAX_PARTS),
    ("connections", 1, MAX_CONNECTIONS),
    ("min_part_size", 1, MAX_BYTES),
    ("max_part_size", 1, MAX_BYTES),
    ("buffer_size", 1, MAX_BUFFER),
    ("min_steal_size", 1, MAX_BYTES),
    ("retries", 0, MAX_COUNT),
    ("max_redirects", 0, MAX_COUNT),
)
# (field, must be > 0) for the time settings; the others may be 0.
_SECONDS = (
    ("backoff_unit", False),
    ("max_backoff", False),
    ("lock_timeout", False),
    ("checkpoint_interval", False),
    ("stall_timeout", True),
    ("progress_interval", True),
    ("connect_timeout", True),
)
_FLAGS = ("steal", "resume", "force", "keep_bad", "verify_cache", "verify_tls", "trust_env")
_FIELDS = tuple(f.name for f in fields(Settings))
_BUILT_INS = frozenset({str, int, float, bool, type(None), tuple})  # (a tuple's are checked)
_FILES = ("cache_dir", "ca_bundle", "client_cert", "client_key")  # files and folders
_PATHS = (*_FILES, "proxy")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def check_int(name: str, value: object, low: int, high: int) -> None:
    """A whole number from ``low`` to ``high`` (never a bool), or a UsageError naming it."""
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    _require(ok, f"{name} must be a whole number from {low} to {high}")


def _check_seconds(name: str, value: object, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        # Compared as given: float() of a whole number past 1e308 is an OverflowError, and
        # NaN fails every comparison.
        seconds: float = value  # type: ignore[assignment]
        ok = 0 <= seconds <= MAX_SECONDS and (seconds > 0 or not positive)
    low = "more than 0" if positive else "from 0"
    _require(ok, f"{name} must be a number of seconds {low} up to {MAX_SECONDS:g}")


# RFC 9110 token characters: what a header name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers blobdl sets itself (the range it needs, the validators it pinned, identity
# encoding) or that frame a request. A user's would be sent beside ours in another case (a
# `range` beside our `Range`), replace ours (`Accept-Encoding: gzip`), or desync a connection
# a batch keeps alive from item to item (a `Content-Length` on a GET that has no body).
_OURS = frozenset({
    "range", "if-range", "if-match", "if-none-match", "if-modified-since",
    "if-unmodified-since", "accept-encoding", "te", "content-length", "transfer-encoding",
    "connection", "keep-alive", "upgrade", "expect", "trailer",
})  # fmt: skip
# One of ours given with the value our requests carry anyway changes nothing blobdl asks
# for (``curl -H 'Accept-Encoding: identity'`` moved to blobdl): it is sent as given, in
# place of ours (``base_headers``), not refused.
_AS_OURS = {"accept-encoding": "identity", "connection": "keep-alive"}


# HTTP's optional whitespace around a field's value (RFC 9110, 5.6.3): spaces and tabs.
_OWS = " \t"


def _name_shown(name: object) -> str:
    """A refused header name as an error may show it: up to its first character that no
    name holds. A pair given the wrong way round (``("Bearer TOKEN", "Authorization")``) or
    a whole line as the name has a credential after it (as ``-H`` and a manifest say it)."""
    if not isinstance(name, str):
        return repr(name)
    first = _TOKEN.match(name)
    shown = first.group() if first else ""
    return repr(name) if shown == name else f"{shown!r}... (the rest is not shown)"


def check_header(name: object, value: object) -> None:
    """Refuse a header http.client would reject or that would split the request: names
    of token characters, values of latin-1 without control characters but tabs; and one of ours
    (``_OURS``) unless its value is ours too (``_AS_OURS``)."""
    check_header_name(name)
    what = "it asks for the bytes it needs, and frames its requests itself"
    lowered = str(name).lower()
    # Padded as HTTP pads (_OWS) only: a no-break space or NEL is sent, another value.
    as_ours = isinstance(value, str) and value.strip(_OWS).lower() == _AS_OURS.get(lowered)
    _require(lowered not in _OURS or as_ours, f"header {name} is blobdl's own ({what}): drop it")
    _require(header_value(value), f"bad value for header {name}: no control characters "
                                  "(a tab is fine), latin-1 characters only")  # fmt: skip


def check_header_name(name: object) -> None:
    """Refuse a header name that is not a token (RFC 9110, 5.6.2), shown only up to its
    first character that no name holds."""
    _require(
        isinstance(name, str) and _TOKEN.fullmatch(name) is not None,
        f"bad header name {_name_shown(name)} (letters, digits and !#$%&'*+-.^_`|~ only)",
    )


def header_value(value: object) -> bool:
    """Whether ``value`` can be sent as a header's value: a field value is visible
    characters, spaces and tabs (RFC 9110, 5.5); CR and LF would split the request, any
    other control character a strict server refuses with a 400, and http.client sends
    latin-1 only."""
    if not isinstance(value, str) or any(c != "\t" and (c < " " or c == "\x7f") for c in value):
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def proxy_url(text: str) -> str:
    """The URL of a proxy given as ``text``: one without a scheme (``host:3128``,
    ``user:pass@host:3128``) is an http:// proxy, as curl reads it, whether it was given as
    the proxy setting (``--proxy``) or in a variable (``HTTP_PROXY``)."""
    return text if "://" in text else f"http://{text}"


def check_proxy_url(url: str, origin: str = "") -> None:
    """Refuse a proxy URL urllib3 cannot use: only http:// and https:// proxies (or none
    named: ``proxy_url``), with a host, all of it text (argument bytes that are not UTF-8
    are lone surrogates) and credentials a Proxy-Authorization header can carry (latin-1).
    ``origin``: where it was given, if not as ``proxy`` (``$http_proxy``, as spelled), so
    the error names what to fix."""
    scheme = ""
    try:
        parts = urlsplit(proxy_url(url))
        scheme = parts.scheme
        ok = scheme in _PROXY_SCHEMES and bool(parts.hostname) and parts.port != 0
        url.encode()
        unquote(parts.netloc.rpartition("@")[0]).encode("latin-1")
    except (ValueError, TypeError, AttributeError):  # UnicodeError is a ValueError
        ok = False
    shown = redact_url(url) if isinstance(url, str) else url
    where = f" from {origin}" if origin else ""
    said = "expected [http://][user:pass@]host[:port]"
    if scheme and scheme not in _PROXY_SCHEMES:
        said = f"{scheme}:// is not a proxy blobdl speaks to: http or https"
    hint = ""
    if scheme.startswith("socks"):
        hint = "; SOCKS proxies are not supported"
        if origin:  # set for other tools (curl reads SOCKS there): say how to go on
            hint += ": give an HTTP proxy (--proxy) or ignore the environment's (--no-env-proxy)"
    _require(ok, f"bad proxy URL {shown!r}{where} ({said}{hint})")


_PROXY_SCHEMES = ("http", "https")


# What pads a header given as text: HTTP's spaces and tabs (RFC 9110, 5.6.3), and the CR or
# LF a shell's $(cat file) leaves. No other space: a no-break space is a value's character.
_PADDING = _OWS + "\r\n"


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` -> ("Name", "value")."""
    name, sep, value = text.partition(":")
    if not sep or not name or any(c in name for c in _PADDING):
        # Only its leading name is shown: the rest may be a credential missing its colon.
        lead = _TOKEN.match(text.strip(_PADDING))
        shown = f"{lead.group()!r}..." if lead else "the text given"
        raise UsageError(f"not a header: {shown} (expected 'Name: value'; the rest is not shown)")
    value = value.strip(_PADDING)
    check_header(name, value)
    return name, value


def check_pairs(headers: object, where: str = "") -> None:
    """A sequence of (name, value) pairs, or a UsageError (prefixed with ``where``)."""
    prefix = f"{where}: " if where else ""
    if not isinstance(headers, (tuple, list)):
        raise UsageError(f"{prefix}headers must be (name, value) pairs")
    for header in headers:
        ok = isinstance(header, (tuple, list)) and len(header) == 2
        _require(ok, f"{prefix}bad header: not a pair")


def check_text(name: str, value: object, *, optional: bool = False) -> None:
    """A string (or None when ``optional``), or a UsageError naming it: what a caller
    passes at the library's doors is checked there, never found out deep inside."""
    if not (isinstance(value, str) or (optional and value is None)):
        kind = "a string" + (" or None" if optional else "")
        raise UsageError(f"{name} must be {kind}, not {type(value).__name__}")


def check_path(name: str, value: object) -> None:
    """A path (str, or an os.PathLike whose ``__fspath__`` gives one) or None, or a
    UsageError naming it: one that gives bytes would be taken, then fail inside. An empty
    one is the current directory to the file system: a variable that expanded to nothing,
    never what was meant (the CLI's ``path_arg`` refuses it too)."""
    if value is None:
        return
    if value == "":
        raise UsageError(f"{name} is an empty path (did a variable expand to nothing? '.' "
                         "names the current directory)")  # fmt: skip
    text: object = value
    if not isinstance(value, str):
        if not isinstance(value, os.PathLike):
            raise UsageError(f"{name} must be a path or None, not {type(value).__name__}")
        try:
            text = os.fspath(value)
        except TypeError:  # its __fspath__ gives neither str nor bytes
            text = None
    if not isinstance(text, str):
        raise UsageError(f"{name} must be a path of text: {type(value).__name__} gives no str")
    _require((problem := unnameable(text)) is None, f"{name}: {problem}")


def unnameable(path: str) -> str | None:
    """Why no file can have ``path`` as its name, if none can: it holds a lone surrogate
    that is no byte ``os.fsdecode`` kept (a JSON ``"\\ud800"``, a caller's str), which
    ``os.fsencode`` refuses with a UnicodeEncodeError deep inside, not a usage error."""
    try:
        os.fsencode(path)
    except UnicodeEncodeError as exc:
        return f"{path!r} cannot name a file: U+{ord(path[exc.start]):04X} is no character"
    return None


def check_callback(name: str, value: object) -> None:
    """A callable or None, or a UsageError naming it, before anything starts: else the
    download would start and its first event fail inside, a partial left behind."""
    if not (value is None or callable(value)):
        raise UsageError(f"{name} must be a function or None, not {type(value).__name__}")
