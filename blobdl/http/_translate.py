"""Error translation: whatever urllib3, http.client, ssl or the socket layer raise becomes a
``blobdl`` error here, so the engine reasons about our errors only.

What went wrong is told by the error's type (never by its message text), and said in words a
user can act on, naming the host and port (or the proxy) as curl does: "Failed to connect to
127.0.0.1 port 9: Connection refused", "Could not resolve host: example.invalid", "TLS
certificate of example.com not trusted: certificate has expired". No class name of ours or
of a library's ever reaches the message.
"""

from __future__ import annotations

import errno
import http.client
import re
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple, TypeVar
from urllib.parse import urlsplit

from urllib3.exceptions import (
    ConnectTimeoutError,
    InvalidHeader,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
    ProxyError,
)
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.ssl_match_hostname import CertificateError

from .._redact import misread_userinfo, redact_url
from .._said import escaped, quoted
from ..errors import (
    BadResponse,
    BlobdlError,
    ConnectionFailed,
    ConnectionForbidden,
    OutOfResources,
    ProxyAuthRequired,
    ProxyNotHTTP,
    ProxyRefused,
    TLSError,
    UsageError,
    retryable_status,
)
from ._chunks import ChunkError
from ._connections import ClosedUnderRequest, KeptConnectionLost, ServerHungUp, TunnelClosed
from ._head import InterimError

_DEFAULT_PORTS = {"http": 80, "https": 443}


class Peer(NamedTuple):
    """Who we were talking to, as a message names it: ``host port N`` (or ``proxy ...``)."""

    host: str
    port: int | None
    proxy: bool = False

    @classmethod
    def of(cls, url: str, *, proxy: bool = False) -> Peer:
        if misread_userinfo(url):  # its "host" and "port" may be a user and a password
            return cls(redact_url(url), None, proxy)
        try:
            parts = urlsplit(url)
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            return cls(redact_url(url), None, proxy)
        return cls(parts.hostname or redact_url(url), port, proxy)

    @property
    def who(self) -> str:
        return f"proxy {self.host}" if self.proxy else self.host

    def __str__(self) -> str:
        return self.who if self.port is None else f"{self.who} port {self.port}"


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn urllib3, http.client and socket errors into blobdl errors."""
    try:
        yield
    except BlobdlError:
        raise
    except LocationParseError:
        raise UsageError(f"invalid URL {redact_url(url)!r}: cannot be parsed") from None
    except InvalidHeader as exc:  # e.g. Content-Length: 12, 13
        raise BadResponse(url, f"invalid header: {escaped(str(exc))}") from None
    except UnicodeError as exc:  # an IDNA failure in the socket layer; check_url should catch it
        raise UsageError(f"invalid host in {redact_url(url)!r}: {exc}") from None
    except (Urllib3Error, http.client.HTTPException, OSError) as exc:
        raise translated(url, exc, Peer.of(url)) from None


@contextmanager
def proxy_errors(url: str, proxy: str) -> Iterator[None]:
    """Errors that urllib3 says are the proxy's (``ProxyError``: connecting to it, its TLS,
    its answer to CONNECT, the tunnel it closed) name the proxy, not the server; so does an
    answer to a forwarded request that is no HTTP (the proxy's own bytes); the others pass on."""
    peer = Peer.of(proxy, proxy=True)
    try:
        yield
    except ProxyError as exc:
        if _inner(exc, (ClosedUnderRequest, ServerHungUp, KeptConnectionLost)) is not None:
            # Our close (another thread's), or the server's through the tunnel, not the
            # proxy's failure: urllib3 takes a closed connection for one that never reached
            # its proxy, and says its error so.
            raise translated(url, exc, Peer.of(url)) from None
        status, answer = _tunnel_answer(exc)
        if status == 407:
            raise wants_credentials(url, proxy) from None
        if status is not None and not retryable_status(status):  # its policy or capability
            raise ProxyRefused(url, f"{peer} refused CONNECT: {answer}") from None
        if _inner(exc, TunnelClosed) is not None:
            said = f"{peer} closed the tunnel to {Peer.of(url)} before its TLS handshake"
            tls = _inner(exc, ssl.SSLError)
            why = _ssl_reason(tls) if tls else _reason(exc)
            raise ConnectionFailed(url, f"{said}: {why}") from None
        raise _not_http(url, exc, peer) or translated(url, exc, peer) from None
    except Urllib3Error as exc:
        # Tunnelled (https), an answer is the server's; forwarded, the proxy's own bytes.
        not_http = None if urlsplit(url).scheme == "https" else _not_http(url, exc, peer)
        if not_http is None:
            raise
        raise not_http from None


def _not_http(url: str, exc: BaseException, peer: Peer) -> ProxyNotHTTP | None:
    """A proxy's answer that is no HTTP at all (a SOCKS or SSH server's first bytes), as
    http.client keeps it: never an HTTP status line begun (one cut short, a proxy that
    hung up: these may come right on the next attempt)."""
    bad = _inner(exc, http.client.BadStatusLine)
    if bad is None or isinstance(bad, http.client.RemoteDisconnected):
        return None
    line = getattr(bad, "line", "")  # the status line as read (latin-1), not a message
    if not isinstance(line, str) or line.startswith("HTTP/"):
        return None
    said = f"{peer} does not speak HTTP: it answered {quoted(line, 32)} (a SOCKS or SSH server?)"
    return ProxyNotHTTP(url, said)


# As http.client words the answer to CONNECT; a forwarded request's is said the same way.
_ASKS_FOR_AUTH = "407 Proxy Authentication Required"
# http.client (and urllib3's copy of its ``_tunnel``) tells a refused CONNECT only in
# words, "Tunnel connection failed: 407 Proxy Authentication Required": no type or
# attribute carries the status, so this is the one message read here.
_TUNNEL_REFUSED = re.compile(r"Tunnel connection failed: (([1-5][0-9][0-9])\b.*)")


def wants_credentials(url: str, proxy: str) -> ProxyAuthRequired:
    """The proxy's 407, to a forwarded request or to CONNECT: final, naming the proxy."""
    return ProxyAuthRequired(url, f"{Peer.of(proxy, proxy=True)} failed: {_ASKS_FOR_AUTH}")


def _tunnel_answer(exc: BaseException) -> tuple[int | None, str]:
    """The status a proxy answered CONNECT with, and its status line ("403 Filtered"), if
    ``exc`` is its refusal."""
    refusal = _inner(exc, OSError)
    match = _TUNNEL_REFUSED.match(str(refusal)) if refusal is not None else None
    return (int(match.group(2)), escaped(match.group(1).strip())) if match else (None, "")


def translated(url: str, exc: BaseException, peer: Peer) -> BlobdlError:
    """The blobdl error for ``exc``, raised while talking to ``peer`` about ``url``."""
    broken = _inner(exc, (InterimError, ChunkError))
    if broken is not None:  # a 101, endless 1xx, a chunk line: the server broke the protocol
        return BadResponse(url, str(broken))
    refused = _inner(exc, (ssl.SSLCertVerificationError, CertificateError))
    if refused is not None:
        return TLSError(url, f"TLS certificate of {peer.who} not trusted: {_verdict(refused)}")
    if _inner(exc, (NameResolutionError, socket.gaierror)) is not None:
        return ConnectionFailed(url, f"Could not resolve {'proxy' if peer.proxy else 'host'}: "
                                     f"{peer.host}")  # fmt: skip
    local = _inner(exc, OSError)
    if local is not None and local.errno in (errno.EMFILE, errno.ENFILE):
        return OutOfResources.refused(f"open a connection to {peer}", local)  # not the server's
    connecting = _inner(exc, NewConnectionError) is not None
    if connecting and local is not None and local.errno in _FORBIDDEN:
        return ConnectionForbidden(url, _connection_detail(exc, peer))
    tls = _inner(exc, ssl.SSLError)
    if tls is not None:
        return ConnectionFailed(url, f"TLS error with {peer}: {_ssl_reason(tls)}")
    return ConnectionFailed(url, _connection_detail(exc, peer))


# connect() refused by this machine's own rules (a firewall's OUTPUT chain, a cgroup's or a
# sandbox's filter), unlike ECONNREFUSED or ENETUNREACH: a peer restarting, a route coming
# back, both worth the retries.
_FORBIDDEN = frozenset({errno.EACCES, errno.EPERM})


def _connection_detail(exc: BaseException, peer: Peer) -> str:
    """What happened to the connection, in words."""
    reason = _reason(exc)
    if _inner(exc, (NewConnectionError, ConnectTimeoutError)) is not None:
        return f"Failed to connect to {peer}: {reason}"
    malformed = _inner(exc, http.client.HTTPException) is not None and _inner(exc, OSError) is None
    if peer.proxy and not malformed:  # a proxy's answer that is no HTTP is said as such below
        return f"{peer} failed: {reason}"
    if _inner(exc, (http.client.IncompleteRead, http.client.RemoteDisconnected)) is not None:
        return f"connection to {peer} closed early"
    if _inner(exc, (TimeoutError, Urllib3Timeout)) is not None:
        return f"no answer from {peer}: timed out"
    if malformed:
        return f"malformed response from {peer}: {reason}"
    return f"connection to {peer} failed: {reason}"


def _reason(exc: BaseException) -> str:
    """The innermost cause in words: an OSError's strerror ("Connection refused"), else the
    innermost error's own message (library messages, never its class), which may quote the
    server: escaped and cut; a status line that is none, quoted (it is all the server's)."""
    os_error = _inner(exc, OSError)
    if os_error is not None and os_error.strerror:
        return os_error.strerror
    if _inner(exc, (TimeoutError, Urllib3Timeout)) is not None:
        return "timed out"
    innermost = exc
    while True:
        inner = [a for a in innermost.args if isinstance(a, BaseException)]
        inner += [e for e in (innermost.__cause__,) if e is not None]
        if not inner:
            break
        innermost = inner[0]
    if isinstance(innermost, http.client.BadStatusLine) and innermost.args:
        return quoted(str(innermost.args[0]))  # the line as read (latin-1), or its repr if empty
    text = str(innermost.args[-1] if innermost.args else innermost)
    return escaped(text) or "no reason given"


def _verdict(refused: BaseException) -> str:
    """Why a certificate was refused, as OpenSSL or the host name check says it."""
    message = getattr(refused, "verify_message", None)  # set by OpenSSL's check only
    if isinstance(message, str) and message:
        return message
    return str(refused.args[-1] if refused.args else refused)


def _ssl_reason(error: ssl.SSLError) -> str:
    reason = getattr(error, "reason", None)  # e.g. WRONG_VERSION_NUMBER
    if isinstance(reason, str) and reason:
        return reason.lower().replace("_", " ")
    return error.strerror or str(error)


_Kind = TypeVar("_Kind", bound=BaseException)


def _inner(
    exc: BaseException, kind: type[_Kind] | tuple[type[_Kind], ...], depth: int = 0
) -> _Kind | None:
    """``exc`` or the first error of ``kind`` it wraps (urllib3's exceptions carry the
    original in ``args`` or as the cause), None if there is none."""
    if isinstance(exc, kind):
        return exc
    if depth > 4:
        return None
    inner = [a for a in exc.args if isinstance(a, BaseException)]
    inner += [e for e in (exc.__cause__, exc.__context__) if e is not None]
    for candidate in inner:
        found = _inner(candidate, kind, depth + 1)
        if found is not None:
            return found
    return None
