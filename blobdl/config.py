"""Settings: one frozen, validated dataclass; the defaults are Ollama's numbers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit

from .errors import UsageError

MB = 1000 * 1000  # Ollama sizes parts in decimal megabytes
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
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """``"100MB"`` -> 100_000_000, ``"1GiB"`` -> 1_073_741_824, ``"512"`` -> 512."""
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise UsageError(f"not a size: {text!r} (try 100MB, 1GiB or a byte count)")
    return int(float(match.group(1)) * _UNITS[unit])


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
    #: Worker processes running at once (each holds one connection). Each costs a process.
    connections: int = 16
    #: Let idle workers take over slow lanes and split the largest remaining range.
    steal: bool = True
    #: Smallest range a steal splits off, in bytes. Smaller: a shorter tail, more requests.
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
    #: Replace an existing destination that no digest vouches for.
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
    #: Seconds allowed to open a TCP (and TLS) connection.
    connect_timeout: float = 30.0
    #: Bytes read from the socket per system call; one reused buffer per worker.
    buffer_size: int = 1024 * 1024
    #: Extra request headers, e.g. (("Authorization", "Bearer x"),).
    headers: tuple[tuple[str, str], ...] = field(default=())
    #: Verify TLS certificates (turn off only for testing).
    verify_tls: bool = True
    #: A PEM file of CA certificates to trust instead of the system's.
    ca_bundle: str | None = None
    #: HTTP(S) proxy for every URL, e.g. ``http://user:pass@proxy:3128`` (None: the
    #: environment's, if trust_env). Costs a hop; https URLs are tunnelled with CONNECT.
    proxy: str | None = None
    #: Read HTTP_PROXY/HTTPS_PROXY/NO_PROXY from the environment (NO_PROXY also exempts
    #: hosts from ``proxy``, as curl does). False: ``proxy`` alone decides.
    trust_env: bool = True
    #: A PEM client certificate to present to servers that ask for one (may hold the key).
    client_cert: str | None = None
    #: The PEM private key of client_cert, if not in the same file (unencrypted).
    client_key: str | None = None

    def __post_init__(self) -> None:
        positive = (
            "target_parts",
            "connections",
            "min_part_size",
            "max_part_size",
            "buffer_size",
            "min_steal_size",
        )
        for name in positive:
            _require(getattr(self, name) >= 1, f"{name} must be at least 1")
        _require(self.parts is None or self.parts >= 1, "parts must be at least 1")
        _require(self.limit_rate is None or self.limit_rate >= 1, "limit_rate must be positive")
        _require(self.min_part_size <= self.max_part_size, "min_part_size exceeds max_part_size")
        for name in ("retries", "max_redirects"):
            _require(getattr(self, name) >= 0, f"{name} must not be negative")
        for name in ("backoff_unit", "max_backoff", "lock_timeout", "checkpoint_interval"):
            _require(getattr(self, name) >= 0, f"{name} must not be negative")
        for name in ("stall_timeout", "progress_interval", "connect_timeout"):
            _require(getattr(self, name) > 0, f"{name} must be positive")
        for header in self.headers:
            _require(
                len(header) == 2 and bool(header[0].strip()) and "\n" not in "".join(header),
                f"bad header: {header!r}",
            )
        if self.proxy is not None:
            check_proxy_url(self.proxy)
        _require(
            self.client_key is None or self.client_cert is not None,
            "client_key needs client_cert",
        )

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def check_proxy_url(url: str) -> None:
    """Refuse a proxy URL urllib3 cannot use: only http:// and https:// proxies, with a host."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        ok = False
    _require(ok, f"bad proxy URL {url!r} (expected http://[user:pass@]host[:port])")


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` -> ("Name", "value")."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in " \t\r\n"):
        raise UsageError(f"not a header: {text!r} (expected 'Name: value')")
    return name.strip(), value.strip()
