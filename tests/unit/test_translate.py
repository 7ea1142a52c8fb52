"""Errors are translated at the HTTP edge by their type, never by their message text."""

from __future__ import annotations

import errno
import http.client
import os
import re
import socket
import ssl

import pytest
import urllib3
from urllib3.exceptions import (
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)

from blobdl.errors import (
    EXIT_NETWORK,
    BlobdlError,
    ConnectionFailed,
    ProxyAuthRequired,
    ProxyRefused,
    TLSError,
)
from blobdl.http._translate import proxy_errors, translate_errors

URL = "https://h/blob"


def verification(message: str) -> ssl.SSLCertVerificationError:
    return ssl.SSLCertVerificationError(1, message)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (verification("[SSL: CERTIFICATE_VERIFY_FAILED] self-signed"), TLSError),
        (verification("any words at all"), TLSError),  # the type says it, not the text
        (SSLError(verification("wrapped by urllib3")), TLSError),
        (ssl.SSLError(1, "hostname in a message is no verification failure"), ConnectionFailed),
        (SSLError("TLS alert: hostname, CERTIFICATE_VERIFY_FAILED (text only)"), ConnectionFailed),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), ConnectionFailed),
    ],
)
def test_tls_errors_are_classified_by_type(raised: BaseException, expected: type) -> None:
    with pytest.raises(ConnectionFailed) as caught, translate_errors(URL):
        raise raised
    assert caught.type is expected  # TLSError (final) is a ConnectionFailed (retried) too


def _caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("raised", "words"),
    [
        (
            _caused(
                NewConnectionError("conn", "Failed"),
                ConnectionRefusedError(111, "Connection refused"),
            ),
            "Failed to connect to h port 443: Connection refused",
        ),
        (
            NameResolutionError("h", "conn", socket.gaierror(-2, "Name or service not known")),
            "Could not resolve host: h",
        ),
        (
            ProtocolError("Connection aborted.", http.client.RemoteDisconnected("x")),
            "connection to h port 443 closed early",
        ),
        (http.client.IncompleteRead(b"", 10), "connection to h port 443 closed early"),
        (
            ConnectionResetError(104, "Connection reset by peer"),
            "connection to h port 443 failed: Connection reset by peer",
        ),
        (ReadTimeoutError(None, URL, "Read timed out."), "no answer from h port 443: timed out"),  # type: ignore[arg-type]
        (TimeoutError("timed out"), "no answer from h port 443: timed out"),
        (http.client.BadStatusLine("garbage"), "malformed response from h port 443: "),
        (verification("self-signed"), "TLS certificate of h not trusted: "),
        (
            ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
            "TLS error with h port 443: ",
        ),
    ],
)
def test_errors_are_told_in_words_naming_the_host(raised: BaseException, words: str) -> None:
    with pytest.raises(BlobdlError) as caught, translate_errors(URL):
        raise raised
    text = str(caught.value)
    assert text.startswith(words), text
    assert not re.search(r"[A-Z][a-z]+[A-Za-z]*(Error|Exception)\b", text), text


@pytest.mark.parametrize(
    ("answer", "final"),
    [
        ("Tunnel connection failed: 407 Proxy Authentication Required", True),
        ("Tunnel connection failed: 407 ", True),  # the reason phrase is the proxy's own
        ("Tunnel connection failed: 502 Bad Gateway", False),  # the proxy's upstream: retried
        ("Tunnel connection failed: 4070 Odd", False),
    ],
)
def test_a_proxy_refusing_connect_for_credentials_is_final_and_names_the_proxy(
    answer: str, final: bool
) -> None:
    """http.client says a CONNECT's status in words only: the one message read at the edge."""
    with pytest.raises(ConnectionFailed) as caught, proxy_errors(URL, "http://u:pw@p:3128"):
        raise ProxyError("Unable to connect to proxy", OSError(answer))
    assert isinstance(caught.value, ProxyAuthRequired) is final
    assert caught.value.retryable is not final
    assert str(caught.value).startswith("proxy p port 3128 failed: ") and "pw" not in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("status", "final"),
    [(403, True), (404, True), (405, True), (501, True), (400, True), (451, True), (511, True),
     (500, False), (502, False), (503, False), (504, False), (429, False), (408, False)],
)  # fmt: skip
def test_a_proxy_refusing_connect_by_policy_is_final_and_a_lost_upstream_is_not(
    status: int, final: bool
) -> None:
    """403/404/405/501 are the proxy's policy or what it cannot do: no retry changes them.
    A 5xx from its upstream (tinyproxy's 500 "Unable to connect", a 502, 503, 504) may pass."""
    answer = f"Tunnel connection failed: {status} Its Own Words"
    with pytest.raises(ConnectionFailed) as caught, proxy_errors(URL, "http://u:pw@p:3128"):
        raise ProxyError("Unable to connect to proxy", OSError(answer))
    assert isinstance(caught.value, ProxyRefused) is final
    assert caught.value.retryable is not final
    words = f"proxy p port 3128 refused CONNECT: {status} Its Own Words"
    assert str(caught.value).startswith(words if final else "proxy p port 3128 failed: ")


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: connecting is refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _through(proxy: str) -> BlobdlError:
    """The error of a real request through ``proxy``, translated as the pool does."""
    manager = urllib3.ProxyManager(proxy, retries=False, timeout=5)
    with pytest.raises(BlobdlError) as caught, proxy_errors(URL, proxy):
        manager.request("GET", "http://h/blob")
    return caught.value


def test_a_proxy_refusing_the_connection_is_retried_it_may_be_restarting() -> None:
    port = _closed_port()
    error = _through(f"http://127.0.0.1:{port}")
    assert error.retryable and error.exit_code == EXIT_NETWORK
    assert str(error).startswith(f"Failed to connect to proxy 127.0.0.1 port {port}: "
                                 "Connection refused")  # fmt: skip


def test_no_route_to_the_proxy_is_retried_the_network_may_come_back() -> None:
    """Linux refuses a TCP connect to a multicast address with ENETUNREACH, as it does
    when no route leads there (an interface down, a VPN gone)."""
    error = _through("http://224.0.0.1:3128")
    assert error.retryable and error.exit_code == EXIT_NETWORK
    assert str(error).startswith("Failed to connect to proxy 224.0.0.1 port 3128: "
                                 "Network is unreachable")  # fmt: skip


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
@pytest.mark.parametrize("proxy", [None, "http://p:3128"])
def test_a_connection_this_machine_forbids_is_final(code: int, proxy: str | None) -> None:
    """A local firewall (iptables OUTPUT, a cgroup's or a sandbox's rule) refuses connect()
    with EACCES or EPERM; its rule does not change between two attempts."""
    refused = _caused(NewConnectionError("conn", "Failed"), OSError(code, os.strerror(code)))
    translate = translate_errors(URL) if proxy is None else proxy_errors(URL, proxy)
    with pytest.raises(ConnectionFailed) as caught, translate:
        raise refused if proxy is None else ProxyError("Unable to connect to proxy", refused)
    assert not caught.value.retryable and caught.value.exit_code == EXIT_NETWORK
    peer = "h port 443" if proxy is None else "proxy p port 3128"
    assert str(caught.value).startswith(f"Failed to connect to {peer}: {os.strerror(code)}")
