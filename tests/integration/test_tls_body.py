"""Bodies over TLS are read straight off the socket, many records per write (``_gather``),
while plain HTTP bodies are spliced: two hot paths. Every fault the server can script must
end the same way on both: the same exact bytes, or the same error. Real fault servers, plain
and TLS, forked workers, real files, sha256.

The buffer is Settings' default (1 MiB) so one gathered write spans many TLS records, and
parts are large enough (256 KiB) that each fault lands in the middle of a gathered batch.
"""

from __future__ import annotations

from collections.abc import Callable
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
    "silent at an offset": {"action": "stall_at", "offset": PART + 70_000, "hold": 30},
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


def outcome(handle: ServerHandle, fault: dict[str, Any], dest: Path, **settings: Any) -> str:
    """How a download ends: the sha256 of its file, or the name of its error."""
    handle.reset()
    rule = {k: v for k, v in fault.items() if not k.startswith("_")}
    if rule:
        handle.set_faults({"path": f"/files/{NAME}", "skip": 1, "times": None, **rule})
    digest = f"sha256:{sha256_file(handle.root / NAME)}" if "_digest" in fault else None
    try:
        Downloader(Settings(**settings)).download(handle.url(NAME), dest, digest=digest)
    except BlobdlError as exc:
        return type(exc).__name__
    finally:
        handle.reset()
    return sha256_file(dest)


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_a_fault_ends_the_same_over_tls_as_over_plain_http(
    served: dict[str, ServerHandle], pki: PKI, tmp_path: Path, fault: dict[str, Any]
) -> None:
    settings: dict[str, Any] = {
        "min_part_size": PART,
        "max_part_size": PART,
        "connections": 4,
        "stall_timeout": 0.5,
        "progress_interval": 0.1,
        "backoff_unit": 0.001,
        "max_backoff": 0.05,
        "min_steal_size": 64 * 1024,
        "ca_bundle": pki.ca_pem,
    }
    ends: Callable[[str], str] = lambda proto: outcome(  # noqa: E731
        served[proto], fault, tmp_path / proto, **settings
    )
    plain, tls = ends("http"), ends("https")
    assert tls == plain
    if not fault or fault["action"] in {"reset_after", "close_after", "rate", "status"}:
        assert len(tls) == 64  # a sha256: these faults are retried to exact bytes


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
