"""Reading a body straight off its socket: what has arrived comes back in one call, the
first byte is waited for (within the socket's timeout), and the socket is handed back as
it came. Real connected sockets, plain and TLS (a trustme certificate)."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trustme

from blobdl.http._socket_reads import SMALL, gathering

RECORD = 16 * 1024  # the most one TLS record carries


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.settimeout(5.0)
    with ours, theirs:
        yield ours, theirs


def tls_pair(ours: socket.socket, theirs: socket.socket) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("blobdl.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    accepted: list[ssl.SSLSocket] = []
    server = threading.Thread(
        target=lambda: accepted.append(server_ctx.wrap_socket(theirs, server_side=True))
    )
    server.start()
    client = client_ctx.wrap_socket(ours, server_hostname="blobdl.test")
    server.join()
    return client, accepted[0]


@contextmanager
def sends_later(sock: socket.socket, delay: float, data: bytes) -> Iterator[None]:
    """``sock`` sends ``data`` after ``delay`` seconds, from a timer thread joined on exit."""
    later = threading.Timer(delay, lambda: sock.sendall(data))
    later.start()
    try:
        yield
    finally:
        later.join()


def test_everything_that_has_arrived_comes_back_in_one_call(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    for _ in range(3):
        theirs.sendall(b"x" * 1000)
    with gathering(ours) as gatherer:
        assert gatherer.read(memoryview(bytearray(64 * 1024))) == 3000


def test_over_tls_one_call_returns_many_records(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = tls_pair(*pair)
    body = bytes(range(256)) * (5 * RECORD // 256)
    for start in range(0, len(body), RECORD):  # five records, all sent before we read
        server.sendall(body[start : start + RECORD])
    buffer = bytearray(8 * RECORD)
    with gathering(client) as gatherer:
        got = gatherer.read(memoryview(buffer))
    assert got == len(body) and buffer[:got] == body


def test_it_never_fills_more_than_the_view(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(b"abcdefgh")
    view = memoryview(bytearray(5))
    with gathering(ours) as gatherer:
        assert gatherer.read(view) == 5 and bytes(view) == b"abcde"
        assert gatherer.read(view) == 3 and bytes(view[:3]) == b"fgh"


def test_bytes_that_trickle_in_are_gathered_for_a_moment_before_they_are_written(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.sendall(b"first")
    with sends_later(theirs, 0.01, b"second"), gathering(ours, linger=0.5) as gatherer:
        view = memoryview(bytearray(100))  # the linger is far longer than the sender needs
        assert gatherer.read(view) == 11 and bytes(view[:11]) == b"firstsecond"


def test_it_lingers_only_once_then_returns_what_it_has(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.sendall(b"alone")
    with gathering(ours, linger=0.01) as gatherer:
        assert gatherer.read(memoryview(bytearray(100))) == 5


def test_it_does_not_linger_once_it_holds_plenty(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(b"x" * SMALL)
    # Late bytes well inside the linger, and late enough that a loaded machine still reads
    # before them: a gatherer that lingered would wait for them and return them too.
    late = threading.Timer(2.0, lambda: theirs.sendall(b"late"))
    late.start()
    try:
        with gathering(ours, linger=5.0) as gatherer:
            assert gatherer.read(memoryview(bytearray(2 * SMALL))) == SMALL
    finally:
        late.cancel()
        late.join()


def test_it_waits_for_the_first_byte(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    with sends_later(theirs, 0.05, b"late"), gathering(ours) as gatherer:
        assert gatherer.read(memoryview(bytearray(100))) == 4


def test_a_silent_socket_times_out_after_its_own_timeout(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = pair
    ours.settimeout(0.05)
    with gathering(ours) as gatherer, pytest.raises(TimeoutError):
        gatherer.read(memoryview(bytearray(100)))


def test_end_of_stream_reads_zero(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(b"last")
    theirs.shutdown(socket.SHUT_WR)
    view = memoryview(bytearray(100))
    with gathering(ours) as gatherer:
        assert gatherer.read(view) == 4
        assert gatherer.read(view) == 0


def test_the_socket_gets_its_timeout_back_even_after_an_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = pair
    ours.settimeout(0.05)
    with pytest.raises(TimeoutError), gathering(ours) as gatherer:
        assert ours.gettimeout() == 0.0  # non-blocking while gathering
        gatherer.read(memoryview(bytearray(1)))
    assert ours.gettimeout() == 0.05  # its connection may serve the next request


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A real TCP connection on loopback (a socketpair cannot be reset)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    ours.settimeout(5.0)
    with ours, theirs:
        yield ours, theirs


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_bytes_that_arrived_before_a_reset_are_handed_over_then_the_reset(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = tcp_pair
    theirs.sendall(b"y" * 10_000)
    time.sleep(0.05)  # in our receive queue, ahead of the reset
    reset(theirs)
    time.sleep(0.05)
    view = memoryview(bytearray(100_000))
    with gathering(ours, linger=0.0) as gatherer:
        assert gatherer.read(view) == 10_000  # a plain read loop would have written them
        with pytest.raises(ConnectionResetError):
            gatherer.read(view)


def test_records_that_arrived_before_a_broken_one_are_handed_over_then_the_error(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = tls_pair(*tcp_pair)
    server.sendall(b"z" * 40_000)  # three good records
    os.write(server.fileno(), b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a forged one
    time.sleep(0.05)
    view = memoryview(bytearray(100_000))
    with gathering(client, linger=0.0) as gatherer:
        assert gatherer.read(view) == 40_000
        with pytest.raises(ssl.SSLError):
            gatherer.read(view)
