"""Manifests: what ``blobdl -i`` reads, one item per line, checked whole before anything
starts (see ``parse_manifest``)."""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..config import MAX_BYTES, check_header_name, check_path, parse_header
from ..errors import UsageError
from ..http._urls import check_url
from ..store._digest import parse_digest
from ._items import Item, Numbering, check_path_given, confine

MAX_LINE = 1 << 20  # characters of one line: an item with many headers is a few KB
# Bytes of one manifest read by ``read_manifest``: about 2 million items of ~130 bytes, whose
# items and scheduler state take a few GB; more is no batch one run holds (split it), and
# an endless stream of good lines (``yes URL | blobdl -i -``) ends here, not in MemoryError.
MAX_MANIFEST = 256 << 20
_CHUNK = 1 << 20  # bytes read at a time


def read_manifest(stream: BinaryIO) -> bytes:
    """A manifest's bytes from ``stream`` (a file, stdin, a device), a chunk at a time: a NUL
    byte, or a line too long to be one in any encoding, is a usage error naming its line as
    soon as it is read, so an endless stream (``-i /dev/zero``) is refused at once rather
    than held in memory until there is none left; so is a manifest past ``MAX_MANIFEST``."""
    data = bytearray()
    start = 0  # where the line being read starts
    for chunk in _chunks(stream):
        at = len(data)
        data += chunk
        if (nul := chunk.find(b"\0")) >= 0:
            raise UsageError(f"manifest line {_line_at(data, at + nul)}: holds a NUL byte")
        if len(data) > MAX_MANIFEST:
            raise UsageError(_TOO_LARGE)
        start = max(start, data.rfind(b"\n", at) + 1, data.rfind(b"\r", at) + 1)
        if len(data) - start > 4 * MAX_LINE:  # UTF-8: at most 4 bytes a character
            raise UsageError(f"manifest line {_line_at(data, start)}: {_TOO_LONG}")
    return bytes(data)


def _line_at(data: bytes | bytearray, offset: int) -> int:
    """The number of the line byte ``offset`` of ``data`` is on, counted as ``_lines`` ends
    them (LF, CRLF or CR), as an editor numbers them."""
    ends = data.count(b"\n", 0, offset) + data.count(b"\r", 0, offset)
    return ends - data.count(b"\r\n", 0, offset) + 1


_TOO_LONG = f"longer than {MAX_LINE:,} characters"
_TOO_LARGE = (
    f"manifest: larger than {MAX_MANIFEST >> 20} MiB (about 2,000,000 items); "
    "split it and run each part"
)
_WIDE_MARKS = (b"\xff\xfe", b"\xfe\xff")  # UTF-16's byte order marks (UTF-32LE's starts so)


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    """The stream's bytes, a chunk at a time, its first four looked at first (``_refuse_wide``)."""
    head = bytearray()
    while len(head) < 4 and (chunk := stream.read(_CHUNK)):
        head += chunk
    _refuse_wide(bytes(head[:4]))
    if head:
        yield bytes(head)
    while chunk := stream.read(_CHUNK):
        yield chunk


def _refuse_wide(head: bytes) -> None:
    """Text saved as UTF-16 or UTF-32 (Notepad, PowerShell's ``>``) is named as such, not as
    a NUL byte the user never typed: UTF-8 text never starts with those byte order marks,
    nor mixes NULs with characters in its first four bytes (NULs alone are no text)."""
    if head.startswith((b"\0\0\xfe\xff", b"\xff\xfe\0\0")):
        kind = "UTF-32"
    elif head.startswith(_WIDE_MARKS) or (b"\0" in head and head.strip(b"\0")):
        kind = "UTF-32" if head.count(b"\0") >= 3 else "UTF-16"
    else:
        return
    raise UsageError(f"manifest: not UTF-8 text ({kind}, it seems): save it as UTF-8")


def parse_manifest(text: str | bytes, base_dir: str | os.PathLike[str] | None = None) -> list[Item]:
    """One item per line: ``URL [PATH] [sha256:HEX]`` or a JSON object with the fields
    ``url``, ``path``, ``digest`` (strings), ``headers`` (a {name: value} map of strings),
    ``size`` (bytes, a hint: a blob said to be large skips the small-item path).
    Blank lines and lines starting with ``#`` are skipped. Anything else is a usage error
    naming its line: bytes that are not UTF-8, a NUL, more than ``MAX_LINE`` characters, a
    JSON field that is unknown, repeated or of the wrong type. With ``base_dir``, a path
    that would lead outside it is one too (the paths are returned as given)."""
    return numbered_items(text, base_dir)[0]


def numbered_items(
    text: str | bytes, base_dir: str | os.PathLike[str] | None = None
) -> tuple[list[Item], Numbering]:
    """``parse_manifest``'s items, and the line each came from: a batch's errors name its
    items by them (``Numbering``)."""
    if not isinstance(text, (str, bytes, bytearray)):
        raise UsageError(f"text must be the manifest's text (str or bytes), not "
                         f"{type(text).__name__}: open and read a file first")  # fmt: skip
    check_path("base_dir", base_dir)
    items, lines = [], []
    for number, line in enumerate(_lines(_manifest_text(text)), 1):
        line = line.strip(_BLANKS)
        if not line or line.startswith("#"):
            continue
        try:
            if "\0" in line:
                raise ValueError("holds a NUL byte")
            if len(line) > MAX_LINE:
                raise ValueError(_TOO_LONG)
            item = _json_item(line) if line.startswith("{") else _plain_item(line)
            if item.path is not None:
                check_path_given(item.path)
            if base_dir is not None and item.path is not None:
                confine(Path(base_dir), item.path)
            items.append(item)
            lines.append(number)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise UsageError(f"manifest line {number}: {exc}") from None
    return items, Numbering(tuple(lines))


def _lines(text: str) -> list[str]:
    """The lines an editor shows and numbers: ended by LF, CRLF or CR,
    not by the separators str.splitlines() also breaks at (\\v, \\f, \\x1c-\\x1e, NEL,
    U+2028, U+2029), which would number every later line wrong and cut a line in two."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _manifest_text(data: str | bytes) -> str:
    """A manifest's text: bytes must be UTF-8 (a byte order mark is allowed)."""
    if isinstance(data, str):
        return data
    _refuse_wide(data[:4])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:  # its offset counts from after the byte order mark
        mark = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
        raise UsageError(
            f"manifest line {_line_at(data, mark + exc.start)}: not UTF-8 text"
        ) from None


# What separates a plain line's fields, and pads it: what a user types between them.
# str.split() splits at every Unicode space too: a no-break space in a name copied from a
# web page or the Finder, a Japanese name's U+3000, cut the name in two. Those are a
# name's characters; the other characters str.split() took for blanks (vertical tab, form
# feed, the separators U+001C-U+001F, NEL, U+2028, U+2029) are invisible breaks no name
# means to hold, refused rather than written into a path.
_BLANKS = " \t"
_SEPARATOR = re.compile(f"[{_BLANKS}]+")
_BREAK = re.compile("[\x0b\x0c\x1c-\x1f\x85\u2028\u2029]")


def _plain_item(line: str) -> Item:
    if found := _BREAK.search(line):
        raise ValueError(f"holds U+{ord(found.group()):04X}, a break no field may hold "
                         "(fields are separated by spaces and tabs)")  # fmt: skip
    words = _SEPARATOR.split(line)
    if _shell_quoted(words[1:]):
        raise ValueError(_QUOTED)
    if len(words) > 3:
        raise ValueError(f"expected 'URL [PATH] [sha256:HEX]', got {len(words)} fields")
    url, rest = words[0], words[1:]
    digests = [w for w in rest if w.lower().startswith("sha256:")]
    paths = [w for w in rest if w not in digests]
    # A third field that is no digest (a bare hex one, copied from sha256sum) must not be
    # dropped: the blob would come unchecked.
    if len(digests) > 1:
        raise ValueError("expected 'URL [PATH] [sha256:HEX]': it gives two digests")
    if len(paths) > 1:
        raise ValueError(f"expected 'URL [PATH] [sha256:HEX]': {paths[1]!r} is not sha256:HEX")
    return _checked(Item(url, paths[0] if paths else None, digests[0] if digests else None))


_QUOTED = (
    "quotes and backslashes join no fields of a plain line: write a path with spaces "
    'or quotes in a JSON line, {"url": ..., "path": ...}'
)


def _shell_quoted(fields: list[str]) -> bool:
    """The fields after the URL are written as for a shell (a path copied from a script):
    one opens with a quote that one of them closes, or a backslash escapes the space after
    it. Such a path would be written with its quotes, or cut in two."""
    for at, field in enumerate(fields):
        if field[:1] in ("'", '"') and any(
            rest.endswith(field[0]) for rest in [field[1:], *fields[at + 1 :]]
        ):
            return True
        if field.endswith("\\") and at + 1 < len(fields):
            return True
    return False


_FIELDS = ("url", "path", "digest", "headers", "size")


def _json_item(line: str) -> Item:
    try:
        record = json.loads(line, object_pairs_hook=_unique_fields, parse_int=_whole)
    except json.JSONDecodeError as exc:  # its "line 1" is not the manifest's: the column only
        raise ValueError(f"not a JSON object: {exc.msg} at column {exc.colno}") from None
    unknown = sorted(set(record) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (the fields are {', '.join(_FIELDS)})")
    url, path, digest = (_string(record, name) for name in ("url", "path", "digest"))
    if url is None:
        raise ValueError("the field 'url' is missing")
    headers = record.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise ValueError("the field 'headers' must be an object of strings")
    named = tuple(_header(k, v) for k, v in (headers or {}).items())
    _once_each(named)
    return _checked(Item(url, path, digest, named, _size(record.get("size"))))


def _once_each(headers: tuple[tuple[str, str], ...]) -> None:
    """A ValueError if two keys name one header: a name is the same in any letter case, and
    only the last would be sent (``{"X-A": "1", "x-a": "2"}``, as an exact repeat is)."""
    seen: dict[str, str] = {}
    for name, _ in headers:
        first = seen.setdefault(name.lower(), name)
        if first != name:
            raise ValueError(f"the header {name!r} is given twice (as {first!r} too: a "
                             "header's name is the same in any letter case)")  # fmt: skip


def _header(name: str, value: object) -> tuple[str, str]:
    """The header a ``headers`` entry gives: its key is the whole name, so one holding a
    colon is refused, not cut there and another header sent ({"X-A:Authorization": "t"}
    as X-A); only what comes before the colon is shown (the rest may be a credential)."""
    if ":" not in name:  # no name at all, or a space in it: said as a name, not as -H text
        check_header_name(name)
    header = parse_header(f"{name}: {_header_value(name, value)}")
    if header[0] != name:
        raise ValueError(f"the header name {header[0] + ':'!r}... holds a colon (the rest is "
                         "not shown): the name is the key, its value the string")  # fmt: skip
    return header


def _whole(digits: str) -> int:
    """A JSON whole number; one too long to be a size is said so, not with int()'s advice to
    a Python programmer past 4,300 digits (sys.set_int_max_str_digits)."""
    if len(digits.lstrip("-")) > 100:  # a size's field says what it takes up to far more
        raise ValueError(f"a number of {len(digits.lstrip('-')):,} digits (no field is so large)")
    return int(digits)


def _unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (parsers differ on which repeat wins)."""
    record = dict(pairs)
    if len(record) != len(pairs):
        repeated = next(k for k in record if [p[0] for p in pairs].count(k) > 1)
        raise ValueError(f"the field {repeated!r} is given twice")
    return record


def _string(record: dict[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is not None and not (isinstance(value, str) and value):
        raise ValueError(f"the field {name!r} must be a non-empty string")
    if value is not None and "\0" in value:
        raise ValueError(f"the field {name!r} holds a NUL byte")
    return value


def _size(value: object) -> int | None:
    """The optional ``size`` hint: a whole number of bytes (true/false are no numbers)."""
    if value is not None and (type(value) is not int or not 0 <= value <= MAX_BYTES):
        raise ValueError(f"the field 'size' must be a whole number of bytes, at most {MAX_BYTES:,}")
    return value


def _header_value(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"the header {name!r} must have a string value")
    return value


def _checked(item: Item) -> Item:
    check_url(item.url)  # a bad URL is a usage error before anything starts
    if item.digest is not None:
        parse_digest(item.digest)
    return item
