"""A pull from an https registry loads the system's CA store once, not once per connection.

urllib3 given no context builds one, and loads the CA store into it (~20 ms of CPU), for
every new https connection; a pull opens several at once (its blob lookups run in threads,
each connection past the pool's one kept is new). The registry's pool is given the one
context the process builds (``prepare_tls``), as the engine's and the hf client's are."""

from __future__ import annotations

import pytest

from blobdl.config import Settings
from blobdl.http import _pool
from blobdl.registry._names import parse_reference
from blobdl.registry._oci import Registry


@pytest.fixture(autouse=True)
def no_context_built_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pool, "_CONTEXTS", {})
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_an_https_registrys_connections_share_one_context_with_the_ca_store_loaded() -> None:
    registry = Registry(parse_reference("registry.example.com/library/model:tag"), Settings())
    context = registry.pool.connection_pool_kw["ssl_context"]
    assert context is not None
    assert context.cert_store_stats()["x509_ca"] > 0  # loaded once, here


def test_a_plain_http_registry_loads_no_ca_store() -> None:
    ref = parse_reference("registry.example.com/library/model:tag")
    registry = Registry(ref, Settings(), plain_http=True)
    assert registry.pool.connection_pool_kw["ssl_context"] is None
