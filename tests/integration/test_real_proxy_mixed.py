"""One batch through tinyproxy and around it (NO_PROXY), over http and https: every item
exact, and each party sees only the credentials meant for it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl import Downloader, Item, download_many
from faultserver.serverctl import ServerHandle, make_blob
from faultserver.tinyproxy import start_tinyproxy
from tests.conftest import PART, Blob, fast_settings, sha256_file
from tests.integration.conftest import PKI

Make = Callable[..., Blob]
PROXY_AUTH = ("alice", "s3cret-of-the-proxy")
SERVER_AUTH = "bob:s3cret-of-the-server"


def test_a_batch_mixing_proxied_and_direct_hosts_sends_each_party_its_own_credentials(
    server: ServerHandle, other: ServerHandle, tls_server: ServerHandle, pki: PKI, make: Make,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    blobs = [make(2 * PART + n, seed=60 + n) for n in range(6)]
    tls_digest = make_blob(tls_server.root, "mixed.bin", 2 * PART + 9, seed=70)
    other.reset()
    tls_server.reset()
    items, want = [], []
    for n, blob in enumerate(blobs):
        host = server if n % 2 else other  # 127.0.0.1 through the proxy, localhost around it
        url = host.url(blob.name).replace("://", f"://{SERVER_AUTH}@")
        if host is other:
            url = url.replace("127.0.0.1", "localhost")
        items.append(Item(url, str(tmp_path / f"f{n}")))
        want.append(blob.sha256)
        if n % 3 == 0:
            tls_url = tls_server.url("mixed.bin").replace("://", f"://{SERVER_AUTH}@")
            items.append(Item(tls_url, str(tmp_path / f"t{n}")))
            want.append(tls_digest)
    with start_tinyproxy(tmp_path / "proxy", auth=PROXY_AUTH) as proxy:
        for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("http_proxy", proxy.url_with(PROXY_AUTH))
        monkeypatch.setenv("https_proxy", proxy.url_with(PROXY_AUTH))
        monkeypatch.setenv("NO_PROXY", "localhost")
        settings = fast_settings(ca_bundle=pki.ca_pem, connections=2)
        results = download_many(items, max_connections=2, settings=settings)
        seen = proxy.requests()
    assert all(r.ok for r in results), [r.error for r in results]
    assert [sha256_file(Path(i.path)) for i in items] == want
    direct = other.stats()["headers"]
    proxied = server.stats()["headers"]
    tunnelled = tls_server.stats()["headers"]
    assert direct and proxied and tunnelled
    for h in direct + proxied + tunnelled:
        assert not any(k.lower() == "proxy-authorization" for k in h), h
        assert any(k.lower() == "authorization" for k in h), h
    assert all("tinyproxy" in h.get("Via", "") for h in proxied), proxied
    assert not any("Via" in h for h in direct), direct
    assert any(r.startswith("CONNECT ") for r in seen) and not any("localhost" in r for r in seen)


@pytest.mark.parametrize("direction", ["proxied to direct", "direct to proxied"])
def test_a_redirect_across_no_proxy_carries_neither_credential_to_the_other_side(
    direction: str, server: ServerHandle, other: ServerHandle, make: Make, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """127.0.0.1 is reached through tinyproxy, localhost around it (NO_PROXY); every GET at
    one redirects to the other. The target sees neither the URL's Authorization nor a -H header
    and no Proxy-Authorization; the bytes are exact."""
    blob = make(3 * PART + 11, seed=80)
    proxied_url, direct_url = server.url(blob.name), other.url(blob.name)
    direct_url = direct_url.replace("127.0.0.1", "localhost")
    source, target = (server, other) if direction == "proxied to direct" else (other, server)
    start, location = (
        (proxied_url, direct_url) if direction == "proxied to direct" else (direct_url, proxied_url)
    )
    other.reset()
    source.set_faults({"path": f"/files/{blob.name}", "times": None, "action": "redirect",
                       "status": 302, "location": location})  # fmt: skip
    with start_tinyproxy(tmp_path / "proxy", auth=PROXY_AUTH) as proxy:
        for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("http_proxy", proxy.url_with(PROXY_AUTH))
        monkeypatch.setenv("NO_PROXY", "localhost")
        url = start.replace("://", f"://{SERVER_AUTH}@")
        settings = fast_settings(connections=2, headers=(("X-Api-Key", "tok-user"),))
        Downloader(settings).download(url, tmp_path / "out")
        seen = proxy.requests()
    assert sha256_file(tmp_path / "out") == blob.sha256
    at_source, at_target = source.stats()["headers"], target.stats()["headers"]
    assert at_source and at_target
    for h in at_target:
        names = {k.lower() for k in h}
        assert not names & {"authorization", "proxy-authorization", "x-api-key"}, h
    for h in at_source:
        names = {k.lower() for k in h}
        assert {"authorization", "x-api-key"} <= names and "proxy-authorization" not in names, h
    assert seen and all("127.0.0.1" in r for r in seen), seen
