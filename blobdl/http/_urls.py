"""URLs as blobdl reads them: which ones may be fetched, their origin, their userinfo.

urllib.parse reads a URL for us and urllib3 connects to it: ``url_problem`` refuses any URL
the two would read differently, so the host we check is the host we reach.
"""

from __future__ import annotations

import base64
import functools
import re
from urllib.parse import unquote, urljoin, urlsplit

from urllib3.util import parse_url

from .._redact import redact_url
from .._said import quoted
from ..errors import BadRedirect, UsageError

_DEFAULT_PORTS = {"http": 80, "https": 443}
# A header follows a request to another origin (scheme, host, port) only if it is on this
# list: any other one (Authorization, Cookie, X-Api-Key, Private-Token...) may be a secret.
CROSS_ORIGIN_SAFE = frozenset(
    {"accept", "accept-charset", "accept-language", "user-agent", "cache-control", "pragma"}
)
_CONTROL = re.compile(r"[\x00-\x20\x7f]")  # control characters and spaces


def check_url(url: str) -> None:
    """Refuse anything but an absolute http(s) URL with a host (the message never shows
    the URL's password)."""
    problem = url_problem(url)
    if problem:
        raise UsageError(f"invalid URL {redact_url(url)!r}: {problem}")


# Pure, and asked of the same URL by the batch, the probe and the download (thrice for a
# small blob, whose whole download costs a few times that): remembered.
@functools.lru_cache(maxsize=4096)
def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be fetched, or None. Besides scheme and host, urllib.parse (which
    we use to read the URL) and urllib3 (which connects) must read the same scheme, host,
    port and userinfo: ``http://a:1\\@b/`` is host b to one and host a to the other."""
    if _CONTROL.search(url):
        return "control characters or spaces"
    if (odd := _not_utf8(url)) is not None:
        return odd
    try:
        parts, theirs = urlsplit(url), parse_url(url)
        ours = (parts.scheme, parts.hostname, parts.port, _userinfo(parts.netloc))
    except ValueError:  # LocationParseError is a ValueError too
        return "cannot be parsed"
    if parts.scheme not in ("http", "https"):
        return "unsupported scheme (use http or https)"
    if not parts.hostname:
        return "no host"
    if "%" in parts.hostname:  # RFC 6874's fe80::1%25eth0: each parser reads the zone its way
        return "an IPv6 zone id (%25...) is not supported: give the address without it"
    if parts.port == 0:  # urllib3 reads 0 as no port at all: it would connect to 80 or 443
        return "port 0 (ports are 1 to 65535)"
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        return "the host is not a valid DNS name"
    their_host = (theirs.host or "").strip("[]").lower()
    if (theirs.scheme, their_host, theirs.port, theirs.auth) != (ours[0], host, *ours[2:]):
        return "urllib.parse and urllib3 read it differently (two parsers, two hosts)"
    return None


def _not_utf8(url: str) -> str | None:
    """A lone surrogate in ``url``, said as what it is. urllib3 would send it percent-encoded
    as its three bytes of no UTF-8 (``%ED%B3%A9``): another resource than the one meant by
    the byte of another encoding that os.fsdecode made it (U+DCE9, the byte E9: ``%E9``)."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(url[exc.start])
        if 0xDC80 <= code <= 0xDCFF:
            byte = code - 0xDC00
            return f"holds the byte {byte:02X}, which is not UTF-8: write it as %{byte:02X}"
        return f"holds U+{code:04X}, which is no character"
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


def headers_for_origin(
    headers: tuple[tuple[str, str], ...], given_for: str, sent_to: str
) -> tuple[tuple[str, str], ...]:
    """The ``headers`` given for the URL ``given_for`` that may go to ``sent_to``: all of
    them on its origin, only the harmless ones (``CROSS_ORIGIN_SAFE``) anywhere else."""
    if same_origin(given_for, sent_to):
        return headers
    return tuple(h for h in headers if h[0].lower() in CROSS_ORIGIN_SAFE)


def redirect_target(current: str, location: str, what: str = "redirect to") -> str:
    """The absolute URL a server's ``Location`` (or any URL it names, ``what`` says which)
    points to, checked like a user's URL; credentials a server put in it are dropped, never
    sent and never stored. A URL ``url_problem`` refuses is a ``BadRedirect`` of ``current``
    (final: the server would point there again)."""
    try:
        target = urljoin(current, location)
    except ValueError:
        target = location
    problem = url_problem(target)
    if problem:
        raise BadRedirect(current, f"{what} {quoted(redact_url(target))}: {problem}")
    return strip_userinfo(target)


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
