"""JSON from outside (a registry's manifest or token, the Docker config), checked field by
field before any of it is used: a hostile document is one error of ours, never a traceback.

``parse_json`` reads a document: no NaN or Infinity, no two keys of one object that are the
same but for case (Go's decoder matches a struct's fields without regard to case), and
nesting too deep for the parser is refused. With ``go=True`` (a manifest, which Ollama reads
with Go's decoder and whose blobs are then taken from Go's own reading, ``_catalog.read``)
keys that differ in case are let by, and invalid UTF-8 becomes U+FFFD byte by byte, as Go
reads it. ``check`` holds a value against a shape:

- a type (``str``, ``bool``) or ``object`` (anything);
- ``Int(low, high)``: an integer (not a bool, not 2.0) in that range;
- a compiled pattern: a string it matches in full (``$`` would let a final newline by);
- ``Opt(shape)``: absent or null, or the shape;
- ``[shape]``: a list of such;
- ``{key: shape}``: an object; the listed keys are read (as Go reads them, without regard
  to case, ``go_fold``) and the others ignored.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from .._said import quoted
from ..errors import BlobdlError


class Int(NamedTuple):
    low: int
    high: int


class Opt(NamedTuple):
    shape: object


Fail = Callable[[str], BlobdlError]  # makes the error for a message


class _Refused(ValueError):
    pass


def parse_json(body: bytes, what: str, fail: Fail, *, go: bool = False) -> Any:
    """The JSON value of ``body`` (UTF-8, as Go reads it: no other encoding is guessed), or
    ``fail("<what> is not JSON ...")`` raised."""
    try:
        text = go_text(body) if go else body.decode("utf-8")
        pairs = dict if go else _unique
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=pairs)
    except RecursionError:
        raise fail(f"{what} is nested too deeply") from None
    except _Refused as exc:
        raise fail(f"{what} is not JSON we accept: {exc}") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, an int of 5,000 digits
        raise fail(f"{what} is not JSON") from None


def _no_constant(name: str) -> None:
    raise _Refused(f"{name} is not a number")


def _per_byte(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)
    return "\ufffd", error.start + 1


codecs.register_error("blobdl-go", _per_byte)


def go_text(body: bytes) -> str:
    """``body`` as Go's ``encoding/json`` reads its strings: each byte of invalid UTF-8 is
    one U+FFFD (``utf8.DecodeRune``'s width 1), where Python's "replace" makes one of a
    truncated sequence. A lone surrogate escape (``\\ud800``) Go also reads as U+FFFD:
    ``go_string``."""
    return body.decode("utf-8", "blobdl-go")


_SURROGATE = re.compile("[\ud800-\udfff]")


def go_string(value: str) -> str:
    """A decoded JSON string as Go holds it: a lone surrogate (which Python keeps from a
    ``\\ud800`` escape, and could not print) is U+FFFD."""
    return _SURROGATE.sub("\ufffd", value)


# Unicode's simple case folding sends two non-ASCII letters to ASCII ones: the long s and the
# Kelvin sign. Python's casefold() also unfolds ligatures and the sharp s ("conﬁg" would be
# "config"), which Go never does: Ollama would read no config where we read one.
_GO_FOLD = {ord("ſ"): "S", ord("\u212a"): "K"}


def go_fold(key: str) -> str:
    """``key`` as Go's ``encoding/json`` folds it to match a struct field: ASCII letters in
    one case, the long s as "S" and the Kelvin sign as "K", every other character as it is
    (no other non-ASCII character folds to an ASCII one, and our fields are ASCII)."""
    return key.upper().translate(_GO_FOLD) if key.isascii() else _fold_each(key)


def _fold_each(key: str) -> str:
    # str.upper() would turn "ß" into "SS" and "ı" into "I": one character at a time,
    # and only ASCII ones.
    return "".join(c.upper() if c.isascii() else _GO_FOLD.get(ord(c), c) for c in key)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    folded = {go_fold(key) for key, _ in pairs}
    if len(folded) < len(pairs):
        raise _Refused("an object has the same key twice (ignoring case)")
    return dict(pairs)


def check(value: Any, shape: object, what: str, fail: Fail) -> Any:
    """``value`` if it has ``shape``, else ``fail("<what>: ...")`` raised; an object comes
    back with exactly the shape's keys (absent ones None)."""
    if isinstance(shape, Opt):
        return None if value is None else check(value, shape.shape, what, fail)
    if isinstance(shape, dict):
        return _object(value, shape, what, fail)
    if isinstance(shape, list):
        items = _expect(value, isinstance(value, list), "a list", what, fail)
        return [check(item, shape[0], f"{what}[{i}]", fail) for i, item in enumerate(items)]
    if isinstance(shape, Int):
        whole = type(value) is int and shape.low <= value <= shape.high
        return _expect(value, whole, f"a whole number from {shape.low} to {shape.high}", what, fail)
    if isinstance(shape, re.Pattern):
        matched = isinstance(value, str) and shape.fullmatch(value) is not None
        return _expect(value, matched, f"a string like {shape.pattern!r}", what, fail)
    assert isinstance(shape, type), shape
    return _expect(value, isinstance(value, shape), _kind(shape), what, fail)


def _object(value: Any, shape: dict[str, object], what: str, fail: Fail) -> dict[str, Any]:
    found = _expect(value, isinstance(value, dict), "an object", what, fail)
    by_fold = {go_fold(key): item for key, item in found.items()}
    return {
        key: check(by_fold.get(go_fold(key)), sub, f"{what}.{key}", fail)
        for key, sub in shape.items()
    }


def _expect(value: Any, ok: bool, expected: str, what: str, fail: Fail) -> Any:
    if not ok:
        given = "missing" if value is None else _kind(type(value))
        if isinstance(value, str):  # a string of the wrong shape: say which (cut, quoted)
            given = quoted(value, 80)
        raise fail(f"{what} must be {expected}, not {given}")
    return value


def _kind(kind: type) -> str:
    names = {str: "a string", int: "a number", float: "a number", bool: "true or false",
             list: "a list", dict: "an object", object: "anything"}  # fmt: skip
    return names.get(kind, kind.__name__)
