"""Fixtures for the integration tests: a trustme PKI and a TLS fault server; a real registry
and a scripted one for ``blobdl pull``."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from faultserver.registry import Registry, start_registry
from faultserver.serverctl import ServerHandle, start_server


@dataclass(frozen=True)
class PKI:
    ca: trustme.CA
    ca_pem: str
    server_cert: str  # chain
    server_key: str
    client_cert: str
    client_key: str
    client_combined: str  # key and chain in one file


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.blobdl.test")
    files = {
        "ca.pem": ca.cert_pem,
        "server.pem": server.cert_chain_pems[0],
        "server.key": server.private_key_pem,
        "client.pem": client.cert_chain_pems[0],
        "client.key": client.private_key_pem,
        "client-combined.pem": client.private_key_and_cert_chain_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(str(root / name))
    p = {name: str(root / name) for name in files}
    return PKI(
        ca,
        p["ca.pem"],
        p["server.pem"],
        p["server.key"],
        p["client.pem"],
        p["client.key"],
        p["client-combined.pem"],
    )


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[ServerHandle]:
    handle = start_server(
        tmp_path_factory.mktemp("served-tls"),
        certfile=pki.server_cert,
        keyfile=pki.server_key,
        ca=pki.ca_pem,
    )
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Debian's docker-registry (CNCF distribution) on loopback, filesystem storage."""
    handle = start_registry(tmp_path_factory.mktemp("registry"))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A fault server playing the registry: scripted manifest and blob routes, each blob
    answered with 307 to the storage (the ``server`` fixture, another origin)."""
    handle = start_server(tmp_path_factory.mktemp("front"))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def other(server: ServerHandle) -> Iterator[ServerHandle]:
    """A second origin with the same files (reached as ``localhost``, not ``127.0.0.1``)."""
    handle = start_server(server.root)
    yield handle
    handle.stop()


# --- folders no one may write to ----------------------------------------------------------------


@pytest.fixture
def frozen() -> Iterator[list[Path]]:
    """Folders to make immutable (``chattr +i``: nothing created, renamed or removed in them,
    even by root, who passes every permission check; ``freeze``), each undone afterwards."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    made: list[Path] = []
    yield made
    for folder in reversed(made):
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def freeze(folder: Path, made: list[Path]) -> None:
    """Make ``folder`` immutable, noted in ``made`` (the ``frozen`` fixture's list); skipped
    where the file system refuses it (tmpfs before 6.x has no immutable flag)."""
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"chattr +i refused here: {done.stderr.strip()}")
    made.append(folder)
