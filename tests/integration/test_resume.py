"""Resume, digests, locks and the destination's safety — over real processes and sockets."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import blobdl
from blobdl import Downloader
from blobdl.errors import EXIT_INTEGRITY, EXIT_INTERRUPTED, EXIT_LOCAL, EXIT_OK, EXIT_USAGE
from blobdl.store import _resume
from blobdl.store._resume import PartRecord, State, save, state_path
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import (
    PART,
    REPO,
    Blob,
    fast_settings,
    mounted_tmpfs,
    run_cli,
    sha256_file,
    spawn_cli,
)

Make = Callable[..., Blob]
BIG = 32 * PART  # 2 MiB: 32 parts
SLOW = 500_000  # bytes/s per connection: 4 connections take ~1 s for BIG
CHECKPOINT = 0.2  # seconds
CLI_FAST = ["--min-part-size", "256KiB", "--max-part-size", "256KiB", "--connections", "4",
            "--progress-interval", "0.1", "--checkpoint-interval", str(CHECKPOINT)]  # fmt: skip


def cli(*args: str) -> subprocess.Popen[str]:
    return spawn_cli(*args)


def slow_down(server: ServerHandle, blob: Blob, bps: int = SLOW) -> None:
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None,
                       "action": "rate", "bps": bps})  # fmt: skip


def run_until(proc: subprocess.Popen[str], fraction: float, total: int) -> dict[str, Any]:
    """Read --json progress until ``fraction`` of ``total`` is done; return that record."""
    assert proc.stdout is not None
    for line in proc.stdout:
        record: dict[str, Any] = json.loads(line)
        if record["event"] == "progress" and record["done"] >= fraction * total:
            return record
    raise AssertionError(
        f"finished before {fraction:.0%}: {proc.stderr.read() if proc.stderr else ''}"
    )


def slow_cli(
    make: Make, server: ServerHandle, tmp_path: Path, seed: int, fraction: float
) -> tuple[Blob, Path, subprocess.Popen[str], dict[str, Any]]:
    """A paced CLI download of a fresh blob to tmp_path/out, run until ``fraction`` is done:
    the blob, the destination, the process and the progress record that reached it."""
    blob = make(BIG, seed=seed)
    slow_down(server, blob)
    out = tmp_path / "out"
    proc = cli(blob.url, "-o", str(out), "--json", *CLI_FAST)
    return blob, out, proc, run_until(proc, fraction, blob.size)


def test_sigkill_of_the_coordinator_resumes_with_only_the_missing_bytes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob, out, first, _ = slow_cli(make, server, tmp_path, seed=11, fraction=0.5)
    workers = psutil.Process(first.pid).children()
    first.kill()
    first.wait()
    assert first.stdout and first.stderr
    first.stdout.close()
    first.stderr.close()
    # Its workers die with it (PR_SET_PDEATHSIG), not carry on writing as orphans.
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive
    claimed = json.loads(state_path(out).read_text())["state"]
    on_disk = sum(p[2] - p[0] for p in claimed["parts"])
    assert 0 < on_disk < blob.size and not out.exists()

    server.reset()
    second = blobdl.download(blob.url, out, **_fast())
    assert sha256_file(out) == blob.sha256 and second.resumed == on_disk
    assert second.bytes_fetched == blob.size - on_disk
    # The server agrees: the rerun fetched only what the state did not claim (+ the probe).
    assert server.stats()["bytes_sent"] == blob.size - on_disk + 1
    assert not state_path(out).exists() and not Path(f"{out}.blobdl-tmp").exists()


def test_checkpoint_lags_by_at_most_one_interval(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """What a SIGKILL loses is bounded: the state claims what was on disk a checkpoint ago."""
    _, out, proc, seen = slow_cli(make, server, tmp_path, seed=12, fraction=0.6)
    proc.kill()
    proc.wait()
    claimed = json.loads(state_path(out).read_text())["state"]
    on_disk = sum(p[2] - p[0] for p in claimed["parts"])
    rate = seen["done"] / seen["elapsed"]
    # A checkpoint is taken at the first 0.1 s sample after each interval has passed; the
    # server paces in 64 KiB bursts, one per connection.
    assert seen["done"] - on_disk <= rate * (CHECKPOINT + 0.1) + 4 * 64 * 1024


def test_sigint_saves_state_exits_130_and_resumes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob, out, proc, _ = slow_cli(make, server, tmp_path, seed=13, fraction=0.3)
    workers = psutil.Process(proc.pid).children()
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert time.monotonic() - started < 2  # workers stopped within a second or so
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
    assert state_path(out).exists() and not out.exists()
    server.reset()
    rerun = run_cli(blob.url, "-o", str(out), "-q", *CLI_FAST, timeout=60)
    assert rerun.returncode == EXIT_OK, rerun.stderr
    assert sha256_file(out) == blob.sha256
    assert server.stats()["bytes_sent"] < blob.size


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_records_every_byte_received_before_it(
    make: Make, server: ServerHandle, tmp_path: Path, signum: int
) -> None:
    """No checkpoint falls before the stop (a minute apart): the one the stop itself writes,
    once the signal is being handled, must be whole, claiming at least what the last
    progress line said was done, and the next run resumes from it."""
    blob = make(BIG, seed=15 + signum)
    slow_down(server, blob)
    out = tmp_path / "out"
    args = [*CLI_FAST[:-1], "60"]
    proc = cli(blob.url, "-o", str(out), "--json", *args)
    seen = run_until(proc, 0.3, blob.size)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert state_path(out).exists(), err
    claimed = json.loads(state_path(out).read_text())["state"]
    on_disk = sum(p[2] - p[0] for p in claimed["parts"])
    assert on_disk >= seen["done"], (on_disk, seen)
    server.reset()
    second = blobdl.download(blob.url, out, **_fast())
    assert sha256_file(out) == blob.sha256 and second.resumed == on_disk


def test_sigterm_is_handled_like_sigint(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    _, _, proc, _ = slow_cli(make, server, tmp_path, seed=13, fraction=0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == EXIT_INTERRUPTED and "resume" in err


def _fast(**overrides: object) -> dict[str, object]:
    return fast_settings(**overrides).__dict__.copy()


def interrupted_download(blob: Blob, server: ServerHandle, out: Path) -> State:
    """Leave a genuine partial download of ``blob`` at ``out`` (by scripted stalls)."""
    server.set_faults(
        {"path": f"/files/{blob.name}", "skip": 1 + 4, "times": None, "action": "status",
         "status": 503},
    )  # fmt: skip
    with pytest.raises(blobdl.RetriesExhausted):
        Downloader(fast_settings(retries=0, connections=4)).download(blob.url, out)
    server.reset()
    state = _resume.load(state_path(out), blob.url, Path(f"{out}.blobdl-tmp"))
    assert state is not None
    return state


def test_remote_changed_between_runs_starts_over_cleanly(
    make: Make, server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blob = make(8 * PART, seed=21)
    out = tmp_path / "out"
    interrupted_download(blob, server, out)
    time.sleep(0.01)  # a new mtime, so a new ETag
    new_sha = make_blob(server.root, blob.name, blob.size, seed=99)
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == new_sha and result.resumed == 0
    assert result.bytes_fetched == blob.size
    assert "remote changed" in caplog.text


@pytest.mark.parametrize("how", ["rewritten in place", "renamed onto it"])
def test_a_partial_whose_bytes_were_replaced_between_runs_is_not_resumed(
    make: Make, server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """Between two runs another program puts other bytes in the partial, at its size (a
    restore from a backup, a sync tool, a stray ``dd``): its record still claims the bytes
    it saw written. Resumed, the rerun would rename a blob of mixed bytes into place with
    exit 0 (without a digest nothing else checks them). The record keeps a checksum of a
    block at each end of every part's bytes, read back as it is written; a rerun finding
    them changed starts over, and the blob is exact."""
    blob = make(8 * PART, seed=24)
    out = tmp_path / "out"
    state = interrupted_download(blob, server, out)
    assert state.done > 0
    temp = Path(f"{out}.blobdl-tmp")
    other = os.urandom(blob.size)
    if how == "rewritten in place":
        temp.write_bytes(other)  # the same file: its inode, its size
    else:
        (tmp_path / "other").write_bytes(other)
        os.replace(tmp_path / "other", temp)
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256
    assert result.resumed == 0 and result.bytes_fetched == blob.size
    assert "not the ones it recorded" in caplog.text


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: text.replace('"pos"', '"pos"').replace("0,", "1,", 1),  # edited
        lambda text: "not json at all",
        lambda text: "",
    ],
    ids=["truncated", "edited", "garbage", "empty"],
)
def test_corrupt_state_is_ignored_with_a_warning(
    make: Make,
    server: ServerHandle,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[str], str],
) -> None:
    blob = make(8 * PART, seed=22)
    out = tmp_path / "out"
    interrupted_download(blob, server, out)
    state_file = state_path(out)
    state_file.write_text(damage(state_file.read_text()))
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == 0
    assert "ignoring" in caplog.text


@pytest.mark.parametrize(
    "forge",
    [
        lambda parts: [parts[0]._replace(pos=parts[0].end + 1), *parts[1:]],
        lambda parts: [parts[0]._replace(pos=parts[0].start - 1), *parts[1:]],
        lambda parts: parts[1:],
        lambda parts: parts[:-1],
    ],
    ids=["a part done past its end", "a part before its start", "no byte 0", "short of the end"],
)
def test_a_record_whose_parts_cannot_be_is_ignored_however_well_it_is_checksummed(
    make: Make,
    server: ServerHandle,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    forge: Callable[[list[PartRecord]], list[PartRecord]],
) -> None:
    blob = make(8 * PART, seed=25)
    out = tmp_path / "out"
    # One connection: the first part is in before the second is asked for (and refused),
    # whatever the machine's load; with four, the refusal could stop the first part short.
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1 + 1, "times": None,
                       "action": "status", "status": 503})  # fmt: skip
    with pytest.raises(blobdl.RetriesExhausted):
        Downloader(fast_settings(retries=0, connections=1)).download(blob.url, out)
    server.reset()
    state = _resume.load(state_path(out), blob.url, Path(f"{out}.blobdl-tmp"))
    assert state is not None and state.parts[0].pos == state.parts[0].end  # the first is in
    save(state_path(out), state._replace(parts=tuple(forge(list(state.parts)))))
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == 0
    assert "ignoring" in caplog.text


@pytest.mark.parametrize(
    "forge",
    [
        lambda state, _: (*state.samples, _resume.Sample(state.size - 10, 4096, 0)),
        lambda state, _: (*state.samples, _resume.Sample(0, 0, 0)),
        lambda state, _: state.samples * 40,
        # checksummed right: only its length gives it away (one of the blob's size, times
        # sixty-six, would have a rerun read the blob sixty-six times to check it)
        lambda state, data: (
            *state.samples,
            _resume.Sample(0, _resume.SAMPLE + 1, zlib.crc32(data[: _resume.SAMPLE + 1])),
        ),
    ],
    ids=[
        "a block past the end",
        "an empty block",
        "more blocks than a record keeps",
        "a block longer than a checkpoint takes",
    ],
)
def test_a_record_whose_samples_cannot_be_is_ignored_however_well_it_is_checksummed(
    make: Make,
    server: ServerHandle,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    forge: Callable[[State, bytes], tuple[_resume.Sample, ...]],
) -> None:
    """A record's checksummed blocks are read back by a rerun: a forged one naming blocks
    no checkpoint takes (outside the blob, empty, thousands of them) is ignored, not read."""
    blob = make(8 * PART, seed=26)
    out = tmp_path / "out"
    state = interrupted_download(blob, server, out)
    assert state.samples
    partial = Path(f"{out}.blobdl-tmp").read_bytes()
    save(state_path(out), state._replace(samples=forge(state, partial)))
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed == 0
    assert "ignoring" in caplog.text


def test_state_for_another_url_is_not_trusted(
    make: Make, server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blob, other = make(8 * PART, seed=23), make(8 * PART, seed=24)
    out = tmp_path / "out"
    interrupted_download(blob, server, out)
    result = Downloader(fast_settings()).download(other.url, out)
    assert sha256_file(out) == other.sha256 and result.resumed == 0
    assert "it is for" in caplog.text


def test_state_for_another_url_without_validators_is_never_mixed_in(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A blob of the same size at another URL, served with no ETag nor Last-Modified:
    nothing tells the two apart but the record's URL, so only that keeps the first blob's
    bytes out of the second (no digest pins them)."""
    blob, other = make(8 * PART, seed=25), make(8 * PART, seed=26)
    out = tmp_path / "out"
    assert interrupted_download(blob, server, out).done > 0
    server.set_faults({"path": "/files/*", "times": None, "action": "headers",
                       "drop": ["ETag", "Last-Modified"]})  # fmt: skip
    result = Downloader(fast_settings()).download(other.url, out)
    assert sha256_file(out) == other.sha256 and result.resumed == 0


def _partial_pinned(server: ServerHandle, blob: Blob, out: Path) -> str:
    """A partial of ``blob`` at ``out``, its first parts in (the rest refused), pinned by
    its digest; the pin."""
    server.set_faults(
        {"path": f"/files/{blob.name}", "skip": 1 + 4, "times": None, "action": "status",
         "status": 503},
    )  # fmt: skip
    pinned = f"sha256:{blob.sha256}"
    with pytest.raises(blobdl.RetriesExhausted):
        Downloader(fast_settings(retries=0, connections=4)).download(blob.url, out, digest=pinned)
    return pinned


def test_a_digest_pinned_partial_resumes_from_another_url_of_the_same_blob(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A registry hands out a new presigned URL each time it is asked: the pinned digest,
    not the URL, says which blob a partial belongs to (the final hash still checks it)."""
    blob = make(8 * PART, seed=25)
    out = tmp_path / "out"
    pinned = _partial_pinned(server, blob, out)
    server.reset()
    again = server.route(f"/cd/{blob.name}?filename=other")
    result = Downloader(fast_settings()).download(again, out, digest=pinned)
    assert sha256_file(out) == blob.sha256 and result.resumed > 0
    assert result.bytes_fetched <= blob.size - result.resumed + PART


def test_a_digest_pinned_partial_resumes_from_a_mirror_with_validators_of_its_own(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """Another server's ETag says nothing about the first one's blob: a mirror computes its
    own. The digest says which blob the partial is, and checks every byte at the end."""
    blob = make(8 * PART, seed=27)
    out = tmp_path / "out"
    pinned = _partial_pinned(server, blob, out)
    server.set_faults({"path": "/cd/*", "times": None, "action": "etag", "value": "mirror"})
    mirror = server.route(f"/cd/{blob.name}?filename=other")
    result = Downloader(fast_settings()).download(mirror, out, digest=pinned)
    assert sha256_file(out) == blob.sha256 and result.resumed > 0
    assert result.bytes_fetched <= blob.size - result.resumed + PART


def test_a_digest_pinned_partial_still_resumes_from_its_url_without_the_digest(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(8 * PART, seed=26)
    out = tmp_path / "out"
    server.set_faults(
        {"path": f"/files/{blob.name}", "skip": 1 + 4, "times": None, "action": "status",
         "status": 503},
    )  # fmt: skip
    with pytest.raises(blobdl.RetriesExhausted):
        Downloader(fast_settings(retries=0, connections=4)).download(
            blob.url, out, digest=f"sha256:{blob.sha256}"
        )
    server.reset()
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256 and result.resumed > 0


def test_no_resume_starts_over(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    blob = make(8 * PART, seed=25)
    out = tmp_path / "out"
    interrupted_download(blob, server, out)
    result = Downloader(fast_settings(resume=False)).download(blob.url, out)
    assert result.resumed == 0 and result.bytes_fetched == blob.size
    assert sha256_file(out) == blob.sha256 and not state_path(out).exists()


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_recorded_progress_resumes_to_exact_bytes(
    make: Make, server: ServerHandle, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Whatever the state claims (and whatever garbage lies beyond the claims), the rerun
    fetches exactly the unclaimed bytes and ends with the exact blob."""
    blob = make(8 * PART + 17, seed=26)
    server.reset()
    out = tmp_path_factory.mktemp("resume") / "out"
    content = (server.root / blob.name).read_bytes()
    cuts = [min(k * PART, blob.size) for k in range(9)] + [blob.size]
    records = []
    partial = bytearray(os.urandom(blob.size))  # garbage wherever nothing is claimed
    for start, end in itertools.pairwise(cuts):
        if end <= start:
            continue
        pos = data.draw(st.integers(start, end))
        partial[start:pos] = content[start:pos]
        records.append(PartRecord(start, end, pos))
    Path(f"{out}.blobdl-tmp").write_bytes(bytes(partial))
    probe = blobdl.http._probe.resolve(blob.url, fast_settings())
    save(state_path(out), State(blob.url, probe.final_url, blob.size, probe.etag,
                                probe.last_modified, tuple(records)))  # fmt: skip
    claimed = sum(r.pos - r.start for r in records)
    result = Downloader(fast_settings()).download(blob.url, out)
    assert sha256_file(out) == blob.sha256
    assert result.resumed == claimed and result.bytes_fetched == blob.size - claimed


# --- digests ------------------------------------------------------------------------------


def test_matching_digest_is_verified(make: Make, tmp_path: Path) -> None:
    blob = make(20 * PART + 3, seed=31)
    result = Downloader(fast_settings()).download(
        blob.url, tmp_path / "out", digest=f"sha256:{blob.sha256}"
    )
    assert result.verified and sha256_file(tmp_path / "out") == blob.sha256


def test_bare_hex_digest_is_accepted(make: Make, tmp_path: Path) -> None:
    blob = make(3 * PART, seed=31)
    result = Downloader(fast_settings()).download(
        blob.url, tmp_path / "out", digest=blob.sha256.upper()
    )
    assert result.verified


def test_digest_mismatch_renames_nothing(make: Make, tmp_path: Path) -> None:
    blob = make(5 * PART, seed=32)
    wrong = "0" * 64
    with pytest.raises(blobdl.DigestMismatch) as caught:
        Downloader(fast_settings()).download(blob.url, tmp_path / "out", digest=wrong)
    assert caught.value.actual == blob.sha256 and caught.value.exit_code == EXIT_INTEGRITY
    assert list(tmp_path.iterdir()) == []


def test_digest_mismatch_can_keep_the_bad_bytes(make: Make, tmp_path: Path) -> None:
    blob = make(5 * PART, seed=32)
    with pytest.raises(blobdl.DigestMismatch):
        Downloader(fast_settings(keep_bad=True)).download(
            blob.url, tmp_path / "out", digest="0" * 64
        )
    assert [p.name for p in tmp_path.iterdir()] == ["out.blobdl-bad"]
    assert sha256_file(tmp_path / "out.blobdl-bad") == blob.sha256


def test_a_hole_behind_parts_already_in_is_never_hashed_as_the_blobs_bytes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The hasher follows the prefix of the blob on disk while the download runs: the first
    part held mid-way while every later one lands leaves a hole more than a hashing step
    (16 MiB) before the end. Hashing on past it (its preallocated zeros) would fail a
    correct download as a digest mismatch and throw its bytes away."""
    mib = 1 << 20
    blob = make(24 * mib, seed=34)
    server.set_faults({"path": f"/files/{blob.name}", "times": 1, "action": "stall_at",
                       "offset": mib // 2, "hold": 1.5})  # fmt: skip
    settings = fast_settings(min_part_size=mib, max_part_size=mib, steal=False, stall_timeout=10)
    result = Downloader(settings).download(blob.url, tmp_path / "out", digest=blob.sha256)
    assert result.verified and sha256_file(tmp_path / "out") == blob.sha256


def test_shifted_bytes_behind_an_honest_looking_header_are_caught_by_the_digest(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(4 * PART, seed=33)
    # Every part is shifted (the server keeps a shifted window inside the file, so the last
    # part comes out right; the others cannot).
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": None,
                       "action": "shift_range", "by": 1})  # fmt: skip
    with pytest.raises(blobdl.DigestMismatch):
        Downloader(fast_settings()).download(blob.url, tmp_path / "out", digest=blob.sha256)
    assert not (tmp_path / "out").exists()


def test_resumed_download_is_verified_over_old_and_new_bytes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(8 * PART, seed=34)
    out = tmp_path / "out"
    state = interrupted_download(blob, server, out)
    assert 0 < state.done < blob.size
    result = Downloader(fast_settings()).download(blob.url, out, digest=blob.sha256)
    assert result.verified and result.resumed == state.done


@pytest.mark.parametrize("bad", ["sha256:xyz", "md5:" + "0" * 32, "0" * 63, "sha512:" + "0" * 64])
def test_malformed_digest_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    run = run_cli("http://127.0.0.1:9/x", "-o", str(tmp_path / "o"), "--digest", bad, timeout=30)
    assert run.returncode == EXIT_USAGE and "not a sha256 digest" in run.stderr


# --- the destination ---------------------------------------------------------------------


def test_existing_file_matching_the_digest_costs_no_network(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(3 * PART, seed=41)
    out = tmp_path / "out"
    out.write_bytes((server.root / blob.name).read_bytes())
    result = Downloader(fast_settings()).download(blob.url, out, digest=blob.sha256)
    assert result.verified and result.bytes_fetched == 0
    assert server.stats()["requests"] == 0


def test_existing_file_is_not_overwritten_without_force(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(3 * PART, seed=42)
    out = tmp_path / "out"
    out.write_bytes(b"precious")
    with pytest.raises(blobdl.DestinationExists) as caught:
        Downloader(fast_settings()).download(blob.url, out)
    assert caught.value.exit_code == EXIT_LOCAL and out.read_bytes() == b"precious"
    assert server.stats()["requests"] == 0
    Downloader(fast_settings(force=True)).download(blob.url, out)
    assert sha256_file(out) == blob.sha256


def test_existing_file_with_a_wrong_digest_is_replaced(make: Make, tmp_path: Path) -> None:
    blob = make(3 * PART, seed=43)
    out = tmp_path / "out"
    out.write_bytes(b"stale")
    assert Downloader(fast_settings()).download(blob.url, out, digest=blob.sha256).verified
    assert sha256_file(out) == blob.sha256


def test_second_writer_fails_clearly_while_the_first_runs(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(BIG, seed=44)
    # Its first part stops after 1000 bytes for 10 s (then the lane fetches the rest): the
    # first still runs however long the second takes to start. (Paced, it was done in ~1 s,
    # and under load the second found the blob there instead of its lock.)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": 1,
                       "action": "stall_after", "bytes": 1000, "hold": 10})  # fmt: skip
    out = tmp_path / "out"
    first = cli(blob.url, "-o", str(out), "--json", *CLI_FAST, "--no-steal")
    run_until(first, 0.1, blob.size)
    second = run_cli(blob.url, "-o", str(out), *CLI_FAST, timeout=30)
    assert second.returncode == EXIT_LOCAL
    assert f"process {first.pid} is already downloading" in second.stderr
    first.communicate(timeout=30)
    assert first.returncode == EXIT_OK and sha256_file(out) == blob.sha256


def test_second_writer_can_wait_and_then_finds_the_blob_there(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob, out, first, _ = slow_cli(make, server, tmp_path, seed=45, fraction=0.1)
    second = run_cli(
        blob.url,
        "-o",
        str(out),
        "--json",
        "--lock-timeout",
        "30",
        "--digest",
        blob.sha256,
        *CLI_FAST,
        timeout=60,
    )
    first.communicate(timeout=30)
    assert second.returncode == EXIT_OK, second.stderr
    summary = json.loads(second.stdout.splitlines()[-1])
    assert summary["bytes_fetched"] == 0 and summary["verified"]  # waited, then verified
    assert sha256_file(out) == blob.sha256


def test_lock_of_a_killed_holder_is_not_stuck(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob, out, first, _ = slow_cli(make, server, tmp_path, seed=46, fraction=0.1)
    first.kill()
    first.communicate()
    server.reset()
    assert blobdl.download(blob.url, out, **_fast()).size == blob.size


HOLD_UNTIL_TOLD = """
import sys
from pathlib import Path
from blobdl.store._lock import DestinationLock
with DestinationLock(Path(sys.argv[1]), 30.0):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_writer_that_waited_for_the_lock_holds_the_destination_alone(tmp_path: Path) -> None:
    # The holder removes its lock file as it lets go: a waiter that had it open then locks
    # a file no longer at the name. Unless it locks the name anew, a third writer finds no
    # lock there and writes the same destination beside it.
    from blobdl.store._lock import DestinationLock

    out = tmp_path / "out"
    lock_file = f"{out}.blobdl-lock"
    first = DestinationLock(out, 0.0).__enter__()
    waiter = subprocess.Popen([sys.executable, "-c", HOLD_UNTIL_TOLD, str(out)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert waiter.stdin is not None and waiter.stdout is not None
    try:
        opened = psutil.Process(waiter.pid)
        deadline = time.monotonic() + 20
        while lock_file not in [f.path for f in opened.open_files()]:
            assert time.monotonic() < deadline, "the waiter never opened the lock file"
            time.sleep(0.02)
        first.__exit__(None, None, None)
        assert waiter.stdout.readline() == "held\n"
        with pytest.raises(blobdl.DestinationLocked, match=f"process {waiter.pid} "):
            DestinationLock(out, 0.0).__enter__()
    finally:
        first.__exit__(None, None, None)
        waiter.communicate("\n", timeout=30)
    assert waiter.returncode == 0
    assert not os.path.lexists(lock_file)


def test_two_calls_in_one_process_do_not_interleave(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    import threading

    blob = make(BIG, seed=47)
    slow_down(server, blob)
    out = tmp_path / "out"
    errors: list[BaseException] = []

    def second() -> None:
        try:
            Downloader(fast_settings()).download(blob.url, out)
        except BaseException as exc:
            errors.append(exc)

    def on_progress(_: object) -> None:
        if not started:
            started.append(threading.Thread(target=second))
            started[0].start()
            started[0].join()

    started: list[threading.Thread] = []
    Downloader(fast_settings()).download(blob.url, out, on_progress=on_progress)
    assert len(errors) == 1 and isinstance(errors[0], blobdl.DestinationLocked)
    assert sha256_file(out) == blob.sha256


# --- disk space ---------------------------------------------------------------------------


def test_not_enough_space_is_refused_before_any_byte(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 1000, 1000))
    blob = make(3 * PART, seed=51)
    with pytest.raises(blobdl.InsufficientSpace) as caught:
        Downloader(fast_settings()).download(blob.url, tmp_path / "out")
    assert str(caught.value).endswith(f"needs {blob.size} bytes but only 1000 are free")
    assert caught.value.exit_code == EXIT_LOCAL and list(tmp_path.iterdir()) == []
    assert len(server.stats()["ranges"]) == 1  # the probe only


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "tmpfs", "256k") as mount:
        yield mount


def test_real_small_filesystem_is_refused(make: Make, small_tmpfs: Path) -> None:
    blob = make(8 * PART, seed=52)  # 512 KiB into 256 KiB
    run = run_cli(blob.url, "-o", str(small_tmpfs / "out"), *CLI_FAST, timeout=30)
    assert run.returncode == EXIT_LOCAL and "bytes but only" in run.stderr
    assert list(small_tmpfs.iterdir()) == []
