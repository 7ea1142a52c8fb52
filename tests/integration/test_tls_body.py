"""Bodies over TLS are read straight off the socket, many records per write (``_socket_reads``);
plain HTTP bodies are spliced, or gathered too where ``os.splice`` is missing (not Linux) or
refused: three hot paths. Every fault the server can script must end the same way on each:
the same exact bytes, or the same error. Real fault servers, plain and TLS, forked workers,
real files, sha256.

The buffer is Settings' default (1 MiB) so one gathered write spans many TLS records, and
parts are large enough (256 KiB) that each fault lands in the middle of a gathered batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from blobdl import Downloader, Settings
from blobdl.errors import BlobdlError
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import sha256_file
from tests.integration.conftest import PKI

PART = 256 * 1024
SIZE = 4 * PART + 17
NAME = "gathered.bin"

# Each rule skips the probe. ``times`` None: every part request.
FAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "reset mid-batch": {"action": "reset_after", "bytes": 100_000, "times": 2},
    "clean close mid-batch": {"action": "close_after", "bytes": 100_000, "times": 2},
    "stall mid-batch": {"action": "stall_after", "bytes": 50_000, "hold": 30, "times": 1},
    # Every attempt stalls there: two are enough to show each path gives up the same way.
    "silent at an offset": {
        "action": "stall_at",
        "offset": PART + 70_000,
        "hold": 30,
        "_settings": {"retries": 1},
    },
    "slow lane": {"action": "rate", "bps": 1_000_000, "times": 1},
    "slow connection (steals)": {"action": "slow_conn", "bps": 1_000_000, "times": 1},
    "503 then good": {"action": "status", "status": 503, "times": 2},
    "length too long": {"action": "wrong_length", "by": 1000, "times": 1},
    "length too short": {"action": "wrong_length", "by": -1000, "times": 1},
    # Right headers, wrong bytes: only the digest can tell.
    "shifted range, digest given": {"action": "shift_range", "by": 1, "times": 1, "_digest": 1},
    "wrong content-range": {"action": "wrong_content_range", "by": 7, "times": 1},
    "etag changes": {"action": "etag", "value": '"other"', "times": 1},
    "200 to a range": {"action": "full_200", "times": 1},
    "gzip label": {"action": "encoding", "value": "gzip", "times": 1},
    "no length": {"action": "no_length", "times": 1},
}


@pytest.fixture(scope="module")
def served(server: ServerHandle, tls_server: ServerHandle) -> dict[str, ServerHandle]:
    for handle in (server, tls_server):
        make_blob(handle.root, NAME, SIZE, seed=11)
    return {"http": server, "https": tls_server}


def outcome(
    handle: ServerHandle, fault: dict[str, Any], dest: Path, keep: int = 0, **settings: Any
) -> str:
    """How a download ends: the sha256 of its file, or the name of its error. The server's
    rules are cleared after, and its stats too unless ``keep``."""
    handle.reset()
    rule = {k: v for k, v in fault.items() if not k.startswith("_")}
    if rule:  # the probe is skipped (stall_at only ever matches a request reaching offset)
        skip = 0 if rule["action"] == "stall_at" else 1
        handle.set_faults({"path": f"/files/{NAME}", "skip": skip, "times": None, **rule})
    digest = f"sha256:{sha256_file(handle.root / NAME)}" if "_digest" in fault else None
    try:
        Downloader(Settings(**settings)).download(handle.url(NAME), dest, digest=digest)
    except BlobdlError as exc:
        return type(exc).__name__
    finally:
        if keep:
            handle.set_faults()
        else:
            handle.reset()
    return sha256_file(dest)


SETTINGS: dict[str, Any] = {
    "min_part_size": PART,
    "max_part_size": PART,
    "connections": 4,
    "stall_timeout": 0.5,
    "progress_interval": 0.1,
    "backoff_unit": 0.001,
    "max_backoff": 0.05,
    "min_steal_size": 64 * 1024,
}
PATHS = ("spliced plain", "gathered plain", "gathered tls")


def on_path(
    path: str, served: dict[str, ServerHandle], monkeypatch: pytest.MonkeyPatch
) -> ServerHandle:
    """The server for ``path``; without os.splice (the forked workers inherit that)
    plain bodies are gathered."""
    if path == "gathered plain":
        monkeypatch.delattr(os, "splice")
    return served["https" if path.endswith("tls") else "http"]


@pytest.mark.parametrize("path", PATHS[1:])
@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_a_fault_ends_the_same_on_every_path(
    served: dict[str, ServerHandle],
    pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: dict[str, Any],
    path: str,
) -> None:
    settings = SETTINGS | fault.get("_settings", {}) | {"ca_bundle": pki.ca_pem}
    spliced = outcome(served["http"], fault, tmp_path / "spliced", **settings)
    ours = outcome(on_path(path, served, monkeypatch), fault, tmp_path / "ours", **settings)
    assert ours == spliced
    if not fault or fault["action"] in {"reset_after", "close_after", "rate", "status"}:
        assert len(ours) == 64  # a sha256: these faults are retried to exact bytes


@pytest.mark.parametrize("path", PATHS)
def test_a_server_that_resets_every_request_still_sends_each_byte_once(
    served: dict[str, ServerHandle],
    pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    """Bytes that arrived ahead of a reset are written before the reset ends the attempt,
    so the retry starts after them (the server drains what it sent before it resets)."""
    handle = on_path(path, served, monkeypatch)
    reset = {"action": "reset_after", "bytes": 30_000}
    ends = outcome(handle, reset, tmp_path / "out", **SETTINGS, ca_bundle=pki.ca_pem, keep=1)
    assert ends == sha256_file(handle.root / NAME)
    assert handle.stats()["bytes_sent"] == SIZE + 1  # the probe's one byte, then each once


def test_over_tls_each_byte_crosses_the_wire_once(
    served: dict[str, ServerHandle], pki: PKI, tmp_path: Path
) -> None:
    tls = served["https"]
    tls.reset()
    settings = Settings(min_part_size=PART, max_part_size=PART, connections=4, ca_bundle=pki.ca_pem)
    result = Downloader(settings).download(tls.url(NAME), tmp_path / "out")
    assert sha256_file(tmp_path / "out") == sha256_file(tls.root / NAME)
    assert tls.stats()["bytes_sent"] == SIZE + 1  # the probe's one byte, then each byte once
    assert result.bytes_received == SIZE


def test_a_tls_body_read_to_its_close_is_whole_only_with_close_notify(
    served: dict[str, ServerHandle], pki: PKI, tmp_path: Path
) -> None:
    """A 200 with no length ends where the connection does; over TLS a TCP close without
    close_notify is a truncation (an attacker can forge a FIN, not a close_notify), never
    the end of the blob. The same body ended with close_notify is the whole blob."""
    tls, dest = served["https"], tmp_path / "out"
    settings = Settings(ca_bundle=pki.ca_pem, retries=1, backoff_unit=0.001, max_backoff=0.01)
    path = f"/files/{NAME}"
    tls.reset()
    tls.set_faults({"path": path, "action": "no_length", "times": None})
    try:
        Downloader(settings).download(tls.url(NAME), dest)
        assert sha256_file(dest) == sha256_file(tls.root / NAME)
        dest.unlink()
        tls.set_faults(
            {"path": path, "action": "no_length", "times": 1},  # the probe
            {"path": path, "action": "no_length", "bytes": PART + 5, "times": None},
        )
        with pytest.raises(BlobdlError):
            Downloader(settings).download(tls.url(NAME), dest)
        assert not dest.exists()
    finally:
        tls.reset()
