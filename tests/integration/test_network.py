"""Network options end to end: TLS verification, client certificates, proxies, credentials.

Real sockets only: the fault server (plain and TLS, with a trustme CA), a forwarding proxy on
loopback (``faultserver/proxy.py``) and, for client certificates, a tiny TLS server of our own.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from urllib3.exceptions import InsecureRequestWarning

from blobdl import Downloader, Settings
from blobdl.cli import build_parser, settings_from
from blobdl.errors import EXIT_NETWORK, EXIT_OK, EXIT_USAGE, BlobdlError, TLSError, UsageError
from faultserver.proxy import ForwardProxy
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import PART, REPO, Blob, fast_settings, sha256_file
from tests.integration.conftest import PKI

Make = Callable[..., Blob]
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
SECRET = "Bearer s3cret"


@pytest.fixture(scope="module")
def tls_blob(tls_server: ServerHandle) -> Blob:
    size = 3 * PART + 17
    digest = make_blob(tls_server.root, "tls.bin", size, seed=7)
    return Blob("tls.bin", size, digest, tls_server.url("tls.bin"))


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see exactly the proxy variables they set, never the developer's."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as running:
        yield running


def fetch(url: str, dest: Path, **overrides: Any) -> str:
    """Download ``url`` to ``dest`` with fast settings; return the file's sha256."""
    Downloader(fast_settings(**overrides)).download(url, dest)
    return sha256_file(dest)


def run_cli(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """blobdl's CLI without the developer's proxy variables, with ``variables``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
    env.update(variables)
    fast = ["--min-part-size", "64KiB", "--max-part-size", "64KiB", "--connections", "4"]
    return subprocess.run(
        [sys.executable, "-m", "blobdl", *args, *fast],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )


def header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


# --------------------------------------------------------------------------- TLS


def test_https_verified_with_ca_bundle(tls_blob: Blob, pki: PKI, tmp_path: Path) -> None:
    assert fetch(tls_blob.url, tmp_path / "out", ca_bundle=pki.ca_pem) == tls_blob.sha256


@pytest.mark.parametrize("trust", ["system", "another-ca"])
def test_https_refused_without_the_ca_fails_fast_with_tls_error(
    tls_server: ServerHandle, tls_blob: Blob, tmp_path: Path, trust: str
) -> None:
    tls_server.reset()
    bundle = None
    if trust == "another-ca":
        bundle = str(tmp_path / "other-ca.pem")
        trustme.CA().cert_pem.write_to_path(bundle)
    # A single retry would sleep at least 2.5 s: the timing proves there was none.
    settings = fast_settings(retries=6, backoff_unit=5.0, max_backoff=5.0, ca_bundle=bundle)
    started = time.monotonic()
    with pytest.raises(TLSError) as caught:
        Downloader(settings).download(tls_blob.url, tmp_path / "out")
    assert time.monotonic() - started < 2.0
    assert caught.value.exit_code == EXIT_NETWORK and not caught.value.retryable
    assert "not trusted" in str(caught.value)
    assert tls_server.stats()["requests"] == 0  # no request ever got past a handshake
    assert not (tmp_path / "out").exists()


def test_https_insecure_is_accepted_without_warnings(tls_blob: Blob, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        digest = fetch(tls_blob.url, tmp_path / "out", verify_tls=False)
    assert digest == tls_blob.sha256
    assert not [w for w in seen if issubclass(w.category, InsecureRequestWarning)]


def test_unreadable_ca_bundle_is_a_usage_error(tls_blob: Blob, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(UsageError, match="CA bundle"):
        fetch(tls_blob.url, tmp_path / "out", ca_bundle=str(tmp_path / "missing.pem"))
    assert time.monotonic() - started < 2.0  # not retried as a connection failure


@pytest.mark.parametrize(
    ("flags", "code"),
    [
        (["--ca-bundle", "CA"], EXIT_OK),
        ([], EXIT_NETWORK),
        (["--no-verify-tls"], EXIT_OK),
        (["--insecure"], EXIT_OK),
    ],
    ids=["ca-bundle", "untrusted", "no-verify-tls", "insecure-deprecated"],
)
def test_cli_https(tls_blob: Blob, pki: PKI, tmp_path: Path, flags: list[str], code: int) -> None:
    flags = [pki.ca_pem if f == "CA" else f for f in flags]
    quiet = [] if "--insecure" in flags else ["-q"]  # -q prints errors only, warnings not
    run = run_cli(tls_blob.url, "-o", str(tmp_path / "out"), *quiet, *flags)
    assert run.returncode == code, run.stderr
    # One worker or probe warning would show here: urllib3 prints SecurityWarnings always.
    assert "InsecureRequestWarning" not in run.stderr
    # The download's --insecure is a released option: it still works, and warns once.
    deprecated = [line for line in run.stderr.splitlines() if "deprecated" in line]
    if "--insecure" in flags:
        assert deprecated == [
            "blobdl: warning: --insecure is deprecated for downloads: use --no-verify-tls "
            "(it means the same here; 'blobdl pull --insecure' means plain HTTP)"
        ], run.stderr
    else:
        assert not deprecated, run.stderr
    if code == EXIT_OK:
        assert sha256_file(tmp_path / "out") == tls_blob.sha256
    else:
        assert "TLS certificate of 127.0.0.1 not trusted" in run.stderr


# --------------------------------------------------------------------------- client certificates


class ClientCertServer:
    """TLS on loopback that demands a client certificate signed by the test CA, and answers
    every request with one fixed 200 (no ranges: blobdl falls back to one whole GET)."""

    def __init__(self, pki: PKI, body: bytes) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        context.load_verify_locations(pki.ca_pem)
        context.verify_mode = ssl.CERT_REQUIRED
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        self.response = head.encode() + body
        self.peers: list[str] = []  # the client certificate's names, one per request answered
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(5)
                try:
                    with context.wrap_socket(self.request, server_side=True) as tls:
                        outer._answer(tls)
                except OSError:
                    pass  # refused handshakes (no certificate) end here

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = False
        self.server.block_on_close = True
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/blob"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self.thread.start()

    def _answer(self, tls: ssl.SSLSocket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(4096)
            if not chunk:
                return
            data += chunk
        names = (tls.getpeercert() or {}).get("subjectAltName", ())
        self.peers.append(",".join(str(value) for _kind, value in names))
        tls.sendall(self.response)

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join()
        self.server.server_close()


@pytest.fixture
def cert_server(pki: PKI) -> Iterator[tuple[ClientCertServer, str]]:
    body = os.urandom(3 * PART + 5)
    server = ClientCertServer(pki, body)
    yield server, hashlib.sha256(body).hexdigest()
    server.close()


@pytest.mark.parametrize("layout", ["separate-key", "combined"])
def test_client_certificate_is_presented(
    cert_server: tuple[ClientCertServer, str], pki: PKI, tmp_path: Path, layout: str
) -> None:
    server, digest = cert_server
    if layout == "combined":
        cert = {"client_cert": pki.client_combined}
    else:
        cert = {"client_cert": pki.client_cert, "client_key": pki.client_key}
    assert fetch(server.url, tmp_path / "out", ca_bundle=pki.ca_pem, **cert) == digest
    assert server.peers and set(server.peers) == {"client.blobdl.test"}


def test_a_client_certificate_goes_to_the_server_never_to_an_https_proxy(
    cert_server: tuple[ClientCertServer, str], pki: PKI, tmp_path: Path
) -> None:
    """``--client-cert`` is the user's identity at the server: through an https proxy that
    asks every client for a certificate, the proxy's handshake is shown none, while the
    server's, inside the tunnel, is shown it."""
    server, digest = cert_server
    with ForwardProxy(tls=(pki.server_cert, pki.server_key), ask_cert=pki.ca_pem) as proxy:
        got = fetch(server.url, tmp_path / "out", proxy=proxy.url, ca_bundle=pki.ca_pem,
                    trust_env=False, client_cert=pki.client_cert,
                    client_key=pki.client_key)  # fmt: skip
        shown = list(proxy.client_certs)
    assert got == digest and proxy.methods() == {"CONNECT"}
    assert server.peers and set(server.peers) == {"client.blobdl.test"}
    assert shown and shown == [{}] * len(shown), shown  # asked every time, shown nothing


def test_without_client_certificate_the_server_refuses(
    cert_server: tuple[ClientCertServer, str], pki: PKI, tmp_path: Path
) -> None:
    server, _ = cert_server
    with pytest.raises(BlobdlError):
        fetch(server.url, tmp_path / "out", ca_bundle=pki.ca_pem, retries=0)
    assert server.peers == []


# --------------------------------------------------------------------------- proxies


def test_proxy_setting_forwards_every_http_request(
    proxy: ForwardProxy, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    blob = make(4 * PART + 3)
    assert fetch(blob.url, tmp_path / "out", proxy=proxy.url) == blob.sha256
    assert proxy.methods() == {"GET"}
    # Probe and every part: all of them came through the proxy.
    assert proxy.forwarded == server.stats()["requests"] >= 5


def test_http_proxy_from_environment_and_no_proxy(
    proxy: ForwardProxy, make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = make(2 * PART)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    assert fetch(blob.url, tmp_path / "via", resume=False) == blob.sha256
    through = proxy.forwarded
    assert through >= 3

    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert fetch(blob.url, tmp_path / "direct", resume=False) == blob.sha256
    assert proxy.forwarded == through


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True


@pytest.fixture
def ipv6_server(tmp_path: Path) -> Iterator[tuple[str, str, list[str]]]:
    """A plain file server on [::1] (no ranges: one whole-body GET): its URL for a 64 KiB
    file, the file's sha256, and the paths it was asked for."""
    body = os.urandom(64 * 1024)
    (tmp_path / "v6.bin").write_bytes(body)
    asked: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def do_GET(self) -> None:
            asked.append(self.path)
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    try:
        server = _IPv6Server(("::1", 0), Handler)
    except OSError:
        pytest.skip("no IPv6 loopback")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        url = f"http://[::1]:{server.server_address[1]}/v6.bin"
        yield url, hashlib.sha256(body).hexdigest(), asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("entry", ["::1", "[::1]", " ::1 "])
def test_no_proxy_naming_an_ipv6_host_bypasses_the_proxy(
    proxy: ForwardProxy,
    ipv6_server: tuple[str, str, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    entry: str,
) -> None:
    """``NO_PROXY=localhost,127.0.0.1,::1`` is the usual spelling (curl and requests honour
    it): the host of ``http://[::1]:port/`` is ``::1``, brackets are only URL syntax."""
    url, digest, asked = ipv6_server
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", f"localhost,127.0.0.1,{entry}")
    assert fetch(url, tmp_path / "out") == digest
    assert proxy.seen == [] and asked


def test_trust_env_false_leaves_only_the_proxy_setting(
    proxy: ForwardProxy, make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = make(PART)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    assert fetch(blob.url, tmp_path / "a", trust_env=False) == blob.sha256
    assert proxy.forwarded == 0  # the environment's proxy was ignored

    # NO_PROXY exempts hosts from an explicit proxy too (as curl does) ...
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert fetch(blob.url, tmp_path / "b", proxy=proxy.url) == blob.sha256
    assert proxy.forwarded == 0
    # ... unless the environment is not trusted.
    assert fetch(blob.url, tmp_path / "c", proxy=proxy.url, trust_env=False) == blob.sha256
    assert proxy.forwarded >= 2


@pytest.mark.parametrize("source", ["setting", "environment"])
def test_https_through_the_proxy_with_connect(
    proxy: ForwardProxy,
    tls_blob: Blob,
    pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    overrides: dict[str, Any] = {"ca_bundle": pki.ca_pem}
    if source == "setting":
        overrides["proxy"] = proxy.url
    else:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # the wrong scheme: unused
    assert fetch(tls_blob.url, tmp_path / "out", **overrides) == tls_blob.sha256
    assert proxy.methods() == {"CONNECT"} and proxy.forwarded >= 2
    assert {seen.target for seen in proxy.seen} == {tls_blob.url.split("/")[2]}


def test_through_an_https_proxy_tunnelled_inside_its_tls_and_forwarded_over_it(
    server: ServerHandle, make: Make, tls_blob: Blob, pki: PKI, tmp_path: Path
) -> None:
    """The proxy's TLS is verified as a server's is; an https origin is tunnelled inside it
    (TLS in TLS: the set-up bounded through the proxy's own socket), an http one forwarded
    over it. Exact bytes both ways."""
    blob = make(2 * PART)
    with ForwardProxy(tls=(pki.server_cert, pki.server_key)) as proxy:
        via = {"proxy": proxy.url, "ca_bundle": pki.ca_pem, "trust_env": False}
        assert fetch(tls_blob.url, tmp_path / "tls", **via) == tls_blob.sha256
        assert fetch(blob.url, tmp_path / "plain", **via) == blob.sha256
    assert proxy.methods() == {"CONNECT", "GET"}


def test_proxy_credentials_become_proxy_authorization(
    proxy: ForwardProxy,
    server: ServerHandle,
    make: Make,
    tls_server: ServerHandle,
    tls_blob: Blob,
    pki: PKI,
    tmp_path: Path,
) -> None:
    tls_server.reset()
    blob = make(2 * PART)
    via = proxy.url_with("ann:p%40ss")  # percent-encoded '@' in the password
    assert fetch(blob.url, tmp_path / "plain", proxy=via) == blob.sha256
    assert fetch(tls_blob.url, tmp_path / "tls", proxy=via, ca_bundle=pki.ca_pem) == (
        tls_blob.sha256
    )
    expected = "Basic " + base64.b64encode(b"ann:p@ss").decode()
    assert proxy.methods() == {"GET", "CONNECT"}
    assert {seen.proxy_authorization for seen in proxy.seen} == {expected}
    # The origin servers never see the proxy's credentials.
    for origin in (server, tls_server):
        recorded = origin.stats()["headers"]
        assert recorded and all(header(h, "Proxy-Authorization") is None for h in recorded)


def test_probe_redirect_across_proxy_choices(
    proxy: ForwardProxy,
    server: ServerHandle,
    make: Make,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """127.0.0.1 goes through the proxy, localhost does not: one pool must serve both."""
    blob = make(3 * PART)
    target = f"http://localhost:{server.port}/files/{blob.name}"
    server.set_faults(
        {"path": "/files/start", "action": "status", "status": 302, "headers": {"Location": target}}
    )
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert fetch(server.url("start"), tmp_path / "out") == blob.sha256
    assert [seen.target for seen in proxy.seen] == [server.url("start")]
    hosts = [header(h, "Host") for h in server.stats()["headers"]]
    assert hosts.count(f"localhost:{server.port}") >= 4  # probe + 3 parts, direct


@pytest.mark.parametrize("hop", ["probe", "part"])
def test_credentials_a_server_puts_in_a_location_are_dropped_never_sent_nor_shown(
    proxy: ForwardProxy, server: ServerHandle, make: Make, tmp_path: Path, hop: str
) -> None:
    """A ``Location`` holding ``user:pass@`` (a server's own, never the user's) is followed
    without them (``strip_userinfo``): not as Basic auth, and not in the absolute URI a
    forwarded request names to the proxy, where urllib3 would put the whole URL; nor in an
    error (a part cut after the redirect names the URL it was asked of)."""
    blob = make(4 * PART, seed=61)
    server.reset()
    located = server.url(blob.name).replace("http://", "http://mallory:l0cati0n-pw@")
    # The probe's GET (of the target, for the probe's redirect) is answered whole; the parts
    # after it are cut, so that the download fails and its error names a URL.
    cut = {"path": f"/files/{blob.name}", "action": "close_after", "bytes": 1000,
           "skip": 1, "times": None}  # fmt: skip
    if hop == "probe":
        start = server.url("start.bin")
        server.set_faults({"path": "/files/start.bin", "action": "redirect", "status": 302,
                           "location": located, "times": None}, cut)  # fmt: skip
    else:  # the first part's GET is redirected to the same blob (its own GET then cut)
        start = blob.url
        server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": 1,
                           "action": "redirect", "location": located}, cut)  # fmt: skip
    events: list[object] = []
    downloader = Downloader(fast_settings(proxy=proxy.url, retries=0, trust_env=False))
    with pytest.raises(BlobdlError) as failed:
        downloader.download(start, tmp_path / "out", on_event=events.append)
    said = f"{failed.value} {failed.value!r} " + " ".join(map(repr, events))
    assert "mallory" not in said and "l0cati0n-pw" not in said
    # Every request went through the proxy, the redirect's target among them, none naming
    # the server's credentials; the proxy passed no Authorization on either.
    targets = [seen.target for seen in proxy.seen]
    assert any(t.endswith(f"/files/{blob.name}") for t in targets), targets
    assert all("mallory" not in t and "l0cati0n-pw" not in t for t in targets), targets
    basic = base64.b64encode(b"mallory:l0cati0n-pw").decode()
    assert basic not in str(server.stats()["headers"]) + str(proxy.seen)


def test_unusable_proxies_are_usage_errors(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bad in ("socks5://127.0.0.1:1080", "http://", "http://h:99999", "ftp://h:21", "h:x"):
        with pytest.raises(UsageError, match="proxy"):
            Settings(proxy=bad)
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1080")
    with pytest.raises(UsageError, match="proxy") as caught:
        fetch(make(PART).url, tmp_path / "out")
    assert caught.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize("given", ["--proxy", "HTTP_PROXY", "http_proxy"])
def test_a_proxy_without_a_scheme_is_http_as_an_option_as_in_the_environment(
    given: str, proxy: ForwardProxy, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """``host:port`` means http://host:port, as curl reads it, wherever it is given (the
    option refused what the variables took)."""
    blob = make(2 * PART)
    bare = f"127.0.0.1:{proxy.port}"
    out = tmp_path / "out"
    if given == "--proxy":
        done = run_cli(blob.url, "-o", str(out), "--proxy", bare)
    else:
        done = run_cli(blob.url, "-o", str(out), **{given: bare})
    assert done.returncode == EXIT_OK, done.stderr
    assert sha256_file(out) == blob.sha256
    assert proxy.forwarded == server.stats()["requests"] >= 3


def test_a_proxy_without_a_scheme_tunnels_https_and_carries_its_credentials(
    proxy: ForwardProxy, tls_blob: Blob, pki: PKI, tmp_path: Path
) -> None:
    bare = f"alice:pw-of-the-proxy@127.0.0.1:{proxy.port}"
    digest = fetch(tls_blob.url, tmp_path / "out", proxy=bare, ca_bundle=pki.ca_pem)
    assert digest == tls_blob.sha256
    assert proxy.methods() == {"CONNECT"}
    sent = {seen.proxy_authorization for seen in proxy.seen}
    assert sent == {"Basic " + base64.b64encode(b"alice:pw-of-the-proxy").decode()}


@pytest.mark.parametrize("given", ["--proxy", "HTTP_PROXY"])
def test_a_proxy_scheme_blobdl_does_not_speak_is_refused_saying_which_it_does(
    given: str, make: Make, tmp_path: Path
) -> None:
    url = make(PART).url
    bad = "ftp://bob:pw-not-shown@127.0.0.1:21"
    if given == "--proxy":
        done = run_cli(url, "-o", str(tmp_path / "out"), "--proxy", bad)
    else:
        done = run_cli(url, "-o", str(tmp_path / "out"), **{given: bad})
    assert done.returncode == EXIT_USAGE, done.stderr
    [line] = done.stderr.splitlines()
    assert "proxy" in line and "ftp" in line and "http or https" in line, line
    assert "pw-not-shown" not in line, line
    assert ("$HTTP_PROXY" in line) == (given == "HTTP_PROXY"), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "SSL_CERT_DIR"])
@pytest.mark.parametrize("wrong", ["missing", "the other kind"])
def test_a_ca_variable_naming_a_missing_path_is_one_line_naming_both(
    variable: str, wrong: str, tls_blob: Blob, tls_server: ServerHandle, tmp_path: Path
) -> None:
    """OpenSSL skips such a variable without a word, and the download failed as a
    certificate "not trusted", naming neither: said as a bad --ca-bundle is, before any
    connection. A file where a folder is meant, or a folder for a file, names nothing too."""
    tls_server.reset()
    path = tmp_path / "no-such-ca"
    if wrong == "the other kind":
        path = tmp_path if variable == "SSL_CERT_FILE" else Path(__file__)
    done = run_cli(tls_blob.url, "-o", str(tmp_path / "out"), **{variable: str(path)})
    assert done.returncode == EXIT_USAGE, done.stderr
    [line] = done.stderr.splitlines()
    assert f"${variable}" in line and str(path) in line, line
    assert tls_server.stats()["requests"] == 0


def test_a_ca_file_variable_holding_no_certificate_is_named(
    tls_blob: Blob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))
    with pytest.raises(UsageError) as caught:
        fetch(tls_blob.url, tmp_path / "out")
    assert "$SSL_CERT_FILE" in str(caught.value) and str(empty) in str(caught.value)


def test_ca_variables_naming_the_right_ca_are_trusted(
    tls_blob: Blob, pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", pki.ca_pem)
    assert fetch(tls_blob.url, tmp_path / "out") == tls_blob.sha256
    done = run_cli(tls_blob.url, "-o", str(tmp_path / "cli"), SSL_CERT_FILE=pki.ca_pem)
    assert done.returncode == EXIT_OK, done.stderr


def test_ca_folders_are_checked_one_by_one_as_openssl_splits_them(
    tls_blob: Blob, pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_DIR holds folders separated by os.pathsep: a list of folders that are there
    is trusted, and a missing one among them is the one named."""
    there, missing = tmp_path / "there", tmp_path / "missing"
    there.mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", pki.ca_pem)
    monkeypatch.setenv("SSL_CERT_DIR", f"{there}{os.pathsep}{tmp_path}")
    assert fetch(tls_blob.url, tmp_path / "out") == tls_blob.sha256
    monkeypatch.setenv("SSL_CERT_DIR", f"{there}{os.pathsep}{missing}")
    with pytest.raises(UsageError) as caught:
        fetch(tls_blob.url, tmp_path / "refused")
    assert f"$SSL_CERT_DIR {str(missing)!r}: no such directory" in str(caught.value)


def test_a_caller_that_changes_the_ca_variables_gets_the_store_they_name(
    tls_blob: Blob, pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context built for one SSL_CERT_FILE is not the one another calls for, in one
    process: trusted with the right CA, then refused for a file with none in it."""
    monkeypatch.setenv("SSL_CERT_FILE", pki.ca_pem)
    assert fetch(tls_blob.url, tmp_path / "out") == tls_blob.sha256
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))
    with pytest.raises(UsageError) as caught:
        fetch(tls_blob.url, tmp_path / "refused")
    assert "$SSL_CERT_FILE" in str(caught.value) and str(empty) in str(caught.value)


def test_ca_variables_are_not_read_with_a_ca_bundle_nor_without_verification(
    tls_blob: Blob, pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ca-bundle replaces the default store (OpenSSL never reads the variables then)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "missing"))
    assert fetch(tls_blob.url, tmp_path / "a", ca_bundle=pki.ca_pem) == tls_blob.sha256
    assert fetch(tls_blob.url, tmp_path / "b", verify_tls=False) == tls_blob.sha256


def test_a_socks_proxy_from_all_proxy_is_refused_saying_how_to_go_on(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ALL_PROXY=socks5://...`` (set for curl, or by ``ssh -D`` users) is read now: the
    error names the variable, says SOCKS is what is missing, and how to go on without it."""
    monkeypatch.setenv("ALL_PROXY", "socks5h://127.0.0.1:1080")
    with pytest.raises(UsageError) as caught:
        fetch(make(PART).url, tmp_path / "out")
    said = str(caught.value)
    assert "$ALL_PROXY" in said and "SOCKS proxies are not supported" in said, said
    assert "--no-env-proxy" in said and "--proxy" in said, said


def test_cli_network_flags_map_to_settings(proxy: ForwardProxy, make: Make, tmp_path: Path) -> None:
    flags = "--proxy http://p:3128 --no-env-proxy --client-cert c.pem --client-key k.pem"
    args = build_parser().parse_args(["https://x/y", *flags.split(), "--ca-bundle", "ca.pem"])
    settings = settings_from(args)
    assert (settings.proxy, settings.trust_env) == ("http://p:3128", False)
    assert (settings.client_cert, settings.client_key, settings.ca_bundle) == (
        "c.pem",
        "k.pem",
        "ca.pem",
    )
    defaults = settings_from(build_parser().parse_args(["https://x/y"]))
    assert (defaults.proxy, defaults.trust_env, defaults.client_cert) == (None, True, None)

    blob = make(2 * PART)
    run = run_cli(blob.url, "-o", str(tmp_path / "out"), "-q", "--proxy", proxy.url)
    assert run.returncode == EXIT_OK, run.stderr
    assert sha256_file(tmp_path / "out") == blob.sha256 and proxy.forwarded >= 3


def test_client_key_without_certificate_is_refused() -> None:
    with pytest.raises(UsageError, match="client_key"):
        Settings(client_key="k.pem")


# --------------------------------------------------------------------------- credentials


def test_authorization_is_not_sent_to_another_host(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    blob = make(3 * PART)
    target = f"http://localhost:{server.port}/files/{blob.name}"
    server.set_faults(
        {"path": "/files/start", "action": "status", "status": 302, "headers": {"Location": target}}
    )
    headers = (("Authorization", SECRET), ("Cookie", "session=1"), ("X-Trace", "t1"),
               ("Accept", "*/*"))  # fmt: skip
    assert fetch(server.url("start"), tmp_path / "out", headers=headers) == blob.sha256
    seen = server.stats()["headers"]
    first, rest = seen[0], seen[1:]
    assert header(first, "Host") == f"127.0.0.1:{server.port}"
    assert header(first, "Authorization") == SECRET
    # The probe's second hop and every worker's GET went to localhost: no credentials there,
    # nor any custom header (it may be a key), while harmless headers still are.
    assert len(rest) >= 4
    for h in rest:
        assert header(h, "Host") == f"localhost:{server.port}"
        assert header(h, "Authorization") is None and header(h, "Cookie") is None
        assert header(h, "X-Trace") is None
        assert header(h, "Accept") == "*/*"


def test_authorization_follows_a_same_host_redirect(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    blob = make(3 * PART)
    url = server.route(f"/redirect/2/{blob.name}")
    headers = (("Authorization", SECRET),)
    assert fetch(url, tmp_path / "out", headers=headers) == blob.sha256
    seen = server.stats()["headers"]
    assert len(seen) >= 6  # two hops, the final probe, three parts
    assert all(header(h, "Authorization") == SECRET for h in seen)


def test_a_header_named_in_another_case_replaces_ours_never_goes_beside_it(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """Chrome's "Copy as cURL" writes names in lower case: a user's ``user-agent``
    replaces blobdl's ``User-Agent`` as ``User-Agent`` would, on the probe and every part,
    instead of reaching the server as a second line beside ours (so does an
    ``accept-encoding: identity`` kept from a curl command: it says what ours says)."""
    blob = make(3 * PART)
    given = (("user-agent", "curl/8.5.0"), ("accept-encoding", "identity"), ("accept", "*/*"))
    assert fetch(blob.url, tmp_path / "out", headers=given) == blob.sha256
    recorded = server.stats()["headers"]
    assert len(recorded) >= 4  # the probe and 3 parts
    for seen in recorded:
        lines = [(name.lower(), value) for name, value in seen.items()]
        assert [value for name, value in lines if name == "user-agent"] == ["curl/8.5.0"], seen
        assert [value for name, value in lines if name == "accept-encoding"] == ["identity"]
