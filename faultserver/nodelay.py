"""Every test server sends what it writes at once: TCP_NODELAY on the sockets it serves.

A server answers with a write of its head, then one of its body. With Nagle's algorithm the
body waits for the ACK of the head, and the client delays that ACK (~40 ms on Linux): every
kept-alive small reply paid it (300 small items on one seat: 13.5 s, not 0.6 s), and a relay
that forwards a reply in pieces pays it again. Real servers set TCP_NODELAY; so do ours, so a
test that needs a slow answer scripts it (rules, holds, ``after``, ``step``), never leans on it.
"""

from __future__ import annotations

import socket
from socketserver import TCPServer
from typing import Any


def no_delay(sock: socket.socket) -> socket.socket:
    """``sock``, its writes no longer held back for an ACK."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class NoDelayServer(TCPServer):
    """A ``socketserver`` TCP server whose accepted sockets are ``no_delay``: list it first
    among the bases (``class S(NoDelayServer, ThreadingHTTPServer)``)."""

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        return no_delay(sock), address
