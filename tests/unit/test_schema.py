"""JSON from a server is read as Ollama's Go decoder reads it, or refused with one error."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from blobdl.errors import BadResponse
from blobdl.registry._schema import Int, Opt, check, parse_json


def fail(message: str) -> BadResponse:
    return BadResponse("http://registry/x", message)


BLOB = {"digest": re.compile(r"sha256:[0-9a-f]{64}"), "size": Int(0, 100), "from": Opt(str)}
DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a":' * 50_000, "nested too deeply"),
        (b'{"size": NaN}', "NaN is not a number"),
        (b'{"size": Infinity}', "Infinity is not a number"),
        (b'{"layers": 1, "LAYERS": 2}', "same key twice"),
        (b'{"size": 1, "\xc5\xbfize": 2}', "same key twice"),  # Go folds the long s to "s"
        (b'{"a": "\xff"}', "not JSON"),  # not UTF-8
        (b"\xef\xbb\xbf{}", "not JSON"),  # a byte order mark
        ('{"a": 1}'.encode("utf-16"), "not JSON"),
        (b'{"size": ' + b"9" * 5000 + b"}", "not JSON"),
        (b'{"a": 1} trailing', "not JSON"),
        (b"", "not JSON"),
    ],
)
def test_documents_we_do_not_read_are_one_error(body: bytes, why: str) -> None:
    with pytest.raises(BadResponse, match=why):
        parse_json(body, "the manifest", fail)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (
            {"digest": DIGEST, "size": "3"},
            "size must be a whole number from 0 to 100, not '3'",
        ),
        ({"digest": DIGEST, "size": 3.0}, "size must be a whole number"),
        ({"digest": DIGEST, "size": True}, "size must be a whole number"),
        ({"digest": DIGEST, "size": 101}, "size must be a whole number"),
        ({"digest": DIGEST}, "size must be a whole number from 0 to 100, not missing"),
        ({"digest": DIGEST + "\n", "size": 1}, "digest must be a string like"),
        ({"digest": DIGEST.upper(), "size": 1}, "digest must be a string like"),
        ({"digest": DIGEST, "size": 1, "from": 7}, "from must be a string, not a number"),
        (5, "the layer must be an object, not a number"),
        ([], "the layer must be an object, not a list"),
    ],
)
def test_a_field_of_the_wrong_type_is_named(value: Any, why: str) -> None:
    with pytest.raises(BadResponse, match=re.escape(why)):
        check(value, BLOB, "the layer", fail)


def test_keys_are_matched_as_go_matches_them_and_unknown_ones_ignored() -> None:
    value = parse_json(b'{"DIGEST": "%s", "Size": 7, "extra": [1]}' % DIGEST.encode(), "x", fail)
    assert check(value, BLOB, "the layer", fail) == {"digest": DIGEST, "size": 7, "from": None}
    # Unicode's simple folding, as Go's: the long s is an "s"; a ligature is not two letters
    value = parse_json('{"digeſt": "%s", "\u212aey": 1, "ſize": 7}'.encode() % DIGEST.encode(),
                       "x", fail)  # fmt: skip
    assert check(value, BLOB, "the layer", fail) == {"digest": DIGEST, "size": 7, "from": None}
    for key in ("digeﬆ", "digeﬅ", "dıgest", "d\u0130gest"):
        value = parse_json(json.dumps({key: DIGEST, "size": 1}).encode(), "x", fail)
        with pytest.raises(BadResponse, match=r"digest must be a string like .*, not missing"):
            check(value, BLOB, "the layer", fail)
    assert check({"layers": None}, {"layers": Opt([BLOB])}, "m", fail) == {"layers": None}
    with pytest.raises(BadResponse, match=re.escape("m.layers[1] must be an object")):
        check({"layers": [{"digest": DIGEST, "size": 1}, 5]}, {"layers": [BLOB]}, "m", fail)
