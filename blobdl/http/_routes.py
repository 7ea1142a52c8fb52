"""Which proxy, if any, each URL goes through: ``Settings.proxy``, else the environment's,
read as curl reads it, and NO_PROXY's exemptions, matched as curl matches them.

For a URL of scheme S: ``s_proxy``, then ``S_PROXY``, then ``all_proxy``, then
``ALL_PROXY``; an empty variable counts as unset. (curl never reads ``HTTP_PROXY`` in upper
case; we do, as blobdl always has, except in a CGI script, where a request's ``Proxy:``
header arrives as ``HTTP_PROXY``: "httpoxy", as Python's own reader guards.) An error names
the variable the proxy came from. NO_PROXY (``no_proxy`` first) is a list of names,
addresses, networks and ``*``: a name matches itself and every name under it (a leading or
trailing dot changes nothing); an IP address matches only that address (Python's matcher
took ``.0.0.1`` for a suffix of ``127.0.0.1``), a network (``10.0.0.0/8``, as curl 7.86+
and requests read it) every address in it; an entry with a port matches only that port.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

from ..config import Settings, proxy_url

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEMES = ("http", "https")


class EnvironmentProxy(NamedTuple):
    url: str
    variable: str  # the one it was read from, as spelled: "https_proxy", "ALL_PROXY"...


class ProxyRoutes(NamedTuple):
    """Which proxy, if any, each URL goes through."""

    explicit: str | None  # Settings.proxy: every scheme
    environ: dict[str, EnvironmentProxy]  # by scheme, from the environment
    no_proxy: str  # NO_PROXY's entries ("" if none, or the environment is not trusted)

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: Mapping[str, str] = os.environ
    ) -> ProxyRoutes:
        if not settings.trust_env:
            return cls(settings.proxy, {}, "")
        found = {scheme: _environment_proxy(scheme, environ) for scheme in _SCHEMES}
        proxies = {scheme: proxy for scheme, proxy in found.items() if proxy is not None}
        return cls(settings.proxy, proxies, _first(environ, "no_proxy", "NO_PROXY")[0])

    def configured(self) -> bool:
        """Whether some URL might go through a proxy."""
        return bool(self.explicit or self.environ)

    def origin(self, url: str) -> str:
        """Where ``url``'s proxy was given: "" for the explicit one, else its variable."""
        found = self.environ.get(urlsplit(url).scheme)
        return "" if self.explicit or found is None else f"${found.variable}"

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL for ``url``, or None to connect directly."""
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        if bypassed(self.no_proxy, parts.hostname or "", port):
            return None
        return self.of_scheme(parts.scheme)

    def of_scheme(self, scheme: str) -> str | None:
        """The proxy URL for URLs of ``scheme`` that NO_PROXY does not exempt (None: none)."""
        found = self.environ.get(scheme)
        proxy = self.explicit or (found.url if found else None)
        return proxy_url(proxy) if proxy else None


_BLANKS_TO_COMMAS = str.maketrans(" \t\r\n", ",,,,")


def bypassed(no_proxy: str, host: str, port: int | None) -> bool:
    """Whether NO_PROXY names ``host`` (a name, or an IP address without brackets) on
    ``port``: entries separated by commas (or blanks: spaces and tabs, as curl, and line
    breaks, as Python's own matcher), ``*`` alone naming every host."""
    if no_proxy.strip() == "*":
        return True
    for entry in no_proxy.translate(_BLANKS_TO_COMMAS).split(","):
        name, wanted = _split_port(entry)
        if name and (wanted is None or wanted == port) and _names(name, host):
            return True
    return False


def _names(entry: str, host: str) -> bool:
    address = _address(host)
    if address is not None:  # an address matches only itself, or a network holding it
        return _address(entry) == address or address in _network(entry)
    name, host = entry.strip(".").lower(), host.rstrip(".").lower()
    return bool(name) and (host == name or host.endswith("." + name))


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address (which has
    no port: its colons are its own) -> (host without brackets, port or None)."""
    host, port = entry, ""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    if port and not (port.isascii() and port.isdigit()):  # isdigit() alone holds for "²"
        return "", None  # not an entry that can name anything
    return host, int(port) if port else None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | tuple[()]:
    """The network ``text`` names (``10.0.0.0/8``; host bits set are ignored, as curl does),
    or nothing."""
    if "/" not in text:
        return ()
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return ()


def _environment_proxy(scheme: str, environ: Mapping[str, str]) -> EnvironmentProxy | None:
    names = [f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"]
    if scheme == "http" and "REQUEST_METHOD" in environ:
        names.remove("HTTP_PROXY")  # httpoxy: set by a request's header, not by the user
    value, variable = _first(environ, *names)
    return EnvironmentProxy(value, variable) if value else None


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str]:
    """The first of ``names`` set to something (value, name), else ("", "")."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value, name
    return "", ""
