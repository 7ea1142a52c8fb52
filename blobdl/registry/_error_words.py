"""What a registry (or its token server) says in an error answer, as a few words for the
error line: Ollama prints the whole body ("pull model manifest: 403: {...}"); we print the
OCI error body's codes and messages (``{"errors": [{"code", "message"}]}``), a token
server's ``details``/``message``/``error`` text, or a short plain-text body, cut and made
one line, escaped and cut as any server text is (``blobdl._said``). An HTML page, a body
that says nothing readable: no words at all.
"""

from __future__ import annotations

import re
from typing import Any

from .._said import escaped
from ..errors import BlobdlError
from ._schema import Opt, check, parse_json

MOST = 200  # characters of a registry's words in an error line
ERRORS = 3  # OCI errors named, at most
_OCI = {"errors": Opt([{"code": Opt(str), "message": Opt(str)}])}
_TEXT = {name: Opt(object) for name in ("details", "message", "error")}
_SPACES = re.compile(r"\s+")


class _Unreadable(BlobdlError):
    pass


def said(body: bytes) -> str:
    """The words of an error answer's ``body`` (its first bytes), or ""."""
    text = body.decode("utf-8", "replace").strip()
    if not text or text.startswith("<"):  # nothing, or an HTML/XML page
        return ""
    if text[0] not in "{[":
        return _one_line(text)
    try:
        doc = parse_json(body, "the error", _Unreadable)
        return _one_line(_oci(doc) or _text(doc))
    except _Unreadable:
        return ""


def _oci(doc: Any) -> str:
    errors = check(doc, _OCI, "the error", _Unreadable)["errors"] or []
    words = [": ".join(w for w in (e["code"], e["message"]) if w) for e in errors[:ERRORS]]
    return "; ".join(w for w in words if w)


def _text(doc: Any) -> str:
    fields = check(doc, _TEXT, "the error", _Unreadable)
    return next((v for v in fields.values() if isinstance(v, str) and v.strip()), "")


def _one_line(text: str) -> str:
    return escaped(_SPACES.sub(" ", text).strip(), MOST)
