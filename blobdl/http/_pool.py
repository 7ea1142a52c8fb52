"""Connection pools: one per lane (or per probe), with our TLS context and proxy routes.

A pool never crosses a fork: each process (each lane) builds its own. TLS contexts are
built once per process, before workers fork, and inherited.
"""

from __future__ import annotations

import ssl
import threading
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3.exceptions import InsecureRequestWarning
from urllib3.util import make_headers
from urllib3.util.ssl_ import create_urllib3_context

from ..config import Settings, check_proxy_url
from ..errors import UsageError
from . import _trust
from ._connections import noting
from ._request import Response
from ._routes import ProxyRoutes
from ._set_up import SetUpSSLSocket
from ._translate import proxy_errors, wants_credentials

Gate = Callable[[str], None]  # called with each request's URL before it goes out


def make_pool(
    settings: Settings, *, kept: bool = False, gate: Gate | None = None
) -> urllib3.PoolManager:
    """A pool for one process. Never share one across a fork: build it in the child.

    Each request goes direct or through the proxy its URL calls for, so a probe may follow
    redirects across hosts that differ in proxy choice. Its https connections are verified
    with the run's one TLS context (``tls_context``), built at its first https connection if
    this process has none yet (``_OnDemand``).

    ``kept``: the pool a batch's seat keeps from one small download to the next. It holds
    one connection at most (to the origin it spoke to last: a budget counts it), and its
    read timeout is the stall timeout itself: no coordinator watches a small download.
    ``gate``: asked before each request, with its URL (a seat's: its budget moves with it
    when a redirect leads to another host); it may wait, or raise to refuse."""
    # The coordinator ends stalled workers after stall_timeout; the socket's own read timeout
    # is only the backstop for a worker whose coordinator is gone.
    read = settings.stall_timeout if kept else 2 * settings.stall_timeout
    timeout = urllib3.Timeout(connect=settings.connect_timeout, read=read)
    if not settings.verify_tls:
        # The user asked for it once; a warning per connection and per worker is noise.
        warnings.filterwarnings("ignore", category=InsecureRequestWarning)
    options: dict[str, Any] = {
        "num_pools": 1 if kept else 4,
        "maxsize": 1,
        "retries": False,
        "timeout": timeout,
        "ssl_context": _built(settings),
    }
    routes = ProxyRoutes.from_settings(settings)
    if not routes.configured():
        return noting(_OnDemand(settings, gate, **options))
    return noting(_ProxyRouter(routes, settings, options, gate))


# Contexts built in this process, by what they trust and present. Loading a CA store costs
# ~20-40 ms of CPU; built in the coordinator before it forks, a context is inherited by every
# worker instead of being loaded again in each of them (and for each connection).
_Key = tuple[bool, _trust.Roots, str | None, str | None, bool]
_CONTEXTS: dict[_Key, ssl.SSLContext] = {}
_UNVERIFIED = _trust.Roots("", "", "", "")
_BUILDING = threading.Lock()


def prepare_tls(settings: Settings, url: str) -> None:
    """Build the context ``url`` needs now, before any worker is forked (they inherit it):
    for an https URL. A plain http URL builds none: a run that never meets https never loads
    a CA store (a bundle named by ``REQUESTS_CA_BUNDLE``: ~40 ms before the first byte); one
    redirected to https builds it at its first https connection, once in each process that
    meets one (``_OnDemand``). What the command line names (``--ca-bundle``,
    ``--client-cert``) is loaded now all the same, so that a bad file is a usage error
    before any connection; a variable naming nothing is one too (checked, not loaded).

    A URL whose scheme goes through an https proxy builds the proxy's context too: every
    connection of the run is wrapped in it, in whichever process makes it (a batch's seats
    probe in its pool's). NO_PROXY is not asked: a run whose every URL is exempt loads one
    store more than it needs, once."""
    scheme = urlsplit(url).scheme
    if scheme == "https" or settings.ca_bundle or settings.client_cert:
        tls_context(settings)
    else:
        _checked(settings, proxy=False)
    if _https_proxy(settings, scheme):
        tls_context(settings, proxy=True)


def _https_proxy(settings: Settings, scheme: str) -> bool:
    """Whether ``scheme``'s URLs go through an https proxy (unless NO_PROXY exempts them). A
    proxy that cannot be read is not: it is refused where it is used, as ever."""
    proxy = ProxyRoutes.from_settings(settings).of_scheme(scheme)
    try:
        return proxy is not None and urlsplit(proxy).scheme == "https"
    except ValueError:
        return False


def tls_context(settings: Settings, *, proxy: bool = False) -> ssl.SSLContext:
    """urllib3's hardened context with our trust roots and client certificate, built once in
    this process (a bad file is a usage error, not a retried connection failure).

    ``proxy``: an https proxy's: verified as servers are, without our client certificate,
    its sockets bounding the set-up of a tunnel inside them (``_set_up``)."""
    key = _checked(settings, proxy)
    context = _CONTEXTS.get(key)
    if context is None:
        with _BUILDING:  # a process's threads (seats, lanes) making their pools at once
            context = _CONTEXTS.get(key)
            if context is None:
                context = _build_context(settings, key[1], key[2])
                if proxy:
                    context.sslsocket_class = SetUpSSLSocket
                _CONTEXTS[key] = context
    return context


def _built(settings: Settings) -> ssl.SSLContext | None:
    """The context this process has built for ``settings`` already, if any (its roots
    checked either way: a variable naming nothing is a usage error before any request)."""
    return _CONTEXTS.get(_checked(settings, proxy=False))


def _checked(settings: Settings, proxy: bool) -> _Key:
    """The key of ``settings``' context: what it trusts (checked) and presents."""
    cert = None if proxy else settings.client_cert
    roots = _trust.roots(settings.ca_bundle) if settings.verify_tls else _UNVERIFIED
    if settings.verify_tls:
        _trust.check(roots)
    return (settings.verify_tls, roots, cert, settings.client_key if cert else None, proxy)


class _OnDemand(urllib3.PoolManager):
    """A manager whose https pools are given the run's TLS context, built at the first one
    in this process that has none yet (``make_pool``): never urllib3's default, which is
    built, the system's CA store loaded, for every new connection, and knows nothing of a
    bundle named by a variable."""

    def __init__(self, settings: Settings, gate: Gate | None, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self._settings, self._gate = settings, gate

    # The same signature as PoolManager.urlopen, which overrides RequestMethods' loosely too.
    def urlopen(  # type: ignore[override]
        self, method: str, url: str, redirect: bool = True, **kw: Any
    ) -> Response:
        if self._gate is not None:
            self._gate(url)
        return super().urlopen(method, url, redirect=redirect, **kw)

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> urllib3.HTTPConnectionPool:
        if scheme == "https":
            context = dict(self.connection_pool_kw if request_context is None else request_context)
            if context.get("ssl_context") is None:
                context["ssl_context"] = tls_context(self._settings)
            request_context = context
        return super()._new_pool(scheme, host, port, request_context)


def _build_context(settings: Settings, roots: _trust.Roots, cert: str | None) -> ssl.SSLContext:
    mode = ssl.CERT_REQUIRED if settings.verify_tls else ssl.CERT_NONE
    context = create_urllib3_context(cert_reqs=mode)
    if settings.verify_tls:
        _trust.load(context, roots)
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


class _ProxyRouter(_OnDemand):
    """A PoolManager that sends each request direct or through its URL's proxy manager."""

    def __init__(
        self,
        routes: ProxyRoutes,
        settings: Settings,
        options: dict[str, Any],
        gate: Gate | None = None,
    ) -> None:
        super().__init__(settings, gate, **options)
        self._routes, self._options = routes, options
        self._managers: dict[str, urllib3.ProxyManager] = {}
        self._making = threading.Lock()  # a proxy's manager is made once, whichever thread asks

    # The same signature as PoolManager.urlopen, which overrides RequestMethods' loosely too.
    def urlopen(  # type: ignore[override]
        self, method: str, url: str, redirect: bool = True, **kw: Any
    ) -> Response:
        proxy = self._routes.proxy_for(url)
        if proxy is None:
            return super().urlopen(method, url, redirect=redirect, **kw)
        if self._gate is not None:  # a request through the proxy counts at its host too
            self._gate(url)
        with proxy_errors(url, proxy):  # a failure of the proxy's names the proxy
            response = self._manager(proxy, url).urlopen(method, url, redirect=redirect, **kw)
        if response.status == 407:  # a forwarded request's: the proxy's answer, not the server's
            response.close()
            raise wants_credentials(url, proxy)
        return response

    def _manager(self, proxy: str, url: str) -> urllib3.ProxyManager:
        manager = self._managers.get(proxy)
        if manager is None:
            check_proxy_url(proxy, self._routes.origin(url))
            with self._making:  # threads share a router (a pull's lookups): one manager each
                manager = self._managers.get(proxy)
                if manager is None:
                    manager = proxy_manager(proxy, self._settings, self._options)
                    self._managers[proxy] = manager
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
    proxy_tls = tls_context(settings, proxy=True) if parts.scheme == "https" else None
    manager = _Proxied(
        settings, None, bare, proxy_headers=headers, proxy_ssl_context=proxy_tls, **options
    )
    return noting(manager)


class _Proxied(_OnDemand, urllib3.ProxyManager):
    """The manager of one proxy: the TLS of its tunnels to servers is the run's context."""

    def connection_from_host(
        self,
        host: str | None,
        port: int | None = None,
        scheme: str | None = "http",
        pool_kwargs: dict[str, Any] | None = None,
    ) -> urllib3.HTTPConnectionPool:
        # A plain URL's requests are forwarded over one pool to the proxy (an https one for
        # an https proxy): its TLS is the proxy's, as urllib3 2.8 wraps it (from its
        # ``ProxyConfig``; earlier 2.x from the pool's), never a server's: else ``_new_pool``
        # would load the CA store again for a run that meets no https server.
        if scheme != "https" and self.proxy_ssl_context is not None:
            pool_kwargs = {**(pool_kwargs or {}), "ssl_context": self.proxy_ssl_context}
        return super().connection_from_host(host, port, scheme, pool_kwargs)
