"""A connection's set-up (TCP connect, a proxy's TLS and its answer to CONNECT, the TLS
handshake) is over within the connect timeout as a whole. A peer that trickles it, a byte
well within every read's timeout, holds no request longer: not the probe, not a batch's
small item, not a registry's or the Hub's requests, direct or through a proxy.

Each call runs in a process of its own that must end within ``BOUND``: trickled, a set-up
without a whole bound would last the peer's ``hold`` (``SlowSetUp``), far past it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faultserver.serverctl import ServerHandle, make_blob
from faultserver.slow_setup import SlowSetUp
from faultserver.tinyproxy import start_tinyproxy
from tests.conftest import PART, REPO
from tests.integration.conftest import PKI

CONNECT_TIMEOUT = 0.5  # each trickled byte (every 0.2 s) comes well within it
CONNECT_TIMEOUT_LATE = 1.0  # the late proxy's answer starts at 0.6 s of it, ends at 1.4 s
BOUND = 20.0  # seconds a call may take here; the peers trickle for 120

# Each door that opens connections, as a library caller opens it: ``origin`` is an https
# origin (host:port), ``out`` a folder of the test's. Prints the error it ends with.
_CALLER = """
import json, sys
import blobdl
door, origin, out, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
settings = blobdl.Settings(retries=0, trust_env=False, **settings)
try:
    if door == "download":
        blobdl.Downloader(settings).download(f"https://{origin}/blob", f"{out}/blob")
    elif door == "lanes":  # origin: host:port/path of a blob the probe finds
        blobdl.Downloader(settings).download(f"https://{origin}", f"{out}/blob")
    elif door == "batch":
        items = [blobdl.Item(f"https://{origin}/small-{n}", f"{out}/small-{n}") for n in range(2)]
        for result in blobdl.download_many(items, settings=settings):
            if result.error is not None:
                raise result.error
    elif door == "pull":
        blobdl.pull(f"{origin}/library/model:latest", out, settings=settings)
    elif door == "hf":
        blobdl.hf_download("org/model", endpoint=f"https://{origin}", cache_dir=out,
                           settings=settings)
except blobdl.BlobdlError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
else:
    print(json.dumps({"error": None}))
"""
DOORS = ("download", "batch", "pull", "hf")


def ended(door: str, origin: str, out: Path, **settings: object) -> dict[str, str]:
    """How ``door`` ends against ``origin``, run in a process that must end within BOUND."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env = {k: v for k, v in env.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(out / "hf-home"), HF_HUB_DISABLE_XET="1")  # no token of the user's
    settings = {"connect_timeout": CONNECT_TIMEOUT, **settings}
    args = [door, origin, str(out), json.dumps(settings)]
    done = subprocess.run(
        [sys.executable, "-c", _CALLER, *args],
        capture_output=True,
        text=True,
        timeout=BOUND,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, str] = json.loads(done.stdout.splitlines()[-1])
    return answer


@pytest.mark.parametrize("door", DOORS)
def test_a_proxy_trickling_its_answer_to_connect_is_named_and_cut(
    door: str, tmp_path: Path
) -> None:
    with SlowSetUp("connect") as proxy:
        answer = ended(door, "127.0.0.1:9", tmp_path, proxy=proxy.url)
    assert proxy.connections >= 1
    assert answer["error"] is not None, answer
    assert f"proxy 127.0.0.1 port {proxy.port} failed: timed out" in answer["message"], answer


@pytest.mark.parametrize("door", DOORS)
def test_a_handshake_trickled_inside_an_https_proxys_tunnel_is_cut(
    door: str, tmp_path: Path, pki: PKI
) -> None:
    """urllib3 handshakes inside a proxy's TLS record by record: each read alone is bounded."""
    with SlowSetUp("tunnel", tls=(pki.server_cert, pki.server_key)) as proxy:
        answer = ended(door, "127.0.0.1:9", tmp_path, proxy=proxy.url, ca_bundle=pki.ca_pem)
    assert proxy.connections >= 1
    assert answer["error"] is not None, answer
    assert "127.0.0.1 port 9" in answer["message"], answer
    assert "timed out" in answer["message"], answer


def test_a_proxy_answering_connect_late_then_slowly_is_cut_within_the_set_up(
    tmp_path: Path,
) -> None:
    """The answer's first byte comes within the connect timeout, its end after it: the
    answer is bounded by what is left of the set-up, not by a read timeout of its own from
    its first byte (which let it run on to near twice the connect timeout, and the time
    out then named the server, not the proxy)."""
    late, ends = 0.6 * CONNECT_TIMEOUT_LATE, 1.4 * CONNECT_TIMEOUT_LATE
    with SlowSetUp("connect", step=0.1, late=late, ends=ends) as proxy:
        answer = ended("download", "127.0.0.1:9", tmp_path, proxy=proxy.url,
                       connect_timeout=CONNECT_TIMEOUT_LATE)  # fmt: skip
    assert f"proxy 127.0.0.1 port {proxy.port} failed: timed out" in answer["message"], answer


def test_a_server_trickling_its_handshake_is_cut(tmp_path: Path) -> None:
    with SlowSetUp("handshake") as server:
        origin = f"127.0.0.1:{server.port}"
        answer = ended("download", origin, tmp_path)
    assert answer["message"].startswith(f"no answer from 127.0.0.1 port {server.port}: timed out")


def test_a_server_trickling_its_handshake_through_tinyproxy_is_cut(tmp_path: Path) -> None:
    with SlowSetUp("handshake") as server, start_tinyproxy(tmp_path / "proxy") as proxy:
        origin = f"127.0.0.1:{server.port}"
        answer = ended("download", origin, tmp_path, proxy=proxy.url)
        assert f"CONNECT {origin}" in proxy.requests()
    assert answer["message"].startswith(f"no answer from 127.0.0.1 port {server.port}: timed out")


def test_a_lanes_set_up_trickled_by_the_proxy_is_cut_though_the_probe_got_through(
    tls_server: ServerHandle, pki: PKI, tmp_path: Path
) -> None:
    """The probe's tunnel is honest; the lane's CONNECT answer trickles. The stall timeout
    is long, so only the set-up's own bound can end the lane in time."""
    make_blob(tls_server.root, "lanes.bin", 4 * PART, seed=61)
    origin = tls_server.url("lanes.bin").removeprefix("https://")
    with SlowSetUp("connect", tunnels=1) as proxy:
        answer = ended("lanes", origin, tmp_path, proxy=proxy.url, ca_bundle=pki.ca_pem,
                       stall_timeout=600.0, connections=1)  # fmt: skip
    assert proxy.connections >= 2  # the probe's, then the lane's
    assert f"proxy 127.0.0.1 port {proxy.port} failed: timed out" in answer["message"], answer
