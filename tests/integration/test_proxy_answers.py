"""What a proxy's answers mean, and which failures to connect are final.

A proxy's refusal by policy or capability (403, 404, 405, 501), to CONNECT or to a forwarded
request, is its final word: asked once, never retried, the error naming the proxy (or the
server, whose answer a forwarded status may be). A lost upstream (502, 503, 504) may come
back: retried, and the bytes are exact. So is a certificate that is not trusted, or that
names another host, the proxy's or the server's: asked once. Counted at the proxy and the
server, real sockets only (``faultserver.proxy`` scripts the proxy's answers).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from blobdl import Downloader, Settings
from blobdl.errors import (
    EXIT_NETWORK,
    BlobdlError,
    ConnectionFailed,
    HTTPStatusError,
    ProxyRefused,
    TLSError,
)
from faultserver.proxy import ForwardProxy, Reset
from faultserver.serverctl import ServerHandle, make_blob, start_server
from faultserver.tinyproxy import start_tinyproxy
from tests.conftest import PART, Blob, fast_settings, sha256_file
from tests.integration.conftest import PKI

Make = Callable[..., Blob]
REASONS = {403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 501: "Not Implemented",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}  # fmt: skip


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)


@pytest.fixture
def origins(server: ServerHandle, tls_server: ServerHandle, make: Make) -> dict[str, str]:
    """A blob's URL forwarded (http) and tunnelled (https), the servers' counts reset."""
    blob = make(2 * PART, seed=4401)
    make_blob(tls_server.root, blob.name, blob.size, seed=4401)
    server.reset()
    tls_server.reset()
    return {"forwarded": blob.url, "tunnelled": tls_server.url(blob.name), "sha256": blob.sha256}


def _settings(proxy: str, pki: PKI, **overrides: Any) -> Settings:
    return fast_settings(proxy=proxy, trust_env=False, ca_bundle=pki.ca_pem, retries=3,
                         **overrides)  # fmt: skip


@pytest.mark.parametrize("route", ["forwarded", "tunnelled"])
@pytest.mark.parametrize("status", [403, 404, 405, 501])
def test_a_proxys_refusal_by_policy_or_capability_is_asked_once_not_retried(
    status: int, route: str, origins: dict[str, str], server: ServerHandle,
    tls_server: ServerHandle, pki: PKI, tmp_path: Path,
) -> None:  # fmt: skip
    """One refusal is scripted, then the proxy serves honestly: a retry would succeed."""
    with ForwardProxy(refusals=[(status, REASONS[status])]) as proxy:
        downloader = Downloader(_settings(proxy.url, pki))
        with pytest.raises(BlobdlError) as caught:
            downloader.download(origins[route], tmp_path / "out")
    error = caught.value
    assert proxy.forwarded == 1, proxy.seen
    assert error.exit_code == EXIT_NETWORK and not error.retryable
    if route == "tunnelled":  # CONNECT's answer is the proxy's alone
        assert isinstance(error, ProxyRefused)
        assert str(error).startswith(
            f"proxy 127.0.0.1 port {proxy.port} refused CONNECT: {status} {REASONS[status]}"
        ), error
    else:  # a forwarded status may be the proxy's or the server's: told as the URL's
        assert isinstance(error, HTTPStatusError) and error.status == status
        assert str(error) == f"HTTP {status} from {origins[route]}"  # its body restates it
    assert (server.stats()["requests"], tls_server.stats()["requests"]) == (0, 0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("route", ["forwarded", "tunnelled"])
@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_proxys_lost_upstream_is_retried_and_the_bytes_are_exact(
    status: int, route: str, origins: dict[str, str], pki: PKI, tmp_path: Path
) -> None:
    with ForwardProxy(refusals=[(status, REASONS[status])] * 2) as proxy:
        downloader = Downloader(_settings(proxy.url, pki))
        downloader.download(origins[route], tmp_path / "out")
    assert sha256_file(tmp_path / "out") == origins["sha256"]
    assert proxy.forwarded > 2, proxy.seen  # the two refused, then the probe and the parts


@pytest.fixture(scope="module")
def other_host(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A certificate of the test CA for another host than 127.0.0.1."""
    folder = tmp_path_factory.mktemp("other-host")
    issued = pki.ca.issue_cert("other.blobdl.test")
    issued.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    issued.private_key_pem.write_to_path(str(folder / "key.pem"))
    return str(folder / "cert.pem"), str(folder / "key.pem")


@pytest.mark.parametrize("trouble", ["untrusted", "another host"])
def test_a_proxys_certificate_refused_is_asked_once_naming_the_proxy(
    trouble: str, origins: dict[str, str], pki: PKI, other_host: tuple[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    cert = (pki.server_cert, pki.server_key) if trouble == "untrusted" else other_host
    trusted = trustme.CA().cert_pem if trouble == "untrusted" else None
    ca = tmp_path / "ca.pem"
    ca.write_bytes(trusted.bytes() if trusted else Path(pki.ca_pem).read_bytes())
    with ForwardProxy(tls=cert) as proxy:
        settings = fast_settings(proxy=proxy.url, trust_env=False, ca_bundle=str(ca), retries=3)
        with pytest.raises(TLSError) as caught:
            Downloader(settings).download(origins["forwarded"], tmp_path / "out")
    assert str(caught.value).startswith("TLS certificate of proxy 127.0.0.1 not trusted: ")
    assert proxy.connections == 1 and caught.value.exit_code == EXIT_NETWORK


@pytest.fixture(scope="module")
def misnamed_server(
    other_host: tuple[str, str], pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """A TLS fault server whose certificate names another host than the one asked."""
    handle = start_server(tmp_path_factory.mktemp("misnamed"), certfile=other_host[0],
                          keyfile=other_host[1], ca=pki.ca_pem)  # fmt: skip
    try:
        yield handle
    finally:
        handle.stop()


@pytest.mark.parametrize("trouble", ["untrusted", "another host"])
def test_a_servers_certificate_refused_through_a_tunnel_is_asked_once_naming_the_server(
    trouble: str, tls_server: ServerHandle, misnamed_server: ServerHandle, pki: PKI,
    tmp_path: Path,
) -> None:  # fmt: skip
    origin = tls_server if trouble == "untrusted" else misnamed_server
    make_blob(origin.root, "refused-cert.bin", PART, seed=4402)
    ca = None if trouble == "untrusted" else pki.ca_pem  # the system's roots: not the test CA
    with start_tinyproxy(tmp_path / "proxy") as proxy:
        settings = fast_settings(proxy=proxy.url, trust_env=False, ca_bundle=ca, retries=3)
        with pytest.raises(TLSError) as caught:
            Downloader(settings).download(origin.url("refused-cert.bin"), tmp_path / "out")
        asked = proxy.requests()
    assert str(caught.value).startswith("TLS certificate of 127.0.0.1 not trusted: ")
    assert len(asked) == 1, asked
    assert isinstance(caught.value, ConnectionFailed) and not caught.value.retryable


@pytest.mark.parametrize(("route", "status"), [("forwarded", 501), ("tunnelled", 403)])
def test_a_proxy_refusing_a_part_after_the_probe_fails_the_download_at_once(
    route: str, status: int, origins: dict[str, str], pki: PKI, tmp_path: Path
) -> None:
    """The probe got through; the lane's own request (its own tunnel) is refused: the
    refusal crosses from the worker and the part is not asked again."""
    with ForwardProxy(refusals=[None, (status, REASONS[status])]) as proxy:
        settings = _settings(proxy.url, pki, connections=1)
        with pytest.raises(BlobdlError) as caught:
            Downloader(settings).download(origins[route], tmp_path / "out")
    assert type(caught.value) is (ProxyRefused if route == "tunnelled" else HTTPStatusError)
    assert not caught.value.retryable and caught.value.exit_code == EXIT_NETWORK
    assert proxy.forwarded == 2, proxy.seen


# What may come back instead of an answer to CONNECT, and right on the next attempt: nothing
# (a proxy restarting, an https proxy given as http:// hanging up on plain text), or a status
# line cut short. (Bytes that are no HTTP at all: ``NOT_HTTP``, below.)
NO_ANSWERS = {"closed": b"", "cut short": b"HTTP/1.1 2"}


@pytest.mark.parametrize("answer", NO_ANSWERS.values(), ids=NO_ANSWERS.keys())
@pytest.mark.parametrize("speaks", ["http", "https"])
def test_a_proxy_that_drops_or_garbles_its_answer_to_connect_is_named_as_the_proxy(
    answer: bytes, speaks: str, origins: dict[str, str], tls_server: ServerHandle, pki: PKI,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The server was never reached: the error names the proxy (it named the server, "connection
    to 127.0.0.1 port N closed early", sending the user to the wrong machine)."""
    tls = (pki.server_cert, pki.server_key) if speaks == "https" else None
    with ForwardProxy(tls=tls, refusals=[answer] * 10) as proxy:
        settings = fast_settings(proxy=proxy.url, trust_env=False, ca_bundle=pki.ca_pem, retries=1)
        with pytest.raises(ConnectionFailed) as caught:
            Downloader(settings).download(origins["tunnelled"], tmp_path / "out")
    said, named = str(caught.value), f"proxy 127.0.0.1 port {proxy.port}"
    assert said.startswith(
        f"{named} failed: " if not answer else f"malformed response from {named}: "
    ), said
    assert caught.value.retryable and caught.value.exit_code == EXIT_NETWORK
    assert proxy.forwarded == 2 and tls_server.stats()["requests"] == 0, proxy.seen


def test_a_proxy_that_drops_its_answer_to_connect_is_retried_and_the_bytes_are_exact(
    origins: dict[str, str], pki: PKI, tmp_path: Path
) -> None:
    with ForwardProxy(refusals=[b"", b"HTTP/1.1 2"]) as proxy:
        Downloader(_settings(proxy.url, pki)).download(origins["tunnelled"], tmp_path / "out")
    assert sha256_file(tmp_path / "out") == origins["sha256"]
    assert proxy.forwarded > 2, proxy.seen


ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


@pytest.mark.parametrize("ends", [ESTABLISHED, Reset(ESTABLISHED)], ids=["closed", "reset"])
@pytest.mark.parametrize("speaks", ["http", "https"])
def test_a_proxy_that_closes_the_tunnel_it_just_opened_is_named_as_the_proxy(
    speaks: str, ends: bytes, origins: dict[str, str], tls_server: ServerHandle, pki: PKI,
    tmp_path: Path,
) -> None:  # fmt: skip
    """200 to CONNECT, then the connection closed (or reset, once the client's handshake
    began) before a byte of the server's handshake: the server was never reached (it was
    said as "TLS error with 127.0.0.1 port N", the server's port, sending the user to the
    wrong machine). A proxy may close one tunnel and not the next: retried."""
    tls = (pki.server_cert, pki.server_key) if speaks == "https" else None
    with ForwardProxy(tls=tls, refusals=[ends] * 10) as proxy:
        settings = fast_settings(proxy=proxy.url, trust_env=False, ca_bundle=pki.ca_pem, retries=1)
        with pytest.raises(ConnectionFailed) as caught:
            Downloader(settings).download(origins["tunnelled"], tmp_path / "out")
    said = str(caught.value)
    assert said.startswith(f"proxy 127.0.0.1 port {proxy.port} closed the tunnel to "), said
    assert "TLS error" not in said, said
    assert caught.value.retryable and caught.value.exit_code == EXIT_NETWORK
    assert proxy.forwarded == 2 and tls_server.stats()["requests"] == 0, proxy.seen


def test_a_tunnel_closed_once_is_retried_and_the_bytes_are_exact(
    origins: dict[str, str], pki: PKI, tmp_path: Path
) -> None:
    with ForwardProxy(refusals=[ESTABLISHED]) as proxy:
        Downloader(_settings(proxy.url, pki)).download(origins["tunnelled"], tmp_path / "out")
    assert sha256_file(tmp_path / "out") == origins["sha256"]


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
@pytest.mark.parametrize("proxy_kind", ["scripted", "tinyproxy"])
def test_a_server_that_hangs_up_through_a_tunnel_is_named_not_the_proxy(
    reset: bool, proxy_kind: str, tls_server: ServerHandle, pki: PKI, tmp_path: Path
) -> None:
    """The proxy answered CONNECT and carried the TLS handshake with the server; the server
    then closed without an answer. urllib3 takes a connection that closed for one that never
    reached its proxy (http.client's close forgets the tunnel), and its words named the
    proxy ("proxy ... failed: Remote end closed connection without response"): the user was
    sent to debug the wrong machine."""
    make_blob(tls_server.root, "hangs-up.bin", PART, seed=4410)
    tls_server.reset()
    tls_server.set_faults({"path": "/files/hangs-up.bin", "times": None,
                           "action": "no_response", "hold": 0, "reset": reset})  # fmt: skip
    with contextlib.ExitStack() as stack:
        if proxy_kind == "scripted":
            proxy_url = stack.enter_context(ForwardProxy()).url
        else:
            proxy_url = stack.enter_context(start_tinyproxy(tmp_path / "proxy")).url
        settings = fast_settings(proxy=proxy_url, trust_env=False, ca_bundle=pki.ca_pem, retries=1)
        with pytest.raises(ConnectionFailed) as caught:
            Downloader(settings).download(tls_server.url("hangs-up.bin"), tmp_path / "out")
    said = str(caught.value)  # a reset is relayed as a close by the proxy, or as a reset
    assert said.startswith(f"connection to 127.0.0.1 port {tls_server.port} "), said
    assert "proxy" not in said, said
    assert caught.value.retryable and tls_server.stats()["requests"] == 2


# What a server that is no HTTP proxy says first: it will not start to speak HTTP.
NOT_HTTP = {"ssh": b"SSH-2.0-OpenSSH_9.6\r\n", "socks5": b"\x05\xff",
            "socks4": b"\x00\x5b\x00\x00\x00\x00\x00\x00"}  # fmt: skip


@pytest.mark.parametrize("answer", NOT_HTTP.values(), ids=NOT_HTTP.keys())
@pytest.mark.parametrize("route", ["forwarded", "tunnelled"])
def test_a_proxy_that_speaks_no_http_is_asked_once_naming_the_proxy(
    answer: bytes, route: str, origins: dict[str, str], server: ServerHandle,
    tls_server: ServerHandle, pki: PKI, tmp_path: Path,
) -> None:  # fmt: skip
    """A SOCKS or SSH server given as the proxy: no retry makes it speak HTTP, so one
    attempt, one line naming the proxy and what it is not (it was retried with backoff,
    and a forwarded request's failure named the server)."""
    with ForwardProxy(refusals=[answer] * 10) as proxy, pytest.raises(ConnectionFailed) as caught:
        Downloader(_settings(proxy.url, pki)).download(origins[route], tmp_path / "out")
    said = str(caught.value)
    assert said.startswith(f"proxy 127.0.0.1 port {proxy.port} does not speak HTTP"), said
    assert not caught.value.retryable and caught.value.exit_code == EXIT_NETWORK
    assert proxy.forwarded == 1, proxy.seen
    assert (server.stats()["requests"], tls_server.stats()["requests"]) == (0, 0)
