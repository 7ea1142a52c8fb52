"""What a URL may show of itself in messages, events and records: never a credential.

A URL can carry secrets in three places: ``user:pass@``, the query string of a presigned
or tokenised URL (``X-Amz-Signature``, ``sig``, ``token``...), and the fragment: shaped like
a query (``#access_token=``, where an OAuth redirect puts it) or bare (``#KEY``, where a
share link puts its decryption key). Such URLs are used as they are; whatever is shown to
a person or written to disk goes through ``redact_url``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

# What may come before an authority: a scheme, or "//" after anything else (a URL that is
# not quite one, refused, is shown too: scheme-relative as a web page writes it, its colon
# lost), after the spaces and control characters a pasted line starts with.
_BEFORE = r"[\x00-\x20]*(?:[A-Za-z][A-Za-z0-9+.-]*:/*|[^/?#@]*//)"
_USERINFO = re.compile(rf"^({_BEFORE})[^/?#]*@")
# Query parameters whose value is a credential, wherever the word is in the name:
# AWS/GCS/Azure/CloudFront/Alibaba/Tencent signatures and credentials, OAuth and API
# tokens, keys, passwords, session ids, HMACs, GitHub release assets' ``jwt``, Akamai's
# ``hdnts``/``__hdnea__``, Backblaze's ``Authorization``.
_SECRET_NAME = re.compile(
    r"sig|credential|token|secret|passw|pwd|auth|key|policy|session|hmac|jwt|hdnts|hdnea",
    re.IGNORECASE,
)
# ... and names of one only when they are the whole name, being words that other names
# hold (``code`` in ``encoding``, ``mac`` in ``machine``): an OAuth authorization ``code``,
# Cloudflare's ``verify`` and ``mac``, nginx secure_link's ``md5``, a ``hash``.
_SECRET_WHOLE_NAME = re.compile(r"_*(code|verify|mac|hash|md5)_*", re.IGNORECASE)
# A piece of a query that no name introduces is shown only when it reads as a word
# (``?download``, ``?dl``); a key pasted bare (``?Xq3Zr9...``) has no name to tell it by.
_WORD = re.compile(r"[a-z][a-z_-]{0,19}")
# The authority (after the first ``//``, up to the next ``/?#``: ``_BEFORE``) and what a
# host[:port] looks like
_AUTHORITY = re.compile(r"^[\x00-\x20]*[^/?#@]*//([^/?#@]*)")
_HOST_PORT = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(:[0-9]*)?")
_PAIR = re.compile(r"[^&;]+")
MASK = "***"


def redact_url(url: str) -> str:
    """``url`` with ``user:pass@`` and the values of credential query parameters masked."""
    url = _USERINFO.sub(rf"\1{MASK}@", url)
    url = _mask_misread_userinfo(url)
    # The fragment first: a ``?`` in it starts no query. It is never sent, but an OAuth
    # redirect puts its token there (``#access_token=``), in pairs as a query's.
    url, hashmark, fragment = url.partition("#")
    base, question, query = url.partition("?")
    shown_fragment = _pairs_shown(fragment, never_sent=True)
    return f"{base}{question}{_pairs_shown(query)}{hashmark}{shown_fragment}"


def _pairs_shown(query: str, *, never_sent: bool = False) -> str:
    """Each ``name=value`` pair of ``query`` shown, split at ``&`` and at ``;`` (the older
    separator, which some servers still split at); a piece that no name introduces masked
    unless it reads as a word, and a fragment's (``never_sent``) whatever it reads as: it
    is never sent, so showing it tells nothing of what was asked, and a share link keeps
    its key there, bare (``#KEY``)."""

    def shown(piece: str) -> str:
        name, equals, _ = piece.partition("=")
        if equals and name:
            return _shown(piece)
        return piece if not never_sent and _WORD.fullmatch(unquote(piece)) else MASK

    return _PAIR.sub(lambda pair: shown(pair.group()), query)


def _mask_misread_userinfo(url: str) -> str:
    """A password pasted with ``/``, ``?`` or ``#`` unescaped ends the authority early
    (``http://alice:pa/ss@host/`` is host alice, port "pa"): a URL refused, whose message
    must not show the password. So does one whose text before the delimiter is digits
    (``http://alice:1234/pw@host/``), read by every parser as host alice, port 1234, and
    a path: a well-formed URL, fetched, that fails and is shown. When the authority is no
    host[:port], or could be ``user:password`` (a ``:`` in it, no IPv6 brackets), and an
    ``@`` follows, everything up to the last ``@`` is masked: more than the password,
    perhaps (``https://h:8080/a@b`` shows as ``https://***@b``), as no reader can tell
    the two apart."""
    match = _AUTHORITY.match(url)
    if match is None or not misread_userinfo(url):
        return url
    return url[: match.start(1)] + MASK + url[url.rfind("@", match.end(1)) :]


def misread_userinfo(url: str) -> bool:
    """Whether ``url``'s authority may be the start of a ``user:password@`` whose password
    has an unescaped ``/``, ``?`` or ``#`` (``_mask_misread_userinfo``): its host and port
    are then no names to show either."""
    match = _AUTHORITY.match(_USERINFO.sub(rf"\1{MASK}@", url))  # a userinfo read as one
    if match is None or url.find("@", match.end(1)) < 0:
        return False
    authority = match.group(1)
    may_be_userinfo = ":" in authority and "[" not in authority
    return may_be_userinfo or not _HOST_PORT.fullmatch(authority)


def _shown(pair: str) -> str:
    name, equals, value = pair.partition("=")
    secret = _SECRET_NAME.search(unquote(name)) or _SECRET_WHOLE_NAME.fullmatch(unquote(name))
    if equals and value and secret:
        return f"{name}={MASK}"
    return pair


def redact_headers(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """Header names shown, values masked: any extra header may be a credential."""
    return tuple((name, MASK) for name, _ in headers)


def shown_fields(kind: str, fields: dict[str, object]) -> str:
    """``Kind(name=value, ...)`` as a dataclass shows itself, with ``url``, ``proxy`` and
    ``headers`` redacted (``repr`` of settings and items: jobs log them)."""
    shown = dict(fields)
    for name in ("url", "proxy"):
        if isinstance(shown.get(name), str):
            shown[name] = redact_url(str(shown[name]))
    if isinstance(shown.get("headers"), tuple):
        shown["headers"] = redact_headers(shown["headers"])  # type: ignore[arg-type]
    return f"{kind}({', '.join(f'{name}={value!r}' for name, value in shown.items())})"


# A secret shorter than this is not looked for in a server's words: masking every "pw" or
# "42" would garble them, and so short a credential is guessed, not read off an error line.
_SHORTEST = 4


def secrets_of(url: str, values: Iterable[str]) -> frozenset[str]:
    """What a server's words must not show of a request it answered (it may echo any of
    it: "token X is not valid"): what ``redact_url`` masks of ``url`` (its password, the
    values of its credential parameters, its bare pieces), and each of the header
    ``values`` sent with it, whole and as an error may quote it: an auth scheme's
    credentials alone, Basic's password decoded, a cookie's values."""
    found: set[str] = set()
    parts = urlsplit(url)
    found.add(parts.password or "")
    for text, never_sent in ((parts.query, False), (parts.fragment, True)):
        for pair in _PAIR.findall(text):
            if _pairs_shown(pair, never_sent=never_sent) != pair:
                name, equals, value = pair.partition("=")
                found.add(value if name and equals else pair)
    for value in values:
        found.update(_quoted_forms(value))
    found |= {unquote(secret) for secret in found}
    return frozenset(secret for secret in found if len(secret) >= _SHORTEST)


def _quoted_forms(value: str) -> set[str]:
    """``value``, and the pieces of it a server might echo alone; of ``Scheme credentials``
    the credentials only, so that an echo still says ``Bearer ***``."""
    scheme, _, credentials = value.strip().partition(" ")
    forms = {credentials.strip() or scheme}
    if scheme.lower() == "basic":
        try:
            pair = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            pair = ""
        forms |= {pair, pair.partition(":")[2]}
    for cookie in re.split(r"[;,]", value):
        forms.add(cookie.partition("=")[2].strip())
    return forms


def hidden(text: str, secrets: Iterable[str]) -> str:
    """``text`` (a server's words) with each of ``secrets`` in it masked, the longest
    first (a shorter one may be part of it)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
