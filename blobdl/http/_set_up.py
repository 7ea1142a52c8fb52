"""A connection's set-up, bounded as a whole: the TCP connect, a proxy's TLS handshake and
its answer to CONNECT, and the TLS handshake with the server must all be over within the
connect timeout (``Settings.connect_timeout``, the time it promises to open a connection).

Each wait of a set-up is bounded alone by the socket's timeout, and that is no bound on the
whole: a peer that sends a byte just within it, every time, holds the set-up for as long as
it likes. CPython's own TLS handshake is one call with one deadline, but a proxy's answer to
CONNECT is read line by line, and urllib3 handshakes with a server inside a proxy's TLS (TLS
in TLS) in Python, one read per record. So while a connection is set up (``setting_up``, on
the thread that sets it up), every wait is given only what is left of its time (``clamp``):
the socket before each handshake, each read of the CONNECT answer (``_head``), each read and
write of a proxy's TLS socket (``SetUpSSLSocket``). Past the deadline, TimeoutError.

Before the socket exists, the set-up is bounded too (``connect``). The name is looked up on
a thread of its own, waited for with what is left (a resolver that drops packets would
hold ``getaddrinfo`` for its own timeouts, 5 s x attempts x servers, and Ctrl-C with it:
the wait hears a signal, the lookup is left to end alone); past the deadline, TimeoutError,
a connect timeout, retried as one. A name's addresses are tried one at a time, each given
a share of what is left (``_share``), so that a first address whose SYNs are dropped (a
broken IPv6 route) leaves time for the next; and the address that answered is tried first
by the next connection to that host and port (``_answered``), so a process pays for the
black hole once. They are not raced (RFC 8305's Happy Eyeballs): two sockets for one
connection would break the promise that ``--connections`` counts sockets.

Why the connect timeout and not the stall timeout: the set-up is the connect timeout's
promise, and a setting that bounds silence would let a trickle of bytes through.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from urllib3.util.connection import allowed_gai_family

_thread = threading.local()


@contextmanager
def setting_up(within: float | None) -> Iterator[None]:
    """A connection is set up on this thread in the block, within ``within`` seconds (None:
    unbounded, as the socket's own timeouts are)."""
    _thread.deadline = None if within is None else time.monotonic() + within
    _thread.within = within
    try:
        yield
    finally:
        _thread.deadline = None


def left() -> float | None:
    """Seconds left of this thread's set-up; None when none is under way (or it is
    unbounded). TimeoutError once they are over."""
    deadline: float | None = getattr(_thread, "deadline", None)
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the connection was not set up within the connect timeout")
    return remaining


def clamp(sock: socket.socket) -> None:
    """Have ``sock`` wait no longer than what is left of this thread's set-up (if any)."""
    remaining = left()
    if remaining is not None:
        timeout = sock.gettimeout()
        sock.settimeout(remaining if timeout is None else min(timeout, remaining))


class SetUpSSLSocket(ssl.SSLSocket):
    """The socket of a proxy's TLS (an ``SSLContext.sslsocket_class``): urllib3's handshake
    with the server inside it reads and writes through ``recv`` and ``sendall``, each of
    which then waits only for what is left of the set-up."""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        clamp(self)
        return super().recv(buflen, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        clamp(self)
        super().sendall(data, flags)


_Address = tuple[Any, ...]  # a socket address, as getaddrinfo gives it
_Found = tuple[socket.AddressFamily, socket.SocketKind, int, str, _Address]

# No address's share is less than this, unless less is left: room for a SYN lost once to be
# sent again (Linux sends it again after 1 s). At most half the connect timeout, so that
# the first of several addresses never takes it all.
SHARE_AT_LEAST = 2.0
# The address that last answered, by (host, port) asked: tried first next time.
_answered: dict[tuple[str, int], _Address] = {}
_ANSWERED_AT_MOST = 1024  # hosts remembered; past it, forgotten all at once


def connect(
    address: tuple[str, int],
    source_address: tuple[str, int] | None = None,
    socket_options: Sequence[tuple[int, int, int | bytes]] | None = None,
) -> socket.socket:
    """A TCP connection to ``address`` (host, port), as urllib3's ``create_connection``
    opens one, within what is left of this thread's set-up: the lookup, then each address
    in turn, the one that last answered first. The last address's error if none answers;
    TimeoutError once the set-up's time is over; ``socket.gaierror`` if the name is not
    found."""
    host, port = address[0].strip("[]"), address[1]
    found = _answered_first((host, port), _looked_up(host, port))
    error: OSError | None = None
    for n, (family, kind, proto, _, where) in enumerate(found):
        share = _share(len(found) - n)
        sock = socket.socket(family, kind, proto)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            if share is not None:
                sock.settimeout(share)
            if source_address:
                sock.bind(source_address)
            sock.connect(where)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        _remember((host, port), where)
        if share is not None:  # what follows (TLS, CONNECT) gets what is left, not the share
            sock.settimeout(getattr(_thread, "within", None))
        return sock
    raise error if error is not None else OSError("getaddrinfo returns an empty list")


def _share(addresses_left: int) -> float | None:
    """The seconds the next of ``addresses_left`` addresses may take to connect: an even
    share of what is left, but no less than ``SHARE_AT_LEAST`` or half the connect timeout
    if that is less (the addresses at the end then get nothing); None if the set-up is
    unbounded. TimeoutError once it is over."""
    remaining = left()
    if remaining is None:
        return None
    at_least = min(SHARE_AT_LEAST, getattr(_thread, "within", remaining) / 2)
    return min(remaining, max(remaining / addresses_left, at_least))


def _looked_up(host: str, port: int) -> Sequence[_Found]:
    """``host``'s addresses, looked up within what is left of the set-up (if bounded): on
    a thread of its own, whose wait a signal interrupts; left to end alone once the set-up
    is over (TimeoutError). A numeric address is no lookup: asked here."""

    def found() -> Sequence[_Found]:
        return socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)

    remaining = left()
    if remaining is None or _numeric(host):
        return found()
    answer: list[Sequence[_Found] | OSError] = []
    task: list[str] = []

    def look_up() -> None:
        task.append(_own_task())
        try:
            answer.append(found())
        except OSError as exc:  # gaierror, or a resolver's own failure
            answer.append(exc)

    thread = threading.Thread(target=look_up, name="blobdl-lookup", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # no thread to spare (ulimit -u): looked up here, unbounded
        return found()
    thread.join(remaining)
    if not answer:
        raise TimeoutError(f"{host} was not looked up within the connect timeout")
    _gone(task)
    if isinstance(answer[0], OSError):
        raise answer[0]
    return answer[0]


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])  # fe80::1%eth0: scoped, still numeric
    except ValueError:
        return False
    return True


def _own_task() -> str:
    """The calling thread's folder in /proc ("": no /proc)."""
    try:
        return "/proc/" + os.readlink("/proc/thread-self")
    except OSError:
        return ""


def _gone(task: list[str], within: float = 1.0) -> None:
    """Wait (``within`` s at most) for the lookup's thread to be gone for the kernel too:
    a joined thread's task outlives its join by a moment, and a process that counts a
    thread besides its own forks no more (``processes.threaded``)."""
    deadline = time.monotonic() + within
    while task and task[0] and os.path.exists(task[0]) and time.monotonic() < deadline:
        time.sleep(0.0002)


def _answered_first(asked: tuple[str, int], found: Sequence[_Found]) -> list[_Found]:
    """``found``, the address that last answered for ``asked`` first (if still among them)."""
    answered = _answered.get(asked)
    return sorted(found, key=lambda one: one[4] != answered)


def _remember(asked: tuple[str, int], where: _Address) -> None:
    if len(_answered) >= _ANSWERED_AT_MOST:
        _answered.clear()
    _answered[asked] = where
