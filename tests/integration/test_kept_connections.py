"""A connection kept alive is a guess that the server still holds it. A server may close an
idle connection at any moment (its keep-alive timeout, a restart), and its close can cross
our next request on it: the request is sent, and nothing of an answer comes, only the close
(EOF, or a reset). No client can see that coming. A GET that met it on a kept connection
is asked again on a new one, once, and is no failed attempt: a batch run with ``retries=0``
loses no item to it (what a loaded CI run once did). A request on a new connection that
meets the same is the server's failure, as before.

Real fault server over loopback (plain and TLS): its rule ``kept`` closes, without a word,
each connection as its second request comes, so the race is scripted, not waited for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl import Downloader, Settings
from blobdl.errors import BlobdlError, ConnectionFailed
from blobdl.http._connections import Sockets, noted_in
from blobdl.http._pool import make_pool
from blobdl.http._request import base_headers, send_get
from faultserver.proxy import ForwardProxy
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import PART, Blob, fast_settings, sha256_file
from tests.integration.conftest import PKI
from tests.integration.test_trust_stops import wait_for

Make = Callable[..., Blob]


def close_kept(server: ServerHandle, reset: bool, *, kept: bool = True) -> None:
    """Every request on a kept (or, ``kept=False``, a new) connection: read, then the
    connection closed without an answer (``reset``: with an RST)."""
    server.set_faults({"path": "/files/*", "times": None, "kept": kept,
                       "action": "no_response", "hold": 0, "reset": reset})  # fmt: skip


def silent_when_kept(server: ServerHandle) -> None:
    """Every request on a kept connection: read, then no answer for 30 s, nor a close."""
    server.set_faults({"path": "/files/*", "times": None, "kept": True,
                       "action": "no_response", "hold": 30})  # fmt: skip


def three_gets(url: str, settings: Settings | None = None, **overrides: object) -> list[bytes]:
    """Three GETs of ``url`` in turn on one pool (each answer read whole: its connection is
    kept for the next); their bodies."""
    pool = make_pool(settings or fast_settings(**overrides))
    try:
        bodies = []
        for _ in range(3):
            response = send_get(pool, url, base_headers())
            bodies.append(response.read())
            response.release_conn()
        return bodies
    finally:
        pool.clear()


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_get_that_crossed_the_close_of_its_kept_connection_is_asked_again_on_a_new_one(
    make: Make, server: ServerHandle, reset: bool
) -> None:
    blob = make(1000, seed=905)
    close_kept(server, reset)
    assert [len(b) for b in three_gets(blob.url)] == [1000] * 3
    stats = server.stats()
    # The 2nd and 3rd came first on the kept connection, closed under them, then again.
    assert stats["rule_hits"] == [2] and stats["requests"] == 5


def test_so_over_tls(tls_server: ServerHandle, pki: PKI) -> None:
    make_blob(tls_server.root, "tls-kept.bin", 1000, seed=906)
    close_kept(tls_server, reset=False)
    url = tls_server.url("tls-kept.bin")
    assert [len(b) for b in three_gets(url, ca_bundle=pki.ca_pem)] == [1000] * 3
    assert tls_server.stats()["rule_hits"] == [2]


def test_a_new_connection_closed_under_its_request_is_the_servers_failure(
    make: Make, server: ServerHandle
) -> None:
    blob = make(PART, seed=907)
    close_kept(server, reset=False, kept=False)  # every connection's first request
    pool = make_pool(fast_settings())
    try:
        with pytest.raises(ConnectionFailed):
            send_get(pool, blob.url, base_headers())
    finally:
        pool.clear()
    assert server.stats()["requests"] == 1  # not asked again: it was no kept connection


def second_get(url: str, settings: Settings | None = None) -> BaseException | None:
    """Two GETs of ``url`` in turn on one pool (the second on the connection the first kept,
    unless the server closed it): what the second raised, if anything."""
    pool = make_pool(settings or fast_settings())
    try:
        send_get(pool, url, base_headers()).read()
        try:
            send_get(pool, url, base_headers()).read()
        except BlobdlError as exc:
            return exc
        return None
    finally:
        pool.clear()


def test_a_kept_connection_whose_answer_does_not_come_in_time_is_the_servers_failure(
    make: Make, server: ServerHandle
) -> None:
    blob = make(1000, seed=914)
    # Silent, not closed: the read timeout ends the wait. That is no close of an idle
    # connection crossing the request (the server holds it, and the request): asked again
    # for free, a server that stalls would cost every request several timeouts, uncounted.
    silent_when_kept(server)
    failed = second_get(blob.url, fast_settings(stall_timeout=0.2))
    assert isinstance(failed, BlobdlError), failed
    assert server.stats()["requests"] == 2


@pytest.mark.parametrize("scheme", ["plain", "tls"])
def test_a_connection_opened_again_after_the_server_closed_it_is_a_new_one(
    request: pytest.FixtureRequest, scheme: str, pki: PKI
) -> None:
    """The pool opens a connection the server closed (its ``Connection: close``) again, in
    the same object: what that object carried before is no answer on this socket. Plain, it
    reconnects in the request; over TLS, before it."""
    origin: ServerHandle = request.getfixturevalue("server" if scheme == "plain" else "tls_server")
    origin.reset()
    make_blob(origin.root, f"reopened-{scheme}.bin", 1000, seed=915)
    origin.set_faults(
        {"path": "/files/*", "kept": False, "action": "headers", "set": {"Connection": "close"}},
        {"path": "/files/*", "times": None, "kept": False, "action": "no_response", "hold": 0},
    )
    settings = fast_settings(ca_bundle=pki.ca_pem) if scheme == "tls" else None
    assert isinstance(second_get(origin.url(f"reopened-{scheme}.bin"), settings), ConnectionFailed)
    assert origin.stats()["requests"] == 2  # not asked again: a new connection's failure


# Bytes of an answer, then the connection closed: the server took the request and began to
# answer it, so this is no close of an idle connection crossing it.
BEGUN = {
    "part of a status line, then a reset": {"send": "HTTP/1.1 20", "reset": True},
    "an interim answer, then a close": {"send": "HTTP/1.1 103 Early Hints\r\n\r\n", "close": True},
    "an interim answer, then a reset": {"send": "HTTP/1.1 103 Early Hints\r\n\r\n", "reset": True},
}


@pytest.mark.parametrize("begun", BEGUN.values(), ids=BEGUN.keys())
def test_an_answer_begun_then_cut_on_a_kept_connection_is_the_servers_failure(
    make: Make, server: ServerHandle, begun: dict[str, object]
) -> None:
    blob = make(1000, seed=908)
    server.set_faults({"path": "/files/*", "times": None, "kept": True, "action": "raw", **begun})
    assert isinstance(second_get(blob.url), ConnectionFailed)
    assert server.stats()["requests"] == 2  # not asked again, for free, on a new connection


def test_so_over_tls_too(tls_server: ServerHandle, pki: PKI) -> None:
    make_blob(tls_server.root, "tls-begun.bin", 1000, seed=909)
    tls_server.reset()
    tls_server.set_faults({"path": "/files/*", "times": None, "kept": True, "action": "raw",
                           "send": "HTTP/1.1 103 Early Hints\r\n\r\n", "close": True})  # fmt: skip
    pool = make_pool(fast_settings(ca_bundle=pki.ca_pem))
    url = tls_server.url("tls-begun.bin")
    try:
        send_get(pool, url, base_headers()).read()
        with pytest.raises(ConnectionFailed):
            send_get(pool, url, base_headers())
    finally:
        pool.clear()
    assert tls_server.stats()["requests"] == 2


def test_a_request_whose_own_side_cut_its_kept_connection_is_not_asked_again(
    make: Make, server: ServerHandle
) -> None:
    blob = make(1000, seed=910)
    # The second GET, on the kept connection, waits for an answer that does not come; what
    # ends it is our own cut (a stopped lane or seat: Sockets.cut), whose shutdown it meets
    # as the server's close. A stop: nothing more is asked, on no new connection.
    silent_when_kept(server)
    sockets, met = Sockets(), []

    def two_gets() -> None:
        with noted_in(sockets):
            met.append(second_get(blob.url))

    asking = threading.Thread(target=two_gets)
    asking.start()
    try:
        wait_for(lambda: server.stats()["requests"] == 2, "the second GET")
        sockets.cut()
    finally:
        asking.join()
    assert isinstance(met[0], ConnectionFailed)
    assert server.stats()["requests"] == 2


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_so_through_a_proxys_tunnel(tls_server: ServerHandle, pki: PKI, reset: bool) -> None:
    make_blob(tls_server.root, "tunnel-kept.bin", 1000, seed=911)
    tls_server.reset()
    close_kept(tls_server, reset)  # the server's close ends the tunnel: the proxy closes too
    url = tls_server.url("tunnel-kept.bin")
    with ForwardProxy() as proxy:
        bodies = three_gets(url, proxy=proxy.url, trust_env=False, ca_bundle=pki.ca_pem)
        assert [len(b) for b in bodies] == [1000] * 3
        assert proxy.methods() == {"CONNECT"} and proxy.forwarded == 3  # a tunnel each
    assert tls_server.stats()["rule_hits"] == [2]


def test_a_server_that_closes_every_connection_fails_once_counted(
    make: Make, server: ServerHandle
) -> None:
    blob = make(1000, seed=912)
    # After the first answer, every request is closed under: on the kept connection, then on
    # the new one it is asked again on. That one is the server's failure, raised once.
    close_kept(server, reset=False)
    server.set_faults(*[{"path": "/files/*", "times": None, "kept": kept, "skip": skip,
                         "action": "no_response", "hold": 0} for kept, skip in
                        [(True, 0), (False, 1)]])  # fmt: skip
    assert isinstance(second_get(blob.url), ConnectionFailed)
    assert server.stats()["requests"] == 3


def test_a_lanes_chunks_over_connections_the_server_closes_as_they_come_are_no_retries(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(4 * PART, seed=913)
    close_kept(server, reset=True)  # every chunk after a connection's first
    out = tmp_path / "out"
    settings = fast_settings(retries=0, connections=2, min_steal_size=PART // 8)
    result = Downloader(settings).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.retries == 0
    stats = server.stats()
    assert stats["rule_hits"][0] > 0  # lanes did ask chunks on kept connections
