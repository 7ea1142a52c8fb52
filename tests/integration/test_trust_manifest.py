"""What a user gives us in a manifest, and what ``-i`` prints (trust issue #20, items 13, 18).

Every manifest line is checked before anything starts: a JSON field of the wrong type, an
unknown or repeated field, a NUL byte, text that is not UTF-8 is a usage error naming the
line (exit 2, one line, no traceback). With ``--quiet`` a batch prints nothing on success,
and only its failures otherwise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl._redact import redact_url
from blobdl.batch._manifest import MAX_LINE
from blobdl.errors import EXIT_NETWORK, EXIT_OK, EXIT_USAGE
from faultserver.serverctl import ServerHandle
from tests.conftest import REPO, Blob, sha256_file

Make = Callable[..., Blob]


def run_batch(
    manifest: Path | None, *args: str, stdin: bytes | None = None, cwd: Path = REPO
) -> tuple[int, str, str]:
    source = str(manifest) if manifest is not None else "-"
    done = subprocess.run([sys.executable, "-m", "blobdl", "-i", source, *args],
                          capture_output=True, input=stdin, timeout=60, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def assert_usage_error(code: int, stderr: str, line: int) -> None:
    assert code == EXIT_USAGE, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"blobdl: error: manifest line {line}: "), stderr


def wrong(url: str) -> list[object]:
    """JSON items each of which must be refused, by the field that is wrong."""
    return [
        {"url": 5},
        {"url": None},
        {"url": [url]},
        {"path": "x"},  # no url at all
        {"url": url, "path": 5},
        {"url": url, "path": ["x"]},
        {"url": url, "path": ""},
        {"url": url, "path": "a\u0000b"},
        {"url": url, "digest": 5},
        {"url": url, "digest": True},
        {"url": url, "digest": ["sha256:" + "0" * 64]},
        {"url": url, "headers": 5},
        {"url": url, "headers": ["X-A: 1"]},
        {"url": url, "headers": {"X-A": 5}},
        {"url": url, "headers": {"X-A": {"b": 1}}},
        {"url": url, "headers": {"X-A": None}},
        {"url": url, "headers": {"X-A": "a\u0000b"}},
        {"url": url, "pth": "typo"},  # an unknown field is a typo, never ignored
        {"url": url, "size": "5"},
        {"url": url, "size": -1},
        {"url": url, "size": True},
        {"url": url, "size": 1.5},
        {"url": url, "size": 2**63},  # no file is that large: named by its line, not its index
    ]


@pytest.mark.parametrize("index", range(23))
def test_a_json_field_of_the_wrong_type_is_a_usage_error_naming_its_line(
    make: Make, server: ServerHandle, tmp_path: Path, index: int
) -> None:
    blob = make(1000, seed=2301)
    good = json.dumps({"url": blob.url, "path": str(tmp_path / "ok")})
    manifest = tmp_path / "manifest"
    manifest.write_text(f"# items\n{good}\n{json.dumps(wrong(blob.url)[index])}\n")
    code, _, stderr = run_batch(manifest)
    assert_usage_error(code, stderr, 3)
    assert server.stats()["requests"] == 0 and not (tmp_path / "ok").exists()


@pytest.mark.parametrize(
    "text",
    [
        '{"url": "URL", "path": "a", "path": "b"}',  # two parsers, two answers: refused
        '{"url": "URL"} trailing',
        '{"url": ' + "[" * 100_000 + "]" * 100_000 + "}",  # deeper than the parser's stack
        "URL out\u0000put",  # a NUL in a plain line
        "\u0000",
    ],
    ids=["repeated-field", "trailing", "deep", "nul-in-path", "nul-alone"],
)
def test_malformed_lines_are_usage_errors_naming_their_line(
    make: Make, server: ServerHandle, tmp_path: Path, text: str
) -> None:
    blob = make(1000, seed=2301)
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{blob.url} {tmp_path / 'ok'}\n\n" + text.replace("URL", blob.url))
    code, _, stderr = run_batch(manifest)
    assert_usage_error(code, stderr, 3)
    assert server.stats()["requests"] == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"path": "PATH\ud800.bin"},  # JSON's escape of a lone surrogate: no character, no name
        {"path": "PATH\udfff.bin"},  # nor a byte os.fsdecode makes (U+DC80-U+DCFF)
        {"url": "BLOB\ud800"},  # urllib3 sent it as %ED%A0%80: refused as no URL
        {"headers": {"X-A:Authorization": "Bearer t"}},  # sent as X-A: 'Authorization: ...'
        {"headers": {"Authorization: Bearer s3cret": ""}},  # never echoed
    ],
    ids=[
        "lone-surrogate",
        "lone-low-surrogate",
        "in-url",
        "colon-in-name",
        "name-and-value-in-name",
    ],
)
def test_a_json_string_that_is_no_text_or_a_header_name_no_name_is_a_usage_error(
    make: Make, server: ServerHandle, tmp_path: Path, fields: dict[str, object]
) -> None:
    """A lone surrogate in a path came through, then failed inside (exit 1, "small
    download failed unexpectedly: UnicodeEncodeError"); a header name holding a colon was
    read as ``Name: value`` again, and another header sent: each is refused, by its line."""
    blob = make(1000, seed=2301)
    good = json.dumps({"url": blob.url, "path": str(tmp_path / "ok")})
    manifest = tmp_path / "manifest"
    wrong = json.dumps({"url": blob.url, "path": str(tmp_path / "out"), **fields})
    wrong = wrong.replace("PATH", str(tmp_path / "o")).replace("BLOB", blob.url)
    manifest.write_text(f"{good}\n\n{wrong}\n")
    code, _, stderr = run_batch(manifest)
    assert_usage_error(code, stderr, 3)
    assert "s3cret" not in stderr
    assert server.stats()["requests"] == 0 and list(tmp_path.iterdir()) == [manifest]


@pytest.mark.parametrize(
    "text",
    [
        '{"url": "URL"} trailing',
        '{"url": "URL", "path": }',
        '{"url": "URL", "size": ' + "9" * 5000 + "}",
    ],
    ids=["trailing", "no-value", "5000-digits"],
)
def test_a_json_lines_error_names_its_column_not_a_line_of_its_own(
    make: Make, server: ServerHandle, tmp_path: Path, text: str
) -> None:
    """The JSON parser's words said "manifest line 3: Extra data: line 1 column 16", a
    line 1 that is not the manifest's, and of a long number "use
    sys.set_int_max_str_digits() to increase the limit", advice to a Python programmer."""
    blob = make(1000, seed=2301)
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{blob.url} {tmp_path / 'ok'}\n\n" + text.replace("URL", blob.url))
    code, _, stderr = run_batch(manifest)
    assert_usage_error(code, stderr, 3)
    assert "line 1" not in stderr and "sys." not in stderr, stderr
    assert "column" in stderr or "digits" in stderr, stderr
    assert server.stats()["requests"] == 0


@pytest.mark.parametrize(
    "rest",
    [
        "out HEX",  # a digest copied from sha256sum, without its "sha256:"
        "out sha1:HEX",
        "out other",  # two paths: which one was meant?
        "sha256:HEX sha256:HEX",  # two digests: the second is no file name
    ],
    ids=["bare-hex", "other-algorithm", "two-paths", "two-digests"],
)
def test_a_plain_line_whose_third_field_is_no_digest_is_a_usage_error(
    make: Make, server: ServerHandle, tmp_path: Path, rest: str
) -> None:
    """Three fields are URL, path and digest: a third field that is not ``sha256:HEX``
    (a bare hex digest, say) was dropped, and the blob came unchecked, exit 0."""
    blob = make(1000, seed=2301)
    wrong_hex = "0" * 64  # the blob's bytes never have it: a check would fail
    manifest = tmp_path / "manifest"
    given = rest.replace("HEX", wrong_hex).replace("out", str(tmp_path / "out"))
    manifest.write_text(f"{blob.url} {tmp_path / 'ok'}\n\n{blob.url} {given}\n")
    code, _, stderr = run_batch(manifest)
    assert_usage_error(code, stderr, 3)
    assert server.stats()["requests"] == 0 and list(tmp_path.iterdir()) == [manifest]


@pytest.mark.parametrize("stdin", [False, True], ids=["file", "stdin"])
def test_a_manifest_that_is_not_utf8_is_a_usage_error_naming_its_line(
    make: Make, server: ServerHandle, tmp_path: Path, stdin: bool
) -> None:
    blob = make(1000, seed=2301)
    data = f"{blob.url} {tmp_path / 'a'}\n{blob.url} {tmp_path / 'b'}\n".encode()
    data += f"{blob.url} ".encode() + "caf\u00e9".encode("latin-1") + b"\n"
    manifest = tmp_path / "manifest"
    manifest.write_bytes(data)
    code, _, stderr = run_batch(None if stdin else manifest, stdin=data if stdin else None)
    assert_usage_error(code, stderr, 3)
    assert "UTF-8" in stderr
    assert server.stats()["requests"] == 0


def test_a_utf8_manifest_with_a_byte_order_mark_is_read(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(1000, seed=2301)
    manifest = tmp_path / "manifest"
    out = tmp_path / "caf\u00e9"
    manifest.write_bytes(f"\ufeff{blob.url} {out}\n".encode())
    code, _, stderr = run_batch(manifest, "-q")
    assert code == EXIT_OK, stderr
    assert out.stat().st_size == 1000


def test_a_name_with_a_no_break_space_is_one_field(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Fields are separated by ASCII spaces and tabs only: a no-break space (a name copied
    from a web page or the Finder) split the path in two, and the line was refused as
    having four fields; one at the name's end was dropped."""
    blob = make(1000, seed=2303)
    named, ending = tmp_path / "caf\u00e9\u00a0copy.bin", tmp_path / "ends\u00a0"
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{blob.url}\t{named}  sha256:{blob.sha256}\n{blob.url} {ending}\n")
    code, _, stderr = run_batch(manifest, "-q")
    assert code == EXIT_OK, stderr
    assert sha256_file(named) == sha256_file(ending) == blob.sha256


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_manifest_that_is_a_device_of_endless_bytes_is_refused_not_read_whole(
    server: ServerHandle, tmp_path: Path, device: str
) -> None:
    # Under a ceiling of address space, reading the device whole would end in MemoryError
    # (without one: the machine's memory gone); its first NUL byte is enough to refuse it,
    # or, once in 32,768 runs of /dev/urandom, its first two bytes being a UTF-16 byte order
    # mark (CI met it once at 0722ca1).
    ceiling = "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31)); "
    done = subprocess.run(
        [sys.executable, "-c", ceiling + "from blobdl.cli import run; run()", "-i", device],
        capture_output=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    stderr = done.stderr.decode()
    assert done.returncode == EXIT_USAGE, stderr
    refused = r"blobdl: error: manifest(?: line \d+: holds a NUL byte|: not UTF-8 text \(UTF-(?:16|32), it seems\): save it as UTF-8)\n"  # noqa: E501
    assert re.fullmatch(refused, stderr), stderr
    assert server.stats()["requests"] == 0


def test_a_manifest_line_longer_than_any_item_is_refused_naming_it(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(1000, seed=2302)
    endless = b"x" * (MAX_LINE + 1)  # a stream with no end of line, read up to the limit
    data = f"{blob.url} {tmp_path / 'a'}\n".encode() + blob.url.encode() + b"?" + endless
    code, _, stderr = run_batch(None, stdin=data)
    assert_usage_error(code, stderr, 2)
    assert "longer than" in stderr
    assert server.stats()["requests"] == 0


# --- item 18: --quiet --------------------------------------------------------------------------


def test_quiet_batch_prints_nothing_on_success(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blobs = [make(1000, seed=2310 + n) for n in range(3)]
    manifest = tmp_path / "manifest"
    manifest.write_text("".join(f"{b.url} {tmp_path / b.name}\n" for b in blobs))
    code, stdout, stderr = run_batch(manifest, "--quiet")
    assert (code, stdout, stderr) == (EXIT_OK, "", "")


def test_quiet_batch_prints_only_its_failures(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    good, bad = make(1000, seed=2320), make(1000, seed=2321)
    server.set_faults({"path": f"/files/{bad.name}", "times": None, "action": "status",
                       "status": 404})  # fmt: skip
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{good.url} {tmp_path / 'good'}\n{bad.url} {tmp_path / 'bad'}\n")
    code, stdout, stderr = run_batch(manifest, "-q", "--retries", "0")
    assert code == EXIT_NETWORK and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FAILED ") and bad.name in lines[0], stderr


@pytest.mark.parametrize("quiet", [[], ["-q"]], ids=["", "quiet"])
def test_a_failed_items_line_names_its_manifest_line_and_its_url(
    make: Make, server: ServerHandle, tmp_path: Path, quiet: list[str]
) -> None:
    """``FAILED  manifest line 3: URL: error``: the line to fix, as every other error of a
    batch names its items, and the URL without its credentials. A duplicate (lines 3 and
    5 alike) is named by its own line."""
    good, bad = make(1000, seed=2322), make(1000, seed=2323)
    server.set_faults({"path": f"/files/{bad.name}", "times": None, "action": "status",
                       "status": 404})  # fmt: skip
    secret_url = bad.url.replace("http://", "http://me:s3cret@")
    shown = redact_url(secret_url)
    manifest = tmp_path / "manifest"
    manifest.write_text(f"# items\n{good.url} {tmp_path / 'good'}\n{secret_url} {tmp_path / 'bad'}"
                        f"\n\n{secret_url} {tmp_path / 'bad'}\n")  # fmt: skip
    code, _, stderr = run_batch(manifest, "--retries", "0", *quiet)
    assert code == EXIT_NETWORK and "s3cret" not in stderr, stderr
    failed = [line for line in stderr.splitlines() if line.startswith("FAILED")]
    assert [line.partition(": HTTP 404")[0] for line in failed] == [
        f"FAILED  manifest line {n}: {shown}" for n in (3, 5)
    ], stderr
    assert sha256_file(tmp_path / "good") == good.sha256


def test_json_batch_output_is_unchanged_by_quiet_rules(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(1000, seed=2330)
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{blob.url} {tmp_path / 'out'}\n")
    code, stdout, _ = run_batch(manifest, "--json")
    events = [json.loads(line)["event"] for line in stdout.splitlines()]
    assert code == EXIT_OK and events[-1] == "summary" and "finished" in events


def test_quiet_hides_warnings_of_a_download_that_succeeds(make: Make, tmp_path: Path) -> None:
    """A warning (here: a resume state that cannot be read) is no error: -q hides it."""
    blob = make(1000, seed=2340)
    out = tmp_path / "out"
    for quiet in (False, True):
        out.unlink(missing_ok=True)
        Path(f"{out}.blobdl-state").write_text("garbage")
        done = subprocess.run([sys.executable, "-m", "blobdl", blob.url, "-o", str(out),
                               *(["-q"] if quiet else [])], capture_output=True, text=True,
                              timeout=60, cwd=REPO)  # fmt: skip
        assert done.returncode == EXIT_OK and done.stdout == ("" if quiet else done.stdout)
        assert (done.stderr == "") is quiet, done.stderr


def test_an_endless_stream_of_good_lines_is_refused_at_a_size_not_held_until_memory_ends(
    server: ServerHandle, tmp_path: Path
) -> None:
    # ``yes URL | blobdl -i -``: every line is a good item, so only the manifest's size can
    # end it. Under a ceiling of address space, holding it all would end in MemoryError.
    line = f"{server.url('x.bin')} {tmp_path / 'x.bin'}"
    ceiling = "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31)); "
    with subprocess.Popen(["yes", line], stdout=subprocess.PIPE) as endless:
        done = subprocess.run(
            [sys.executable, "-c", ceiling + "from blobdl.cli import run; run()", "-i", "-"],
            stdin=endless.stdout, capture_output=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        endless.kill()
    stderr = done.stderr.decode()
    assert done.returncode == EXIT_USAGE, stderr
    assert re.fullmatch(
        r"blobdl: error: manifest: larger than 256 MiB \(about 2,000,000 items\); "
        r"split it and run each part\n",
        stderr,
    ), stderr
    assert server.stats()["requests"] == 0


@pytest.mark.parametrize(
    "path",
    ['"out.bin"', "'out.bin'", '"my out.bin"', "'my big out.bin'", "my\\ out.bin"],
    ids=["double-quoted", "single-quoted", "quoted-space", "quoted-spaces", "escaped-space"],
)
def test_a_plain_path_quoted_or_escaped_as_in_a_shell_is_refused_saying_how_to_write_it(
    make: Make, server: ServerHandle, tmp_path: Path, path: str
) -> None:
    """A plain line is no shell command: a path quoted or its space escaped, as a user
    copies it from a script, was written with its quotes ('"out.bin"', exit 0) or refused
    as a digest it never was ("'out.bin\\"' is not sha256:HEX"). Now one line says that
    quotes and backslashes join no fields, and that such a path goes in a JSON line."""
    blob = make(1000, seed=2302)
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{blob.url} {tmp_path / 'ok'}\n{blob.url} {path}\n")
    code, _, stderr = run_batch(manifest, cwd=tmp_path)
    assert_usage_error(code, stderr, 2)
    assert "JSON line" in stderr and "quote" in stderr, stderr
    assert server.stats()["requests"] == 0 and list(tmp_path.iterdir()) == [manifest]
