"""``--json`` lines are valid UTF-8 JSON for any path the user gives: a path that is not UTF-8
(a byte from another encoding, passed on the command line) reached the lines as a lone
surrogate escape (``"o\\udcfe"``), which strict parsers (Rust's serde_json, many others)
refuse, so a consumer lost the whole line. Each such text is shown with U+FFFD where a byte
would not decode, and given exactly, as the base64 of its bytes, in ``<field>_b64``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import REPO, Blob, sha256_file


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_a_path_that_is_not_utf8_comes_out_as_valid_utf8_with_its_bytes_beside(
    make: Callable[..., Blob], tmp_path: Path
) -> None:
    blob = make(64 * 1024, seed=9101)
    raw = os.fsencode(tmp_path) + b"/o\xfe.bin"
    done = subprocess.run([sys.executable, "-m", "blobdl", blob.url, "-o", raw, "--json"],
                          capture_output=True, cwd=REPO, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sha256_file(Path(os.fsdecode(raw))) == blob.sha256
    records = [json.loads(line) for line in done.stdout.decode("utf-8").splitlines()]
    assert records and any(r.get("event") == "finished" for r in records), records
    for record in records:
        for text in _strings(record):
            text.encode("utf-8")  # a lone surrogate does not encode: a strict parser's refusal
        if "path" in record:
            assert record["path"].endswith("o\ufffd.bin"), record
            assert base64.b64decode(record["path_b64"]) == raw, record
