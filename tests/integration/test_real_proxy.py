"""Downloads through tinyproxy, a forwarding proxy users run (``faultserver.proxy`` scripts
what a proxy can do wrong; this is one as it is): plain http forwarded, https tunnelled with
CONNECT and verified end to end, credentials asked for, a batch's kept connections."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl import Downloader, Item, download_many
from blobdl.errors import EXIT_NETWORK, ProxyAuthRequired
from faultserver.registry import free_port
from faultserver.serverctl import ServerHandle, make_blob
from faultserver.tinyproxy import start_tinyproxy
from tests.conftest import PART, Blob, fast_settings, run_cli, sha256_file
from tests.integration.conftest import PKI
from tests.integration.test_kept_connections import three_gets

Make = Callable[..., Blob]
AUTH = ("alice", "s3cret-of-the-proxy")


def test_a_download_through_tinyproxy_is_exact_and_every_request_went_through_it(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    blob = make(16 * PART, seed=41)
    out = tmp_path / "out"
    with start_tinyproxy(tmp_path / "proxy") as proxy:
        settings = fast_settings(proxy=proxy.url, trust_env=False, connections=4)
        Downloader(settings).download(blob.url, out)
        forwarded = proxy.requests()
    assert sha256_file(out) == blob.sha256
    seen = server.stats()["headers"]
    assert seen and all("tinyproxy" in h.get("Via", "") for h in seen), seen
    assert len(forwarded) == len(seen) and all(r.startswith("GET http://") for r in forwarded)


def test_https_through_tinyproxy_is_tunnelled_and_verified_end_to_end(
    tls_server: ServerHandle, pki: PKI, tmp_path: Path
) -> None:
    size = 8 * PART + 5
    digest = make_blob(tls_server.root, "through-tinyproxy.bin", size, seed=43)
    url = tls_server.url("through-tinyproxy.bin")
    out = tmp_path / "out"
    with start_tinyproxy(tmp_path / "proxy") as proxy:
        settings = fast_settings(proxy=proxy.url, trust_env=False, ca_bundle=pki.ca_pem,
                                 connections=4)  # fmt: skip
        Downloader(settings).download(url, out)
        tunnels = proxy.requests()
    assert sha256_file(out) == digest
    origin = url.split("/")[2]
    assert tunnels and all(r == f"CONNECT {origin}" for r in tunnels), tunnels


def test_tinyproxy_asking_for_credentials_is_named_and_answered_from_the_proxy_url(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """Without credentials: one line naming the proxy's 407, not the server. With them (in
    the proxy URL): exact bytes, and the password in no message and at no origin."""
    blob = make(4 * PART, seed=44)
    out = tmp_path / "out"
    with start_tinyproxy(tmp_path / "proxy", auth=AUTH) as proxy:
        refused = run_cli(blob.url, "-o", str(tmp_path / "refused"), "--proxy", proxy.url,
                          "--no-env-proxy", "--retries", "0")  # fmt: skip
        given = run_cli(blob.url, "-o", str(out), "--proxy", proxy.url_with(AUTH),
                        "--no-env-proxy", "--connections", "4")  # fmt: skip
    assert refused.returncode == 3, refused.stderr
    [line] = refused.stderr.splitlines()
    assert line.startswith(
        f"blobdl: error: proxy 127.0.0.1 port {proxy.port} failed: 407 Proxy Authentication "
        "Required"
    ), line
    assert given.returncode == 0, given.stderr
    assert sha256_file(out) == blob.sha256
    assert AUTH[1] not in given.stdout + given.stderr + refused.stderr
    assert not any(AUTH[1] in repr(h) for h in server.stats()["headers"])


def test_a_batch_of_small_files_through_tinyproxy_is_exact(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """Each seat keeps its connection to the proxy from one item to the next, as long as
    the proxy keeps it open."""
    blobs = [make(3000 + n, seed=50 + n) for n in range(12)]
    with start_tinyproxy(tmp_path / "proxy") as proxy:
        items = [Item(b.url, str(tmp_path / f"f{n}")) for n, b in enumerate(blobs)]
        settings = fast_settings(proxy=proxy.url, trust_env=False)
        results = download_many(items, max_connections=4, settings=settings)
        forwarded = proxy.requests()
    assert all(r.ok for r in results), results
    assert [sha256_file(tmp_path / f"f{n}") for n in range(12)] == [b.sha256 for b in blobs]
    assert len(forwarded) >= len(blobs)


def test_a_proxy_asking_for_credentials_is_asked_once_not_retried(
    server: ServerHandle, tls_server: ServerHandle, pki: PKI, make: Make, tmp_path: Path
) -> None:
    """A 407 is the proxy's final word (no retry brings the credentials it wants): the
    probe fails at once, forwarded or tunnelled, naming the proxy."""
    blob = make(2 * PART, seed=45)
    tls_blob = make_blob(tls_server.root, "asked-once.bin", 2 * PART, seed=46)
    for n, url in enumerate((blob.url, tls_server.url("asked-once.bin"))):  # forwarded, CONNECT
        with start_tinyproxy(tmp_path / f"proxy{n}", auth=AUTH) as proxy:
            settings = fast_settings(proxy=proxy.url, trust_env=False, ca_bundle=pki.ca_pem,
                                     retries=3)  # fmt: skip
            with pytest.raises(ProxyAuthRequired, match=f"proxy 127.0.0.1 port {proxy.port}"):
                Downloader(settings).download(url, tmp_path / "out")
            asked = proxy.requests()
        assert len(asked) == 1, asked
    assert tls_blob and not (tmp_path / "out").exists()


def test_a_407_on_a_part_through_a_proxy_fails_the_download_at_once(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """The proxy let the probe through, then asks for credentials: the part is not retried."""
    blob = make(2 * PART, seed=47)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None,
                       "action": "status", "status": 407,
                       "headers": {"Proxy-Authenticate": "Basic realm=p"}})  # fmt: skip
    with start_tinyproxy(tmp_path / "proxy") as proxy:
        settings = fast_settings(proxy=proxy.url, trust_env=False, connections=1, retries=3)
        with pytest.raises(ProxyAuthRequired) as caught:
            Downloader(settings).download(blob.url, tmp_path / "out")
    assert caught.value.exit_code == EXIT_NETWORK and not caught.value.retryable
    assert server.stats()["requests"] == 2  # the probe and the one part request


def _proxy_env(**variables: str) -> dict[str, str]:
    """The environment without any proxy variable of the user's, and with ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return {**env, **variables}


@pytest.mark.parametrize("spelling", ["ALL_PROXY", "all_proxy"])
def test_all_proxy_carries_every_scheme_without_a_variable_of_its_own(
    spelling: str, server: ServerHandle, make: Make, tls_server: ServerHandle, pki: PKI,
    tmp_path: Path,
) -> None:  # fmt: skip
    """As curl reads it: http forwarded, https tunnelled, both through ALL_PROXY's proxy."""
    blob = make(2 * PART, seed=45)
    make_blob(tls_server.root, "all-proxy.bin", 2 * PART, seed=46)
    tls_url = tls_server.url("all-proxy.bin")
    with start_tinyproxy(tmp_path / "proxy") as proxy:
        env = _proxy_env(**{spelling: proxy.url})
        plain = run_cli(blob.url, "-o", str(tmp_path / "plain"), env=env)
        tls = run_cli(tls_url, "-o", str(tmp_path / "tls"), "--ca-bundle", pki.ca_pem, env=env)
        seen = proxy.requests()
    assert plain.returncode == 0, plain.stderr
    assert tls.returncode == 0, tls.stderr
    assert f"GET {blob.url}" in seen and f"CONNECT {tls_url.split('/')[2]}" in seen, seen


def test_a_scheme_variable_comes_before_all_proxy_and_no_proxy_still_holds(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    blob = make(PART, seed=47)
    with start_tinyproxy(tmp_path / "proxy") as proxy:
        closed = f"http://127.0.0.1:{free_port()}"  # ALL_PROXY's: never used
        env = _proxy_env(http_proxy=proxy.url, ALL_PROXY=closed)
        through = run_cli(blob.url, "-o", str(tmp_path / "through"), env=env)
        env = _proxy_env(ALL_PROXY=closed, NO_PROXY="localhost,127.0.0.1")
        direct = run_cli(blob.url, "-o", str(tmp_path / "direct"), env=env)
        seen = proxy.requests()
    assert through.returncode == 0, through.stderr
    assert direct.returncode == 0, direct.stderr
    assert seen and all(r == f"GET {blob.url}" for r in seen), seen


def test_no_proxy_with_a_leading_dot_is_no_part_of_an_ip_address(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """``.0.0.1`` would be a domain suffix; 127.0.0.1 is an address: its requests go through."""
    blob = make(PART, seed=48)
    with start_tinyproxy(tmp_path / "proxy") as proxy:
        env = _proxy_env(http_proxy=proxy.url, NO_PROXY=".0.0.1,.1")
        done = run_cli(blob.url, "-o", str(tmp_path / "out"), env=env)
        seen = proxy.requests()
    assert done.returncode == 0, done.stderr
    assert seen and all(r == f"GET {blob.url}" for r in seen), seen


@pytest.mark.parametrize(
    ("policy", "answer"),
    [
        (["ConnectPort 443"], "403 Access violation"),  # tunnels to port 443 only
        (['Filter "{filter}"', "FilterDefaultDeny Yes"], "403 Filtered"),  # other hosts only
    ],
)
def test_a_tunnel_tinyproxys_policy_refuses_is_asked_once_naming_the_proxy(
    policy: list[str], answer: str, tls_server: ServerHandle, tmp_path: Path
) -> None:
    """The proxy's policy holds for the next attempt too: one CONNECT, one line, exit 3."""
    make_blob(tls_server.root, "by-policy.bin", 2 * PART, seed=48)
    allowed = tmp_path / "allowed"
    allowed.write_text("^example\\.invalid$\n")
    directives = [line.format(filter=allowed) for line in policy]
    with start_tinyproxy(tmp_path / "proxy", directives=directives) as proxy:
        refused = run_cli(tls_server.url("by-policy.bin"), "-o", str(tmp_path / "out"),
                          "--proxy", proxy.url, "--no-env-proxy", "--retries", "3")  # fmt: skip
        asked = proxy.requests()
    assert refused.returncode == EXIT_NETWORK, refused.stderr
    [line] = refused.stderr.splitlines()
    assert line.startswith(
        f"blobdl: error: proxy 127.0.0.1 port {proxy.port} refused CONNECT: {answer}"
    ), line
    assert asked == [f"CONNECT {tls_server.url('').split('/')[2]}"], asked


def test_a_request_tinyproxys_filter_refuses_is_asked_once(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """Forwarded, the proxy's 403 reads as the server's would: final all the same."""
    blob = make(2 * PART, seed=49)
    allowed = tmp_path / "allowed"
    allowed.write_text("^example\\.invalid$\n")
    directives = [f'Filter "{allowed}"', "FilterDefaultDeny Yes"]
    with start_tinyproxy(tmp_path / "proxy", directives=directives) as proxy:
        refused = run_cli(blob.url, "-o", str(tmp_path / "out"), "--proxy", proxy.url,
                          "--no-env-proxy", "--retries", "3")  # fmt: skip
        asked = proxy.requests()
    assert refused.returncode == EXIT_NETWORK, refused.stderr
    assert refused.stderr.splitlines() == [f"blobdl: error: HTTP 403 from {blob.url}"]
    assert asked == [f"GET {blob.url}"], asked


def test_a_tunnel_ended_by_the_servers_close_of_its_kept_connection_costs_a_new_one(
    tls_server: ServerHandle, pki: PKI, tmp_path: Path
) -> None:
    make_blob(tls_server.root, "kept-through-tinyproxy.bin", 1000, seed=44)
    tls_server.reset()
    # Each tunnel's second request: the server closes its connection as it comes (its idle
    # close crossing our request), and tinyproxy the tunnel. Asked again on a new tunnel,
    # not said as the proxy's failure.
    tls_server.set_faults({"path": "/files/*", "times": None, "kept": True,
                           "action": "no_response", "hold": 0})  # fmt: skip
    url = tls_server.url("kept-through-tinyproxy.bin")
    with start_tinyproxy(tmp_path / "proxy") as proxy:
        settings = fast_settings(proxy=proxy.url, trust_env=False, ca_bundle=pki.ca_pem)
        assert [len(b) for b in three_gets(url, settings)] == [1000] * 3
        assert len(proxy.requests()) == 3  # a tunnel each: the first, and one per close
    assert tls_server.stats()["rule_hits"] == [2]
