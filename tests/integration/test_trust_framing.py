"""A body's framing is read one way, everywhere (trust issue #20, items 1 and 14).

``Transfer-Encoding`` is a list of tokens: ``chunked`` spelled any way the spec allows
(trailing whitespace, any case, empty list elements) is decoded, on the probe and on every
range request; a coding we cannot decode (``gzip, chunked``, ``identity``, a doubled
``chunked``) is a bad response, retried like one, and its body is never written. Interim
responses (1xx but 101) before the real one are skipped; a 101 nobody asked for is a bad
response.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl.errors import EXIT_INTEGRITY, EXIT_OK
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, run_cli, sha256_file

Make = Callable[..., Blob]
SIZE = 200_003  # four 64 KiB parts: the probe and four range requests
CLI = ["--min-part-size", "64KiB", "--max-part-size", "64KiB", "--connections", "2",
       "--retries", "1", "--max-backoff", "0.01", "-q"]  # fmt: skip


def every_request(**fault: object) -> dict[str, object]:
    return {"path": "/files/*", "times": None, **fault}


def fetch(blob: Blob, out: Path, *extra: str) -> tuple[int, str]:
    done = run_cli(blob.url, "-o", str(out), *CLI, *extra)
    return done.returncode, done.stderr


def fetch_alone(blob: Blob, tmp_path: Path) -> tuple[int, str, Path]:
    """``fetch`` into a directory of its own: what is left there is the download's."""
    out = tmp_path / "out" / "blob"
    out.parent.mkdir()
    return (*fetch(blob, out), out)


def assert_exact(code: int, stderr: str, blob: Blob, out: Path) -> None:
    assert code == EXIT_OK, stderr
    assert sha256_file(out) == blob.sha256


def assert_refused(code: int, stderr: str, out: Path, words: str) -> None:
    """Exit 4, one error line that names the problem, nothing at the destination and no
    byte of any refused body on disk (the run failed before a byte landed)."""
    assert code == EXIT_INTEGRITY, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blobdl: error:"), stderr
    assert words in lines[0], lines[0]
    assert sorted(p.name for p in out.parent.iterdir()) == [], "a refused body left a file"


# --- Transfer-Encoding ---------------------------------------------------------------------

SPELLINGS_OF_CHUNKED = ["chunked ", "chunked\t", "Chunked", "CHUNKED", ",chunked", "chunked, ,"]
UNREADABLE_CODINGS = ["gzip, chunked", "gzip", "identity", "chunked, chunked", "x-foo", ""]


@pytest.mark.parametrize(
    ("value", "readable"),
    [(v, True) for v in SPELLINGS_OF_CHUNKED] + [(v, False) for v in UNREADABLE_CODINGS],
)
def test_a_transfer_encoding_is_decoded_or_refused_never_written_raw(
    make: Make, server: ServerHandle, tmp_path: Path, value: str, readable: bool
) -> None:
    """On the probe and every range request: ``chunked`` however spelled is decoded; any
    other coding is refused, and not a byte of its body reaches the disk."""
    blob = make(SIZE, seed=2001)
    server.set_faults(every_request(action="transfer_encoding", value=value))
    code, stderr, out = fetch_alone(blob, tmp_path)
    if readable:
        assert_exact(code, stderr, blob, out)
        assert server.stats()["requests"] >= 5  # the probe and every part went through it
    else:
        assert_refused(code, stderr, out, "Transfer-Encoding")


def test_chunked_with_a_content_length_beside_it_follows_the_chunks(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """RFC 9112 6.3: Transfer-Encoding overrides Content-Length (here: the chunked body is
    longer than the length says, by its chunk lines)."""
    blob = make(SIZE, seed=2002)
    server.set_faults(every_request(action="transfer_encoding", value="chunked ", length=True))
    out = tmp_path / "blob"
    assert_exact(*fetch(blob, out), blob, out)


@pytest.mark.parametrize("value", ["gzip, chunked", "identity"])
def test_one_response_in_an_unreadable_coding_is_retried(
    make: Make, server: ServerHandle, tmp_path: Path, value: str
) -> None:
    """On the first range request (the probe's answer was fine): a bad response, retried."""
    blob = make(SIZE, seed=2004)
    server.set_faults({"path": "/files/*", "skip": 1, "action": "transfer_encoding",
                       "value": value})  # fmt: skip
    out = tmp_path / "blob"
    assert_exact(*fetch(blob, out), blob, out)


def test_the_whole_body_fallback_reads_the_same_framing(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A server without ranges (a 200, no length: one stream): ``Chunked `` decoded there too."""
    blob = make(SIZE, seed=2005)
    server.set_faults(every_request(action="transfer_encoding", value="Chunked ", whole=True))
    out = tmp_path / "blob"
    assert_exact(*fetch(blob, out), blob, out)


@pytest.mark.parametrize(
    "longer",
    [{"action": "transfer_encoding", "value": "chunked", "whole": True}, {"action": "no_length"}],
    ids=["chunked", "to the close"],
)
def test_a_whole_body_that_goes_on_past_the_size_the_probe_said_is_not_cut_to_fit(
    make: Make, server: ServerHandle, tmp_path: Path, longer: dict[str, object]
) -> None:
    """A server without ranges said 1000 bytes (the probe's 200); the GET's body states no
    length and goes on past them: it is another blob, and its first 1000 bytes are not the
    one the probe saw. No validator tells (the probe had none): only the body's end does."""
    blob = make(SIZE, seed=2006)
    said = {"action": "status", "status": 200, "body": "x" * 1000}
    server.set_faults({"path": "/files/*", **said}, every_request(**longer))
    code, stderr, out = fetch_alone(blob, tmp_path)
    assert code == EXIT_INTEGRITY, stderr
    assert "changed" in stderr and not out.exists()


# --- interim responses -----------------------------------------------------------------------


@pytest.mark.parametrize("statuses", [[103], [100, 103], [102, 103, 103, 199]])
def test_interim_responses_before_the_answer_are_skipped(
    make: Make, server: ServerHandle, tmp_path: Path, statuses: list[int]
) -> None:
    blob = make(SIZE, seed=2006)
    server.set_faults(every_request(action="interim", statuses=statuses))
    out = tmp_path / "blob"
    assert_exact(*fetch(blob, out), blob, out)
    assert server.stats()["requests"] >= 5


@pytest.mark.parametrize(
    ("statuses", "words"), [([101], "switched protocols (101)"), ([103] * 5000, "interim")]
)
def test_switching_protocols_unasked_or_endless_interim_responses_are_a_bad_response(
    make: Make, server: ServerHandle, tmp_path: Path, statuses: list[int], words: str
) -> None:
    blob = make(SIZE, seed=2008)
    server.set_faults(every_request(action="interim", statuses=statuses))
    code, stderr, out = fetch_alone(blob, tmp_path)
    assert_refused(code, stderr, out, words)


def test_one_switching_protocols_is_retried(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(SIZE, seed=2009)
    server.set_faults({"path": "/files/*", "skip": 2, "action": "interim", "statuses": [101]})
    out = tmp_path / "blob"
    assert_exact(*fetch(blob, out), blob, out)


# --- chunk lines -----------------------------------------------------------------------------
# A chunked body is framed by its chunk lines: ``chunk-size [chunk-ext] CRLF chunk-data CRLF``,
# the size ``1*HEXDIG`` (RFC 9112 7.1). http.client reads the size with ``int(line, 16)``,
# which also takes a sign, ``0x``, ``_`` and spaces (CPython gh-150751), and drops the two
# bytes after a chunk's data unlooked-at: a size of ``-1`` read the rest of the stream raw,
# chunk lines and all, as the body; data longer than its size lost two of its bytes.

SMALL = 1000  # one part: the probe (bytes=0-0), then one request (bytes=0-999); 0x3e8


def chunked(blob: Blob, server: ServerHandle, *lines: str, ranged: bool = True) -> str:
    """The part's answer (a 206 of the whole small blob; a 200 if not ``ranged``), its body
    the blob in one chunk a line of ``lines``, each formatted with its chunk's size
    (``{n:x}``), then the last chunk."""
    data = (server.root / blob.name).read_bytes().decode("latin-1")  # a character a byte
    cut = len(data) // len(lines)
    body = ""
    for i, line in enumerate(lines):
        piece = data[i * cut : (i + 1) * cut if i < len(lines) - 1 else None]
        body += line.format(n=len(piece)) + piece + "\r\n"
    status = f"206 Partial Content\r\nContent-Range: bytes 0-{SMALL - 1}/{SMALL}"
    head = f"HTTP/1.1 {status if ranged else '200 OK'}\r\nTransfer-Encoding: chunked"
    return f"{head}\r\n\r\n{body}0\r\n\r\n"


def answered(server: ServerHandle, send: str, skip: int = 1, times: int | None = None) -> None:
    """Requests past the first ``skip`` (the probe) answered with exactly ``send``: ``times``
    of them, or every one."""
    server.set_faults({"path": "/files/*", "skip": skip, "times": times, "action": "raw",
                       "send": send, "close": True})  # fmt: skip


WELL_FORMED = {
    "upper case": ["{n:X}\r\n"],
    "leading zeros": ["000{n:x}\r\n", "0{n:X}\r\n"],
    "extensions": ["{n:x};name=value\r\n", '{n:x} ; a="b;c"\r\n'],
    "white space before the line end": ["{n:x} \t\r\n"],
    "a bare LF": ["{n:x}\n"],
}
MALFORMED = {
    "negative": "-1\r\n",
    "signed": "+3e8\r\n",
    "0x": "0x3e8\r\n",
    "underscore": "3_e8\r\n",
    "white space before": " 3e8\r\n",
    "no digits": ";ext\r\n",
    "not hex": "3e8g\r\n",
    "past any blob": "1" + "0" * 16 + "\r\n",
}


@pytest.mark.parametrize("lines", WELL_FORMED.values(), ids=WELL_FORMED.keys())
def test_chunk_lines_in_any_form_the_grammar_allows_are_read(
    make: Make, server: ServerHandle, tmp_path: Path, lines: list[str]
) -> None:
    blob = make(SMALL, seed=2010)
    answered(server, chunked(blob, server, *lines))
    code, stderr, out = fetch_alone(blob, tmp_path)
    assert_exact(code, stderr, blob, out)


@pytest.mark.parametrize("ranged", [True, False], ids=["a range", "the whole body"])
@pytest.mark.parametrize("line", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_chunk_size_that_is_no_hex_number_is_a_bad_response(
    make: Make, server: ServerHandle, tmp_path: Path, line: str, ranged: bool
) -> None:
    """Not a byte of the body is written (as http.client read ``-1``, the stream raw), on
    a range and on the whole-body fallback (every answer a 200: the probe's too)."""
    blob = make(SMALL, seed=2011)
    answered(server, chunked(blob, server, line, ranged=ranged), skip=1 if ranged else 0)
    code, stderr, out = fetch_alone(blob, tmp_path)
    assert_refused(code, stderr, out, "chunk")


def test_chunk_data_longer_than_its_size_is_refused_and_asked_again(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A size two short of its chunk's data, no CRLF after the data, then a chunk of other
    bytes: http.client took the data's last two bytes for the CRLF and wrote the other
    bytes in their place. Refused there instead: the retry asks for the two bytes left."""
    blob = make(SMALL, seed=2012)
    data = (server.root / blob.name).read_bytes().decode("latin-1")
    body = f"{SMALL - 2:x}\r\n{data}2\r\nab\r\n0\r\n\r\n"
    head = f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-{SMALL - 1}/{SMALL}"
    answered(server, f"{head}\r\nTransfer-Encoding: chunked\r\n\r\n{body}", times=1)
    code, stderr, out = fetch_alone(blob, tmp_path)
    assert_exact(code, stderr, blob, out)
    assert server.stats()["requests"] == 3  # the probe, the bad answer, the retry


@pytest.mark.parametrize("trailers", [3, 100, 101, 5000])
def test_trailers_past_the_bound_of_a_head_are_a_bad_response(
    make: Make, server: ServerHandle, tmp_path: Path, trailers: int
) -> None:
    """A body of unknown size (a chunked 200, read to its end): its trailer lines were read
    without a count, each up to 64 KiB, so a server that kept sending them held the
    download for as long as it liked, bytes flowing, and no stall ended it. They are
    bounded as a head's fields are (100, http.client's own bound); a few are read as ever.
    (A range's body stops at its stated end: its trailers are never read.)"""
    blob = make(SMALL, seed=2014)
    fields = "".join(f"X-Trailer-{n}: {n}\r\n" for n in range(trailers))
    whole = chunked(blob, server, "{n:x}\r\n", ranged=False)
    answered(server, whole.removesuffix("\r\n") + fields + "\r\n", skip=0)
    code, stderr, out = fetch_alone(blob, tmp_path)
    if trailers <= 100:
        assert_exact(code, stderr, blob, out)
    else:
        assert_refused(code, stderr, out, "trailer")


def test_a_part_of_a_blob_of_unknown_size_is_named_without_an_end(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """No size was stated (every answer a chunked 200): the part is "bytes 0-", as a Range
    names an open end, never "bytes 0--2"."""
    blob = make(SMALL, seed=2013)
    answered(server, chunked(blob, server, "-1\r\n", ranged=False), skip=0)
    code, stderr, _ = fetch_alone(blob, tmp_path)
    assert code == EXIT_INTEGRITY and "part 0 (bytes 0-) failed after 2 attempts" in stderr


@pytest.mark.parametrize("cuts", [[100, 600], [100, 990]], ids=["refused later", "never refused"])
def test_a_chunk_that_states_more_than_its_data_is_never_written(
    make: Make, server: ServerHandle, tmp_path: Path, cuts: list[int]
) -> None:
    """Three chunks, the second stating 20 bytes more than it holds: what is read as its
    data ends with the CRLF after it, the next size line and the next chunk's first bytes.
    They were written as the blob's; then the check of the chunk's end refused the answer
    and the retry asked for the rest only, past them (exit 0, wrong bytes); or, when the
    range ended within them, nothing checked the chunk's end at all."""
    blob = make(SMALL, seed=2015)
    spec = {"body": "chunked", "cuts": cuts, "off": {"chunk": 1, "by": 20}}
    server.set_faults({"path": "/files/*", "skip": 1, "action": "framing", "spec": spec})
    code, stderr, out = fetch_alone(blob, tmp_path)
    assert code != EXIT_OK or sha256_file(out) == blob.sha256, f"exit 0, wrong bytes: {stderr}"
