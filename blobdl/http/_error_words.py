"""What a server says in an error answer, as a few words for the error line.

A refusal's body says why: S3 (and the stores that speak its dialect: GCS's XML API,
Azure Blob) an XML ``<Error>`` whose ``Code`` and ``Message`` say it ("AccessDenied:
Request has expired", a presigned URL past its expiry); a registry the OCI error list
(``{"errors": [{"code", "message"}]}``); GCS's JSON API and Azure's JSON ones an
``{"error": {"code", "message"}}`` object; a token server ``details``/``message``/``error``
text; a CDN a short text. Only those fields are read: an S3 error also echoes the request
(``StringToSign``, ``CanonicalRequest``, ``SignatureProvided``, ``AWSAccessKeyId``), and
Azure the string it signed, which are never shown. An HTML page, XML that is no
``<Error>``, a body that says nothing readable: no words at all. The words are made one
line, escaped and cut as any server text is (``blobdl._said``).

Only an error answer's first ``ERROR_BODY`` bytes are read, as far as they come within the
stall timeout: the words are a courtesy, and a 10 GB "error" is never read.
"""

from __future__ import annotations

import contextlib
import http
import json
import re
import time
from collections.abc import Iterable
from typing import Any

from .._redact import hidden, secrets_of
from .._said import escaped
from ..errors import BlobdlError, HTTPStatusError
from ._connections import spend
from ._request import Response, identity_encoded, read_upto, retry_after
from ._translate import translate_errors
from ._urls import CROSS_ORIGIN_SAFE

ERROR_BODY = 16 << 10  # bytes of an error answer read for its words; the rest is never read
MOST = 200  # characters of a server's words in an error line
ERRORS = 3  # OCI errors named, at most
_SPACES = re.compile(r"\s+")
# An XML error document: its prolog (declaration, comments) and then the root <Error>.
_XML_ERROR = re.compile(r"(?:<\?xml[^>]*\?>|<!--.*?-->|\s)*<Error>", re.DOTALL)
_XML_FIELD = {name: re.compile(f"<{name}>([^<]*)</{name}>") for name in ("Code", "Message")}


def status_error(
    url: str,
    response: Response,
    within: float,
    redirected: bool = False,
    sent: Iterable[tuple[str, str]] = (),
) -> HTTPStatusError:
    """The error status ``url`` answered with in ``response``, with what the server says
    of it (read within ``within`` seconds); the caller closes the response. ``redirected``:
    ``url`` is a target this request's own redirect led to, where a 403 may be an expired
    signature (``_failure.decide``). ``sent``: the user's headers the request carried,
    whose values (but the harmless ones') the words never show, nor ``url``'s secrets: a
    server may echo what it refused ("token X has expired", "signature X does not match")."""
    values = (value for name, value in sent if name.lower() not in CROSS_ORIGIN_SAFE)
    words = said(error_body(url, response, within), secrets_of(url, values))
    if _restates(words, response.status, response.reason):
        words = ""  # "404 Not Found" after "HTTP 404" tells nothing more
    return HTTPStatusError(
        response.status,
        url,
        retry_after(response),
        redirected,
        f"the answer says {words}" if words else "",
    )


def _restates(words: str, status: int, reason: str | None) -> bool:
    """Whether ``words`` say no more than the status line does (``404 Not Found``, ``Error
    403: Forbidden``, an nginx page's title): its code, its reason phrase, filler."""
    left = f" {_plain(words)} "
    phrases = {str(status), _plain(reason or ""), *_FILLER}
    with contextlib.suppress(ValueError):
        phrases.add(_plain(http.HTTPStatus(status).phrase))
    for phrase in sorted(phrases, key=len, reverse=True):
        if phrase:
            left = left.replace(f" {phrase} ", " ")
    return not left.strip()


def _plain(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


_FILLER = ("http", "error", "status", "code")


def error_body(url: str, response: Response, within: float) -> bytes:
    """The start of an error answer's body: its words are a courtesy, so a body that is
    encoded, breaks off or trickles past ``within`` seconds says nothing rather than failing."""
    if not identity_encoded(response.headers):
        return b""
    # Read to its end, the body would hand its connection back to the pool, which would
    # keep it open, idle, beside the connection the retry or a refreshed URL opens: one
    # more than the budget. An error answer's connection serves no other request: spent,
    # its pool closes it when it comes back, and never lends it to another thread's request
    # (a pull's lookups share a pool) that this close would then pull the socket from under.
    connection = response.connection
    spend(response)
    try:
        with translate_errors(url):
            return read_upto(url, response, ERROR_BODY, time.monotonic() + within)
    except BlobdlError:
        return b""
    finally:
        if connection is not None:
            connection.close()


def said(body: bytes, secrets: Iterable[str] = ()) -> str:
    """The words of an error answer's ``body`` (its first bytes), or "": each of
    ``secrets`` masked in them, before they are cut (a cut one would still show its start)."""
    text = body.decode("utf-8", "replace").lstrip("\ufeff").strip()
    if not text:
        return ""
    if text[0] == "<":  # an XML error, or an HTML page (which says nothing)
        return _one_line(hidden(_xml(text), secrets))
    if text[0] not in "{[":
        return _one_line(hidden(text, secrets))
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, cut short, or nested too deep
        return ""
    return _one_line(hidden(_oci(doc) or _json_error(doc) or _text(doc), secrets))


def said_in_header(value: str) -> str:
    """The words of a header that carries an error's text (the Hub's ``X-Error-Message``),
    as ``said`` gives a body's: one line, escaped, cut."""
    return _one_line(value)


def _xml(text: str) -> str:
    """``Code: Message`` of an XML ``<Error>`` (S3, GCS, Azure), read by pattern: a body cut
    at ``ERROR_BODY`` still says them, and no entity is ever expanded but the standard ones."""
    if not _XML_ERROR.match(text):
        return ""
    import html  # here: its entities table costs every run's start ~1.4 ms, for an error

    found = (_XML_FIELD[name].search(text) for name in ("Code", "Message"))
    return ": ".join(html.unescape(m.group(1)).strip() for m in found if m and m.group(1).strip())


def _oci(doc: Any) -> str:
    errors = _field(doc, "errors")
    if not isinstance(errors, list):
        return ""
    return "; ".join(w for w in map(_code_message, errors[:ERRORS]) if w)


def _json_error(doc: Any) -> str:
    """GCS's and Azure's JSON errors: ``{"error": {"code", "message"}}`` (GCS's code is the
    status again, a number: its ``status`` names it, where it has one)."""
    return _code_message(_field(doc, "error"))


def _code_message(error: Any) -> str:
    code = _field(error, "code")
    code = code if isinstance(code, str) else _field(error, "status")
    return ": ".join(w for w in (code, _field(error, "message")) if isinstance(w, str) and w)


def _text(doc: Any) -> str:
    fields = (_field(doc, name) for name in ("details", "message", "error"))
    return next((v for v in fields if isinstance(v, str) and v.strip()), "")


def _field(doc: Any, name: str) -> Any:
    return doc.get(name) if isinstance(doc, dict) else None


def _one_line(text: str) -> str:
    return escaped(_SPACES.sub(" ", text).strip(), MOST)
