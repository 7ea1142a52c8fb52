"""One pool, several threads: a pull's blob lookups share the registry's pool
(``Registry.blob_sources``), so a connection must only ever be closed by the request that
holds it, and a connection closed under a request anyway is a connection failure in our
words, never an error from inside http.client.

What broke: a lookup answered 401 read the answer's words (``error_body``) to their end,
which handed its connection back to the pool, and then closed it. By then another lookup
could have taken it and sent its request, whose answer http.client then read from no socket
(``'NoneType' object has no attribute 'makefile'``): now and then, under load, while a token
expired under several layers was renewed (``test_pull.py``).

Real fault server over loopback; the interleaving of two threads is not left to chance: what
is pinned is what makes it possible (a connection back in the pool, closed by its last user)
and what a request meets when it happens (its connection closed between request and answer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from blobdl.config import Settings
from blobdl.errors import ConnectionFailed
from blobdl.http._error_words import error_body
from blobdl.http._pool import make_pool
from blobdl.http._request import base_headers, send_get
from blobdl.http._translate import translate_errors
from faultserver.proxy import ForwardProxy
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import PART, Blob, fast_settings
from tests.integration.conftest import PKI

Make = Callable[..., Blob]
REFUSAL = '{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}'


def test_an_error_answers_connection_is_never_handed_to_another_request(
    make: Make, server: ServerHandle
) -> None:
    """The reader of an error answer closes the answer's connection (it serves no other
    request): so that connection must be one nobody else can hold. The pool's next request,
    another thread's as likely as this one's, gets a connection of its own."""
    blob = make(PART, seed=901)
    server.set_faults({"path": f"/files/{blob.name}", "action": "status", "status": 401,
                       "headers": {"Content-Type": "application/json"}, "body": REFUSAL,
                       "times": 1})  # fmt: skip
    pool = make_pool(fast_settings())
    try:
        refused = send_get(pool, blob.url, base_headers())
        assert refused.status == 401
        refused_on = refused.connection
        assert b"UNAUTHORIZED" in error_body(blob.url, refused, 5.0)  # read to its end
        refused.close()
        answered = send_get(pool, blob.url, base_headers())
        assert answered.status == 200
        assert answered.connection is not refused_on  # not the one its reader closed
        answered.close()
    finally:
        pool.clear()


def test_a_connection_closed_between_its_request_and_its_answer_is_a_connection_failure(
    make: Make, server: ServerHandle
) -> None:
    """What a request meets if its connection is closed under it after all: a
    ``ConnectionFailed`` (retried like any broken connection), never an AttributeError
    from inside http.client."""
    blob = make(PART, seed=902)
    parts = urlsplit(blob.url)
    pool = make_pool(fast_settings()).connection_from_url(blob.url)
    conn = pool.ConnectionCls(parts.hostname or "", parts.port)
    try:
        conn.request("GET", parts.path)
        conn.close()  # as another thread would
        with pytest.raises(ConnectionFailed) as failed, translate_errors(blob.url):
            conn.getresponse()
    finally:
        conn.close()
    assert failed.value.retryable
    assert "closed under its request" in str(failed.value)


ROUTES = ("plain", "tls", "plain forwarded by a proxy", "tls tunnelled through a proxy")


@pytest.fixture
def route(
    request: pytest.FixtureRequest, server: ServerHandle, pki: PKI
) -> Iterator[tuple[ServerHandle, Settings]]:
    """An origin, and the settings that reach it by ``request.param``'s route: every pool
    class a request may take (http, https, a proxy's)."""
    origin = server
    trusted: dict[str, Any] = {"trust_env": False}
    if request.param.startswith("tls"):
        origin = request.getfixturevalue("tls_server")
        origin.reset()  # (only ``server`` is reset for every test)
        trusted["ca_bundle"] = pki.ca_pem
    if "proxy" not in request.param:
        yield origin, fast_settings(**trusted)
        return
    with ForwardProxy() as proxy:
        yield origin, fast_settings(**trusted, proxy=proxy.url)


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_no_pool_lends_an_error_answers_connection_again(
    route: tuple[ServerHandle, Settings],
) -> None:
    """The https pools and a proxy's pools close a spent connection as the http one does:
    after the words of a 401, none of them lends its connection to the next request, and
    the answered request's socket is closed (the budget: no idle socket beside a retry)."""
    origin, settings = route
    name = "shared-pool-401.bin"
    make_blob(origin.root, name, 1000, 903)
    url = origin.url(name)
    origin.set_faults({"path": f"/files/{name}", "action": "status", "status": 401,
                       "headers": {"Content-Type": "application/json"}, "body": REFUSAL,
                       "times": 1})  # fmt: skip
    pool = make_pool(settings)
    try:
        refused = send_get(pool, url, base_headers())
        assert refused.status == 401
        refused_on = refused.connection
        assert b"UNAUTHORIZED" in error_body(url, refused, 5.0)
        refused.close()
        assert refused_on is not None and refused_on.sock is None  # closed, not idle
        for _ in range(2):
            answered = send_get(pool, url, base_headers())
            assert answered.status == 200
            assert answered.connection is not refused_on
            answered.read()
    finally:
        pool.clear()


@pytest.mark.parametrize("route", ["tls", "tls tunnelled through a proxy"], indirect=True)
def test_a_tls_connection_closed_between_its_request_and_its_answer_is_a_connection_failure(
    route: tuple[ServerHandle, Settings],
) -> None:
    """As over plain http: a ``ConnectionFailed``, never an error from inside http.client."""
    origin, settings = route
    name = "shared-pool-closed.bin"
    make_blob(origin.root, name, 1000, 904)
    url = origin.url(name)
    pool = make_pool(settings).connection_from_url(url)
    conn = pool._get_conn()
    try:
        pool._validate_conn(conn)  # connected (through the tunnel, if any)
        conn.request("GET", urlsplit(url).path)
        conn.close()  # as another thread would
        closed_under = pytest.raises(ConnectionFailed, match="closed under its request")
        with closed_under, translate_errors(url):
            conn.getresponse()
    finally:
        conn.close()


class _ClosedBeforeItsAnswer:
    """A connection closed between its request and its answer, as another thread would."""

    def getresponse(self) -> Any:
        self.close()  # type: ignore[attr-defined]
        return super().getresponse()  # type: ignore[misc]


@pytest.mark.parametrize("route", [r for r in ROUTES if "proxy" in r], indirect=True)
def test_a_connection_closed_under_its_request_through_a_proxy_is_not_the_proxys_failure(
    route: tuple[ServerHandle, Settings],
) -> None:
    """The close is ours (another thread's), not the proxy's: said as without a proxy,
    naming the server, never "proxy ... failed" (urllib3 counts a closed connection as one
    that never reached its proxy, and says any error of it as the proxy's)."""
    origin, settings = route
    name = "shared-pool-proxied.bin"
    make_blob(origin.root, name, 1000, 905)
    url = origin.url(name)
    pool = make_pool(settings)
    proxy = settings.proxy or ""
    conns = pool._manager(proxy, url).connection_from_url(url)  # type: ignore[attr-defined]
    conns.ConnectionCls = type("Closing", (_ClosedBeforeItsAnswer, conns.ConnectionCls), {})
    try:
        with pytest.raises(ConnectionFailed) as failed:
            send_get(pool, url, base_headers())
    finally:
        pool.clear()
    assert failed.value.retryable
    port = urlsplit(url).port
    assert str(failed.value).startswith(
        f"connection to 127.0.0.1 port {port} failed: the connection was closed under its request"
    ), failed.value
