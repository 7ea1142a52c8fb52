"""The command line as a careless or hostile user types it: closed standard streams, bytes
that are not UTF-8, empty values. Every failure is one ``blobdl: error:`` line with the
documented exit code, never a traceback, and nothing is destroyed or half-written.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl.errors import EXIT_INTERRUPTED, EXIT_LOCAL, EXIT_NETWORK, EXIT_OK, EXIT_USAGE
from tests.conftest import REPO, Blob, pipe_line, sha256_file

Make = Callable[..., Blob]


def _closing(fd: int) -> Callable[[], None]:
    return lambda: os.close(fd)


@pytest.mark.parametrize("fd", [0, 1, 2])
def test_a_closed_standard_stream_costs_no_download(fd: int, make: Make, tmp_path: Path) -> None:
    """``blobdl URL >&-`` (or ``<&-``, ``2>&-``): Python has no sys.stdout then; the download
    still completes, and no file of ours takes the free descriptor a child would write to."""
    blob = make(300_000, seed=71)
    out = tmp_path / "out.bin"
    streams = {0: "stdin", 1: "stdout", 2: "stderr"}
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", blob.url, "-o", str(out), "--json"],
        **{streams[other]: subprocess.PIPE for other in (0, 1, 2) if other != fd},
        preexec_fn=_closing(fd),
        cwd=REPO,
        timeout=60,
    )
    err = b"" if fd == 2 else done.stderr
    assert done.returncode == EXIT_OK, err
    assert b"Traceback" not in err
    assert sha256_file(out) == blob.sha256


def test_a_failure_with_stdout_closed_is_one_error_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", "http://127.0.0.1:9/x", "-o", str(tmp_path / "o")],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_closing(1),
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == EXIT_NETWORK
    assert done.stderr.startswith("blobdl: error: Failed to connect to 127.0.0.1 port 9")
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []


def _hf_offline() -> dict[str, str]:
    """The environment of a ``blobdl hf`` that must fail before asking any Hub."""
    return {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_x"}


@pytest.mark.parametrize(
    "args",
    [
        [b"--revision", b"\xff\xfe"],
        [b"--revision", b"v1\xff"],
        [b"--revision", b"refs/pr/\xc3"],
    ],
)
def test_hf_arguments_that_are_not_utf8_are_usage_errors(args: list[bytes], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", "hf", "org/name", *args, "--local-dir", str(tmp_path)],
        capture_output=True,
        env=_hf_offline(),
        cwd=REPO,
        timeout=60,
    )
    err = done.stderr.decode(errors="replace")
    assert done.returncode == EXIT_USAGE, err
    assert err.startswith("blobdl: error: not a revision:") and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_url_holding_a_byte_that_is_not_utf8_is_a_usage_error(make: Make, tmp_path: Path) -> None:
    """``blobdl $'http://host/caf\\xe9.bin'`` (a Latin-1 name): the byte came in as
    os.fsdecode's U+DCE9, which urllib3 sent as ``%ED%B3%A9``, another resource than the
    byte's ``%E9``, and said its 404 (exit 3). Refused before any request, saying how to
    write it; a character of any script, sent as UTF-8, is no such byte."""
    blob = make(1000, seed=72)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "blobdl",
            os.fsencode(blob.url) + b"\xe9",
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        cwd=REPO,
        timeout=60,
    )
    err = done.stderr.decode(errors="replace")
    assert done.returncode == EXIT_USAGE, err
    assert err.startswith("blobdl: error: invalid URL") and len(err.splitlines()) == 1, err
    assert "%E9" in err
    assert list(tmp_path.iterdir()) == []


# `--models-dir "$UNSET"`: an empty path is the current directory to the file system, so
# `blobdl prune` pruned it and `pull` wrote a store into it.
EMPTY_PATHS = [
    ["prune", "--models-dir", ""],
    ["pull", "--models-dir", "", "http://127.0.0.1:9/a/b:c"],
    ["hf", "org/name", "--local-dir", ""],
    ["hf", "org/name", "--cache-dir", ""],
    ["http://127.0.0.1:9/x", "-o", ""],
    ["http://127.0.0.1:9/x", "--cache-dir", "", "--digest", "a" * 64],
    ["http://127.0.0.1:9/x", "--ca-bundle", ""],
    ["http://127.0.0.1:9/x", "--client-cert", ""],
    ["-i", ""],
    ["-i", "-", "--base-dir", ""],
]


@pytest.mark.parametrize("args", EMPTY_PATHS, ids=lambda a: " ".join(a)[:40])
def test_an_empty_path_is_a_usage_error_naming_the_option(args: list[str], tmp_path: Path) -> None:
    blob = tmp_path / "blobs" / ("sha256-" + "c" * 64)  # an unused blob, hours old
    blob.parent.mkdir()
    blob.write_bytes(b"x")
    os.utime(blob, (1, 1))
    (tmp_path / "manifests").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", *args],
        input="",
        capture_output=True,
        text=True,
        env=_hf_offline(),
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == EXIT_USAGE, done.stderr
    option = args[args.index("") - 1]
    assert f"argument {option}" in done.stderr or f"/{option}" in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["blobs", "manifests", blob.name]


@pytest.mark.parametrize(
    ("base", "said"),
    [("missing/dir", "directory does not exist"), ("a-file", "is a file, not a directory"),
     ("a-file/dir", "a-file: is a file, not a directory")],
    ids=["missing", "a-file", "under-a-file"],
)  # fmt: skip
def test_a_base_dir_that_is_no_directory_is_a_local_failure_as_a_missing_folder_is(
    base: str, said: str, tmp_path: Path
) -> None:
    """The README lists a missing or unwritable directory under exit 5, as ``-o`` into a
    missing folder is: so is ``--base-dir`` naming none, in the words a destination's
    folder would get (a file on the way named). Nothing is asked or written."""
    (tmp_path / "a-file").write_bytes(b"x")
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", "-i", "-", "--base-dir", base],
        input="http://127.0.0.1:9/x x.bin\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == EXIT_LOCAL, done.stderr
    assert done.stderr.startswith("blobdl: error: a-file" if "a-file" in base else
                                  f"blobdl: error: {base}"), done.stderr  # fmt: skip
    assert said in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize(
    ("args", "environ", "named"),
    [
        ([b"--proxy", b"http://a\xff:1"], {}, b"bad proxy URL"),
        ([b"--proxy", b"http://u:\xff@127.0.0.1:9"], {}, b"bad proxy URL"),
        ([], {b"HTTP_PROXY": b"\xff\xfe"}, b"$HTTP_PROXY"),
        ([], {b"http_proxy": b"http://[::1"}, b"$http_proxy"),
        ([], {b"all_proxy": b"http://[::1"}, b"$all_proxy"),
        ([], {b"HTTP_PROXY": b"http://[::1", b"ALL_PROXY": b"http://[::2"}, b"$HTTP_PROXY"),
        ([], {b"HTTP_PROXY": b"http://u:\xff@127.0.0.1:9"}, b"$HTTP_PROXY"),
    ],
)
def test_a_bad_proxy_is_named_as_the_proxy_not_the_url(
    args: list[bytes], environ: dict[bytes, bytes], named: bytes, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environb.items() if not k.lower().endswith(b"_proxy")}
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", "http://127.0.0.1:9/x", "-o", str(tmp_path / "o"), *args],
        capture_output=True,
        env={**env, **environ},
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr.startswith(b"blobdl: error: bad proxy URL"), done.stderr
    assert named in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["URL", "--limit-rate", "0"], "--limit-rate"),
        (["URL", "--connections", "0"], "--connections"),
        (["URL", "--stall-timeout", "0"], "--stall-timeout"),
        (["URL", "--retries", "-1"], "--retries"),
        (["-i", "MANIFEST", "--per-host", "0"], "--per-host"),
        (["-i", "MANIFEST", "--connections", "0"], "--connections"),
        (["pull", "m:t", "--processes", "0"], "--processes"),
        (["hf", "a/b", "--max-part-size", "1"], "--max-part-size"),
    ],
)
def test_a_bad_setting_is_named_as_its_option(tmp_path: Path, args: list[str], option: str) -> None:
    """The library says ``limit_rate``; the command line says ``--limit-rate``."""
    manifest = tmp_path / "m"
    manifest.write_text(f"http://127.0.0.1:9/x {tmp_path / 'x'}\n")
    url = "http://127.0.0.1:9/x"
    argv = [url if a == "URL" else str(manifest) if a == "MANIFEST" else a for a in args]
    output = ["-o", str(tmp_path / "o")] if "URL" in args else []
    done = subprocess.run([sys.executable, "-m", "blobdl", *argv, *output],
                          capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert done.returncode == EXIT_USAGE, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith("blobdl: error: "), line
    name = option[2:].replace("-", "_")  # the library's name, alone (not inside the option)
    assert option in line and not re.search(rf"(?<![-\w]){name}(?![-\w])", line), line


def test_a_name_with_a_line_break_is_shown_on_one_line(make: Make, tmp_path: Path) -> None:
    """A path (or any text we echo) that holds a line break or a terminal escape must not
    split the one error line, nor forge a second one."""
    blob = make(1000, seed=2111)
    gone = tmp_path / "gone\nblobdl: error: forged\x1b[2J"
    done = subprocess.run([sys.executable, "-m", "blobdl", blob.url, "-o", str(gone / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert done.returncode == EXIT_LOCAL, done.stderr
    [line] = done.stderr.splitlines()
    assert line == f"blobdl: error: {tmp_path}/gone\\nblobdl: error: forged\\x1b[2J: " + (
        "directory does not exist"
    )


def test_prune_lists_a_name_with_a_line_break_on_one_line(tmp_path: Path) -> None:
    """``blobdl prune`` lists each file on a line of its own: a partial named to look like
    another line never adds a line that is not about itself."""
    partial = tmp_path / "models" / "blobs-partial"
    partial.mkdir(parents=True)
    forged = f"sha256-{'a' * 64}.blobdl-tmp\nremoved  precious  0 bytes  (stale lock)"
    (partial / forged).write_bytes(b"x")
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", "prune", "--models-dir", str(tmp_path / "models")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and not any(line.startswith("removed  precious") for line in lines)
    assert lines[1].startswith(f"removed  {partial}/sha256-{'a' * 64}.blobdl-tmp\\nremoved  ")


@pytest.mark.parametrize(
    "args",
    [
        ["http://127.0.0.1:9/x", "--limit-rate", "-1"],  # argparse's own check
        ["--connections", "x", "http://127.0.0.1:9/x"],
        ["-i", "MANIFEST", "-o", "out"],  # ours, after parsing
        ["pull", "m:t", "--max-part-size", "1e3"],
        ["hf", "a/b", "--retries", "many"],
        ["http://127.0.0.1:9/x", "--jso", "--limit-rate", "-1"],  # --json abbreviated
    ],
)
def test_with_json_a_usage_error_ends_in_a_failed_event(tmp_path: Path, args: list[str]) -> None:
    """With --json the last line is ``finished`` or ``failed``, whichever check refused the
    arguments: a bad --limit-rate caught by the parser is a failure like --limit-rate 0."""
    manifest = tmp_path / "m"
    manifest.write_text("http://127.0.0.1:9/x\n")
    argv = [str(manifest) if a == "MANIFEST" else a for a in args]
    json_flag = [] if "--jso" in argv else ["--json"]
    done = subprocess.run([sys.executable, "-m", "blobdl", *argv, *json_flag],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == EXIT_USAGE, done.stderr
    [line] = done.stderr.splitlines()
    [record] = [json.loads(out) for out in done.stdout.splitlines()]
    assert record["event"] == "failed" and record["exit_code"] == EXIT_USAGE, record
    assert line == f"blobdl: error: {record['error']}" or record["error"] in line, line


def test_without_json_a_usage_error_prints_nothing_on_stdout(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "blobdl", "http://x/y", "--limit-rate", "-1"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert done.returncode == EXIT_USAGE and done.stdout == "", done.stdout


def test_hf_without_a_repository_names_only_the_repository_as_missing(tmp_path: Path) -> None:
    """PATH is optional (default: every file): the usage error must not say it is required."""
    done = subprocess.run([sys.executable, "-m", "blobdl", "hf"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert done.returncode == EXIT_USAGE
    assert done.stderr.startswith("blobdl hf: error: the following arguments are required: repo ")
    assert "PATH" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    "args", [["-q", "prune"], ["--json", "pull", "llama3.2"], ["--connections", "4", "hf", "a/b"]]
)
def test_an_option_before_a_command_is_said_to_go_after_it(tmp_path: Path, args: list[str]) -> None:
    """``blobdl -q prune`` is not a download of the URL 'prune': one line says where its
    options go."""
    done = subprocess.run([sys.executable, "-m", "blobdl", *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    command = next(a for a in args if a in ("prune", "pull", "hf"))
    assert done.returncode == EXIT_USAGE
    [line] = done.stderr.splitlines()
    assert f"'{command}' is a command: put options after it (blobdl {command} " in line, line


def _reading_stdin(pid: int) -> bool:
    """The process waits in a read of its stdin pipe (the kernel names the wait)."""
    return "pipe" in Path(f"/proc/{pid}/wchan").read_text()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_with_json_a_stop_while_the_manifest_is_read_ends_in_a_failed_event(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """``producer | blobdl -i - --json`` stopped before the producer is done: the stream
    ends in a ``failed`` line with exit code 130, as a stop during the downloads does, so a
    reader of the stream is told why it ended whatever step the signal found."""
    run = subprocess.Popen([sys.executable, "-m", "blobdl", "-i", "-", "--json"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    try:
        assert run.stdin is not None
        run.stdin.write("http://127.0.0.1:9/a.bin\n")  # a first line, the rest still coming
        run.stdin.flush()
        deadline = time.monotonic() + 30
        while not _reading_stdin(run.pid):
            assert time.monotonic() < deadline, "blobdl never read its manifest"
            time.sleep(0.05)
        run.send_signal(stop)
        out, err = run.communicate(timeout=30)
    finally:
        run.kill()
        run.wait()
    assert run.returncode == EXIT_INTERRUPTED, err
    assert err == f"blobdl: error: interrupted by signal {int(stop)}\n", err
    [record] = [json.loads(line) for line in out.splitlines()]
    assert record["event"] == "failed" and record["exit_code"] == EXIT_INTERRUPTED, record
    assert list(tmp_path.iterdir()) == []


def test_a_stop_once_every_item_of_a_batch_is_done_does_not_undo_it(
    make: Make, tmp_path: Path
) -> None:
    """The batch's outcome is decided once its last item is done: a Ctrl-C or SIGTERM while
    its report is still being written (a JSON reader behind, a long manifest's lines) no
    longer stops it, as one after a single download's last byte does not: exit 0, every
    item's last line and the summary, not exit 130 with the report cut short."""
    blob = make(50_000, seed=72)
    count = 3000  # the same item again and again: told after the batch, in its report
    (tmp_path / "m").write_text(f"{blob.url} out.bin\n" * count)
    run = subprocess.Popen([sys.executable, "-m", "blobdl", "-i", "m", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    try:
        assert run.stdout is not None
        # item 0 started and finished, item 1: read past nothing more (see ``pipe_line``)
        first = [pipe_line(run.stdout.fileno()) for _ in range(3)]
        assert json.loads(first[2])["item"] == 1, first
        time.sleep(0.5)  # blobdl writes ahead until the pipe is full: the report is not over
        assert run.poll() is None
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
    finally:
        run.kill()
        run.wait()
    assert (run.returncode, err) == (EXIT_OK, b""), err
    records = [json.loads(line) for line in [*first, *out.decode().splitlines()]]
    assert records[-1] == {"event": "summary", "ok": count, "failed": 0}, records[-1]
    assert sorted(r["item"] for r in records if r["event"] == "finished") == list(range(count))
    assert sha256_file(tmp_path / "out.bin") == blob.sha256
