"""The ``--url`` mode's two questions about a server the harness does not run: how big is its
blob, and what must every run's bytes hash to.

Nothing is served here, so nothing knows the right bytes in advance: the user gives a sha256
(``--sha256``), or the first run whose tool succeeded sets it and every later run must match
(a server that changes the blob between runs then fails those runs instead of timing them).
"""

from __future__ import annotations

import hashlib
import ssl
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PROBE_TIMEOUT = 30.0


@dataclass
class Reference:
    """The sha256 every run's bytes are checked against, and where it came from."""

    sha256: str | None  # None until the first successful run sets it
    source: str

    @classmethod
    def given(cls, sha256: str | None) -> Reference:
        if sha256:
            return cls(sha256.lower(), "the sha256 given with --sha256")
        return cls(None, "the first successful run's bytes")

    def check(self, digest: str, who: str) -> bool:
        """Whether ``digest`` is the reference; the first digest checked becomes it."""
        if self.sha256 is None:
            self.sha256, self.source = digest, f"the first successful run's bytes ({who})"
            say(f"every run's bytes are checked against {self.describe()}")
        return digest == self.sha256

    def describe(self) -> str:
        return f"{self.source}: sha256 {self.sha256 or '(no successful run)'}"

    def as_dict(self) -> dict[str, str | None]:
        return {"sha256": self.sha256, "source": self.source}


def sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def remote_size(url: str, ca_bundle: str | None, timeout: float) -> int | None:
    """Total size from a one-byte range request, or None if the server does not say.

    It trusts what the tools are given (``ca_bundle``, else the system's CAs) and goes
    through no proxy, as the harness runs every tool without one."""
    tls = ssl.create_default_context(cafile=ca_bundle)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls)
    )
    req = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with opener.open(req, timeout=min(timeout, PROBE_TIMEOUT)) as resp:
            status, total = resp.status, (resp.headers.get("Content-Range") or "")
    except OSError as exc:
        say(f"could not probe {url}: {exc}; the runs go ahead, each judged on its own")
        return None
    if status != 206:
        # Every tool then reads one stream, whatever its parts and connections say.
        say(
            f"{url} ignores Range (HTTP {status} to bytes=0-0): "
            "the configurations differ in name only"
        )
        return None
    size = total.rpartition("/")[2]
    return int(size) if size.isdigit() else None


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
