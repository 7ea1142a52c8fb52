"""The engine end to end: a real server process, forked workers, real files, sha256."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import blobdl
from blobdl import Downloader, Progress
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file

Make = Callable[..., Blob]


def fetch(url: str, dest: Path, **overrides: object) -> blobdl.DownloadResult:
    return Downloader(fast_settings(**overrides)).download(url, dest)


@pytest.mark.parametrize(
    "size",
    [1, 1000, PART - 1, PART, PART + 1, 5 * PART - 1, 5 * PART, 5 * PART + 1, 37 * PART + 123],
)
def test_exact_bytes_for_sizes_around_part_boundaries(
    make: Make, tmp_path: Path, size: int
) -> None:
    blob = make(size)
    result = fetch(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert result.size == size and result.bytes_fetched == size
    assert result.parts == -(-size // PART)
    assert result.retries == 0


def test_parts_run_in_parallel_workers(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    blob = make(16 * PART)
    # Every part's first request waits until eight have come (the probe is not held): eight
    # at once however slowly a loaded machine starts its lanes, not a 0.2 s window.
    path = f"/files/{blob.name}"
    server.set_faults({"path": path, "skip": 1, "times": 8, "action": "ttfb", "delay": 0,
                       "after": {"path": path, "requests": 9}})  # fmt: skip
    fetch(blob.url, tmp_path / "out", connections=8)
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert server.stats()["max_concurrent"] >= 8


def test_forced_part_count(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    blob = make(1_000_003)
    result = fetch(blob.url, tmp_path / "out", parts=7, max_part_size=10**9)
    assert result.parts == 7 and sha256_file(tmp_path / "out") == blob.sha256
    ranges = [r for r in server.stats()["ranges"] if r != "bytes=0-0"]
    assert len(ranges) == 7


def test_empty_blob_gives_an_empty_file(make: Make, tmp_path: Path) -> None:
    blob = make(0)
    result = fetch(blob.url, tmp_path / "empty")
    assert (tmp_path / "empty").read_bytes() == b"" and result.size == 0


def test_progress_callback_reaches_the_total(make: Make, tmp_path: Path) -> None:
    blob = make(8 * PART)
    seen: list[Progress] = []
    Downloader(fast_settings()).download(blob.url, tmp_path / "out", on_progress=seen.append)
    assert seen and seen[-1].done == blob.size and seen[-1].total == blob.size
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert {part.state for part in seen[-1].parts} == {"done"}


def test_module_level_download_takes_settings_as_keywords(make: Make, tmp_path: Path) -> None:
    blob = make(3 * PART)
    result = blobdl.download(blob.url, tmp_path / "out", min_part_size=PART, max_part_size=PART)
    assert result.parts == 3 and sha256_file(tmp_path / "out") == blob.sha256


def test_unknown_setting_is_a_usage_error() -> None:
    with pytest.raises(blobdl.UsageError, match="conections"):
        Downloader(conections=3)


# --- redirects ------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["redirect", "redirect-abs"])
def test_ten_redirects_are_followed(
    make: Make, server: ServerHandle, tmp_path: Path, route: str
) -> None:
    blob = make(3 * PART)
    result = fetch(server.route(f"/{route}/10/{blob.name}"), tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert result.final_url == blob.url


def test_eleven_redirects_are_refused(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    blob = make(PART)
    with pytest.raises(blobdl.TooManyRedirects, match="more than 10 redirects"):
        fetch(server.route(f"/redirect/11/{blob.name}"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_redirect_limit_is_a_setting(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    blob = make(PART)
    with pytest.raises(blobdl.TooManyRedirects):
        fetch(server.route(f"/redirect/3/{blob.name}"), tmp_path / "out", max_redirects=2)


# --- fallbacks ------------------------------------------------------------------------------


def test_server_ignoring_range_gets_one_stream(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(5 * PART + 7)
    server.set_faults({"path": "/files/*", "times": None, "action": "ignore_range"})
    result = fetch(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert result.parts == 1


def test_server_without_length_gets_one_stream(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(5 * PART + 7)
    server.set_faults({"path": "/files/*", "times": None, "action": "no_length"})
    seen: list[Progress] = []
    result = Downloader(fast_settings()).download(
        blob.url, tmp_path / "out", on_progress=seen.append
    )
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert result.size == blob.size and result.parts == 1
    assert seen[-1].total is None and seen[-1].done == blob.size


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["not a url", "ftp://example.com/x", "http://", "file:///etc/passwd", "http://[::1/x"]
)
def test_invalid_urls_are_usage_errors(tmp_path: Path, url: str) -> None:
    with pytest.raises(blobdl.UsageError):
        fetch(url, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("status", [404, 403, 410, 401])
def test_http_errors_fail_without_a_file(server: ServerHandle, tmp_path: Path, status: int) -> None:
    with pytest.raises(blobdl.HTTPStatusError, match=f"HTTP {status}") as caught:
        fetch(server.route(f"/status/{status}"), tmp_path / "out")
    assert caught.value.exit_code == blobdl.errors.EXIT_NETWORK
    assert server.stats()["requests"] == 1  # not retryable: asked once
    assert list(tmp_path.iterdir()) == []


def test_missing_destination_directory(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    with pytest.raises(blobdl.LocalFileError, match="does not exist"):
        fetch(make(PART).url, tmp_path / "nope" / "out")
    assert server.stats()["requests"] == 0  # refused before any network traffic


def test_destination_that_is_a_directory(make: Make, tmp_path: Path) -> None:
    with pytest.raises(blobdl.LocalFileError, match="is a directory"):
        fetch(make(PART).url, tmp_path)


def test_unwritable_destination_directory(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root writes anywhere (CI runs as root), so the permission answer itself is scripted,
    # in this process: a process with native threads (numpy's, once the benchmark tests
    # drew a chart) would download from a clean one, which the script does not reach.
    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode)
    )
    monkeypatch.setattr(blobdl.processes._clean_process, "threaded", lambda: False)
    with pytest.raises(blobdl.LocalFileError, match="not writable"):
        fetch(make(PART).url, locked / "out")
    assert server.stats()["requests"] == 0 and not list(locked.iterdir())


@pytest.mark.parametrize("hostile", ["../../x", "/etc/x", "..\\..\\x", "a/b/../x"])
def test_server_suggested_names_are_reduced_to_a_safe_base_name(
    make: Make,
    server: ServerHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hostile: str,
) -> None:
    from urllib.parse import quote

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    blob = make(PART)
    result = Downloader(fast_settings()).download(
        server.route(f"/cd/{blob.name}?filename={quote(hostile)}")
    )
    assert result.path == Path("x")
    assert sorted(os.listdir(work)) == ["x"] and list(tmp_path.iterdir()) == [work]
    assert sha256_file(work / "x") == blob.sha256


def test_name_defaults_to_the_url_path(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    blob = make(PART)
    result = Downloader(fast_settings()).download(blob.url)
    assert result.path == Path(blob.name) and sha256_file(tmp_path / blob.name) == blob.sha256


def test_errors_pickle_with_their_fields() -> None:
    import pickle

    errors = [
        blobdl.HTTPStatusError(503, "http://x/", 1.5),
        blobdl.RetriesExhausted(3, 0, 10, 7, blobdl.Stalled(2.0)),
        blobdl.RemoteChanged("http://x/", "ETag changed"),
        blobdl.InsufficientSpace("/tmp/x", 10, 5),
        blobdl.ConnectionFailed("http://x/", "reset"),
        blobdl.ModelNotFound("x/library/m:7b"),
        blobdl.AuthRefused("http://x/token", "HTTP 401"),
        blobdl.UnsupportedManifest("x/library/m:7b", "application/vnd.oci.image.index.v1+json"),
        blobdl.OfflineNotCached("HF_HUB_OFFLINE", "acme/tiny", "main", "no ref for 'main'"),
        blobdl.BadRedirect("http://x/", "redirect to 'ftp://y/': unsupported scheme"),
    ]
    for error in errors:
        clone = pickle.loads(pickle.dumps(error))
        assert type(clone) is type(error) and str(clone) == str(error)
        assert clone.exit_code == error.exit_code and clone.retryable == error.retryable


def test_events_tell_the_whole_story(make: Make, server: ServerHandle, tmp_path: Path) -> None:
    blob = make(4 * PART)
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": 1, "action": "status",
                       "status": 503})  # fmt: skip
    events: list[blobdl.Event] = []
    result = Downloader(fast_settings()).download(
        blob.url, tmp_path / "out", on_event=events.append
    )
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "Started" and kinds[-1] == "Finished" and "Progress" in kinds
    started, retried = events[0], next(e for e in events if isinstance(e, blobdl.PartRetried))
    assert isinstance(started, blobdl.Started) and started.size == blob.size and started.parts == 4
    assert "HTTP 503" in retried.error and retried.failures == 1
    assert events[-1] == blobdl.Finished(result)


def test_events_carry_the_values_their_fields_promise(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """``Started.resumed`` is the bytes an earlier run left, ``PartStalled.seconds`` how long
    the part went without a byte, ``PartRetried.delay`` the backoff slept: a 0 in any of
    them passed every named test, which look at the events' kinds."""
    from tests.integration.test_trust_resume import partial

    blob = make(8 * PART, seed=2210)
    out = tmp_path / "out"
    kept = partial(blob, server, out)
    events: list[blobdl.Event] = []
    result = Downloader(fast_settings()).download(blob.url, out, on_event=events.append)
    started = events[0]
    assert isinstance(started, blobdl.Started) and started.resumed == kept == result.resumed > 0
    other = make(4 * PART, seed=2211)
    server.set_faults(
        {"path": f"/files/{other.name}", "skip": 1, "times": 1, "action": "status",
         "status": 503},
        {"path": f"/files/{other.name}", "times": 1, "action": "no_response", "hold": 30},
    )  # fmt: skip
    events.clear()
    settings = fast_settings(stall_timeout=1.0, steal=False)
    Downloader(settings).download(other.url, tmp_path / "other", on_event=events.append)
    stalled = [e for e in events if isinstance(e, blobdl.PartStalled)]
    retried = [e for e in events if isinstance(e, blobdl.PartRetried)]
    assert stalled and all(e.seconds >= 1.0 for e in stalled), stalled
    assert retried and all(e.delay > 0 and e.failures >= 1 and e.error for e in retried)


def test_failure_ends_with_a_failed_event(server: ServerHandle, tmp_path: Path) -> None:
    events: list[blobdl.Event] = []
    with pytest.raises(blobdl.HTTPStatusError):
        Downloader(fast_settings()).download(
            server.route("/status/404"), tmp_path / "out", on_event=events.append
        )
    assert isinstance(events[-1], blobdl.Failed) and events[-1].exit_code == 3
    assert "HTTP 404" in events[-1].error


def test_limit_rate_caps_all_connections_together(make: Make, tmp_path: Path) -> None:
    import time

    blob = make(16 * PART, seed=81)  # 1 MiB over 4 connections
    limit = 1_000_000
    started = time.monotonic()
    fetch(blob.url, tmp_path / "out", limit_rate=limit, connections=4)
    elapsed = time.monotonic() - started
    assert sha256_file(tmp_path / "out") == blob.sha256
    # A lower bound only: each worker may read one 16 KiB buffer before it first paces.
    assert elapsed >= (blob.size - 4 * 16 * 1024) / limit


def test_under_a_binding_limit_the_blob_lands_from_its_start(make: Make, tmp_path: Path) -> None:
    """More lanes fetch nothing more under a limit one connection fills: none starts beside
    the running one, the parts run in order, and the on-disk prefix (what a digest is
    computed along while the rest lands) grows with the download, instead of waiting for
    every lane's end (four lanes splitting it evenly: a quarter of what is done)."""
    blob = make(64 * PART, seed=84)  # 4 MiB in 4 parts
    assert _prefix_under_a_limit(blob, tmp_path) >= 0.6


def test_under_a_binding_limit_a_lane_awaiting_its_first_byte_opens_no_others(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A server slow to answer a connection's first request (a far origin, a slow
    handshake; the probe is answered as slowly): a lane that has not had its first byte has
    not shown its rate, so it is no sign that the running lanes leave the limit unused. The
    blob still lands from its start (taken for a lane at 0 B/s, it opened every connection
    at once: the prefix a quarter of what is done)."""
    blob = make(64 * PART, seed=86)  # 4 MiB in 4 parts
    server.set_faults(
        {"path": "/files/*", "times": None, "action": "ttfb", "delay": 0.6, "kept": False}
    )
    assert _prefix_under_a_limit(blob, tmp_path) >= 0.6


def _prefix_under_a_limit(blob: Blob, tmp_path: Path) -> float:
    """Download ``blob`` (4 parts, 4 connections) at 4 MB/s; the least share of what was done
    that was the on-disk prefix, over the progress between a quarter and nine tenths."""
    seen: list[tuple[int, int]] = []

    def look(progress: Progress) -> None:
        if blob.size // 4 <= progress.done < blob.size * 9 // 10:
            seen.append((_prefix(progress), progress.done))

    settings = fast_settings(
        limit_rate=4_000_000, connections=4, parts=4, max_part_size=16 * PART,
        progress_interval=0.05,
    )  # fmt: skip
    Downloader(settings).download(blob.url, tmp_path / "out", on_progress=look)
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert seen, "no progress between a quarter and nine tenths of the blob"
    return min(prefix / done for prefix, done in seen)


def test_under_a_limit_a_lane_never_answered_does_not_hold_the_others_back(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The first lane's request is answered only once another lane has asked (the probe
    is answered at once): a lane still awaiting its first bytes holds the others back for
    a moment only, not until the stall timeout ends it (which would be a retry)."""
    blob = make(64 * PART, seed=87)
    path = f"/files/{blob.name}"
    server.set_faults({"path": path, "skip": 1, "times": 1, "action": "ttfb", "delay": 0,
                       "after": {"path": path, "requests": 3}})  # fmt: skip
    settings = fast_settings(
        limit_rate=4_000_000, connections=4, parts=4, max_part_size=16 * PART,
        stall_timeout=30.0,
    )  # fmt: skip
    result = Downloader(settings).download(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert result.retries == 0


def test_a_limit_of_a_few_bytes_a_second_runs_no_more_lanes_than_its_bytes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A lane's share is a byte a second at least: under a limit of 2 B/s, lanes that open
    while the first awaits its answer (slow, so it shows nothing) are at most two, or
    three at a byte a second each take 3 B/s."""
    blob = make(6, seed=88)
    server.set_faults(
        {"path": "/files/*", "skip": 1, "times": None, "action": "ttfb", "delay": 0.8}
    )  # the probe is answered at once, every lane's request after 0.8 s
    settings = fast_settings(
        limit_rate=2, connections=4, parts=3, min_part_size=1, max_part_size=2
    )  # fmt: skip
    Downloader(settings).download(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert server.stats()["max_concurrent"] <= 2


def test_under_a_limit_one_connection_cannot_fill_lanes_are_added_until_they_do(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A server that caps each connection well below the limit: the download does not stay
    on one lane (or a few) because a limit is set; it opens lanes as without one."""
    blob = make(64 * PART, seed=85)  # 4 MiB
    server.set_faults({"path": "/files/*", "times": None, "action": "rate", "bps": 300_000})
    settings = fast_settings(
        limit_rate=2_000_000, connections=8, parts=8, max_part_size=16 * PART
    )  # fmt: skip
    Downloader(settings).download(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert server.stats()["max_concurrent"] >= 6


def _prefix(progress: Progress) -> int:
    """How far the blob is on disk without a gap from its first byte."""
    reach = 0
    for part in sorted(progress.parts, key=lambda part: part.start):
        if part.start > reach:
            break
        reach = max(reach, part.start + part.done)
    return reach


def test_a_low_rate_limit_is_not_mistaken_for_a_stall(make: Make, tmp_path: Path) -> None:
    blob = make(2 * PART, seed=82)
    result = fetch(blob.url, tmp_path / "out", limit_rate=40_000, connections=4,
                   stall_timeout=1.5, buffer_size=1 << 20, steal=False)  # fmt: skip
    assert result.retries == 0 and sha256_file(tmp_path / "out") == blob.sha256


def test_other_signals_do_not_make_the_coordinator_spin(make: Make, tmp_path: Path) -> None:
    import resource
    import signal
    import threading
    import time

    blob = make(2 * PART, seed=83)
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)  # a program's own handler
    try:
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
        timer.start()
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        fetch(blob.url, tmp_path / "out", limit_rate=100_000, connections=2)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        timer.join()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert wall > 1.0 and cpu < wall / 4, f"{cpu:.2f} s of CPU in {wall:.2f} s"
