"""The planner, Range text and backoff: pure arithmetic, pinned by properties."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Sequence

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from blobdl import Settings, UsageError, parse_size
from blobdl.config import MAX_BYTES, MAX_PARTS, MB
from blobdl.engine._plan import (
    download_part_count,
    download_parts,
    one_request,
    plan,
    useful_lanes,
)
from blobdl.http._chunks import ChunkError, chunk_size
from blobdl.http._headers import parse_content_range, range_header
from blobdl.http._retry import Retry
from blobdl.http._span import Span
from blobdl.store._resume import PartRecord, coalesced
from tests.strategies import backoff_settings, sized_plans


@given(case=sized_plans())
def test_plan_covers_the_blob_exactly_once(case: tuple[int, Settings]) -> None:
    size, settings = case
    spans = plan(size, settings)
    assert sum(s.length for s in spans) == size
    position = 0
    for span in spans:
        assert span.start == position and span.length > 0
        position = span.end
    assert position == size


@given(case=sized_plans())
def test_plan_part_sizes_stay_in_bounds(case: tuple[int, Settings]) -> None:
    size, settings = case
    spans = plan(size, settings)
    if settings.parts is not None:
        assert len(spans) == min(settings.parts, size)
        lengths = {s.length for s in spans}
        assert not lengths or max(lengths) - min(lengths) <= 1
        return
    for span in spans[:-1]:  # every part but the last is exactly one part size
        assert settings.min_part_size <= span.length <= settings.max_part_size
    if spans:
        assert spans[-1].length <= max(settings.min_part_size, settings.max_part_size)


@pytest.mark.parametrize(
    ("size", "count", "each"),
    [
        (40_000 * MB, 40, 1000 * MB),  # 40 GB -> 40 parts of 1 GB (Ollama's clamp at the top)
        (500 * MB, 5, 100 * MB),  # 500 MB -> 5 parts of 100 MB (clamp at the bottom)
        (3_200 * MB, 16, 200 * MB),  # in between: 16 parts of size/16
        (50 * MB, 1, 50 * MB),  # smaller than a part: one part
    ],
)
def test_default_plan_is_ollamas(size: int, count: int, each: int) -> None:
    spans = plan(size, Settings())
    assert len(spans) == count
    assert spans[0].length == each


def test_empty_blob_has_no_parts() -> None:
    assert plan(0, Settings()) == []


def test_range_header_is_inclusive() -> None:
    assert range_header(0, 1) == "bytes=0-0"
    assert range_header(100, 200) == "bytes=100-199"


@given(st.integers(0, 10**12), st.integers(1, 10**9), st.integers(0, 10**9))
def test_content_range_round_trip(start: int, length: int, extra: int) -> None:
    total = start + length + extra
    parsed = parse_content_range(f"bytes {start}-{start + length - 1}/{total}")
    assert parsed is not None
    assert parsed.span == Span(start, start + length) and parsed.total == total


@pytest.mark.parametrize(
    "text", ["", "bytes 5-4/10", "bytes 0-10/10", "items 0-1/2", "bytes 0-x/9", "bytes 1-2"]
)
def test_malformed_content_range_is_refused(text: str) -> None:
    assert parse_content_range(text) is None


def test_unsatisfied_content_range() -> None:
    parsed = parse_content_range("bytes */0")
    assert parsed is not None and parsed.span is None and parsed.total == 0


@pytest.mark.parametrize(
    ("line", "size"),
    [(b"3e8\r\n", 1000), (b"3E8\r\n", 1000), (b"0003e8\r\n", 1000), (b"0\r\n", 0),
     (b"3e8;a=b\r\n", 1000), (b"3e8 \t;a\r\n", 1000), (b"3e8 \r\n", 1000), (b"3e8\n", 1000),
     (b"7" + b"f" * 15 + b"\r\n", 2**63 - 1)],
)  # fmt: skip
def test_a_chunk_size_line_the_grammar_allows_is_read(line: bytes, size: int) -> None:
    assert chunk_size(line) == size


@pytest.mark.parametrize(
    "line",
    [b"-1\r\n", b"+3e8\r\n", b"0x3e8\r\n", b"3_e8\r\n", b" 3e8\r\n", b";a\r\n", b"\r\n",
     b"3e8g\r\n", b"3e8\r\r\n", b"1" + b"0" * 16 + b"\r\n", "\u0663".encode() + b"\r\n"],
)  # fmt: skip
def test_a_chunk_size_line_the_grammar_does_not_allow_is_refused(line: bytes) -> None:
    with pytest.raises(ChunkError):
        chunk_size(line)


@given(attempt=st.integers(1, 1000), settings=backoff_settings, seed=st.integers())
def test_backoff_follows_ollamas_schedule(attempt: int, settings: Settings, seed: int) -> None:
    base = min(attempt**2 * settings.backoff_unit, settings.max_backoff)
    delay = Retry.from_settings(settings).backoff(attempt, random.Random(seed))
    assert 0.5 * base <= delay <= 1.5 * base
    # The whole spread, not a narrower one inside it: the jitter is one draw of
    # uniform(0.5, 1.5) from the generator given.
    assert delay == base * random.Random(seed).uniform(0.5, 1.5)


def test_backoff_defaults_are_ollamas() -> None:
    rng = random.Random(0)
    delays = [Retry.from_settings(Settings()).backoff(n, rng) for n in (1, 2, 3)]
    for n, delay in zip((1, 2, 3), delays, strict=True):
        assert 0.005 * n * n <= delay <= 0.015 * n * n


@pytest.mark.parametrize(
    ("text", "value"),
    [("512", 512), ("100MB", 100 * MB), ("1GiB", 1 << 30), ("1.5kb", 1500), ("2 MiB", 2 << 20)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    "text",
    [
        *("", "MB", "-1MB", "1XB", "1.2.3", "1_000", "1e3", "0x10", "nan", "inf"),
        # Digits of other scripts Python's float() reads: a size is ASCII, as every tool's
        # is (an Arabic-Indic zero is a dot, a bold or fullwidth digit passes for an ASCII one).
        *("\u0661\u0660\u0660MB", "\U0001d7cf\U0001d7ce\U0001d7ce", "\uff11\uff10\uff10", "\u00b2"),
    ],
)
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(UsageError, match="not a size"):
        parse_size(text)


@given(st.integers(0, MAX_BYTES), st.sampled_from(["", "B", " b"]))
@example(2**53 + 1, "")
@example(MAX_BYTES, "B")
def test_a_byte_count_is_read_exactly_up_to_the_largest(count: int, unit: str) -> None:
    """A float has 53 bits: 2**53 + 1 bytes came out as 2**53, and the largest count
    allowed was refused as larger than itself."""
    assert parse_size(f"{count}{unit}") == count


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4611686018427387904.5", 2**62),
        ("0.1KiB", 102),
        ("8589934592GiB", 2**63),
        # one byte is 2**-40 TiB: 40 digits of fraction, each one needed
        ("0.0000000000009094947017729282379150390625TiB", 1),
        ("0.0000000000009094947017729282379150390624999TiB", 0),
        ("0.00000000000181898940354585647583007812" + "5" * 30 + "TiB", 2),
        ("1" * 5000, 2**63),  # past the 4,300 digits int() reads
        ("0" * 5000 + "1.5KiB", 1536),
    ],
)
def test_a_size_is_exact_and_a_part_of_a_byte_is_dropped(text: str, value: int) -> None:
    if value > MAX_BYTES:
        with pytest.raises(UsageError, match="too large"):
            parse_size(text)
    else:
        assert parse_size(text) == value


@pytest.mark.parametrize("value", [None, b"1MB", 100, 1.5])
def test_parse_size_takes_text_and_names_it(value: object) -> None:
    with pytest.raises(UsageError, match=r"^text must be a string, not "):
        parse_size(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        {"connections": 0},
        {"retries": -1},
        {"stall_timeout": 0},
        {"min_part_size": 10, "max_part_size": 5},
        {"parts": 0},
        {"headers": (("Bad\nName", "x"),)},
        {"cache_dir": "cache\0dir"},  # no file can be named so: said now, not by each item
        {"ca_bundle": "ca\0.pem"},
        {"client_cert": "cert\0.pem"},
        # An empty path names nothing: a variable that expanded to nothing (it read as no
        # cache, the system's CAs, no certificate: not what the caller meant).
        {"cache_dir": ""},
        {"ca_bundle": ""},
        {"client_cert": ""},
        {"client_cert": "c.pem", "client_key": ""},
        # A whole number too large for a float: an OverflowError, not a UsageError naming it.
        {"stall_timeout": 10**400},
        {"lock_timeout": 2**1024},
    ],
)
def test_settings_are_validated_on_creation(bad: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        Settings(**bad)  # type: ignore[arg-type]


def test_settings_take_a_path_where_they_name_a_file_as_download_does() -> None:
    """``download(path=Path(...))`` and ``download_many(base_dir=Path(...))`` take a Path;
    ``Settings(cache_dir=Path(...))`` was refused (a string only). A path-like is taken
    and kept as its text, so Settings stay hashable and picklable as they were; one whose
    ``__fspath__`` gives bytes is still refused."""
    from pathlib import Path, PurePosixPath

    settings = Settings(cache_dir=Path("/tmp/c"), ca_bundle=PurePosixPath("/etc/ca.pem"))  # type: ignore[arg-type]
    assert settings.cache_dir == "/tmp/c" and settings.ca_bundle == "/etc/ca.pem"
    assert hash(settings) == hash(Settings(cache_dir="/tmp/c", ca_bundle="/etc/ca.pem"))
    with pytest.raises(UsageError, match="cache_dir"):
        Settings(cache_dir=b"/tmp/c")  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().retries = 3  # type: ignore[misc]


@given(
    sized=sized_plans(),
    ranges=st.booleans(),
    known=st.booleans(),
    hashing=st.booleans(),
)
def test_one_function_counts_the_parts_it_plans(
    sized: tuple[int, Settings], ranges: bool, known: bool, hashing: bool
) -> None:
    """A batch item is granted connections by the count its download will plan."""
    size, settings = sized
    blob = size if known else None
    spans = download_parts(blob, ranges, settings, hashing=hashing)
    assert download_part_count(blob, ranges, settings, hashing=hashing) == len(spans)
    if not (ranges and known):
        assert spans == [Span(0, size if known else -1)]  # one stream, to EOF if unknown


def test_a_hashed_download_gets_four_parts_per_connection() -> None:
    settings = Settings(connections=4, min_part_size=MB, max_part_size=1000 * MB)
    plain = download_part_count(500 * MB, True, settings, hashing=False)
    hashed = download_part_count(500 * MB, True, settings, hashing=True)
    assert (plain, hashed) == (16, 16)  # target_parts (16) already covers 4 x 4
    two = dataclasses.replace(settings, target_parts=2)
    assert download_part_count(500 * MB, True, two, hashing=False) == 2
    assert download_part_count(500 * MB, True, two, hashing=True) == 16


@pytest.mark.parametrize("size", [MAX_PARTS + 1, 3 * MAX_PARTS + 7, 2**62])
def test_a_plan_by_size_never_has_more_parts_than_the_cap(size: int) -> None:
    """Parts of at most one byte would cut a blob into as many parts as it has bytes: past
    the cap the parts grow instead (a server says the size, 2**62 included)."""
    settings = Settings(min_part_size=1, max_part_size=1)
    count = download_part_count(size, True, settings, hashing=False)
    assert 0 < count <= MAX_PARTS
    if size < 10**6:
        spans = download_parts(size, True, settings, hashing=False)
        assert len(spans) == count and spans[0].start == 0 and spans[-1].end == size


@given(
    min_part=st.integers(1, 10**9),
    min_steal=st.integers(1, 10**9),
    steal=st.booleans(),
    hashing=st.booleans(),
)
def test_a_blob_fetched_whole_by_its_first_get_is_one_the_plan_makes_one_part_of(
    min_part: int, min_steal: int, steal: bool, hashing: bool
) -> None:
    settings = Settings(
        min_part_size=min_part, max_part_size=max(min_part, 10**9), min_steal_size=min_steal,
        steal=steal,
    )  # fmt: skip
    size = one_request(settings)
    assert size <= min_steal if steal else size <= min_part
    assert download_part_count(size, True, settings, hashing=hashing) == 1


def test_idle_lanes_are_given_one_per_steal_size_of_the_blob() -> None:
    settings = Settings(connections=16, min_part_size=100 * MB, min_steal_size=4 * MB)
    # One planned part of 80 MB, which stealing splits down to 4 MB: 16 lanes' worth.
    assert useful_lanes(80 * MB, True, settings, hashing=False) == 16
    assert useful_lanes(12 * MB, True, settings, hashing=False) == 3
    no_steal = dataclasses.replace(settings, steal=False)
    assert useful_lanes(80 * MB, True, no_steal, hashing=False) == 1


@st.composite
def records(draw: st.DrawFn) -> list[PartRecord]:
    """Parts tiling a blob, each with some of its bytes on disk (none, some, all)."""
    sizes = draw(st.lists(st.integers(1, 50), min_size=1, max_size=60))
    parts, start = [], 0
    for size in sizes:
        done = draw(st.sampled_from([0, size, draw(st.integers(0, size))]))
        parts.append(PartRecord(start, start + size, start + done))
        start += size
    return parts


def _on_disk(parts: Sequence[PartRecord]) -> set[int]:
    return {byte for p in parts for byte in range(p.start, p.pos)}


@given(parts=records(), most=st.integers(0, 70))
def test_a_records_parts_coalesce_to_at_most_most_claiming_no_byte_they_did_not(
    parts: list[PartRecord], most: int
) -> None:
    kept = coalesced(parts, most)
    assert kept[0].start == 0 and kept[-1].end == parts[-1].end
    assert all(a.end == b.start for a, b in itertools.pairwise(kept))
    assert all(p.start <= p.pos <= p.end for p in kept)
    assert len(kept) <= max(most, 1)
    assert _on_disk(kept) <= _on_disk(parts)


@given(parts=records())
def test_finished_parts_fold_into_their_neighbours_losing_nothing(parts: list[PartRecord]) -> None:
    """As a record comes back after runs of steals: no byte of it is fetched again."""
    kept = coalesced(parts, len(parts))
    assert _on_disk(kept) == _on_disk(parts)
    assert all(p.pos < p.end for p in kept[:-1])  # only the last may be finished
