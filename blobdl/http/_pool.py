"""Connection pools: one per lane (or per probe), with our TLS context and proxy routes.

A pool never crosses a fork: each process (each lane) builds its own. TLS contexts are
built once per process, before workers fork, and inherited.
"""

from __future__ import annotations

import ssl
import threading
import warnings
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


def make_pool(settings: Settings, *, kept: bool = False) -> urllib3.PoolManager:
    """A pool for one process. Never share one across a fork: build it in the child.

    Each request goes direct or through the proxy its URL calls for, so a probe may follow
    redirects across hosts that differ in proxy choice.

    ``kept``: the pool a batch's seat keeps from one small download to the next. It holds
    one connection at most (to the origin it spoke to last: a budget counts it), and its
    read timeout is the stall timeout itself: no coordinator watches a small download."""
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
        "ssl_context": tls_context(settings),
    }
    routes = ProxyRoutes.from_settings(settings)
    if not routes.configured():
        return noting(urllib3.PoolManager(**options))
    return noting(_ProxyRouter(routes, settings, options))


# Contexts built in this process, by what they trust and present. Loading a CA store costs
# ~20 ms of CPU; built in the coordinator before it forks, a context is inherited by every
# worker instead of being loaded again in each of them (and for each connection).
_Key = tuple[bool, _trust.Roots, str | None, str | None, bool]
_CONTEXTS: dict[_Key, ssl.SSLContext] = {}
_UNVERIFIED = _trust.Roots("", "", "", "")
_BUILDING = threading.Lock()


def prepare_tls(settings: Settings, url: str) -> None:
    """Build the context ``url`` may need now, before any worker is forked: for an https
    URL, whatever it trusts; for any URL, one whose roots are not OpenSSL's own (a bundle,
    a client certificate: a redirect may lead to https, and every pool is given it). Built
    later, in each process, every seat or lane making its pool at once would load it again."""
    tls_context(settings, system=urlsplit(url).scheme == "https")


def tls_context(
    settings: Settings, *, proxy: bool = False, system: bool = False
) -> ssl.SSLContext | None:
    """urllib3's hardened context with our trust roots and client certificate, loaded when the
    pool is made so that a bad file is a usage error now, not a retried connection failure.

    For the default (OpenSSL's own store, no client certificate) only when ``system`` is asked or
    ``prepare_tls`` built it already; else None, and urllib3 loads the system store itself,
    lazily, only for https connections (a plain http download never pays for it).

    ``proxy``: an https proxy's, always built: verified as servers are, without our client
    certificate, its sockets bounding the set-up of a tunnel inside them (``_set_up``)."""
    cert = None if proxy else settings.client_cert
    roots = _trust.roots(settings.ca_bundle) if settings.verify_tls else _UNVERIFIED
    if settings.verify_tls:  # checked even where urllib3 would load the store itself, later
        _trust.check(roots)
    key = (settings.verify_tls, roots, cert, settings.client_key if cert else None, proxy)
    context = _CONTEXTS.get(key)
    if context is None and (
        system or proxy or not (settings.verify_tls and roots.openssls_own() and not cert)
    ):
        with _BUILDING:  # a process's threads (seats, lanes) making their pools at once
            context = _CONTEXTS.get(key)
            if context is None:
                context = _build_context(settings, roots, cert)
                if proxy:
                    context.sslsocket_class = SetUpSSLSocket
                _CONTEXTS[key] = context
    return context


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


class _ProxyRouter(urllib3.PoolManager):
    """A PoolManager that sends each request direct or through its URL's proxy manager."""

    def __init__(self, routes: ProxyRoutes, settings: Settings, options: dict[str, Any]) -> None:
        super().__init__(**options)
        self._routes, self._settings, self._options = routes, settings, options
        self._managers: dict[str, urllib3.ProxyManager] = {}
        self._making = threading.Lock()  # a proxy's manager is made once, whichever thread asks

    # The same signature as PoolManager.urlopen, which overrides RequestMethods' loosely too.
    def urlopen(  # type: ignore[override]
        self, method: str, url: str, redirect: bool = True, **kw: Any
    ) -> Response:
        proxy = self._routes.proxy_for(url)
        if proxy is None:
            return super().urlopen(method, url, redirect=redirect, **kw)
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
    manager = urllib3.ProxyManager(
        bare, proxy_headers=headers, proxy_ssl_context=proxy_tls, **options
    )
    return noting(manager)
