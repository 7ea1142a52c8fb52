"""``python -m blobdl`` as users run it: a real subprocess, exit codes, JSON lines."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl.cli import COMMANDS
from blobdl.errors import EXIT_INTEGRITY, EXIT_LOCAL, EXIT_NETWORK, EXIT_OK, EXIT_USAGE
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, run_cli, sha256_file

Make = Callable[..., Blob]
FAST = ["--min-part-size", "64KiB", "--max-part-size", "64KiB", "--connections", "4"]


def blobdl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd)


def test_download_succeeds_with_exit_0(make: Make, tmp_path: Path) -> None:
    blob = make(10 * PART + 5)
    run = blobdl(blob.url, "-o", str(tmp_path / "out"), *FAST)
    assert run.returncode == EXIT_OK, run.stderr
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert "11 parts" in run.stderr  # the one-line summary


def test_json_lines_parse_and_end_with_a_summary(make: Make, tmp_path: Path) -> None:
    blob = make(10 * PART)
    run = blobdl(blob.url, "-o", str(tmp_path / "out"), "--json", *FAST)
    assert run.returncode == EXIT_OK, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert records[-1]["event"] == "finished" and records[-1]["size"] == blob.size
    progress = [r for r in records if r["event"] == "progress"]
    assert progress and progress[-1]["done"] == blob.size and progress[-1]["total"] == blob.size
    assert {p["state"] for p in progress[-1]["parts"]} == {"done"}
    assert len(progress[-1]["parts"]) == 10


def test_quiet_prints_nothing(make: Make, tmp_path: Path) -> None:
    run = blobdl(make(PART).url, "-o", str(tmp_path / "out"), "-q", *FAST)
    assert run.returncode == EXIT_OK and run.stdout == "" and run.stderr == ""


def test_quiet_with_a_manifest_prints_only_its_failed_items_and_exits_with_the_firsts_code(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """docs/cli.md: with ``-i``, ``-q`` prints nothing when every item succeeds, else one
    ``FAILED`` line per failed item, and the exit code is the first failure's (README).
    Printing the ``ok`` lines under ``-q``, or taking the last failure's code, passed every
    named test but one on a Dask cluster."""
    good = [make(PART, seed=160), make(10, seed=161)]
    manifest = tmp_path / "list.txt"
    manifest.write_text("".join(f"{b.url} {tmp_path / str(i)}\n" for i, b in enumerate(good)))
    run = blobdl("-q", "-i", str(manifest), *FAST)
    assert run.returncode == EXIT_OK, run.stderr
    assert run.stdout == "" and run.stderr == ""
    manifest.write_text(
        f"{good[0].url} {tmp_path / 'again'}\n"
        f"{server.route('/status/404')} {tmp_path / 'missing'}\n"
        f"{good[1].url} {tmp_path / 'bad'} sha256:{'0' * 64}\n"
    )
    run = blobdl("-q", "-i", str(manifest), "--retries", "0", *FAST)
    assert run.returncode == EXIT_NETWORK, run.stderr  # the 404's, not the mismatch's 4
    lines = (run.stdout + run.stderr).splitlines()
    assert [line.split(":")[0] for line in lines] == ["FAILED  manifest line 2",
                                                      "FAILED  manifest line 3"], lines  # fmt: skip


def test_no_progress_bar_when_stdout_is_not_a_tty(make: Make, tmp_path: Path) -> None:
    run = blobdl(make(4 * PART).url, "-o", str(tmp_path / "out"), *FAST)
    assert run.returncode == EXIT_OK and run.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["http://x/", "--parts", "zero"],
        ["http://x/", "--min-part-size", "lots"],
        ["http://x/", "-H", "no colon"],
        ["http://x/", "--connections", "0"],
        ["ftp://x/y"],
        ["not a url"],
    ],
)
def test_bad_usage_exits_2_without_a_traceback(args: list[str], tmp_path: Path) -> None:
    run = blobdl(*args, cwd=tmp_path)
    assert run.returncode == EXIT_USAGE
    assert "Traceback" not in run.stderr and "error" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_http_404_exits_with_the_network_code(server: ServerHandle, tmp_path: Path) -> None:
    run = blobdl(server.route("/status/404"), "-o", str(tmp_path / "out"))
    assert run.returncode == EXIT_NETWORK
    assert run.stderr.strip().endswith(f"HTTP 404 from {server.route('/status/404')}")
    assert "Traceback" not in run.stderr and list(tmp_path.iterdir()) == []


def test_missing_directory_exits_with_the_local_code(make: Make, tmp_path: Path) -> None:
    run = blobdl(make(PART).url, "-o", str(tmp_path / "no" / "out"))
    assert run.returncode == EXIT_LOCAL and "does not exist" in run.stderr


def test_server_that_lies_exits_with_the_integrity_code(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(4 * PART)
    server.set_faults({"path": "/files/*", "skip": 1, "times": None, "action": "full_200"})
    run = blobdl(blob.url, "-o", str(tmp_path / "out"), *FAST)
    assert run.returncode == EXIT_INTEGRITY, run.stderr
    assert "answered 200" in run.stderr and list(tmp_path.iterdir()) == []


def test_refused_connection_exits_with_the_network_code(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = blobdl(f"http://127.0.0.1:{port}/x", "-o", str(tmp_path / "out"), "--retries", "1")
    assert run.returncode == EXIT_NETWORK and "Connection refused" in run.stderr


def test_help_documents_the_exit_codes() -> None:
    run = blobdl("--help")
    assert run.returncode == 0
    for code in ("0", "2", "3", "4", "5", "130"):
        assert f"  {code} " in run.stdout


def test_help_lists_every_command_with_one_line_each() -> None:
    run = blobdl("--help")
    assert run.returncode == 0
    listed = ["blobdl URL", "blobdl -i MANIFEST"] + [f"blobdl {c.usage}" for c in COMMANDS.values()]
    for usage in listed:
        assert sum(line.lstrip().startswith(f"{usage} ") for line in run.stdout.splitlines()) == 1
    assert "pull" in COMMANDS


HOUSEKEEPING = {"prune"}  # commands that download nothing


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_command_help_gives_its_own_usage_and_the_download_options(name: str) -> None:
    run = blobdl(name, "--help")
    assert run.returncode == 0 and run.stdout.startswith(f"usage: blobdl {name} ")
    downloads = "--connections" in run.stdout and "--json" in run.stdout
    assert downloads != (name in HOUSEKEEPING)


def test_pull_help_gives_pulls_options_and_not_the_downloads_own() -> None:
    run = blobdl("pull", "--help")
    assert run.returncode == 0
    assert "--models-dir" in run.stdout and "REF" in run.stdout and "  130 " in run.stdout
    for option in ("--output", "--input", "--digest", "--base-dir", "--per-host"):
        assert option not in run.stdout


def test_options_before_the_url_still_download(make: Make, tmp_path: Path) -> None:
    # Only a first word that names a command is one: a leading option means `blobdl URL`.
    blob = make(3 * PART)
    run = blobdl("-q", *FAST, blob.url, "-o", str(tmp_path / "out"))
    assert run.returncode == EXIT_OK, run.stderr
    assert sha256_file(tmp_path / "out") == blob.sha256


@pytest.mark.parametrize(
    "args", [["--no-such-option", "http://x/"], ["pull", "llama3.2:1b", "--no-such-option"]]
)
def test_an_unknown_option_is_bad_usage(args: list[str], tmp_path: Path) -> None:
    run = blobdl(*args, cwd=tmp_path)
    assert run.returncode == EXIT_USAGE and "--no-such-option" in run.stderr
    assert "Traceback" not in run.stderr and list(tmp_path.iterdir()) == []


def test_version() -> None:
    import blobdl as package

    run = blobdl("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"blobdl {package.__version__}"


def test_json_stream_carries_retry_and_stall_events(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(4 * PART)
    server.set_faults(
        {"path": f"/files/{blob.name}", "skip": 1, "times": 1, "action": "status", "status": 503},
        {"path": f"/files/{blob.name}", "times": 1, "action": "no_response", "hold": 30},
    )
    run = blobdl(blob.url, "-o", str(tmp_path / "out"), "--json", "--stall-timeout", "1",
                 "--no-steal",
                 "--progress-interval", "0.1", *FAST)  # fmt: skip
    assert run.returncode == EXIT_OK, run.stderr
    kinds = [json.loads(line)["event"] for line in run.stdout.splitlines()]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert "part_retried" in kinds and "part_stalled" in kinds


def test_json_failure_is_one_failed_event(server: ServerHandle, tmp_path: Path) -> None:
    run = blobdl(server.route("/status/410"), "-o", str(tmp_path / "out"), "--json")
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert run.returncode == EXIT_NETWORK
    assert [r["event"] for r in records] == ["failed"] and records[0]["exit_code"] == EXIT_NETWORK


def test_manifest_mode_downloads_everything_and_summarises(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blobs = [make(PART, seed=150), make(3 * PART, seed=151), make(10, seed=152)]
    manifest = tmp_path / "list.txt"
    manifest.write_text(
        "# three blobs, one of them by JSON\n"
        f"{blobs[0].url} {tmp_path / 'a'}\n"
        f"{blobs[1].url} {tmp_path / 'b'} sha256:{blobs[1].sha256}\n"
        + json.dumps({"url": blobs[2].url, "path": str(tmp_path / "c")})
        + "\n"
    )
    run = blobdl("-i", str(manifest), *FAST)
    assert run.returncode == EXIT_OK, run.stderr
    for blob, name in zip(blobs, "abc", strict=True):
        assert sha256_file(tmp_path / name) == blob.sha256
    assert "3 ok, 0 failed" in run.stderr


def test_manifest_with_a_failure_exits_non_zero_after_the_others(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    good = make(2 * PART, seed=153)
    manifest = tmp_path / "list.txt"
    manifest.write_text(
        f"{server.route('/status/404')} {tmp_path / 'x'}\n{good.url} {tmp_path / 'y'}\n"
    )
    run = blobdl("-i", str(manifest), "--json", *FAST)
    assert run.returncode == EXIT_NETWORK
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert records[-1] == {"event": "summary", "ok": 1, "failed": 1}
    assert {r["item"] for r in records if r["event"] == "finished"} == {1}
    assert {r["item"] for r in records if r["event"] == "failed"} == {0}
    assert sha256_file(tmp_path / "y") == good.sha256


@pytest.mark.parametrize(
    "args",
    [
        ["-i", "m.txt", "http://x/"],
        ["-i", "m.txt", "-o", "out"],
        ["-i", "m.txt", "--digest", "sha256:" + "0" * 64],  # would be ignored: per item
        ["-i", "missing.txt"],
    ],
)
def test_manifest_usage_errors(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("http://127.0.0.1:9/x\n")
    run = blobdl(*args, cwd=tmp_path)
    assert run.returncode == EXIT_USAGE and "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "option",
    [["--per-host", "4"], ["--per-host", "8"], ["--base-dir", "."], ["--scheduler", "local"]],
)
def test_a_manifest_option_without_i_is_bad_usage(
    option: list[str], make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A batch's option given for one URL would be ignored: it is refused, before any
    request, in one line that names it (its default value too: the user gave it)."""
    blob = make(PART)
    run = blobdl(blob.url, "-o", str(tmp_path / "out"), *option, cwd=tmp_path)
    assert run.returncode == EXIT_USAGE, run.stderr
    assert len(run.stderr.splitlines()) == 1 and option[0] in run.stderr
    assert list(tmp_path.iterdir()) == [] and server.stats()["requests"] == 0


def test_a_manifest_read_from_a_closed_stdin_is_said_to_be_closed(tmp_path: Path) -> None:
    """``-i -`` with stdin closed (``<&-``, a job runner that gives none): blobdl reads
    /dev/null there instead (a free descriptor 0 would be the next file it opens), and the
    error says why the manifest is empty: stdin is closed, not a manifest of no items."""
    import sys

    run = subprocess.run(["sh", "-c", f"exec {sys.executable} -m blobdl -i - <&-"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)  # fmt: skip
    assert run.returncode == EXIT_USAGE, run.stderr
    assert run.stderr.splitlines() == [
        "blobdl: error: stdin is closed: give the manifest as a file, or pipe it in"
    ]


def test_a_manifest_read_from_stdin_with_only_stdout_closed_is_read_as_given(
    tmp_path: Path,
) -> None:
    """Another standard stream closed (``>&-``) is not stdin: the manifest piped in is read,
    and an empty one is said to list no items, not that stdin is closed."""
    import sys

    run = subprocess.run(["sh", "-c", f"exec {sys.executable} -m blobdl -i - >&-"],
                         input="# none yet\n", capture_output=True, text=True, cwd=tmp_path,
                         timeout=60)  # fmt: skip
    assert run.returncode == EXIT_USAGE, run.stderr
    assert run.stderr.splitlines() == ["blobdl: error: stdin: the manifest lists no items"]


@pytest.mark.parametrize("text", ["", "# nothing yet\n\n   \n"])
def test_a_manifest_that_lists_no_items_is_bad_usage(text: str, tmp_path: Path) -> None:
    """-i pointed at the wrong (or an empty) file must not look like success."""
    (tmp_path / "m.txt").write_text(text)
    run = blobdl("-i", "m.txt", cwd=tmp_path)
    assert run.returncode == EXIT_USAGE, run.stderr
    assert run.stderr.splitlines() == ["blobdl: error: m.txt: the manifest lists no items"]
    assert run.stdout == ""
    run = blobdl("-i", "m.txt", "--json", cwd=tmp_path)
    assert run.returncode == EXIT_USAGE
    [record] = json_lines_of(run.stdout)
    assert record["event"] == "failed" and record["exit_code"] == EXIT_USAGE


def json_lines_of(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]
