"""The ``framing`` action: the reply a request would get, its body framed another way.

The server picks the bytes (the file slice the Range asks for, or the whole file when
``whole``); the rule picks how they are delimited, right or wrong, so one script fits the
probe and every part whatever range each asks. The message is sent whole and the
connection closed after it (a body longer than its framing says ends there), unless the
rule says ``keep``: then the next request is answered on it, after whatever was sent.

A spec (every key optional):

- ``body``: ``"length"`` (the default: ``Content-Length``), ``"close"`` (no length: the body
  ends with the connection) or ``"chunked"``.
- ``length``: the ``Content-Length`` sent, whatever the body: ``"right"``, ``"short"``,
  ``"long"`` (off by ``by``, default 1), ``"twice"`` (two fields of the right value),
  ``"list"`` (``"n, n"``), ``"list_other"`` (``"n, n-by"``) or ``"none"``; the default is
  ``"right"`` for ``body: length``, ``"none"`` otherwise.
- ``range`` (206 only): ``"right"``, ``"shifted"`` (first and last moved by ``by``, the
  bytes not) or ``"total"`` (another total: the size plus ``by``).
- ``by``: how far ``length`` and ``range`` are off (default 1).
- ``te``: the ``Transfer-Encoding`` value of a chunked body (default ``"chunked"``).
- ``cuts``: offsets in the body where a chunk ends (those outside it are ignored).
- ``line``: a chunk-size line, ``str.format``-ed with the chunk's size as ``n``
  (default ``"{n:x}\\r\\n"``); ``data_end``: what follows a chunk's data (default CRLF).
- ``bad``: ``{"chunk": i, "line": text}``: chunk ``i``'s size line sent as ``text``,
  formatted as ``line`` is (indexes past the last chunk fall on the last one);
  ``off``: ``{"chunk": i, "by": k}``: chunk ``i`` states ``k`` bytes more than it holds.
- ``last``: whether the last chunk (``0``) is sent (default true); ``trailers``: how many
  trailer fields follow it.
- ``junk``: bytes sent after the message (strings are latin-1, a character a byte).
- ``hold``: ``{"chunk": i, "seconds": s}``: the message goes out up to where chunk ``i``'s
  stated data ends (what a client reads as its data, ``off`` included), then nothing for
  ``s`` seconds, then the rest: a client holds the chunk's bytes, its end not yet checked.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any


def framed(
    status: int, headers: list[tuple[str, str]], body: bytes, spec: dict[str, Any]
) -> tuple[bytes, int]:
    """The whole message: status line, ``headers`` (their framing fields replaced) and
    ``body`` framed as ``spec`` says; and where in it the ``hold`` falls (its length: none)."""
    kind = spec.get("body", "length")
    by = int(spec.get("by", 1))
    kept = [(k, v) for k, v in headers if k.lower() not in ("content-length", "content-range")]
    fields = kept + _range(headers, spec.get("range", "right"), by)
    fields += _lengths(len(body), spec.get("length", "right" if kind == "length" else "none"), by)
    if kind == "chunked":
        fields.append(("Transfer-Encoding", str(spec.get("te", "chunked"))))
        payload, held = _chunked(body, spec)
    else:
        payload, held = body, len(body)
    if ends_with_close(spec):
        fields.append(("Connection", "close"))
    head = f"HTTP/1.1 {status} Framed\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields)
    junk = str(spec.get("junk", "")).encode("latin-1")
    start = len(head.encode("latin-1")) + 2
    message = head.encode("latin-1") + b"\r\n" + payload + junk
    return message, start + held if held < len(payload) else len(message)


def ends_with_close(spec: dict[str, Any]) -> bool:
    """Whether the message says its body ends with the connection (``Connection: close``)."""
    return spec.get("body") == "close" or spec.get("length") == "none"


def _range(headers: list[tuple[str, str]], how: str, by: int) -> list[tuple[str, str]]:
    stated = [v for k, v in headers if k.lower() == "content-range"]
    if not stated or how == "right":
        return [("Content-Range", v) for v in stated]
    span, _, total = stated[0].removeprefix("bytes ").partition("/")
    first, dash, last = span.partition("-")
    if not dash:  # bytes */size (a 416): no span to move, no total to change
        return [("Content-Range", v) for v in stated]
    if how == "shifted":
        return [("Content-Range", f"bytes {int(first) + by}-{int(last) + by}/{total}")]
    return [("Content-Range", f"bytes {first}-{last}/{int(total) + by}")]


def _lengths(n: int, how: str, by: int) -> list[tuple[str, str]]:
    values = {"right": [str(n)], "short": [str(max(n - by, 0))], "long": [str(n + by)],
              "twice": [str(n), str(n)], "list": [f"{n}, {n}"],
              "list_other": [f"{n}, {max(n - by, 0)}"], "none": []}  # fmt: skip
    return [("Content-Length", v) for v in values[how]]


def _chunked(body: bytes, spec: dict[str, Any]) -> tuple[bytes, int]:
    """The chunked payload, and the offset in it where ``hold`` falls."""
    ends = sorted({c for c in spec.get("cuts", []) if 0 < c < len(body)} | {len(body)})
    pieces = [body[a:b] for a, b in pairwise([0, *ends]) if b > a]
    line = str(spec.get("line", "{n:x}\r\n"))
    data_end = str(spec.get("data_end", "\r\n")).encode("latin-1")
    bad, off = spec.get("bad") or {}, spec.get("off") or {}
    hold = spec.get("hold") or {}
    out, held = b"", -1
    final = len(pieces) - 1
    for i, piece in enumerate(pieces):
        size = len(piece) + (int(off["by"]) if off and min(off["chunk"], final) == i else 0)
        if bad and min(bad["chunk"], final) == i:
            out += str(bad["line"]).format(n=len(piece)).encode("latin-1")
        else:  # never 0 where data follows: that is the last chunk, the rest trailers
            out += line.format(n=max(size, 1)).encode("latin-1")
        if hold and min(hold["chunk"], final) == i:
            held = len(out) + size
        out += piece + data_end
    if spec.get("last", True):
        trailers = "".join(f"X-Trailer-{t}: {t}\r\n" for t in range(int(spec.get("trailers", 0))))
        out += b"0\r\n" + trailers.encode() + b"\r\n"
    return out, min(held, len(out)) if held >= 0 else len(out)
