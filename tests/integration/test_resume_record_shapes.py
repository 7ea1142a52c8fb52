"""A resume record whose checksum is right (anyone can compute it) but whose fields could
not have been written by blobdl: every such record is ignored with a warning, and the run
starts over to the exact bytes; none ends the run as a bug."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blobdl import Downloader
from blobdl.config import MAX_PARTS
from blobdl.store._resume import _check, state_path
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, fast_settings, sha256_file
from tests.integration.test_resume import PART, interrupted_download

Make = Callable[..., Blob]


def _forge(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    body = json.loads(path.read_text())["state"]
    change(body)
    path.write_text(json.dumps({"check": _check(body), "state": body}))


def _zero_part(body: dict[str, Any]) -> None:
    body["parts"] = [[0, 0, 0], *body["parts"]]


def _many_parts(body: dict[str, Any]) -> None:
    size = body["size"]
    body["parts"] = [[i, i + 1, i] for i in range(size)]


@pytest.mark.parametrize(
    "change",
    [
        lambda body: body.update(etag=12345),
        lambda body: body.update(etag=["x"]),
        lambda body: body.update(last_modified={"a": 1}),
        lambda body: body.update(etag=None, last_modified=7),
        lambda body: body.update(url_key=None),
        _zero_part,
        lambda body: body.update(format=1),  # an older blobdl's
        lambda body: body.pop("url_key"),  # an older blobdl's: no URL key
    ],
    ids=[
        "etag-int",
        "etag-list",
        "lm-dict",
        "lm-int",
        "url-key-null",
        "zero-part",
        "format-1",
        "no-url-key",
    ],
)
def test_a_checksummed_record_of_fields_blobdl_never_writes_is_ignored(
    make: Make,
    server: ServerHandle,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    change: Callable[[dict[str, Any]], None],
) -> None:
    blob = make(8 * PART, seed=2601)
    out = tmp_path / "out"
    interrupted_download(blob, server, out)
    _forge(state_path(out), change)
    Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256


@pytest.mark.parametrize("validator", ["etag", "last_modified"], ids=["etag", "last-modified"])
def test_a_checksummed_record_whose_validator_is_no_header_value_is_ignored(
    make: Make, server: ServerHandle, tmp_path: Path, validator: str
) -> None:
    """The remote sends no validators on the rerun, so the record's would be pinned and
    sent (If-Range): one that is no header value (a line break in it) is no record."""
    blob = make(8 * PART, seed=2602)
    out = tmp_path / "out"
    interrupted_download(blob, server, out)
    # Only the ETag is sent when there is one: the Last-Modified is the record's only one.
    bad = {"etag": None, validator: '"a"\r\nX-Evil: 1'}
    _forge(state_path(out), lambda body: body.update(bad))
    server.set_faults({"path": "/files/*", "times": None, "action": "headers",
                       "drop": ["ETag", "Last-Modified"]})  # fmt: skip
    Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256


def test_a_record_nested_too_deep_for_the_json_reader_is_ignored(
    make: Make, server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As the finished file's source record (``_source.recorded``): brackets nested too
    deep are as unreadable as any other damage, not a bug at every rerun."""
    blob = make(8 * PART, seed=2603)
    out = tmp_path / "out"
    interrupted_download(blob, server, out)
    state_path(out).write_text("[" * 100_000 + "]" * 100_000)
    Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256
    assert "ignoring unreadable resume state" in caplog.text


def test_a_record_of_more_parts_than_a_plan_cuts_is_resumed_as_fewer(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A blob's worth of one-byte parts (524,288 here; the user's own file, checksummed):
    no plan cuts more than ``MAX_PARTS``, and taking each as a part kept the rerun busy for
    minutes bookkeeping them. The rerun resumes them as at most ``MAX_PARTS`` parts."""
    blob = make(8 * PART, seed=2604)
    out = tmp_path / "out"
    interrupted_download(blob, server, out)
    _forge(state_path(out), _many_parts)
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256
    assert result.parts <= MAX_PARTS, result
