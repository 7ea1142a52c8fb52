"""The downloaders under test: blobdl itself and the baselines found on this machine."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HF_CHUNK = 10 << 20  # hf_transfer's usual chunk size


@dataclass(frozen=True)
class Job:
    """One download to run."""

    url: str
    out: Path
    parts: int
    connections: int
    stall_timeout: float | None  # None: blobdl's default
    extra: tuple[str, ...] = ()  # extra blobdl arguments from --blobdl-arg
    #: PEM bundle to trust (the system's CAs plus the run's own CA), for HTTPS URLs.
    ca_bundle: str | None = None
    #: Tools that cannot check the certificate may skip the check: only for the harness's own
    #: nginx, never for a user's --url (a baseline given -k would not be doing blobdl's work).
    insecure: bool = False


@dataclass(frozen=True)
class Tool:
    name: str
    #: Sends one small probe request before the data requests (gets no lane of its own).
    probes: bool
    #: Opens several connections; single-stream tools only run where lanes are uncapped.
    multi: bool

    def available(self) -> bool:
        if self.name == "blobdl":
            return True
        if self.name == "hf_transfer":
            return importlib.util.find_spec("hf_transfer") is not None
        return shutil.which(self.name) is not None

    def connections_for(self, connections: int) -> int:
        """How many connections the tool opens when asked for ``connections``."""
        if self.name == "curl":
            return 1
        return min(connections, 16) if self.name == "aria2c" else connections

    def parts_for(self, size: int, connections: int) -> int:
        """How many ranges a baseline cuts the blob into (blobdl's is swept instead)."""
        if self.name == "curl":
            return 1
        if self.name == "hf_transfer":
            return max(1, -(-size // HF_CHUNK))
        return connections

    def command(self, job: Job) -> list[str]:
        return _COMMANDS[self.name](job)


def _blobdl(job: Job) -> list[str]:
    # The part-size bounds are opened wide so that --parts is exactly the number of parts.
    return [
        sys.executable,
        "-m",
        "blobdl",
        job.url,
        "-o",
        str(job.out),
        "--json",
        "--parts",
        str(job.parts),
        "--connections",
        str(job.connections),
        *(["--stall-timeout", str(job.stall_timeout)] if job.stall_timeout else []),
        *(["--ca-bundle", job.ca_bundle] if job.ca_bundle else []),
        "--min-part-size",
        "1",
        "--max-part-size",
        "1TB",
        *job.extra,
    ]


def _curl(job: Job) -> list[str]:
    # Every tool goes direct (benchmarks.direct drops the proxy variables); curl is told too.
    ca = ["--cacert", job.ca_bundle] if job.ca_bundle else []
    return ["curl", "-sS", "--fail", "-L", "--noproxy", "*", *ca, "-o", str(job.out), job.url]


def _axel(job: Job) -> list[str]:
    # axel has no CA option (it reads SSL_CERT_FILE), and its host-name check does not accept
    # the IP-address name in our nginx's certificate: there it skips verification (a little
    # less work than the others do); against a user's --url it checks, as the others do.
    insecure = ["--insecure"] if job.insecure and job.url.startswith("https:") else []
    n = str(job.connections)
    return ["axel", "-q", "-N", *insecure, "-n", n, "-o", str(job.out), job.url]


def _aria2c(job: Job) -> list[str]:
    n = str(min(job.connections, 16))  # aria2c refuses more than 16 per server
    return [
        "aria2c",
        f"-x{n}",
        f"-s{n}",
        "-k1M",
        "--no-conf",
        "--all-proxy=",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--file-allocation=falloc",
        *([f"--ca-certificate={job.ca_bundle}"] if job.ca_bundle else []),
        "--console-log-level=warn",
        "--summary-interval=0",
        "--download-result=hide",
        "-d",
        str(job.out.parent),
        "-o",
        job.out.name,
        job.url,
    ]


def _hf_transfer(job: Job) -> list[str]:
    code = (
        "import sys, hf_transfer; hf_transfer.download(url=sys.argv[1], filename=sys.argv[2],"
        " max_files=int(sys.argv[3]), chunk_size=int(sys.argv[4]))"
    )
    return [sys.executable, "-c", code, job.url, str(job.out), str(job.connections), str(HF_CHUNK)]


# hf_transfer (rustls) reads SSL_CERT_FILE, which the harness sets for every tool.
_COMMANDS = {
    "blobdl": _blobdl,
    "curl": _curl,
    "aria2c": _aria2c,
    "axel": _axel,
    "hf_transfer": _hf_transfer,
}
BLOBDL = Tool("blobdl", probes=True, multi=True)
BASELINES = (
    Tool("curl", probes=False, multi=False),
    Tool("aria2c", probes=False, multi=True),
    Tool("axel", probes=True, multi=True),
    Tool("hf_transfer", probes=True, multi=True),
)


def blobdl_result(stdout: str) -> dict[str, Any] | None:
    """The last JSON line blobdl printed (its ``finished`` or ``failed`` event)."""
    for line in reversed(stdout.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") in ("finished", "failed"):
            return record
    return None
