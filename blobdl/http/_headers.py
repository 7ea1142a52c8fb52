"""HTTP header text: the values we write (Range) and read (Content-Range, Content-Length,
Transfer-Encoding, Retry-After, Content-Disposition). Pure parsing, no I/O: a value that
does not parse is None, or a ``BadResponse`` where the body's framing would depend on it."""

from __future__ import annotations

import email.message
import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import NamedTuple

from ..config import MAX_BYTES
from ..errors import BadResponse
from ._span import Span


def range_header(start: int, end: int) -> str:
    """The ``Range`` value asking for ``[start, end)``."""
    return f"bytes={start}-{end - 1}"


# At most 19 ASCII digits: every offset fits an int64 (MAX_BYTES), and int() stays cheap.
_CONTENT_RANGE = re.compile(
    r"[ \t]*bytes[ \t]+(?:([0-9]{1,19})-([0-9]{1,19})|\*)/([0-9]{1,19}|\*)[ \t]*", re.IGNORECASE
)


class ContentRange(NamedTuple):
    """A parsed ``Content-Range``: ``span`` is None for ``bytes */total``."""

    span: Span | None
    total: int | None


def parse_content_range(text: str) -> ContentRange | None:
    """Parse ``bytes a-b/total`` (``b`` inclusive); None when malformed."""
    match = _CONTENT_RANGE.fullmatch(text)  # "$" would pass a final "\n"
    if not match:
        return None
    first, last, total_text = match.groups()
    total = None if total_text == "*" else int(total_text)
    if total is not None and total > MAX_BYTES:
        return None
    if first is None:
        return ContentRange(None, total)
    span = Span(int(first), int(last) + 1)
    if span.end <= span.start or span.end > (MAX_BYTES if total is None else total):
        return None
    return ContentRange(span, total)


def transfer_codings(value: str | None) -> tuple[str, ...] | None:
    """The codings a ``Transfer-Encoding`` value lists, lower-cased, in order (RFC 9112 6.1:
    a comma-separated list of tokens, with optional whitespace and empty elements); None
    when there is no such header. Each coding's parameters (``;q=...``) are dropped."""
    if value is None:
        return None
    codings = (item.partition(";")[0].strip(" \t").lower() for item in value.split(","))
    return tuple(coding for coding in codings if coding)


_LENGTH = re.compile(r"[ \t]*([0-9]{1,19})[ \t]*")


def parse_length(text: str | None, url: str) -> int | None:
    """A Content-Length value: None if absent, else a byte count up to MAX_BYTES."""
    if text is None:
        return None
    match = _LENGTH.fullmatch(text)
    if not match or int(match.group(1)) > MAX_BYTES:
        raise BadResponse(url, f"Content-Length {text[:40]!r} is not a byte count")
    return int(match.group(1))


def parse_retry_after(value: str | None) -> float | None:
    """A Retry-After value in seconds from now (never negative), None if unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value) if len(value) < 16 else None
    when = parse_http_date(value)
    if when is None:
        return None
    seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP-date (``Date``, ``Last-Modified``, ``Retry-After``), aware; None if unreadable."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except Exception:  # the email package raises various things on junk
        return None
    if when.tzinfo is None:  # RFC 9110: HTTP dates are GMT; "-0000" or no zone reads naive
        when = when.replace(tzinfo=UTC)
    return when


def content_disposition_filename(value: str | None) -> str | None:
    """The ``filename``/``filename*`` parameter of a Content-Disposition, if any."""
    if not value:
        return None
    message = email.message.Message()
    try:
        message["Content-Disposition"] = value
        name = message.get_filename()
    except Exception:  # e.g. filename*=idna''x: the email package raises
        return None  # anything; a name we cannot read is no name (the URL's is used)
    return name if isinstance(name, str) else None
