"""A hostile server's text in blobdl's own output: said, escaped and cut short.

A status line, a header value quoted in an error, a name: what a server sends can hold
terminal escapes (a window title, a cleared screen, an OSC 8 link), a bare CR that prints
"OK" over our error, a NUL, a line break, a BiDi override, or a megabyte. Whatever of it
blobdl prints (the error line on stderr, the ``--json`` lines, a library error's ``str``)
holds none of these raw and only a bounded part of the text, escaped as Python's ``repr``
writes it (``\\x1b``), so a user still reads what the server said.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from blobdl import Downloader
from blobdl.errors import BlobdlError
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, run_cli, sha256_file

Make = Callable[..., Blob]

# C0 but tab and line feed (the line separator our output is split at), DEL, C1, and the
# BiDi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069).
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# What a server writes to drive a terminal: a window title, a cleared screen, a CR.
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\rOK\x00"
SHOWN_ESCAPES = r"\x1b]0;pwned\x07\x1b[2J\rOK\x00"
# In a header value a CR ends the line (and a NUL is refused): a CSI in C1 instead.
IN_HEADER = "\x1b]0;pwned\x07\x1b[2J\x9b2J"
SHOWN_IN_HEADER = r"\x1b]0;pwned\x07\x1b[2J\x9b2J"
FLOOD = 60_000  # under http.client's 64 KiB line limit: all of it reaches us
LONGEST_LINE = 1_000  # our words, the URL and the server's (cut) text


def _said(done: subprocess.CompletedProcess[str]) -> str:
    """The CLI's stderr and stdout, checked: no raw control character, no long line."""
    for stream in (done.stderr, done.stdout):
        assert not RAW_CONTROL.search(stream), stream[:2000]
        assert all(len(line) <= LONGEST_LINE for line in stream.splitlines()), stream[:2000]
    return done.stderr + done.stdout


def _both(url: str, tmp_path: Path, before: Callable[[], None] = lambda: None) -> list[str]:
    """What the CLI says of ``url``'s failure, as a line on stderr and as --json (each run
    after ``before``)."""
    said = []
    for mode in ([], ["--json"]):
        before()
        done = run_cli(url, "-o", str(tmp_path / "out"), "--retries", "0", *mode)
        assert done.returncode != 0, done.stderr
        said.append(_said(done))
    return said


def _library_error(url: str, tmp_path: Path) -> str:
    with pytest.raises(BlobdlError) as caught:
        Downloader(fast_settings(retries=0)).download(url, tmp_path / "lib")
    text = str(caught.value)
    assert not RAW_CONTROL.search(text) and len(text) <= LONGEST_LINE, text[:2000]
    return text


@pytest.mark.parametrize("tail", ["", "x" * FLOOD], ids=["short", "flood"])
def test_a_malformed_status_line_is_said_escaped_and_cut(
    make: Make, server: ServerHandle, tmp_path: Path, tail: str
) -> None:
    blob = make(PART)
    line = f"HTTP/1.1 2OO {ESCAPES}{tail}\r\n\r\n"
    server.set_faults({"path": f"/files/{blob.name}", "action": "raw", "send": line,
                       "close": True, "times": None})  # fmt: skip
    for said in [*_both(blob.url, tmp_path), _library_error(blob.url, tmp_path)]:
        assert "malformed response from 127.0.0.1" in said
        assert SHOWN_ESCAPES in said, said[:2000]


@pytest.mark.parametrize("tail", ["", "9" * FLOOD], ids=["short", "flood"])
def test_a_content_range_quoted_in_an_error_is_escaped_and_cut(
    make: Make, server: ServerHandle, tmp_path: Path, tail: str
) -> None:
    blob = make(2 * PART)
    value = f"bytes 0-{IN_HEADER}{tail}"
    server.set_faults({"path": f"/files/{blob.name}", "action": "headers",
                       "set": {"Content-Range": value}, "times": None})  # fmt: skip
    for said in [*_both(blob.url, tmp_path), _library_error(blob.url, tmp_path)]:
        assert "Content-Range" in said and SHOWN_IN_HEADER in said, said[:2000]


@pytest.mark.parametrize("tail", ["", "9" * FLOOD], ids=["short", "flood"])
def test_a_parts_content_range_quoted_in_an_error_is_escaped_and_cut(
    make: Make, server: ServerHandle, tmp_path: Path, tail: str
) -> None:
    """The probe's answer is right; every part's states a Content-Range of the server's."""
    blob = make(4 * PART)
    value = f"bytes {PART}-{IN_HEADER}{tail}"
    rule = {"path": f"/files/{blob.name}", "action": "headers", "skip": 1,
            "set": {"Content-Range": value}, "times": None}  # fmt: skip
    said = _both(blob.url, tmp_path, before=lambda: server.set_faults(rule))
    server.set_faults(rule)
    said.append(_library_error(blob.url, tmp_path))
    for text in said:
        assert "got Content-Range" in text and "probe" not in text, text[:2000]
        assert SHOWN_IN_HEADER in text, text[:2000]


@pytest.mark.parametrize("tail", ["", "a" * FLOOD], ids=["short", "flood"])
def test_a_location_refused_is_escaped_and_cut(
    make: Make, server: ServerHandle, tmp_path: Path, tail: str
) -> None:
    blob = make(PART)
    location = f"ftp://{IN_HEADER}/{tail}"
    server.set_faults({"path": f"/files/{blob.name}", "action": "redirect",
                       "location": location, "times": None})  # fmt: skip
    for said in [*_both(blob.url, tmp_path), _library_error(blob.url, tmp_path)]:
        assert "ftp://" in said and SHOWN_IN_HEADER in said, said[:2000]


@pytest.mark.parametrize("tail", ["", "x" * FLOOD], ids=["short", "flood"])
def test_a_transfer_encoding_refused_is_escaped_and_cut(
    make: Make, server: ServerHandle, tmp_path: Path, tail: str
) -> None:
    blob = make(PART)
    server.set_faults({"path": f"/files/{blob.name}", "action": "transfer_encoding",
                       "value": f"gzip{IN_HEADER}{tail}", "times": None})  # fmt: skip
    for said in [*_both(blob.url, tmp_path), _library_error(blob.url, tmp_path)]:
        assert "Transfer-Encoding" in said and SHOWN_IN_HEADER in said, said[:2000]


@pytest.mark.parametrize("tail", ["", "x" * FLOOD], ids=["short", "flood"])
def test_a_content_encoding_refused_is_escaped_and_cut(
    make: Make, server: ServerHandle, tmp_path: Path, tail: str
) -> None:
    blob = make(2 * PART)
    server.set_faults({"path": f"/files/{blob.name}", "action": "headers",
                       "set": {"Content-Encoding": f"gzip{IN_HEADER}{tail}"},
                       "times": None})  # fmt: skip
    for said in [*_both(blob.url, tmp_path), _library_error(blob.url, tmp_path)]:
        assert "-encoded" in said and SHOWN_IN_HEADER in said, said[:2000]


@pytest.mark.parametrize("header", ["ETag", "Last-Modified"])
@pytest.mark.parametrize("tail", ["", "x" * FLOOD], ids=["short", "flood"])
def test_a_validator_that_changed_is_escaped_and_cut(
    make: Make, server: ServerHandle, tmp_path: Path, tail: str, header: str
) -> None:
    """The probe pins the blob's validator; a part's answer that states another is a
    change, whose error quotes both."""
    blob = make(2 * PART)

    def changed_after_the_probe() -> None:
        server.set_faults({"path": f"/files/{blob.name}", "action": "headers", "skip": 1,
                           "set": {header: f'"v{IN_HEADER}{tail}"'}, "times": None})  # fmt: skip

    cli = _both(blob.url, tmp_path, before=changed_after_the_probe)
    changed_after_the_probe()
    for said in [*cli, _library_error(blob.url, tmp_path)]:
        assert f"{header} changed" in said and SHOWN_IN_HEADER in said, said[:2000]


# --- names the server chooses -------------------------------------------------------------

NAMES = {
    "escapes": ("a\x1b]0;pwned\x07b\x1b[2Jc.bin", "a]0;pwnedb[2Jc.bin"),
    "cr-lf": ("OK\rfile\n.bin", "OKfile.bin"),
    "bidi": ("evil\u202egnp.exe", "evilgnp.exe"),
    "c1": ("x\u0085\u009by.bin", "xy.bin"),
}


@pytest.mark.parametrize("name,kept", NAMES.values(), ids=NAMES.keys())
def test_a_server_name_loses_its_control_characters_on_disk_and_in_output(
    make: Make, server: ServerHandle, tmp_path: Path, name: str, kept: str
) -> None:
    """Content-Disposition's ``filename*``: the file is written under the name without its
    control characters (wget's default escapes them as %XX; curl -J keeps them)."""
    blob = make(PART)
    value = f"attachment; filename*=UTF-8''{quote(name)}"
    server.set_faults({"path": f"/files/{blob.name}", "action": "headers",
                       "set": {"Content-Disposition": value}, "times": None})  # fmt: skip
    for mode in ([], ["--json"]):
        done = run_cli(blob.url, "--retries", "0", *mode, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        _said(done)
        assert [p.name for p in tmp_path.iterdir()] == [kept]
        assert sha256_file(tmp_path / kept) == blob.sha256
        (tmp_path / kept).unlink()


@pytest.mark.parametrize("name,kept", NAMES.values(), ids=NAMES.keys())
def test_a_url_name_loses_its_control_characters_on_disk_and_in_output(
    make: Make, server: ServerHandle, tmp_path: Path, name: str, kept: str
) -> None:
    """The URL's last path segment, percent-decoded, is held to the same rule."""
    blob = make(PART)
    location = blob.url.rpartition("/")[0] + "/" + quote(name)
    (server.root / name).symlink_to(server.root / blob.name)
    try:
        done = run_cli(location, "--retries", "0", "--json", cwd=tmp_path)
    finally:
        (server.root / name).unlink()
    assert done.returncode == 0, done.stderr
    _said(done)
    assert [p.name for p in tmp_path.iterdir()] == [kept]
    assert sha256_file(tmp_path / kept) == blob.sha256
