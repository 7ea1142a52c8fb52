"""Hostile header values and hostile settings, fuzzed: each is used or refused as a blobdl
error, never a raw exception or a huge allocation. Pure parsers: no server, no process."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import select
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobdl import Item, Settings, download_many, parse_manifest
from blobdl.batch import _manifest
from blobdl.batch._cluster_connect import local_workers
from blobdl.batch._manifest import MAX_LINE, read_manifest
from blobdl.cli import build_parser, settings_from
from blobdl.config import MAX_PARTS, MAX_SECONDS, parse_header
from blobdl.engine._plan import part_count, plan
from blobdl.errors import BadResponse, BlobdlError, UsageError
from blobdl.http._headers import (
    content_disposition_filename,
    parse_content_range,
    parse_length,
    parse_retry_after,
    transfer_codings,
)
from tests.strategies import hostile_manifest_texts

HUGE_TOTAL = 2**62


def test_part_count_is_computed_not_materialised() -> None:
    tiny = Settings(min_part_size=1, max_part_size=1, target_parts=1)
    assert part_count(HUGE_TOTAL, tiny) == MAX_PARTS  # the cap: parts grow past the maximum
    for size in (0, 1, 7, 10**6 + 3):
        for s in (tiny, Settings(parts=3), Settings(min_part_size=2, max_part_size=5)):
            assert part_count(size, s) == len(plan(size, s))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**62),
    st.integers(1, 2**40),
    st.integers(1, 2**40),
    st.none() | st.integers(1, MAX_PARTS),
    st.integers(1, MAX_PARTS),
)
def test_no_plan_has_more_parts_than_the_cap(
    size: int, low: int, high: int, parts: int | None, target: int
) -> None:
    """However the parts are asked for (--parts, sizes, a target), a blob is never cut into
    more than MAX_PARTS: the coordinator's cost per checkpoint grows with them (issue #20)."""
    s = Settings(min_part_size=min(low, high), max_part_size=max(low, high), parts=parts,
                 target_parts=target)  # fmt: skip
    count = part_count(size, s)
    assert count <= MAX_PARTS
    if size <= 10**7:  # small enough to cut for real: the plan tiles the blob
        spans = plan(size, s)
        assert len(spans) == count and sum(span.length for span in spans) == size


# Headers blobdl sets itself (the range it needs, the validator it pinned, identity), and
# those that frame a request. Given by a user, one would be sent beside ours (a `range`
# beside our `Range`: the answer is for bytes we did not ask for), replace ours
# (`Accept-Encoding: gzip`), or desync a connection a batch keeps from item to item (a
# `Content-Length` on a GET with no body: the server reads the next item's request as it).
OURS = ("Range", "range", "If-Range", "IF-MATCH", "If-None-Match", "If-Modified-Since",
        "If-Unmodified-Since", "Accept-Encoding", "TE", "Content-Length", "transfer-encoding",
        "Connection", "Keep-Alive", "Upgrade", "Expect", "Trailer")  # fmt: skip


@pytest.mark.parametrize("name", OURS)
def test_a_header_blobdl_sets_itself_or_that_frames_a_request_is_refused_in_words(
    name: str,
) -> None:
    manifest = json.dumps({"url": "http://h/x", "headers": {name: "bytes=0-9"}})
    ways = {
        "settings": lambda: Settings(headers=((name, "bytes=0-9"),)),
        "-H": lambda: parse_header(f"{name}: bytes=0-9"),
        "a manifest": lambda: parse_manifest(manifest),
    }
    for way, give in ways.items():
        with pytest.raises(UsageError, match=f"header {name} is blobdl's own") as refused:
            give()
        assert "bytes=0-9" not in str(refused.value), way  # a value is never shown
    assert Settings(headers=(("Authorization", "x"), ("Accept", "*/*"))).headers  # others pass


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Accept-Encoding", "identity"),
        ("accept-encoding", "Identity"),
        ("Connection", "keep-alive"),
    ],
)
def test_a_header_that_says_what_blobdl_asks_anyway_is_no_usage_error(
    name: str, value: str
) -> None:
    """``curl -H 'Accept-Encoding: identity'`` moved to blobdl changes nothing blobdl asks
    for: it worked before blobdl refused its own headers, and still does (sent once, in
    place of ours); any other value is still refused."""
    manifest = json.dumps({"url": "http://h/x", "headers": {name: value}})
    assert Settings(headers=((name, value),)).headers == ((name, value),)
    assert parse_header(f"{name}: {value}") == (name, value)
    assert parse_manifest(manifest)[0].headers == ((name, value),)
    # A no-break space or a NEL (latin-1: sent as given) makes another value, not padding.
    for other in ("gzip", "identity, gzip", "close", "", f"{value}\xa0", f"\x85{value}"):
        with pytest.raises(UsageError, match=f"header {name} is blobdl's own"):
            Settings(headers=((name, other),))
    assert Settings(headers=((name, f" \t{value} "),)).headers  # HTTP's own padding


@pytest.mark.parametrize(
    ("header", "says"),
    [(("Range", "bytes=0-9"), "header Range is blobdl's own"), (("a b", "x"), "bad header name")],
)
def test_an_items_bad_header_is_refused_naming_the_item(
    header: tuple[str, str], says: str, tmp_path: Path
) -> None:
    """An ``Item``'s headers are judged with the item, at ``download_many``'s door, as a
    manifest's are with their line: the error says which of many items holds it."""
    url = "http://127.0.0.1:9/x"  # never asked: refused before anything starts
    items = [Item(url, str(tmp_path / "a")), Item(url, str(tmp_path / "b"), headers=(header,))]
    with pytest.raises(UsageError, match=rf"^items\[1\]: {says}"):
        download_many(items)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("char", ["\x01", "\x0b", "\x0c", "\x1b", "\x7f", "\r", "\n", "\0"])
def test_a_header_value_with_a_control_character_is_refused_in_words(char: str) -> None:
    """A field value holds visible characters, spaces and tabs (RFC 9110, 5.5). A control
    character (an escape pasted from a terminal, a vertical tab) was sent as given, for a
    strict server to answer 400 far from the cause; it is refused where it is given, the
    value never shown. A tab stays a value's own."""
    value = f"Bearer a{char}b"
    manifest = json.dumps({"url": "http://h/x", "headers": {"Authorization": value}})
    ways = {
        "settings": lambda: Settings(headers=(("Authorization", value),)),
        "-H": lambda: parse_header(f"Authorization: {value}"),
        "a manifest": lambda: parse_manifest(manifest),
    }
    for way, give in ways.items():
        with pytest.raises(UsageError, match="bad value for header Authorization") as refused:
            give()
        assert "Bearer" not in str(refused.value), way
    assert Settings(headers=(("Authorization", "Bearer\ta b"),)).headers


def test_a_header_given_with_h_loses_only_the_padding_http_allows() -> None:
    """A field's padding is spaces and tabs (RFC 9110, 5.6.3); ``-H "$(cat file)"`` of a
    CRLF file keeps its CR. Python's strip() took any Unicode space too: a no-break space
    ending a value (latin-1, a value's own character) was dropped unsaid, and one leading
    a name was taken away, a name no server would have matched accepted."""
    assert parse_header("X-Name: a\xa0") == ("X-Name", "a\xa0")
    assert parse_header("X-Name: \t a b \t") == ("X-Name", "a b")
    assert parse_header("X-Name: a\r") == ("X-Name", "a")
    with pytest.raises(UsageError, match="bad header name"):
        parse_header("\xa0X-Name: a")
    with pytest.raises(UsageError, match="bad value for header X-Name"):
        parse_header("X-Name: a\x0c")  # a form feed is no padding: a control character


def test_more_parts_than_the_cap_is_a_usage_error_that_says_the_cap() -> None:
    with pytest.raises(UsageError, match=f"to {MAX_PARTS}"):
        Settings(parts=MAX_PARTS + 1)
    assert f"at most {MAX_PARTS}" in build_parser().format_help()


# --- the parsers, fuzzed -------------------------------------------------------------------

header_text = st.text(st.characters(max_codepoint=255), max_size=200) | st.sampled_from(
    ["9" * 10_000, "bytes 0-0/" + "9" * 10_000, "attachment; filename*=idna''x", "1e400", "nan"]
)


@settings(max_examples=300, deadline=None)
@given(header_text)
def test_header_parsers_never_raise_anything_else(text: str) -> None:
    for parse in (content_disposition_filename, parse_content_range, parse_retry_after):
        with contextlib.suppress(BlobdlError):
            parse(text)
    try:
        value = parse_length(text, "http://h/")
    except BadResponse:
        return
    assert value is None or 0 <= value < 2**63


@pytest.mark.parametrize(
    ("value", "codings"),
    [
        (None, None),
        ("chunked", ("chunked",)),
        ("chunked ", ("chunked",)),  # whitespace around a token is no part of it
        ("\tChunked", ("chunked",)),  # tokens are case-insensitive
        (",chunked,,", ("chunked",)),  # empty list elements are allowed, and mean nothing
        ("gzip, chunked", ("gzip", "chunked")),
        ("gzip;q=1, CHUNKED", ("gzip", "chunked")),
        ("chunked, chunked", ("chunked", "chunked")),
        ("", ()),
    ],
)
def test_transfer_encoding_is_a_list_of_tokens(
    value: str | None, codings: tuple[str, ...] | None
) -> None:
    assert transfer_codings(value) == codings


# --- arguments and settings ----------------------------------------------------------------


option_values = st.text(max_size=30) | st.sampled_from(
    ["inf", "-inf", "nan", "1e308", "99999999999999999999TB", "9" * 400, "0", "-1", "1e-320"]
)
OPTIONS = [
    "--parts", "--connections", "--processes", "--min-part-size", "--max-part-size", "--retries",
    "--stall-timeout", "--max-backoff", "--progress-interval", "--checkpoint-interval",
    "--max-redirects", "--lock-timeout", "--limit-rate", "-H", "--proxy",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(OPTIONS), option_values), max_size=4))
def test_any_arguments_give_settings_or_a_usage_error(pairs: list[tuple[str, str]]) -> None:
    argv = [word for option, value in pairs for word in (option, value)]
    try:
        args = build_parser().parse_args([*argv, "http://h/x"])
    except SystemExit as exc:
        assert exc.code == 2
        return
    with contextlib.suppress(UsageError):
        settings_from(args)


NUMBER_OPTIONS = [
    "--parts", "--connections", "--processes", "--retries", "--max-redirects", "--per-host",
    "--stall-timeout", "--max-backoff", "--progress-interval", "--checkpoint-interval",
    "--lock-timeout", "--min-part-size", "--max-part-size", "--limit-rate",
]  # fmt: skip
# What Python's int() and float() read besides ASCII: other scripts' digits (Arabic-Indic,
# fullwidth, mathematical bold) and underscores. "\u0660" (0) is a dot, "\u0665" (5) an "o".
NOT_ASCII_NUMBERS = ["\u0661\u0660", "\uff11\uff10", "\U0001d7cf\U0001d7ce", "1_0", "\u0665"]


@pytest.mark.parametrize("value", NOT_ASCII_NUMBERS)
@pytest.mark.parametrize("option", NUMBER_OPTIONS)
def test_a_number_on_the_command_line_is_written_in_ascii_digits(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([option, value, "http://h/x"])
    assert stop.value.code == 2
    assert f"argument {option}: " in capsys.readouterr().err


BAD_DIGESTS = ["sha256:", "sha256:" + "a" * 63, "sha512:" + "a" * 128, "md5:0"]


@pytest.mark.parametrize("digest", BAD_DIGESTS)
def test_a_bad_digest_is_named_as_the_option(
    digest: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--digest", digest, "http://h/x"])
    assert stop.value.code == 2
    assert f"argument --digest: not a sha256 digest: {digest!r}" in capsys.readouterr().err


@pytest.mark.parametrize("count", ["\u00b2", "\u0662", "\uff12", "\U0001d7d0"])
def test_a_local_cluster_counts_its_workers_in_ascii_digits(count: str) -> None:
    """str.isdigit() holds for a superscript two, which int() refuses: a traceback."""
    with pytest.raises(UsageError, match="not a local cluster"):
        local_workers(f"local:{count}")


def test_a_local_cluster_with_nothing_after_its_colon_is_refused() -> None:
    """``local:`` meant one worker per CPU, undocumented: most likely ``local:$N`` with an
    empty ``N``, not a wish for 64 workers. ``local`` says one per CPU."""
    with pytest.raises(UsageError, match=r"not a local cluster: 'local:' \(try local or local:4\)"):
        local_workers("local:")
    assert local_workers("local") == (os.cpu_count() or 1) and local_workers("local:3") == 3


any_value = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.tuples(st.text(max_size=5), st.text(max_size=5)).map(lambda h: (h,))
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(Settings.field_names())), any_value)
def test_any_setting_value_gives_settings_or_a_usage_error(name: str, value: object) -> None:
    with contextlib.suppress(UsageError):
        Settings(**{name: value})


def test_the_longest_time_setting_fits_a_poll_even_doubled() -> None:
    """poll(2) takes milliseconds as a C int; a fresh connection reads for twice the stall
    timeout (``http._pool``). 10**7 s did not fit: a batch's pool process died of it."""
    with pytest.raises(UsageError, match=re.escape("up to 1e+06")):
        Settings(stall_timeout=MAX_SECONDS * 1.5)
    read, write = os.pipe()
    try:
        os.write(write, b"x")  # ready: the poll returns at once, its timeout checked first
        poller = select.poll()
        poller.register(read, select.POLLIN)
        assert poller.poll(math.ceil(2 * MAX_SECONDS * 1000))
    finally:
        os.close(read)
        os.close(write)


def test_processes_is_a_whole_number_from_one_and_the_cli_passes_it_on() -> None:
    for bad in (0, -1, True, 2.0, "2", 10**6):
        with pytest.raises(UsageError):
            Settings(processes=bad)  # type: ignore[arg-type]
    args = build_parser().parse_args(["--processes", "3", "http://h/x"])
    assert settings_from(args).processes == 3
    assert Settings().processes is None  # one per CPU, at least 2


def test_a_manifest_item_may_say_its_size() -> None:
    """``size`` is a hint (a blob said to be large skips the batch's small-item path)."""
    [item] = parse_manifest('{"url": "http://h/b", "size": 5000000}\n')
    assert item.size == 5_000_000
    [plain] = parse_manifest("http://h/b\n")
    assert plain.size is None


_LINE_ERROR = re.compile(r"manifest line \d+: .+")


@settings(max_examples=500, deadline=None)
@given(hostile_manifest_texts(), st.booleans())
def test_any_manifest_text_gives_items_or_a_usage_error_naming_its_line(
    text: str, confined: bool
) -> None:
    try:  # (a base directory is only resolved, never written: it need not exist)
        items = parse_manifest(text, "base" if confined else None)
    except UsageError as exc:
        assert _LINE_ERROR.fullmatch(str(exc)), str(exc)
    else:
        assert all(item.url and "\0" not in item.url for item in items)


@pytest.mark.parametrize("text", [None, Path("m.txt"), ["http://h/x"], 5])
def test_parse_manifest_takes_text_or_bytes_and_names_it(text: object) -> None:
    """A Path is not read for the caller (nor a list of lines taken): said, naming ``text``,
    never a TypeError of slicing or an AttributeError from inside."""
    with pytest.raises(UsageError, match=r"^text must be the manifest's text \(str or bytes\)"):
        parse_manifest(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("base_dir", [5, b"base", ""])
def test_parse_manifest_names_a_bad_base_dir_not_a_line(base_dir: object) -> None:
    with pytest.raises(UsageError, match=r"^base_dir "):
        parse_manifest("http://h/x a.bin\n", base_dir)  # type: ignore[arg-type]


# Python's str.splitlines() breaks at these too; an editor, wc -l and read_manifest do not.
NOT_LINE_BREAKS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("mark", NOT_LINE_BREAKS)
def test_a_manifest_line_ends_at_a_line_break_only(mark: str) -> None:
    """Two items on one line, glued by a separator, are one line refused, naming the
    separator, not two items (nor one item whose path holds it); and the lines after it keep
    the numbers an editor shows."""
    code = f"U\\+{ord(mark):04X}"
    for glued in (f"http://h/a a.bin{mark}http://h/b b.bin", f"http://h/a a.bin{mark}b.bin"):
        with pytest.raises(UsageError, match=rf"^manifest line 1: holds {code}"):
            parse_manifest(glued + "\n")
    text = f"# a note{mark}with a mark\nhttp://h/a a.bin\nftp://h/c c.bin\n"
    with pytest.raises(UsageError, match=r"^manifest line 3: invalid URL 'ftp://h/c'"):
        parse_manifest(text)
    with pytest.raises(UsageError, match=r"^manifest line 3: invalid URL 'ftp://h/c'"):
        parse_manifest(text.encode())


# What str.split() also splits at: spaces of other scripts and widths, no-break ones among
# them (U+00A0, copied from a web page or a Finder name; U+3000, a Japanese name's space).
UNICODE_SPACES = ["\u00a0", "\u1680", "\u2000", "\u2009", "\u200a", "\u202f", "\u205f", "\u3000"]


@pytest.mark.parametrize("space", UNICODE_SPACES, ids=[f"U+{ord(c):04X}" for c in UNICODE_SPACES])
def test_a_plain_lines_fields_are_separated_by_spaces_and_tabs_only(space: str) -> None:
    """A no-break space (or any space but ASCII's) in a name is part of the name: it split
    the path in two, a wrong path or a 'not sha256:HEX' refusal; at the line's end it was
    dropped; and between URL and path it is the URL's (as a browser reads it), not a cut."""
    digest = "sha256:" + "0" * 64
    line = f" \thttp://h/a \t out/a{space}b.bin\t{digest} \t"
    assert parse_manifest(line) == [Item("http://h/a", f"out/a{space}b.bin", digest)]
    assert parse_manifest(f"http://h/a a{space}\n")[0].path == f"a{space}"
    assert parse_manifest(f"http://h/a{space}a.bin\n") == [Item(f"http://h/a{space}a.bin")]


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_a_manifest_line_ends_at_lf_crlf_or_cr(end: str) -> None:
    text = end.join(["# items", "http://h/a a.bin", "", "http://h/b b.bin", "ftp://h/c"])
    with pytest.raises(UsageError, match=r"^manifest line 5: invalid URL 'ftp://h/c'"):
        parse_manifest(text)
    assert [i.path for i in parse_manifest(text.rpartition(end)[0])] == ["a.bin", "b.bin"]


class Trickle(io.BytesIO):
    """A stream that gives ``chunk`` bytes at a time, as a pipe may."""

    def __init__(self, data: bytes, chunk: int) -> None:
        super().__init__(data)
        self.chunk = chunk

    def read(self, size: int | None = -1) -> bytes:
        return super().read(min(self.chunk, size if size and size > 0 else self.chunk))


def line_ends(data: bytes) -> int:
    """The lines ``data`` ends, as an editor counts them: LF, CRLF or CR."""
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["", "bom"])
@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_a_manifests_bytes_refused_name_the_line_an_editor_shows(end: bytes, bom: bytes) -> None:
    """A NUL byte, a byte that is no UTF-8 or a line too long, on line 3 whatever ends the
    lines (CRLF cut between two reads too) and whether a byte order mark opens the file."""
    head = bom + end.join([b"# items", b"http://h/a a.bin", b""])
    for chunk in (1, 2, 3, 1 << 16):
        with pytest.raises(UsageError, match=r"^manifest line 3: holds a NUL byte$"):
            read_manifest(Trickle(head + b"\0 x" + end, chunk))
    with pytest.raises(UsageError, match=r"^manifest line 3: not UTF-8 text$"):
        parse_manifest(head + b"\xff x" + end)
    with pytest.raises(UsageError, match=r"^manifest line 3: longer than"):
        read_manifest(io.BytesIO(head + b"y" * (6 * MAX_LINE)))


def test_a_manifest_whose_lines_end_in_cr_is_read_whole_however_large() -> None:
    """Old Mac text: every line ends in CR alone. More than one line's limit of them is
    many lines, not one too long."""
    lines = [b"http://h/a%d a%d.bin" % (n, n) for n in range(4 * MAX_LINE // 20)]
    data = b"\r".join(lines) + b"\rftp://h/c\r"
    assert len(data) > 4 * MAX_LINE
    assert read_manifest(io.BytesIO(data)) == data
    with pytest.raises(UsageError, match=rf"^manifest line {len(lines) + 1}: invalid URL"):
        parse_manifest(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 64))
def test_a_manifest_stream_is_read_whole_or_refused_at_its_first_nul(
    data: bytes, chunk: int
) -> None:
    """Read a few bytes at a time, as a pipe may give them: the bytes come back as they
    were, or a NUL byte is a usage error naming the line it is on (one in the first four
    bytes, or a UTF-16 byte order mark, names the text as UTF-16 or UTF-32 instead)."""

    wide = b"\0" in data[:4] and data[:4].strip(b"\0")
    if wide or data.startswith((b"\xff\xfe", b"\xfe\xff")):
        with pytest.raises(UsageError, match=r"^manifest: not UTF-8 text \(UTF-(16|32), it"):
            read_manifest(Trickle(data, chunk))
    elif b"\0" in data:
        line = line_ends(data[: data.index(b"\0")]) + 1
        with pytest.raises(UsageError, match=f"^manifest line {line}: holds a NUL byte$"):
            read_manifest(Trickle(data, chunk))
    else:
        assert read_manifest(Trickle(data, chunk)) == data


def test_a_manifest_stream_with_an_endless_line_is_refused_before_it_is_held_whole() -> None:
    endless = io.BytesIO(b"http://h/a x\n" + b"y" * (6 * MAX_LINE))  # no end of line
    with pytest.raises(UsageError, match=r"^manifest line 2: longer than"):
        read_manifest(endless)
    assert endless.tell() < 6 * MAX_LINE  # stopped at the chunk that made the line too long


@pytest.mark.parametrize(
    "encoding, bom",
    [("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"), ("utf-32-le", b"\xff\xfe\0\0")],
)
def test_a_manifest_saved_as_utf16_or_utf32_is_named_as_such_not_as_a_nul_byte(
    encoding: str, bom: bytes
) -> None:
    """Notepad and PowerShell's ``>`` save UTF-16: the user must learn to save it as
    UTF-8, not hunt for a NUL byte they never typed. With or without its byte order mark."""
    text = "http://h/a a.bin\nhttp://h/b b.bin\n"
    for data in (bom + text.encode(encoding), text.encode(encoding)):
        with pytest.raises(
            UsageError, match=r"^manifest: not UTF-8 text \(UTF-(16|32), it seems\)"
        ):
            read_manifest(io.BytesIO(data))
        with pytest.raises(UsageError, match=r"^manifest: not UTF-8 text \(UTF-(16|32), it"):
            parse_manifest(data)  # the library's way in


def test_a_manifest_may_be_as_large_as_the_limit_and_no_larger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_manifest, "MAX_MANIFEST", 1000)
    line = b"http://h/a a.bin\n"
    exactly = line * (1000 // len(line)) + b"#" * (1000 % len(line))
    assert read_manifest(io.BytesIO(exactly)) == exactly
    with pytest.raises(UsageError, match=r"^manifest: larger than .* split it"):
        read_manifest(io.BytesIO(exactly + b"\n"))


@pytest.mark.parametrize(
    ("key", "said"),
    [("", "''"), ("X Token", "'X'... (the rest is not shown)"), (" X", "''... (the rest is not")],
)
def test_a_json_header_key_that_is_no_name_is_said_to_be_a_bad_name(key: str, said: str) -> None:
    """A JSON line's header key is the whole name: one empty or with a space was said to be
    "not a header: the text given (expected 'Name: value'...)", the -H form, which is not
    what the line holds nor what to fix."""
    line = json.dumps({"url": "http://h/a", "headers": {key: "v"}})
    with pytest.raises(UsageError) as refused:
        parse_manifest(f"# one\n{line}\n")
    assert str(refused.value).startswith(f"manifest line 2: bad header name {said}")
    assert "Name: value" not in str(refused.value)


def test_a_json_header_given_twice_in_another_letter_case_is_refused_as_an_exact_twin_is() -> None:
    """``{"X-A": "1", "x-a": "2"}`` names one header twice (names are case-insensitive):
    refused as ``{"X-A": "1", "X-A": "2"}`` is, not sent as x-a: 2 with 1 silently dropped."""
    line = json.dumps({"url": "http://h/a", "headers": {"X-A": "1", "x-a": "2"}})
    with pytest.raises(UsageError) as refused:
        parse_manifest(f"{line}\n")
    assert str(refused.value) == (
        "manifest line 1: the header 'x-a' is given twice (as 'X-A' too: a header's name is "
        "the same in any letter case)"
    )
