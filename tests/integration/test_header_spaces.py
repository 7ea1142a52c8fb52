"""A header value's leading and trailing spaces and tabs are no part of it (RFC 9110 5.5:
the field value excludes the OWS around it), and every client trims them (curl, browsers):
a ``Location`` or a validator that a server pads is read as if it were not padded."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl import Downloader
from blobdl.errors import BadResponse
from faultserver.server import make_etag
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file

Make = Callable[..., Blob]
PADS = {"trailing spaces": "{}  ", "trailing tab": "{}\t", "both": " \t{} \t "}


@pytest.mark.parametrize("pad", PADS.values(), ids=PADS)
def test_a_padded_location_is_followed(
    make: Make, server: ServerHandle, tmp_path: Path, pad: str
) -> None:
    blob = make(3 * PART)
    server.set_faults({"path": "/files/padded.bin", "action": "redirect",
                       "location": pad.format(blob.url), "times": None})  # fmt: skip
    dest = tmp_path / "out.bin"
    Downloader(fast_settings(retries=0)).download(server.url("padded.bin"), dest)
    assert sha256_file(dest) == blob.sha256


@pytest.mark.parametrize("pad", PADS.values(), ids=PADS)
def test_a_validator_padded_on_the_probe_alone_is_the_same_validator(
    make: Make, server: ServerHandle, tmp_path: Path, pad: str
) -> None:
    """An edge that pads the ETag where another does not: the same ETag, never a change
    (nor an If-Range that no longer matches)."""
    blob = make(3 * PART)
    etag = make_etag(os.stat(server.root / blob.name))
    server.set_faults({"path": f"/files/{blob.name}", "action": "headers",
                       "set": {"ETag": pad.format(etag)}, "times": 1})  # fmt: skip
    dest = tmp_path / "out.bin"
    result = Downloader(fast_settings(retries=0)).download(blob.url, dest)
    assert sha256_file(dest) == blob.sha256
    assert result.retries == 0 and result.bytes_fetched == blob.size


@pytest.mark.parametrize("pad", PADS.values(), ids=PADS)
def test_a_padded_identity_encoding_is_identity(
    make: Make, server: ServerHandle, tmp_path: Path, pad: str
) -> None:
    blob = make(3 * PART)
    server.set_faults({"path": f"/files/{blob.name}", "action": "encoding",
                       "value": pad.format("identity"), "times": None})  # fmt: skip
    Downloader(fast_settings(retries=0)).download(blob.url, tmp_path / "out.bin")
    assert sha256_file(tmp_path / "out.bin") == blob.sha256


@pytest.mark.parametrize("pad", ["\xa0", "\x85", "\x0b", "\x1f"], ids=["nbsp", "nel", "vt", "us"])
def test_identity_padded_by_what_http_does_not_pad_with_is_another_coding_never_written(
    make: Make, server: ServerHandle, tmp_path: Path, pad: str
) -> None:
    """Python's str.strip() takes these away too; HTTP does not (a field value is trimmed of
    spaces and tabs only): ``identity<NBSP>`` names no coding we read."""
    blob = make(3 * PART)
    server.set_faults({"path": f"/files/{blob.name}", "action": "encoding",
                       "value": f"identity{pad}", "times": None})  # fmt: skip
    with pytest.raises(BadResponse, match="-encoded although identity was asked") as refused:
        Downloader(fast_settings(retries=0)).download(blob.url, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
    # Named as the server wrote it, its padding shown: not "identity-encoded although
    # identity was asked", which says nothing of what was wrong.
    shown = pad.encode("unicode_escape").decode("ascii")
    assert f"body is identity{shown}-encoded" in str(refused.value)
