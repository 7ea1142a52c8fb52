"""Never lose the partial download, and one bad response is not fatal (trust issue #9).

A partial download is thrown away only when the remote was shown to have changed or the
bytes failed their digest. A broken stdout, a raising callback, a final HTTP status or a
TLS failure mid-download all keep it; a response that breaks the protocol is retried.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import blobdl
from blobdl import Downloader, Progress
from blobdl.errors import EXIT_INTEGRITY, EXIT_INTERRUPTED, EXIT_NETWORK, EXIT_OK
from blobdl.store._resume import keeps_partial, state_path
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, REPO, Blob, fast_settings, run_cli, sha256_file

Make = Callable[..., Blob]
BIG = 32 * PART  # 2 MiB
SLOW = 250_000  # bytes/s per connection: 4 connections take ~2 s for BIG
CLI_FAST = ["--min-part-size", "64KiB", "--max-part-size", "64KiB", "--connections", "4",
            "--progress-interval", "0.05", "--max-backoff", "0.05"]  # fmt: skip


def temp_of(out: Path) -> Path:
    return Path(f"{out}.blobdl-tmp")


def claimed(out: Path) -> int:
    """Bytes the resume state says are on disk."""
    parts = json.loads(state_path(out).read_text())["state"]["parts"]
    return sum(p[2] - p[0] for p in parts)


def assert_kept(out: Path) -> int:
    """Temp and state kept, nothing at the destination; the bytes the state claims."""
    assert temp_of(out).exists() and state_path(out).exists() and not out.exists()
    return claimed(out)


def assert_resumes(blob: Blob, server: ServerHandle, out: Path) -> None:
    """A rerun fetches only the bytes the state did not claim (+ the probe's one byte)."""
    on_disk = claimed(out)
    assert on_disk > 0
    server.reset()
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == on_disk
    assert server.stats()["bytes_sent"] == blob.size - on_disk + 1
    assert not temp_of(out).exists() and not state_path(out).exists()


# The fault server paces a response only after its first 64 KiB: parts this large make
# slow_down slow a download, however cheaply its lanes start.
SLOW_PARTS = ["--min-part-size", "256KiB", "--max-part-size", "256KiB"]


def slow_down(server: ServerHandle, blob: Blob) -> None:
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None,
                       "action": "rate", "bps": SLOW})  # fmt: skip


def piped_cli(reader: str, *args: str) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """``blobdl ARGS --json | READER`` (a Python one-liner), as a shell pipeline runs it."""
    sink = subprocess.Popen([sys.executable, "-c", reader], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)  # fmt: skip
    assert sink.stdin is not None
    cli = subprocess.Popen([sys.executable, "-m", "blobdl", *args, "--json"], cwd=REPO,
                           stdout=sink.stdin, stderr=subprocess.PIPE)  # fmt: skip
    sink.stdin.close()  # the CLI holds the only write end now
    return cli, sink


HEAD_3 = "import sys\nfor _ in range(3): sys.stdout.write(sys.stdin.readline())"
# Reads until 30 % of the blob is on disk, then quits, closing the pipe.
UNTIL_30 = (
    "import json, sys\n"
    "for line in sys.stdin:\n"
    "    r = json.loads(line)\n"
    "    if r['event'] == 'progress' and r['done'] >= 0.3 * r['total']: break\n"
    "print('seen')"
)


# --- item 2: output and callback failures never cost the partial ----------------------------


def test_json_into_a_reader_that_quits_early_still_completes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(BIG, seed=91)
    slow_down(server, blob)
    out = tmp_path / "out"
    cli, sink = piped_cli(HEAD_3, blob.url, "-o", str(out), *CLI_FAST, *SLOW_PARTS)
    assert sink.stdout is not None and cli.stderr is not None
    lines = sink.stdout.read().decode().splitlines()
    sink.wait()
    assert len(lines) == 3 and json.loads(lines[0])["event"] == "started"
    err = cli.stderr.read().decode()
    assert cli.wait(timeout=60) == EXIT_OK, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert sha256_file(out) == blob.sha256


def test_sigint_after_the_reader_died_keeps_the_partial(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(BIG, seed=92)
    slow_down(server, blob)
    out = tmp_path / "out"
    cli, sink = piped_cli(UNTIL_30, blob.url, "-o", str(out), *CLI_FAST, *SLOW_PARTS)
    assert sink.stdout is not None and cli.stderr is not None
    assert sink.stdout.read() == b"seen\n"
    sink.wait()
    cli.send_signal(signal.SIGINT)
    err = cli.stderr.read().decode()
    assert cli.wait(timeout=30) == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert assert_kept(out) >= 0.3 * blob.size
    assert_resumes(blob, server, out)


def test_dead_stderr_does_not_turn_a_finished_download_into_a_failure(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """``blobdl URL 2>&1 | true``: the summary line has nowhere to go; the exit code is the
    download's."""
    blob = make(4 * PART, seed=90)
    out = tmp_path / "out"
    sink = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE)
    assert sink.stdin is not None
    sink.wait()  # the reader is gone before the CLI writes a byte
    code = subprocess.call([sys.executable, "-m", "blobdl", blob.url, "-o", str(out), *CLI_FAST],
                           cwd=REPO, stdout=sink.stdin, stderr=sink.stdin)  # fmt: skip
    sink.stdin.close()
    assert code == EXIT_OK and sha256_file(out) == blob.sha256


class Boom(Exception):
    """The caller's own bug, raised from its callback."""


def test_callback_raising_mid_download_keeps_a_resumable_partial(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(BIG, seed=93)
    slow_down(server, blob)
    out = tmp_path / "out"
    calls: list[int] = []

    def explode(progress: Progress) -> None:
        if progress.done >= 0.2 * blob.size:
            calls.append(progress.done)
            raise Boom(len(calls))

    with pytest.raises(Boom) as caught:
        Downloader(fast_settings()).download(blob.url, out, on_progress=explode)
    # The first raise reaches the caller: no later callback call replaced it.
    assert caught.value.args == (1,)
    assert assert_kept(out) >= 0.2 * blob.size
    assert_resumes(blob, server, out)


def test_callback_raising_on_failed_does_not_hide_the_error(
    server: ServerHandle, tmp_path: Path
) -> None:
    def explode(event: blobdl.Event) -> None:
        if isinstance(event, blobdl.Failed):
            raise Boom(event.error)

    with pytest.raises(blobdl.HTTPStatusError, match="HTTP 404"):
        Downloader(fast_settings()).download(
            server.route("/status/404"), tmp_path / "out", on_event=explode
        )


def test_callback_raising_on_the_last_progress_keeps_the_finished_bytes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The final progress comes after every byte landed: the rerun only renames."""
    blob = make(4 * PART, seed=94)
    out = tmp_path / "out"

    def explode(progress: Progress) -> None:
        if progress.done == blob.size:
            raise Boom("done")

    with pytest.raises(Boom):
        Downloader(fast_settings()).download(blob.url, out, on_progress=explode)
    assert assert_kept(out) == blob.size
    server.reset()
    Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and server.stats()["bytes_sent"] == 1


def partial_of_a_fifth(server: ServerHandle, blob: Blob, out: Path) -> int:
    """Download ``blob`` slowly to ``out`` and stop it (a raising callback) once a fifth is
    on disk; return the bytes its kept partial holds."""
    slow_down(server, blob)

    def explode(progress: Progress) -> None:
        if progress.done >= 0.2 * blob.size:
            raise Boom("stop here")

    with pytest.raises(Boom):
        Downloader(fast_settings()).download(blob.url, out, on_progress=explode)
    return assert_kept(out)


def test_a_probe_answered_200_once_does_not_throw_the_partial_away(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """One flaky edge answering the probe's range with the whole blob is not a server that
    lost range support: probe again before starting over without ranges."""
    blob = make(BIG, seed=89)
    out = tmp_path / "out"
    on_disk = partial_of_a_fifth(server, blob, out)
    server.set_faults({"path": f"/files/{blob.name}", "times": 1, "action": "full_200"})
    result = Downloader(fast_settings()).download(blob.url, out)
    assert result.resumed == on_disk and sha256_file(out) == blob.sha256


def test_a_probe_answered_200_for_good_keeps_the_partial(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The server may serve ranges again (the partial stays), and the error says how to go
    on meanwhile: every rerun would fail alike, its words read as a broken server's."""
    blob = make(BIG, seed=88)
    out = tmp_path / "out"
    on_disk = partial_of_a_fifth(server, blob, out)
    server.reset()
    server.set_faults({"path": f"/files/{blob.name}", "times": None, "action": "full_200"})
    with pytest.raises(blobdl.BadResponse) as caught:
        Downloader(fast_settings(retries=2)).download(blob.url, out)
    # The first probe, then the first attempt and two retries of the one that needs ranges.
    assert caught.value.exit_code == EXIT_INTEGRITY and server.stats()["requests"] == 4
    assert assert_kept(out) == on_disk
    assert "no longer answers ranges" in str(caught.value), caught.value
    assert "--no-resume (resume=False) starts over" in str(caught.value), caught.value
    Downloader(fast_settings(resume=False)).download(blob.url, out)
    assert sha256_file(out) == blob.sha256


# --- item 3: a final status or TLS failure mid-download keeps the partial -------------------


@pytest.mark.parametrize("status", [401, 403, 404, 410])
def test_final_status_after_bytes_landed_keeps_the_partial(
    make: Make, server: ServerHandle, tmp_path: Path, status: int
) -> None:
    blob = make(8 * PART, seed=95)
    out = tmp_path / "out"
    # The probe and the first four parts are served; the fifth part request (made only
    # once one of them finished) is refused.
    server.set_faults({"path": f"/files/{blob.name}", "skip": 5, "times": 1,
                       "action": "status", "status": status})  # fmt: skip
    with pytest.raises(blobdl.HTTPStatusError, match=f"HTTP {status}") as caught:
        Downloader(fast_settings()).download(blob.url, out)
    assert caught.value.exit_code == EXIT_NETWORK
    assert assert_kept(out) >= PART
    assert_resumes(blob, server, out)


def test_cli_final_status_mid_download_keeps_the_partial_and_its_exit_code(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(8 * PART, seed=96)
    out = tmp_path / "out"
    server.set_faults({"path": f"/files/{blob.name}", "skip": 5, "times": 1,
                       "action": "status", "status": 404})  # fmt: skip
    run = run_cli(blob.url, "-o", str(out), *CLI_FAST)
    assert run.returncode == EXIT_NETWORK, run.stderr
    assert "partial download kept" in run.stderr and "Traceback" not in run.stderr
    assert_kept(out)
    assert_resumes(blob, server, out)


def test_final_status_before_any_byte_leaves_nothing(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(4 * PART, seed=97)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None,
                       "action": "status", "status": 404})  # fmt: skip
    with pytest.raises(blobdl.HTTPStatusError):
        Downloader(fast_settings()).download(blob.url, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_stream_without_ranges_that_fails_after_bytes_landed_leaves_nothing(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    # The server ignores ranges: one stream from byte 0, which no later run could resume
    # from where it stopped. A record vouching for its bytes would keep a partial that
    # only ever waits for ranges the server does not give.
    blob = make(8 * PART, seed=98)
    server.set_faults(
        {"path": f"/files/{blob.name}", "times": 1, "action": "ignore_range"},
        {"path": f"/files/{blob.name}", "times": None, "action": "close_after", "bytes": PART},
    )
    with pytest.raises(blobdl.RetriesExhausted):
        Downloader(fast_settings(retries=1)).download(blob.url, tmp_path / "out")
    assert server.stats()["bytes_sent"] >= 2 * PART  # bytes landed, twice
    assert list(tmp_path.iterdir()) == []


def test_a_small_item_starts_over_whatever_an_earlier_run_left_of_it(
    make: Make, tmp_path: Path
) -> None:
    # A batch killed mid-item (SIGKILL, a power cut) leaves a small item's temporary file
    # with no record: no bytes of it are trusted, and the rerun neither trips over it nor
    # keeps it.
    blobs = [make(PART // 4, seed=970 + i) for i in range(3)]
    outs = [tmp_path / f"s{i}" for i in range(3)]
    for out in outs:
        temp_of(out).write_bytes(b"\xff" * 1000)  # bytes of no use, half-way
    items = [blobdl.Item(b.url, str(out)) for b, out in zip(blobs, outs, strict=True)]
    results = blobdl.download_many(items, max_connections=2, settings=fast_settings())
    assert all(r.ok for r in results), [r.error for r in results]
    assert [sha256_file(out) for out in outs] == [b.sha256 for b in blobs]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s0", "s1", "s2"]


def test_changed_etag_mid_download_still_discards(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(8 * PART, seed=98)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 5, "times": None,
                       "action": "etag", "value": '"v2"'})  # fmt: skip
    with pytest.raises(blobdl.RemoteChanged):
        Downloader(fast_settings()).download(blob.url, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def _exhausted(last: BaseException) -> blobdl.RetriesExhausted:
    return blobdl.RetriesExhausted(0, 0, 1, 3, last)


@pytest.mark.parametrize(
    ("error", "keep"),
    [
        (blobdl.HTTPStatusError(404, "u"), True),
        (blobdl.HTTPStatusError(401, "u"), True),
        (blobdl.errors.TLSError("u", "TLS verification failed"), True),
        (blobdl.BadResponse("u", "answered 200"), True),
        (blobdl.errors.TooManyRedirects("u", 5), True),
        (_exhausted(blobdl.errors.ConnectionFailed("u", "reset")), True),
        (blobdl.UsageError("bad CA bundle"), True),
        (blobdl.errors.Interrupted(2), True),
        (KeyboardInterrupt(), True),
        (Boom("the caller's bug"), True),
        (BrokenPipeError(), True),
        (blobdl.RemoteChanged("u", "ETag changed"), False),
        (blobdl.DigestMismatch("a", "b"), False),
        (_exhausted(blobdl.RemoteChanged("u", "size changed")), False),
    ],
)
def test_only_proof_of_change_or_bad_bytes_discards(error: BaseException, keep: bool) -> None:
    assert keeps_partial(error) is keep


# --- item 4: one bad response is retried; a persistent one is exit 4 ------------------------

BAD_RESPONSES: list[dict[str, Any]] = [
    {"action": "full_200"},
    {"action": "wrong_content_range", "by": 100},
    {"action": "wrong_length", "by": 7},
    {"action": "wrong_length", "by": -7},
    {"action": "encoding", "value": "gzip"},
]


@pytest.mark.parametrize("rule", BAD_RESPONSES)
def test_one_bad_response_is_retried(
    make: Make, server: ServerHandle, tmp_path: Path, rule: dict[str, Any]
) -> None:
    blob = make(4 * PART, seed=99)
    # One connection: the faulted first part request is part 0's (a shifted window stays
    # inside the file, so only the last part's could not lie).
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": 1, **rule})
    result = Downloader(fast_settings(connections=1)).download(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256 and result.retries == 1


# The probe's own checks: its Content-Range and its encoding (a 200 there means no ranges).
@pytest.mark.parametrize("rule", [BAD_RESPONSES[1], BAD_RESPONSES[4]])
def test_one_bad_probe_response_is_retried(
    make: Make, server: ServerHandle, tmp_path: Path, rule: dict[str, Any]
) -> None:
    blob = make(4 * PART, seed=99)
    server.set_faults({"path": f"/files/{blob.name}", "times": 1, **rule})
    Downloader(fast_settings()).download(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert server.stats()["ranges"][:2] == ["bytes=0-0"] * 2


@pytest.mark.parametrize("rule", BAD_RESPONSES)
def test_cli_one_bad_response_exits_0(
    make: Make, server: ServerHandle, tmp_path: Path, rule: dict[str, Any]
) -> None:
    blob = make(4 * PART, seed=99)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": 1, **rule})
    run = run_cli(blob.url, "-o", str(tmp_path / "out"), "-q", *CLI_FAST, "--connections", "1")
    assert run.returncode == EXIT_OK, run.stderr
    assert sha256_file(tmp_path / "out") == blob.sha256


@pytest.mark.parametrize("rule", BAD_RESPONSES)
def test_cli_persistent_bad_response_exits_4_after_the_retries(
    make: Make, server: ServerHandle, tmp_path: Path, rule: dict[str, Any]
) -> None:
    blob = make(2 * PART, seed=99)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None, **rule})
    run = run_cli(blob.url, "-o", str(tmp_path / "out"), "--retries", "2", *CLI_FAST)
    assert run.returncode == EXIT_INTEGRITY, run.stderr
    *warnings, error = run.stderr.strip().splitlines()  # a kept partial is one warning
    assert all(w.startswith("blobdl: warning: partial download kept") for w in warnings)
    assert error.startswith("blobdl: error: part ") and "3 attempts: bad response" in error
    span = error.split("(bytes ", 1)[1].split(")", 1)[0]
    assert server.stats()["ranges"].count(f"bytes={span}") == 3
    assert not (tmp_path / "out").exists()


def test_persistent_bad_probe_response_exits_4(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(PART, seed=99)
    server.set_faults({"path": f"/files/{blob.name}", "times": None,
                       "action": "wrong_content_range", "by": 100})  # fmt: skip
    run = run_cli(blob.url, "-o", str(tmp_path / "out"), "--retries", "2", *CLI_FAST)
    assert run.returncode == EXIT_INTEGRITY, run.stderr
    assert server.stats()["requests"] == 3
    assert list(tmp_path.iterdir()) == []


def test_remote_changed_is_still_fatal_at_once(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(PART, seed=99)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None,
                       "action": "etag", "value": '"v2"'})  # fmt: skip
    with pytest.raises(blobdl.RemoteChanged):
        Downloader(fast_settings()).download(blob.url, tmp_path / "out")
    assert server.stats()["requests"] == 2
