"""Hostile headers and hostile arguments: each is used or refused as a blobdl error.

Never a raw exception, a traceback, a hang or a huge allocation: the headers come from the
fault server's ``headers`` and ``redirect`` actions, the arguments from a real CLI.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import blobdl
from blobdl import Downloader, download_many, parse_manifest
from blobdl.batch._scheduler import Item
from blobdl.errors import BadResponse, BlobdlError, HTTPStatusError, UsageError
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, run_cli, sha256_file

Make = Callable[..., Blob]
HUGE_TOTAL = 2**62
FAST = ["--min-part-size", str(PART), "--max-part-size", str(PART), "--stall-timeout", "2"]


def _set_headers(server: ServerHandle, blob: Blob, values: dict[str, str], **rule: object) -> None:
    server.set_faults({"path": f"/files/{blob.name}", "action": "headers", "set": values, **rule})


def _one_line_error(done: subprocess.CompletedProcess[str]) -> None:
    assert 2 <= done.returncode <= 5, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def _run_capped(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI with 1 GiB of address space: a plan of billions of parts fails fast."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [sys.executable, "-m", "blobdl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        preexec_fn=cap,
    )


# --- Content-Disposition -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "attachment; filename*=idna''x",
        "attachment; filename*=utf-7''%2B",
        "attachment; filename*=nosuchcharset''x",
        "attachment; filename*=utf-8''%ff%fe",
        'attachment; filename="\x7f\x01"',
    ],
)
def test_hostile_content_disposition_is_ignored(
    make: Make, server: ServerHandle, tmp_path: Path, value: str
) -> None:
    blob = make(2 * PART)
    _set_headers(server, blob, {"Content-Disposition": value}, times=None)
    done = run_cli(blob.url, "-o", str(tmp_path / "out.bin"), *FAST)
    assert done.returncode == 0, done.stderr
    (tmp_path / "out.bin").unlink()
    named = run_cli(blob.url, *FAST, cwd=tmp_path)  # named by the header if readable, else the URL
    assert named.returncode == 0, named.stderr
    [made] = tmp_path.iterdir()
    assert made.stat().st_size == blob.size


def test_hostile_content_disposition_does_not_stop_a_batch(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob, good = make(2 * PART), make(PART, seed=5)
    _set_headers(server, blob, {"Content-Disposition": "attachment; filename*=idna''x"})
    # Without a path each item is named from the server: the header is read for every item.
    items = [Item(blob.url), Item(good.url, str(tmp_path / "good.bin"))]
    monkeypatch.chdir(tmp_path)
    results = download_many(items, settings=fast_settings(), max_connections=2)
    assert all(r.ok for r in results), [r.error for r in results]


@pytest.mark.parametrize(
    "name",
    [
        "x.blobdl-tmp",
        "x.blobdl-state",
        "x.blobdl-lock",
        "blob.bin.blobdl-bad",
        "x.blobdl-state.new",
    ],
)
def test_a_server_never_names_one_of_our_side_files(
    make: Make, server: ServerHandle, tmp_path: Path, name: str
) -> None:
    """A finished download named like a partial would be taken for one (or resumed into)."""
    blob = make(2 * PART)
    _set_headers(
        server, blob, {"Content-Disposition": f'attachment; filename="{name}"'}, times=None
    )
    done = run_cli(blob.url, *FAST, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [made] = tmp_path.iterdir()
    assert ".blobdl-" not in made.name and made.stat().st_size == blob.size


@pytest.mark.parametrize("side", ["blobdl-tmp", "blobdl-state", "blobdl-lock", "blobdl-bad"])
def test_a_destination_named_like_another_downloads_side_file_is_refused(
    make: Make, server: ServerHandle, tmp_path: Path, side: str
) -> None:
    """``a.blobdl-tmp`` is the partial of a download to ``a``, which renames it into place
    as its own (or resumes from ``a.blobdl-state``): a download that wrote there would say
    it succeeded while its bytes became ``a``'s. Refused before any request, from the
    library as from the command line."""
    blob = make(3000)
    dest = tmp_path / f"a.{side}"
    with pytest.raises(UsageError, match="named like blobdl's own files"):
        Downloader(fast_settings()).download(blob.url, dest)
    done = run_cli(blob.url, "-o", str(dest), cwd=tmp_path)
    assert done.returncode == 2 and "named like blobdl's own files" in done.stderr, done.stderr
    assert server.stats()["requests"] == 0 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tail", ["/", "/.", "//"])
def test_a_destination_that_ends_as_a_directory_is_refused(
    make: Make, server: ServerHandle, tmp_path: Path, tail: str
) -> None:
    """``-o models/`` reads as a directory: writing the blob as a file named ``models``
    would surprise. A usage error before any request, in the library, on the command line
    and in a manifest."""
    blob = make(3000)
    dest = str(tmp_path / "models") + tail
    with pytest.raises(UsageError, match="directory"):
        Downloader(fast_settings()).download(blob.url, dest)
    done = run_cli(blob.url, "-o", dest, cwd=tmp_path)
    assert done.returncode == 2 and "directory" in done.stderr, done.stderr
    with pytest.raises(UsageError, match=r"manifest line 1: .*directory"):
        parse_manifest(f"{blob.url} {dest}")
    with pytest.raises(UsageError, match=r"items\[0\]: .*directory"):
        download_many([Item(blob.url, dest)], settings=fast_settings())
    assert server.stats()["requests"] == 0 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["a" * 10_000, "é" * 2000, "b" * 254 + ".bin"])
def test_a_long_server_name_is_cut_to_fit_with_our_side_files(
    make: Make, server: ServerHandle, tmp_path: Path, name: str
) -> None:
    blob = make(2 * PART)
    _set_headers(
        server, blob, {"Content-Disposition": f'attachment; filename="{name}"'}, times=None
    )
    done = run_cli(blob.url, *FAST, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [made] = tmp_path.iterdir()
    assert name.startswith(made.name[:10]) and made.stat().st_size == blob.size
    # Room left for the longest suffix we add beside the destination (NAME_MAX is 255).
    assert len(made.name.encode()) + len(".blobdl-link-4194304-ffffffff") <= 255


def test_a_name_too_long_for_the_files_beside_it_is_refused_saying_how_long_it_may_be(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A name the filesystem holds, but not with ``.blobdl-state.new`` after it: refused
    before any request, saying so (not "File name too long" of a lock file nobody asked
    for). The longest name allowed downloads; with a cache, whose scratch link name is
    longer, the limit is lower."""
    blob = make(3000)
    longest = "b" * (255 - len(".blobdl-state.new"))
    with pytest.raises(blobdl.LocalFileError, match=f"at most {len(longest)} bytes"):
        Downloader(fast_settings()).download(blob.url, tmp_path / (longest + "b"))
    done = run_cli(blob.url, "-o", str(tmp_path / (longest + "bb")), cwd=tmp_path)
    assert done.returncode == 5 and f"at most {len(longest)} bytes" in done.stderr, done.stderr
    assert server.stats()["requests"] == 0 and list(tmp_path.iterdir()) == []
    Downloader(fast_settings()).download(blob.url, tmp_path / longest)
    assert sha256_file(tmp_path / longest) == blob.sha256
    cached = fast_settings(cache_dir=str(tmp_path / "cache"))
    (tmp_path / "c").mkdir()
    # As guarantees.md says it: 255 bytes less 29 with a cache (its scratch link's suffix).
    cached_longest = "c" * (255 - 29)
    with pytest.raises(blobdl.LocalFileError, match=f"at most {len(cached_longest)} bytes"):
        Downloader(cached).download(blob.url, tmp_path / "c" / longest, digest=blob.sha256)
    assert list((tmp_path / "c").iterdir()) == []
    Downloader(cached).download(blob.url, tmp_path / "c" / cached_longest, digest=blob.sha256)
    assert sha256_file(tmp_path / "c" / cached_longest) == blob.sha256


# --- Content-Range, Content-Length: sizes --------------------------------------------------


def test_huge_total_in_a_batch_is_a_clean_failure(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(2 * PART)
    _set_headers(server, blob, {"Content-Range": f"bytes 0-0/{HUGE_TOTAL}"})
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{blob.url} {tmp_path / 'out.bin'}\n")
    done = _run_capped("-i", str(manifest), "--min-part-size", "1", "--max-part-size", "1",
                       cwd=tmp_path)  # fmt: skip
    assert 2 <= done.returncode <= 5, done.stderr
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr


@pytest.mark.parametrize(
    "content_range",
    [f"bytes 0-0/{2**63}", f"bytes 0-0/{'9' * 10_000}", f"bytes 0-{'9' * 5000}/{'9' * 5001}"],
)
def test_impossible_totals_are_bad_responses(
    make: Make, server: ServerHandle, tmp_path: Path, content_range: str
) -> None:
    blob = make(2 * PART)
    _set_headers(server, blob, {"Content-Range": content_range})
    with pytest.raises(BadResponse):
        Downloader(fast_settings(retries=0)).download(blob.url, tmp_path / "out.bin")


@pytest.mark.parametrize("length", ["9" * 10_000, "-1", "1e3", str(2**63), "12, 13"])
def test_impossible_content_length_on_a_part_is_a_bad_response(
    make: Make, server: ServerHandle, tmp_path: Path, length: str
) -> None:
    blob = make(2 * PART)
    _set_headers(server, blob, {"Content-Length": length}, skip=1, times=None)
    done = run_cli(blob.url, "-o", str(tmp_path / "out.bin"), "--retries", "0", *FAST)
    _one_line_error(done)
    assert done.returncode == 4


# --- Retry-After ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["Wed, 21 Oct 2015 07:28:00", "Wed, 21 Oct 2015 07:28:00 -0000", "1e400", "nan",
              "9" * 5000, "Mon, 99 Foo 99999 99:99:99 GMT"],
)  # fmt: skip
def test_hostile_retry_after_is_an_http_error(
    server: ServerHandle, tmp_path: Path, value: str
) -> None:
    server.set_faults({"path": "/files/x", "action": "status", "status": 503,
                       "headers": {"Retry-After": value}})  # fmt: skip
    with pytest.raises(HTTPStatusError):
        Downloader(fast_settings(retries=0)).download(server.url("x"), tmp_path / "out.bin")


# --- redirect bodies --------------------------------------------------------------------------


def test_a_redirect_body_that_never_ends_is_not_read(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(2 * PART)
    server.set_faults({"path": "/files/start", "action": "redirect", "endless": True,
                       "length": 10**15, "location": blob.url})  # fmt: skip
    done = run_cli(server.url("start"), "-o", str(tmp_path / "out.bin"), *FAST, timeout=30)
    assert done.returncode == 0, done.stderr
    assert server.stats()["bytes_sent"] == blob.size + 1  # the probe's one byte, then the parts


def test_a_short_redirect_body_that_trickles_is_not_waited_for(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """To the same origin, a short redirect body is read to keep the connection for the
    next hop; one that trickles in (a byte a millisecond: a minute) is left, and its
    connection with it (the run would otherwise outlast the timeout below)."""
    blob = make(2 * PART)
    server.set_faults({"path": "/files/start", "action": "redirect", "endless": True,
                       "length": 60_000, "bps": 1000, "location": blob.url})  # fmt: skip
    done = run_cli(server.url("start"), "-o", str(tmp_path / "out.bin"), *FAST, timeout=30)
    assert done.returncode == 0, done.stderr
    assert sha256_file(tmp_path / "out.bin") == blob.sha256


@pytest.mark.parametrize("location", ["http://\udcff/", "http://a b/", "http://[::1/", "\x7f"])
def test_odd_locations_are_used_or_refused(
    server: ServerHandle, tmp_path: Path, location: str
) -> None:
    location = location.encode("utf-8", "surrogateescape").decode("latin-1")
    server.set_faults({"path": "/files/start", "action": "status", "status": 302,
                       "headers": {"Location": location}})  # fmt: skip
    with pytest.raises(BlobdlError):  # BadResponse, or a host that does not resolve
        Downloader(fast_settings(retries=0)).download(server.url("start"), tmp_path / "o.bin")


# --- arguments and settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--limit-rate", "99999999999999999999TB"],
        ["--limit-rate", "9" * 400],
        ["--stall-timeout", "1e308"],
        ["--stall-timeout", "inf"],
        ["--stall-timeout", "nan"],
        ["--max-backoff", "-inf"],
        ["--connections", "99999999999999999999"],
        ["--parts", "99999999999999999999"],
        ["-H", "X-Thing: a\rb"],
        ["-H", "X-Thing: \u2603"],
        ["-H", "X\u2603: a"],
    ],
)
def test_hostile_arguments_are_one_line_errors(args: list[str], tmp_path: Path) -> None:
    done = run_cli("http://127.0.0.1:9/x", *args, cwd=tmp_path)
    _one_line_error(done)


@pytest.mark.parametrize(
    ("command", "option", "size"),
    [
        ([], "--limit-rate", "0.5"),
        ([], "--min-part-size", "0.9B"),
        ([], "--max-part-size", "0.0001KB"),
        (["pull", "library/m"], "--limit-rate", "0.5"),
        (["hf", "org/repo"], "--min-part-size", "0.5"),
    ],
)
def test_a_size_less_than_one_byte_says_so_naming_the_option(
    command: list[str], option: str, size: str, tmp_path: Path
) -> None:
    """A size is whole bytes, a part of one dropped: 0.5 came to 0 and was refused as 'must
    be a whole number from 1', which the user, who wrote 0.5, never gave."""
    done = run_cli(*command, option, size, *([] if command else ["http://127.0.0.1:9/x"]),
                   cwd=tmp_path)  # fmt: skip
    _one_line_error(done)
    assert done.returncode == 2 and f"{option}: {size!r} is less than one byte" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://" + "a" * 300 + "/x",
        "http://" + "a" * 70 + ".example/x",
        "http://a..b/x",
        "http://\u2603\u2603" + "x" * 300 + "/",
    ],
)
def test_hostile_host_names_are_one_line_errors(url: str, tmp_path: Path) -> None:
    done = run_cli(url, cwd=tmp_path)
    _one_line_error(done)


@pytest.mark.parametrize(
    "url", ["http://[::1/x", "http://a:b\\@127.0.0.1:9/x", "http://" + "a" * 300]
)
def test_a_bad_url_in_a_manifest_is_a_one_line_usage_error(url: str, tmp_path: Path) -> None:
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{url} {tmp_path / 'out.bin'}\n")
    done = run_cli("-i", str(manifest), cwd=tmp_path)
    _one_line_error(done)
    assert done.returncode == 2


def test_a_bad_url_in_a_batch_fails_that_item_only(make: Make, tmp_path: Path) -> None:
    good = make(PART, seed=6)
    items = [Item("http://[::1/x", str(tmp_path / "bad.bin")), Item(good.url, str(tmp_path / "g"))]
    results = download_many(items, settings=fast_settings(), max_connections=2)
    assert isinstance(results[0].error, UsageError) and results[1].ok


@pytest.mark.parametrize(
    "values",
    [
        {"ETag": '"\x01\x7f\xff' + "e" * 8000 + '"'},
        {"ETag": "W/", "Last-Modified": "\xff" * 100},
        {"Last-Modified": "Mon, 99 Foo 99999 99:99:99 GMT", "ETag": ""},
    ],
)
def test_odd_validators_are_used_or_refused(
    make: Make, server: ServerHandle, tmp_path: Path, values: dict[str, str]
) -> None:
    blob = make(2 * PART, seed=8)
    _set_headers(server, blob, values, times=None)
    done = run_cli(blob.url, "-o", str(tmp_path / "out.bin"), "--retries", "0", *FAST)
    assert done.returncode in (0, 3, 4), done.stderr
    assert "Traceback" not in done.stderr


def test_redirects_to_the_same_origin_open_no_connection_of_their_own(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Each redirect's (empty) body is read to its end, so the probe's next hop to the same
    origin goes over the same connection: three hops first cost no more connections than
    the file asked for directly."""
    blob = make(PART)
    name = blob.url.rsplit("/", 1)[1]

    def connections(url: str, out: str) -> int:
        before = server.stats()["connections"]
        done = run_cli(url, "-o", str(tmp_path / out), "--connections", "1", *FAST)
        assert done.returncode == 0, done.stderr
        assert sha256_file(tmp_path / out) == blob.sha256
        return int(server.stats()["connections"]) - before

    assert connections(server.route(f"/redirect/3/{name}"), "a") == connections(blob.url, "b")
