"""The HTTP edge: pools, the probe, ranged GETs, response checks, error translation.

Everything urllib3 or the socket layer can raise becomes a ``blobdl`` error here, so the
coordinator and the workers reason about our errors only.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple
from urllib.parse import unquote, urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import InsecureRequestWarning, InvalidHeader, LocationParseError, SSLError
from urllib3.util import make_headers, parse_url
from urllib3.util.ssl_ import create_urllib3_context
from urllib3.util.ssl_match_hostname import CertificateError

from ._headers import (
    content_disposition_filename,
    parse_content_range,
    parse_length,
    parse_retry_after,
    range_header,
)
from ._plan import Span
from ._redact import redact_url
from ._remote import Remote
from ._retry import Retry
from ._sockets import noting, ready_at
from ._version import __version__
from .config import Settings, check_proxy_url
from .errors import (
    BadResponse,
    BlobdlError,
    ConnectionFailed,
    HTTPStatusError,
    RemoteChanged,
    TLSError,
    TooManyRedirects,
    UsageError,
)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# A user header follows a redirect to another origin (scheme, host, port) only if it is on
# this list: any other one (Authorization, Cookie, X-Api-Key, Private-Token...) may be a secret.
_CROSS_ORIGIN_SAFE = frozenset(
    {"accept", "accept-charset", "accept-language", "user-agent", "cache-control", "pragma"}
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Bytes of a redirect body we read to reuse its connection; a longer one costs a new connection.
_REDIRECT_BODY_LIMIT = 64 * 1024

Response = urllib3.BaseHTTPResponse


def check_url(url: str) -> None:
    """Refuse anything but an absolute http(s) URL with a host (the message never shows
    the URL's password)."""
    problem = url_problem(url)
    if problem:
        raise UsageError(f"invalid URL {redact_url(url)!r}: {problem}")


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be fetched, or None. Besides scheme and host, urllib.parse (which
    we use to read the URL) and urllib3 (which connects) must read the same scheme, host,
    port and userinfo: ``http://a:1\\@b/`` is host b to one and host a to the other."""
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return "control characters or spaces"
    try:
        parts, theirs = urlsplit(url), parse_url(url)
        ours = (parts.scheme, parts.hostname, parts.port, _userinfo(parts.netloc))
    except ValueError:  # LocationParseError is a ValueError too
        return "cannot be parsed"
    if parts.scheme not in ("http", "https"):
        return "unsupported scheme (use http or https)"
    if not parts.hostname:
        return "no host"
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        return "the host is not a valid DNS name"
    their_host = (theirs.host or "").strip("[]").lower()
    if (theirs.scheme, their_host, theirs.port, theirs.auth) != (ours[0], host, *ours[2:]):
        return "urllib.parse and urllib3 read it differently (two parsers, two hosts)"
    return None


def _userinfo(netloc: str) -> str | None:
    return netloc.rpartition("@")[0] if "@" in netloc else None


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) the way urllib3 will connect, default ports filled in."""
    parts = parse_url(url)
    scheme = (parts.scheme or "").lower()
    return scheme, (parts.host or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def same_origin(a: str, b: str) -> bool:
    return origin(a) == origin(b)


def strip_userinfo(url: str) -> str:
    """``url`` without ``user:pass@`` (for a URL that ``url_problem`` accepted)."""
    parts = urlsplit(url)
    info = _userinfo(parts.netloc)
    if info is None:
        return url
    scheme_end = url.index("//") + 2
    assert url[scheme_end:].startswith(parts.netloc), url  # url_problem refused the rest
    return url[:scheme_end] + url[scheme_end + len(info) + 1 :]


def lift_userinfo(
    url: str, headers: tuple[tuple[str, str], ...]
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Move ``user:pass@`` out of ``url`` into an ``Authorization: Basic`` header (unless the
    user gave an Authorization header, which wins), so that no URL downstream holds it.
    A URL ``url_problem`` refuses is returned as it is, to be refused with a redacted message."""
    if url_problem(url) is not None:
        return url, headers
    parts = urlsplit(url)
    if parts.username is None:
        return url, headers
    if not any(name.lower() == "authorization" for name, _ in headers):
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers = (*headers, ("Authorization", "Basic " + base64.b64encode(pair).decode()))
    return strip_userinfo(url), headers


def make_pool(settings: Settings) -> urllib3.PoolManager:
    """A pool for one process. Never share one across a fork: build it in the child.

    Each request goes direct or through the proxy its URL calls for, so a probe may follow
    redirects across hosts that differ in proxy choice."""
    # The coordinator ends stalled workers after stall_timeout; the socket's own read timeout
    # is only the backstop for a worker whose coordinator is gone.
    timeout = urllib3.Timeout(connect=settings.connect_timeout, read=2 * settings.stall_timeout)
    if not settings.verify_tls:
        # The user asked for it once; a warning per connection and per worker is noise.
        warnings.filterwarnings("ignore", category=InsecureRequestWarning)
    options: dict[str, Any] = {
        "num_pools": 4,
        "maxsize": 1,
        "retries": False,
        "timeout": timeout,
        "ssl_context": tls_context(settings),
    }
    routes = ProxyRoutes.from_settings(settings)
    if not routes.configured():
        return noting(urllib3.PoolManager(**options))
    return noting(_ProxyRouter(routes, settings, options))


# Contexts built in this process, by what they trust and present. Loading a CA store costs
# ~20 ms of CPU; built in the coordinator before it forks, a context is inherited by every
# worker instead of being loaded again in each of them (and for each connection).
_CONTEXTS: dict[tuple[bool, str | None, str | None, str | None], ssl.SSLContext] = {}


def prepare_tls(settings: Settings, url: str) -> None:
    """Build the context an https ``url`` needs now, before any worker is forked."""
    if urlsplit(url).scheme == "https":
        tls_context(settings, system=True)


def tls_context(
    settings: Settings, *, client_cert: bool = True, system: bool = False
) -> ssl.SSLContext | None:
    """urllib3's hardened context with our trust roots and client certificate, loaded when the
    pool is made so that a bad file is a usage error now, not a retried connection failure.

    For the default (system CAs, no client certificate) only when ``system`` is asked or
    ``prepare_tls`` built it already; else None, and urllib3 loads the system store itself,
    lazily, only for https connections (a plain http download never pays for it)."""
    cert = settings.client_cert if client_cert else None
    key = (settings.verify_tls, settings.ca_bundle, cert, settings.client_key if cert else None)
    context = _CONTEXTS.get(key)
    if context is None and (
        system or not (settings.verify_tls and not settings.ca_bundle and not cert)
    ):
        context = _CONTEXTS[key] = _build_context(settings, cert)
    return context


def _build_context(settings: Settings, cert: str | None) -> ssl.SSLContext:
    mode = ssl.CERT_REQUIRED if settings.verify_tls else ssl.CERT_NONE
    context = create_urllib3_context(cert_reqs=mode)
    try:
        if settings.verify_tls and settings.ca_bundle:
            context.load_verify_locations(cafile=settings.ca_bundle)
        elif settings.verify_tls:
            context.load_default_certs()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise UsageError(f"cannot load CA bundle {settings.ca_bundle!r}: {exc}") from None
    if cert:
        _load_client_cert(context, cert, settings.client_key)
    return context


def _load_client_cert(context: ssl.SSLContext, cert: str, key: str | None) -> None:
    def no_passphrase() -> str:
        # OpenSSL would otherwise prompt on the terminal, from every worker.
        raise UsageError(f"client key {key or cert!r} is encrypted; give an unencrypted key")

    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load client certificate {cert!r}: {exc}") from None


class ProxyRoutes(NamedTuple):
    """Which proxy, if any, each URL goes through."""

    explicit: str | None  # Settings.proxy: every scheme
    environ: dict[str, str]  # urllib.request.getproxies_environment(): scheme -> URL, "no"

    @classmethod
    def from_settings(cls, settings: Settings) -> ProxyRoutes:
        environ = urllib.request.getproxies_environment() if settings.trust_env else {}
        return cls(settings.proxy, environ)

    def configured(self) -> bool:
        """Whether some URL might go through a proxy."""
        return bool(self.explicit or self.environ.get("http") or self.environ.get("https"))

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL for ``url``, or None to connect directly."""
        parts = urlsplit(url)
        # NO_PROXY matching (suffixes, "*", host:port) as urllib does it, on host[:port];
        # the function is public in urllib.request but missing from typeshed.
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if bypass(parts.netloc.rpartition("@")[2], self.environ):
            return None
        proxy = self.explicit or self.environ.get(parts.scheme)
        if proxy and "://" not in proxy:
            proxy = "http://" + proxy  # HTTP_PROXY=host:3128 is common and means http
        return proxy


class _ProxyRouter(urllib3.PoolManager):
    """A PoolManager that sends each request direct or through its URL's proxy manager."""

    def __init__(self, routes: ProxyRoutes, settings: Settings, options: dict[str, Any]) -> None:
        super().__init__(**options)
        self._routes, self._settings, self._options = routes, settings, options
        self._managers: dict[str, urllib3.ProxyManager] = {}

    # The same signature as PoolManager.urlopen, which overrides RequestMethods' loosely too.
    def urlopen(  # type: ignore[override]
        self, method: str, url: str, redirect: bool = True, **kw: Any
    ) -> Response:
        proxy = self._routes.proxy_for(url)
        if proxy is None:
            return super().urlopen(method, url, redirect=redirect, **kw)
        return self._manager(proxy).urlopen(method, url, redirect=redirect, **kw)

    def _manager(self, proxy: str) -> urllib3.ProxyManager:
        manager = self._managers.get(proxy)
        if manager is None:
            manager = self._managers[proxy] = proxy_manager(proxy, self._settings, self._options)
        return manager

    def clear(self) -> None:
        super().clear()
        for manager in self._managers.values():
            manager.clear()


def proxy_manager(proxy: str, settings: Settings, options: dict[str, Any]) -> urllib3.ProxyManager:
    """A ProxyManager for ``proxy``; credentials in its URL become Proxy-Authorization
    (sent to the proxy only: on forwarded requests and on CONNECT, never through a tunnel)."""
    check_proxy_url(proxy)
    parts = urlsplit(proxy)
    headers: dict[str, str] = {}
    if parts.username is not None:
        auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers = make_headers(proxy_basic_auth=auth)
    bare = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    # An https:// proxy is verified like the servers are, without our client certificate.
    proxy_tls = tls_context(settings, client_cert=False) if parts.scheme == "https" else None
    manager = urllib3.ProxyManager(
        bare, proxy_headers=headers, proxy_ssl_context=proxy_tls, **options
    )
    return noting(manager)


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn urllib3, http.client and socket errors into blobdl errors."""
    try:
        yield
    except BlobdlError:
        raise
    except (SSLError, ssl.SSLError, CertificateError) as exc:
        if _certificate_refused(exc):
            raise TLSError(url, f"TLS verification failed: {exc}") from None
        raise ConnectionFailed(url, f"TLS error: {exc}") from None
    except LocationParseError:
        raise UsageError(f"invalid URL {redact_url(url)!r}: cannot be parsed") from None
    except InvalidHeader as exc:  # e.g. Content-Length: 12, 13
        raise BadResponse(url, f"invalid header: {exc}") from None
    except UnicodeError as exc:  # an IDNA failure in the socket layer; check_url should catch it
        raise UsageError(f"invalid host in {redact_url(url)!r}: {exc}") from None
    except TimeoutError as exc:
        raise ConnectionFailed(url, f"timed out: {exc}") from None
    except http.client.IncompleteRead as exc:
        raise ConnectionFailed(url, f"connection closed early: {exc!r}") from None
    except (Urllib3Error, http.client.HTTPException, OSError) as exc:
        if _certificate_refused(exc):  # e.g. a ProxyError wrapping the proxy's certificate
            raise TLSError(url, f"TLS verification failed: {exc}") from None
        raise ConnectionFailed(url, f"{type(exc).__name__}: {exc}") from None


def _certificate_refused(exc: BaseException, depth: int = 0) -> bool:
    """Whether the certificate (or the host name it names) was refused, by the error's type:
    ``ssl.SSLCertVerificationError`` or urllib3's ``CertificateError``, wherever urllib3
    wrapped it (its exceptions carry the original in ``args`` or as the cause)."""
    if isinstance(exc, (ssl.SSLCertVerificationError, CertificateError)):
        return True
    if depth > 4:
        return False
    inner = [a for a in exc.args if isinstance(a, BaseException)]
    inner += [e for e in (exc.__cause__, exc.__context__) if e is not None]
    return any(_certificate_refused(e, depth + 1) for e in inner)


def _base_headers(extra: tuple[tuple[str, str], ...]) -> dict[str, str]:
    # identity: a compressed body would make byte offsets meaningless (pip does the same).
    headers = {"User-Agent": f"blobdl/{__version__}", "Accept-Encoding": "identity"}
    headers.update(extra)
    return headers


def _request(pool: urllib3.PoolManager, url: str, headers: dict[str, str]) -> Response:
    with translate_errors(url):
        return pool.request(
            "GET", url, headers=headers, redirect=False, preload_content=False, decode_content=False
        )


def _drop_credentials(
    headers: tuple[tuple[str, str], ...], old: str, new: str
) -> tuple[tuple[str, str], ...]:
    if same_origin(old, new):
        return headers
    return tuple(h for h in headers if h[0].lower() in _CROSS_ORIGIN_SAFE)


def probe(pool: urllib3.PoolManager, url: str, settings: Settings) -> Remote:
    """Resolve redirects and learn size, range support and validators with one
    ``Range: bytes=0-0`` request per hop."""
    check_url(url)
    url, headers = lift_userinfo(url, settings.headers)
    current = url
    for _hop in range(settings.max_redirects + 1):
        sent = time.monotonic()
        response = _request(pool, current, {**_base_headers(headers), "Range": "bytes=0-0"})
        answer_time = time.monotonic() - max(sent, ready_at(response))
        target = None
        try:
            if response.status not in _REDIRECTS:
                return _remote_from(url, current, headers, response)._replace(
                    answer_time=answer_time
                )
            location = response.headers.get("Location")
            if not location:
                raise BadResponse(current, f"redirect {response.status} without Location")
            target = _redirect_target(current, location)
        finally:
            # Keep the socket only for a next hop that can use it: one kept alive for
            # another origin would be a second open socket beyond the connection budget.
            _finish_probe_response(
                response, reuse=target is not None and same_origin(current, target)
            )
        headers = _drop_credentials(headers, current, target)
        current = target
    raise TooManyRedirects(url, settings.max_redirects)


def _redirect_target(current: str, location: str) -> str:
    """The absolute URL a ``Location`` points to, checked like a user's URL; credentials a
    server put in it are dropped, never sent and never stored."""
    try:
        target = urljoin(current, location)
    except ValueError:
        target = location
    problem = url_problem(target)
    if problem:
        raise BadResponse(current, f"redirect to {redact_url(target)!r}: {problem}")
    return strip_userinfo(target)


def _finish_probe_response(response: Response, reuse: bool) -> None:
    """Reuse the connection after a small redirect body to the same origin; drop it after
    anything else (a redirect body may never end: we never read more than a small bounded
    amount)."""
    remaining = response.length_remaining
    if (
        reuse
        and response.status in _REDIRECTS
        and remaining is not None
        and remaining <= _REDIRECT_BODY_LIMIT
    ):
        try:
            response.drain_conn()  # reads at most `remaining` bytes: the length said so
            response.release_conn()
            return
        except Exception:
            pass
    response.close()


def _remote_from(
    url: str, final: str, headers: tuple[tuple[str, str], ...], response: Response
) -> Remote:
    status = response.status
    _require_identity(final, response)
    if status == 206:
        content_range = parse_content_range(response.headers.get("Content-Range", ""))
        if not content_range or content_range.span != Span(0, 1) or content_range.total is None:
            text = response.headers.get("Content-Range")
            raise BadResponse(final, f"probe got Content-Range {text!r}")
        size: int | None = content_range.total
        ranges = True
    elif status == 416:
        # bytes=0-0 is unsatisfiable only for an empty blob.
        content_range = parse_content_range(response.headers.get("Content-Range", ""))
        if not content_range or content_range.total != 0:
            raise HTTPStatusError(416, final)
        size, ranges = 0, True
    elif status == 200:
        size, ranges = content_length(response), False
    else:
        raise HTTPStatusError(status, final, retry_after(response))
    return Remote(
        url=url,
        final_url=final,
        size=size,
        ranges=ranges,
        etag=response.headers.get("ETag"),
        last_modified=response.headers.get("Last-Modified"),
        filename=content_disposition_filename(response.headers.get("Content-Disposition")),
        headers=headers,
    )


def content_length(response: Response) -> int | None:
    """The body length the response declares (None: unknown, e.g. chunked); a value that is
    no byte count is a ``BadResponse``: its body framing cannot be trusted."""
    if "chunked" in response.headers.get("Transfer-Encoding", "").lower():
        return None
    return parse_length(response.headers.get("Content-Length"), response_url(response))


def response_url(response: Response) -> str:
    return getattr(response, "url", None) or ""


def _require_identity(url: str, response: Response) -> None:
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise BadResponse(url, f"body is {encoding}-encoded although identity was asked")


def retry_after(response: Response) -> float | None:
    """Seconds the server asked us to wait (delta-seconds or an HTTP date), if any."""
    return parse_retry_after(response.headers.get("Retry-After"))


def _conditional_headers(remote: Remote) -> dict[str, str]:
    etag = remote.etag
    if etag and not etag.startswith("W/"):
        return {"If-Match": etag}
    if remote.last_modified:
        return {"If-Unmodified-Since": remote.last_modified}
    return {}


def open_range(pool: urllib3.PoolManager, remote: Remote, span: Span) -> Response:
    """GET ``span`` of the pinned remote; the response is checked before a byte is read."""
    headers = {
        **_base_headers(remote.headers),
        **_conditional_headers(remote),
        "Range": range_header(span.start, span.end),
    }
    response = _request(pool, remote.final_url, headers)
    try:
        _check_range_response(remote, span, response)
    except BaseException:
        response.close()
        raise
    return response


def _check_range_response(remote: Remote, span: Span, response: Response) -> None:
    url = remote.final_url
    if response.status == 412:
        raise RemoteChanged(url, "the pinned validator no longer matches (412)")
    if response.status == 200:
        raise BadResponse(url, "answered 200 (the whole blob) to a range request")
    if response.status != 206:
        raise HTTPStatusError(response.status, url, retry_after(response))
    _check_validators(remote, response)
    _require_identity(url, response)
    text = response.headers.get("Content-Range", "")
    content_range = parse_content_range(text)
    if content_range and content_range.total is not None and content_range.total != remote.size:
        raise RemoteChanged(url, f"size changed from {remote.size} to {content_range.total}")
    if not content_range or content_range.span != span:
        raise BadResponse(url, f"asked for {range_header(*span)}, got Content-Range {text!r}")
    length = content_length(response)
    if length is not None and length != span.length:
        raise BadResponse(url, f"Content-Length {length} for a {span.length}-byte range")


def _check_validators(remote: Remote, response: Response) -> None:
    for name, pinned in (("ETag", remote.etag), ("Last-Modified", remote.last_modified)):
        seen = response.headers.get(name)
        if pinned and seen and seen != pinned:
            raise RemoteChanged(remote.final_url, f"{name} changed from {pinned} to {seen}")


def open_whole(pool: urllib3.PoolManager, remote: Remote) -> Response:
    """GET the whole blob (the fallback for servers without range support)."""
    response = _request(pool, remote.final_url, _base_headers(remote.headers))
    try:
        if response.status != 200:
            raise HTTPStatusError(response.status, remote.final_url, retry_after(response))
        _require_identity(remote.final_url, response)
        _check_validators(remote, response)
        length = content_length(response)
        if remote.size is not None and length is not None and length != remote.size:
            raise RemoteChanged(remote.final_url, f"size changed from {remote.size} to {length}")
    except BaseException:
        response.close()
        raise
    return response


Reader = Callable[[memoryview], int]


def body_reader(response: Response) -> Reader:
    """A ``readinto``-style function over the body that returns as soon as *some* bytes
    arrived (so progress is visible on slow links) and copies straight into our buffer."""
    inner = getattr(response, "_fp", None)
    sock_file = getattr(inner, "fp", None)
    if isinstance(inner, http.client.HTTPResponse) and not inner.chunked and sock_file is not None:
        # A length-delimited (or read-to-close) body is the raw stream after the headers;
        # the caller never asks for more than the body holds.
        return sock_file.readinto1  # type: ignore[no-any-return]

    def read_decoded(view: memoryview) -> int:
        data = response.read1(len(view)) if hasattr(response, "read1") else response.read(len(view))
        view[: len(data)] = data
        return len(data)

    return read_decoded


def finish(response: Response, complete: bool) -> None:
    """Done with a ranged response: when its whole body was read, hand its connection back
    to the pool for the lane's next request; otherwise close it (unread bytes would be
    read as the next response)."""
    inner = getattr(response, "_fp", None)
    if not complete or not isinstance(inner, http.client.HTTPResponse) or inner.chunked:
        response.close()
        return
    # body_reader read the body past http.client's back: tell it the body is over, which
    # frees the connection for another request (http.client refuses one before that).
    inner.length = 0
    inner.read()
    response.release_conn()


class RawBody(NamedTuple):
    """A length-delimited body read straight off its socket, once ``buffered`` bytes
    (already read past the headers into http.client's buffer) are taken the ordinary way."""

    sock: socket.socket
    buffered: int
    tls: bool  # an ssl.SSLSocket: its bytes must be decrypted (never spliced)


def raw_body(response: Response) -> RawBody | None:
    """The socket under a length-delimited body (None for a chunked or decoded one, or a
    connection that is not a socket of ours, such as one through a TLS-in-TLS proxy).

    http.client's reader may already hold the first body bytes: ``peek`` tells how many
    (reading once from the socket if it holds none), so no byte is skipped or read twice."""
    inner = getattr(response, "_fp", None)
    sock_file = getattr(inner, "fp", None)
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if not isinstance(inner, http.client.HTTPResponse) or inner.chunked or sock_file is None:
        return None
    if not isinstance(sock, socket.socket) or type(sock) not in (socket.socket, ssl.SSLSocket):
        return None
    return RawBody(sock, len(sock_file.peek()), isinstance(sock, ssl.SSLSocket))


def resolve(url: str, settings: Settings, *, need_ranges: bool = False) -> Remote:
    """Probe ``url`` with the same retry policy as a part (the pool dies with the call:
    no socket of ours may leak into forked workers). ``need_ranges``: a 200 to the probe's
    range is a bad response (ranges were proven before), retried like one."""
    prepare_tls(settings, url)  # the probe's context, inherited by the workers later
    pool = make_pool(settings)
    retry = Retry.from_settings(settings)
    try:
        while True:
            try:
                remote = probe(pool, url, settings)
                if need_ranges and not remote.ranges:
                    raise BadResponse(remote.final_url, "answered 200 to the probe's range")
                return remote
            except BlobdlError as exc:
                retry = retry.increment(0)
                if not exc.retryable or retry.exhausted:
                    raise
                time.sleep(retry.delay(exc))
    finally:
        pool.clear()
