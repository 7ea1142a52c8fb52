"""A server's text in a part's answer (after the probe) is shown as the probe's is: escaped
and cut (``blobdl._said``), on stderr, in ``--json`` and in a library caller's error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, run_cli
from tests.integration.test_server_text import (
    FLOOD,
    IN_HEADER,
    SHOWN_IN_HEADER,
    _library_error,
    _said,
)

Make = Callable[..., Blob]


@pytest.mark.parametrize("tail", ["", "9" * FLOOD], ids=["short", "flood"])
def test_a_parts_content_range_quoted_in_an_error_is_escaped_and_cut(
    make: Make, server: ServerHandle, tmp_path: Path, tail: str
) -> None:
    """The probe's answer is right; every part's states a Content-Range of the server's."""
    blob = make(4 * PART)
    value = f"bytes {PART}-{IN_HEADER}{tail}"
    rule = {"path": f"/files/{blob.name}", "action": "headers", "skip": 1,
            "set": {"Content-Range": value}, "times": None}  # fmt: skip
    said = []
    for mode in ([], ["--json"]):
        server.set_faults(rule)
        done = run_cli(blob.url, "-o", str(tmp_path / "out"), "--retries", "0", *mode)
        assert done.returncode != 0, done.stderr
        said.append(_said(done))
    server.set_faults(rule)
    said.append(_library_error(blob.url, tmp_path))
    for text in said:
        assert "got Content-Range" in text and "probe" not in text, text[:2000]
        assert SHOWN_IN_HEADER in text, text[:2000]
