"""A threaded batch job calling blobdl as a hostile caller would (the lib5 review): a
callback's own KeyboardInterrupt, batches side by side sharing destinations."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import blobdl
from blobdl import Item
from faultserver.hub import HubHandle, HubRepo, start_hub
from faultserver.registry import Registry
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file

Make = Callable[..., Blob]


def _in_a_thread(call: Callable[[], Any]) -> BaseException | None:
    """What ``call`` raised in a thread of its own (the caller is threaded: a clean process)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # the test looks at whatever it was
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)  # one that hangs is not waited for
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return raised[0] if raised else None


def _paced_blob(make: Make, server: ServerHandle, seed: int) -> Blob:
    """A blob of 16 parts served at 60 kB/s: its download is under way for seconds, long
    enough for a callback to ask for it again mid-run."""
    blob = make(16 * PART, seed=seed)
    server.set_faults({"path": f"/files/{blob.name}", "times": None, "action": "rate",
                       "bps": 60_000, "step": 4000})  # fmt: skip
    return blob


def _asked_again(
    blob: Blob, tmp_path: Path, through: str
) -> tuple[dict[str, Any], str | None, Path, Path]:
    """How a callback asks for what its own call writes, ``through`` the cache (the same
    digest into the same cache, another destination) or a lock wait (the same destination,
    waited for a day): the settings of its call, the digest, its destination, the call's."""
    if through == "the cache":
        cache = {"cache_dir": str(tmp_path / "cache")}
        return cache, f"sha256:{blob.sha256}", tmp_path / "copy", tmp_path / "out"
    return {"lock_timeout": 24 * 3600.0}, None, tmp_path / "out", tmp_path / "out"


@contextlib.contextmanager
def hung_past(seconds: float, what: str) -> Iterator[None]:
    """A guard for a test of a hang: past ``seconds``, SIGALRM raises ``TimeoutError(what)``
    in the main thread, which the test then fails with."""

    def hung(_signum: int, _frame: Any) -> None:
        raise TimeoutError(what)

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("many", [False, True], ids=["download", "download_many"])
def test_a_threaded_callers_callback_raising_keyboardinterrupt_gets_it_back_unchanged(
    make: Make, server: ServerHandle, tmp_path: Path, many: bool
) -> None:
    # No signal reaches a thread other than the main one: a KeyboardInterrupt there is the
    # callback's own (a job that cancels so), and comes back as it does to a caller without
    # threads, never made a SIGINT ``Interrupted`` no signal sent.
    blob = make(4 * PART, seed=79500)
    own = KeyboardInterrupt("the job's own cancel")

    def cancel(event: Any) -> None:
        if isinstance(getattr(event, "event", event), blobdl.Started):
            raise own

    settings = fast_settings()
    path = str(tmp_path / "out")
    if many:
        raised = _in_a_thread(
            lambda: blobdl.download_many([Item(blob.url, path)], on_event=cancel, settings=settings)
        )
    else:
        raised = _in_a_thread(
            lambda: blobdl.download(blob.url, path, on_event=cancel, settings=settings)
        )
    assert type(raised) is KeyboardInterrupt and raised.args == own.args, repr(raised)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("through", ["the cache", "a lock wait"])
def test_a_batch_callback_waiting_for_a_lock_its_own_batch_holds_is_refused_not_hung(
    make: Make, server: ServerHandle, tmp_path: Path, through: str
) -> None:
    """A single-threaded caller's batch callback that downloads what an item of its own
    batch is fetching (the same digest into the same cache, or the same destination with a
    lock wait) waited for a lock its batch's item process held, while that process waited
    for the batch to read its progress, which the callback held up: 24 hours for a cache
    entry. It is refused at once, as a download's own callback is."""
    assert threading.active_count() == 1  # the batch runs in this process
    blob = _paced_blob(make, server, 79510)
    again, digest, inner, outer = _asked_again(blob, tmp_path, through)
    said: list[BaseException] = []

    def again_from_inside(event: blobdl.BatchEvent) -> None:
        if said or not (isinstance(event.event, blobdl.Progress) and event.event.done > 0):
            return
        try:
            blobdl.download(blob.url, inner, digest=digest, settings=fast_settings(**again))
            said.append(AssertionError("the callback's download went through"))
        except BaseException as exc:  # what the call said is the point
            said.append(exc)

    with hung_past(15.0, "the callback's download waited for its own batch's lock"):
        results = blobdl.download_many(
            [Item(blob.url, str(outer), digest)], on_event=again_from_inside,
            settings=fast_settings(progress_interval=0.01, min_part_size=4 * PART,
                                   max_part_size=4 * PART, **again),
        )  # fmt: skip
    assert len(said) == 1 and isinstance(said[0], blobdl.DestinationLocked), said
    assert "this process's own download" in str(said[0])
    assert results[0].ok, results
    assert sha256_file(outer) == blob.sha256  # the batch went on and finished


def test_a_batch_callback_asking_for_an_item_named_by_its_probe_is_refused_not_hung(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A large item given no path is named once a seat has probed it, and its child then
    holds its lock: a callback's download of that name with a lock wait waited for the
    batch's own lock, held up in the callback, for as long as the wait allowed. Named, it
    is the batch's own, as an item's given path is: refused at once."""
    assert threading.active_count() == 1  # the batch runs in this process
    blob = make(16 * PART, seed=79590)
    server.set_faults({"path": f"/files/{blob.name}", "times": None, "action": "rate",
                       "bps": 60_000, "step": 4000})  # fmt: skip
    folder = tmp_path / "named"
    folder.mkdir()
    results = _refused_from_inside(blob.url, folder / blob.name, [blob.url], base_dir=folder)
    assert results[0].ok, results
    assert sha256_file(folder / blob.name) == blob.sha256  # the batch went on and finished


@pytest.mark.parametrize("threaded", [False, True], ids=["main thread", "a thread"])
def test_a_pull_callback_pulling_what_its_own_pull_fetches_is_refused_not_hung(
    registry: Registry, tmp_path: Path, threaded: bool
) -> None:
    """A pull's callback that pulls the same model into the same store waited for the
    fetch lock of a blob its own pull held, up the same thread's stack: for ever. It is
    refused at once, as a download's callback asking for what its download writes is."""
    big = random.Random(79520).randbytes(1 << 20)
    model = registry.push_model(f"lib5/nested-{int(threaded)}", "v1", (10 * 1024,), shared=big)
    url = f"http://{registry.host}/{model.repo}:{model.tag}"
    models = tmp_path / "models"
    said: list[BaseException] = []

    def again_from_inside(event: Any) -> None:
        inner = getattr(event, "event", None)
        if said or not (isinstance(inner, blobdl.Progress) and inner.done > 0):
            return
        try:
            blobdl.pull(url, models, settings=fast_settings())
            said.append(AssertionError("the callback's pull went through"))
        except BaseException as exc:  # what the call said is the point
            said.append(exc)

    settings = fast_settings(limit_rate=200_000, progress_interval=0.01)
    outcome: list[Any] = []
    call = lambda: outcome.append(  # noqa: E731
        blobdl.pull(url, models, on_event=again_from_inside, settings=settings)
    )

    with hung_past(15.0, "the callback's pull waited for its own pull's lock"):
        if threaded:
            raised = _in_a_thread(call)
            assert raised is None, repr(raised)
        else:
            call()
    assert len(said) == 1 and isinstance(said[0], blobdl.DestinationLocked), said
    assert "this process's own download" in str(said[0])
    assert isinstance(outcome[0], blobdl.PullResult)
    for digest, data in model.blobs.items():  # the outer pull went on and finished
        assert (models / "blobs" / digest.replace(":", "-")).read_bytes() == data


HF_TOKEN = "hf_good"
BIG = 3 << 20


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubHandle]:
    big = HubRepo("acme/big")
    big.commit({"model.safetensors": random.Random(6).randbytes(BIG), "config.json": b"{}"})
    handle = start_hub(tmp_path_factory.mktemp("hub"), [big], tokens=(HF_TOKEN,))
    yield handle
    handle.stop()


def test_an_hf_callback_fetching_what_its_own_run_fetches_is_refused_not_hung(
    hub: HubHandle, tmp_path: Path
) -> None:
    """An ``hf_download`` callback that fetches the same repository into the same cache
    waited for a blob's lock its own run held, up the same thread's stack: for ever. It
    is refused at once, as a download's callback asking for what its download writes is."""
    hub.storage.set_faults({"path": "/files/*", "action": "rate", "bps": 400_000,
                            "times": None})  # fmt: skip
    cache = str(tmp_path / "cache")
    ask = {"cache_dir": cache, "token": HF_TOKEN, "endpoint": hub.url}
    said: list[BaseException] = []

    def again_from_inside(event: Any) -> None:
        inner = getattr(event, "event", None)
        if said or not (isinstance(inner, blobdl.Progress) and inner.done > 0):
            return
        try:
            blobdl.hf_download("acme/big", settings=fast_settings(), **ask)
            said.append(AssertionError("the callback's run went through"))
        except BaseException as exc:  # what the call said is the point
            said.append(exc)

    with hung_past(15.0, "the callback's run waited for its own run's lock"):
        result = blobdl.hf_download(
            "acme/big", on_event=again_from_inside, **ask,
            settings=fast_settings(progress_interval=0.01, min_part_size=1 << 20,
                                   max_part_size=1 << 20),
        )  # fmt: skip
    assert len(said) == 1 and isinstance(said[0], blobdl.DestinationLocked), said
    assert "this process's own download" in str(said[0])
    assert (result.path / "model.safetensors").stat().st_size == BIG


@pytest.mark.parametrize("many", [False, True], ids=["download", "download_many"])
def test_a_threaded_callers_callback_waiting_for_its_own_cache_entry_is_refused_not_hung(
    make: Make, server: ServerHandle, tmp_path: Path, many: bool
) -> None:
    """A threaded caller's download runs in a clean process, which holds the cache entry's
    lock while it waits for the caller's thread to hear its progress: a callback there that
    downloads the same digest into the same cache waited for it, 24 hours. It is refused at
    once, as a single-threaded caller's is."""
    blob = _paced_blob(make, server, 79530)
    digest, cache = f"sha256:{blob.sha256}", str(tmp_path / "cache")
    said: list[BaseException] = []

    def again_from_inside(event: Any) -> None:
        inner = getattr(event, "event", event)
        if said or not (isinstance(inner, blobdl.Progress) and inner.done > 0):
            return
        try:
            blobdl.download(blob.url, tmp_path / "copy", digest=digest,
                            settings=fast_settings(cache_dir=cache))  # fmt: skip
            said.append(AssertionError("the callback's download went through"))
        except BaseException as exc:  # what the call said is the point
            said.append(exc)

    settings = fast_settings(cache_dir=cache, progress_interval=0.01, min_part_size=4 * PART,
                             max_part_size=4 * PART)  # fmt: skip
    out = str(tmp_path / "out")
    if many:
        call = lambda: blobdl.download_many(  # noqa: E731
            [Item(blob.url, out, digest)], on_event=again_from_inside, settings=settings
        )
    else:
        call = lambda: blobdl.download(  # noqa: E731
            blob.url, out, digest=digest, on_event=again_from_inside, settings=settings
        )
    assert _in_a_thread(call) is None
    assert len(said) == 1 and isinstance(said[0], blobdl.DestinationLocked), said
    assert "this process's own download" in str(said[0])
    assert sha256_file(Path(out)) == blob.sha256


@pytest.mark.parametrize("named", ["link/out then real/out", "real/out then link/out"])
def test_a_batch_callback_naming_its_batchs_destination_through_a_link_is_refused_not_hung(
    make: Make, server: ServerHandle, tmp_path: Path, named: str
) -> None:
    """``link/out`` and ``real/out`` (``link`` a symbolic link to ``real``) are one file with
    one lock: a batch callback's download of the destination its own batch's item writes,
    named the other way, waited (its lock timeout) on a lock its item process held while
    that process waited for the batch to hear it. Refused at once, as when named alike."""
    assert threading.active_count() == 1  # the batch runs in this process
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    outer, inner = (tmp_path / n for n in named.split(" then "))
    blob = _paced_blob(make, server, 79520)
    results = _refused_from_inside(blob.url, inner, [Item(blob.url, str(outer))])
    assert results[0].ok, results
    assert sha256_file(tmp_path / "real" / "out") == blob.sha256


def _refused_from_inside(url: str, dest: Path, items: list[Any], **kwargs: Any) -> list[Any]:
    """A batch of ``items`` (``kwargs``: its other arguments) whose callback, on the first
    progress, downloads ``url`` to ``dest`` waiting a day for locks: refused at once as
    this process's own download, never waited for. The batch's results."""
    said: list[BaseException] = []

    def again_from_inside(event: blobdl.BatchEvent) -> None:
        if said or not (isinstance(event.event, blobdl.Progress) and event.event.done > 0):
            return
        try:
            blobdl.download(url, dest, settings=fast_settings(lock_timeout=24 * 3600.0))
            said.append(AssertionError("the callback's download went through"))
        except BaseException as exc:  # what the call said is the point
            said.append(exc)

    with hung_past(15.0, "the callback's download waited for its own batch's lock"):
        results = blobdl.download_many(
            items, on_event=again_from_inside, **kwargs,
            settings=fast_settings(progress_interval=0.01, min_part_size=4 * PART,
                                   max_part_size=4 * PART),
        )  # fmt: skip
    assert len(said) == 1 and isinstance(said[0], blobdl.DestinationLocked), said
    assert "this process's own download" in str(said[0])
    return results


# Holds a destination's lock from another process for a while, then lets go.
HOLDER_FOR_A_WHILE = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
os.unlink(sys.argv[1])
os.close(fd)
"""


def test_a_batch_callback_waits_for_a_lock_beside_its_items_through_a_link_and_up(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A batch item at ``link/../out`` writes beside the link's target (``real/out``, the
    kernel takes the ``..`` after the link), not ``out`` in the current folder: a callback's
    download of that other ``out``, whose lock another process holds, is no wait on its own
    batch. It waits for that process, as any download given a lock timeout does."""
    assert threading.active_count() == 1  # the batch runs in this process
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "sub")
    blob, other = _paced_blob(make, server, 79530), make(PART, seed=79531)
    beside = tmp_path / "out"  # not the item's
    lock = str(beside.with_name(beside.name + ".blobdl-lock"))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_FOR_A_WHILE, lock, "1.0"], stdout=subprocess.PIPE, text=True
    )
    said: list[BaseException | blobdl.DownloadResult] = []

    def fetch_beside(event: blobdl.BatchEvent) -> None:
        if said or not (isinstance(event.event, blobdl.Progress) and event.event.done > 0):
            return
        try:
            said.append(
                blobdl.download(other.url, beside, settings=fast_settings(lock_timeout=60.0))
            )
        except BaseException as exc:  # what the call said is the point
            said.append(exc)

    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        results = blobdl.download_many(
            [Item(blob.url, str(tmp_path / "link" / ".." / "out"))], on_event=fetch_beside,
            settings=fast_settings(progress_interval=0.01, min_part_size=4 * PART,
                                   max_part_size=4 * PART),
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert len(said) == 1 and isinstance(said[0], blobdl.DownloadResult), said
    assert results[0].ok, results
    assert sha256_file(tmp_path / "real" / "out") == blob.sha256
    assert sha256_file(beside) == other.sha256


@pytest.mark.parametrize("through", ["the cache", "a lock wait"])
def test_a_batch_callbacks_own_batch_of_what_its_batch_writes_is_refused_not_hung(
    make: Make, server: ServerHandle, tmp_path: Path, through: str
) -> None:
    """A batch callback's own ``download_many`` of what an item of the outer batch writes:
    its item waits in a process of the inner batch, for a lock the outer batch's item holds
    while the outer batch, held up in the callback, no longer hears it. Refused at once."""
    assert threading.active_count() == 1  # the batch runs in this process
    blob = _paced_blob(make, server, 79540)
    again, digest, inner, outer = _asked_again(blob, tmp_path, through)
    said: list[Any] = []

    def again_from_inside(event: blobdl.BatchEvent) -> None:
        if said or not (isinstance(event.event, blobdl.Progress) and event.event.done > 0):
            return
        try:
            said.extend(blobdl.download_many([Item(blob.url, str(inner), digest)],
                                             settings=fast_settings(**again)))  # fmt: skip
        except BaseException as exc:  # what the call said is the point
            said.append(exc)

    with hung_past(15.0, "the callback's batch waited for its own batch's lock"):
        results = blobdl.download_many(
            [Item(blob.url, str(outer), digest)], on_event=again_from_inside,
            settings=fast_settings(progress_interval=0.01, min_part_size=4 * PART,
                                   max_part_size=4 * PART, **again),
        )  # fmt: skip
    assert len(said) == 1 and isinstance(said[0], blobdl.ItemResult), said
    assert isinstance(said[0].error, blobdl.DestinationLocked), said
    assert "this process's own download" in str(said[0].error), said  # no pool's number
    assert results[0].ok, results
    assert sha256_file(outer) == blob.sha256


@pytest.mark.parametrize("through", ["the cache", "a lock wait"])
def test_a_download_callbacks_batch_of_what_its_download_writes_is_refused_not_hung(
    make: Make, server: ServerHandle, tmp_path: Path, through: str
) -> None:
    """A download's callback's ``download_many`` of what the download writes: the batch's
    item waits in a process of the batch for the lock this process holds, held up in the
    callback. Refused at once, as the callback's own ``download`` of it is."""
    assert threading.active_count() == 1  # the download runs in this process
    blob = _paced_blob(make, server, 79550)
    again, digest, inner, outer = _asked_again(blob, tmp_path, through)
    said: list[Any] = []

    def again_from_inside(event: Any) -> None:
        if said or not (isinstance(event, blobdl.Progress) and event.done > 0):
            return
        try:
            said.extend(blobdl.download_many([Item(blob.url, str(inner), digest)],
                                             settings=fast_settings(**again)))  # fmt: skip
        except BaseException as exc:  # what the call said is the point
            said.append(exc)

    with hung_past(15.0, "the callback's batch waited for its own download's lock"):
        result = blobdl.download(
            blob.url, outer, digest=digest, on_event=again_from_inside,
            settings=fast_settings(progress_interval=0.01, min_part_size=4 * PART,
                                   max_part_size=4 * PART, **again),
        )  # fmt: skip
    assert len(said) == 1 and isinstance(said[0], blobdl.ItemResult), said
    assert isinstance(said[0].error, blobdl.DestinationLocked), said
    assert sha256_file(result.path) == blob.sha256


@pytest.mark.parametrize("many", [True, False], ids=["download_many", "download"])
def test_a_process_a_callback_forks_waits_for_its_calls_lock(
    make: Make, server: ServerHandle, tmp_path: Path, many: bool
) -> None:
    """A process the caller forks in a callback goes its own way (the call goes on without
    it): its download of what the call writes waits for the call's lock, as any other
    process's does, never refused as one held up its own stack."""
    assert threading.active_count() == 1  # the batch runs in this process
    blob = make(16 * PART, seed=79560)
    server.set_faults({"path": f"/files/{blob.name}", "times": None, "action": "rate",
                       "bps": 400_000, "step": 4000})  # fmt: skip
    out = tmp_path / "out"
    forked: list[int] = []

    def fork_once(event: Any) -> None:
        event = getattr(event, "event", event)  # a batch's, or the download's own
        if forked or not (isinstance(event, blobdl.Progress) and event.done > 0):
            return
        pid = os.fork()
        if pid:
            forked.append(pid)
            return
        code = 3
        try:
            blobdl.download(blob.url, out, settings=fast_settings(lock_timeout=60.0))
            code = 0  # it waited, and wrote it again
        except blobdl.DestinationExists:  # it waited for the call, which wrote it
            code = 0
        except blobdl.DestinationLocked:  # refused at once
            code = 1
        finally:
            os._exit(code)

    settings = fast_settings(progress_interval=0.01, min_part_size=4 * PART,
                             max_part_size=4 * PART)  # fmt: skip
    if many:
        results = blobdl.download_many([Item(blob.url, str(out))], on_event=fork_once,
                                       settings=settings)  # fmt: skip
        assert results[0].ok, results
    else:
        blobdl.download(blob.url, out, on_event=fork_once, settings=settings)
    _, status = os.waitpid(forked[0], 0)
    assert os.waitstatus_to_exitcode(status) == 0  # it waited, then found it written
    assert sha256_file(out) == blob.sha256


@pytest.mark.parametrize("inner", ["download", "download_many"])
def test_a_threaded_batch_callbacks_own_call_of_what_its_batch_writes_is_refused_not_hung(
    make: Make, server: ServerHandle, tmp_path: Path, inner: str
) -> None:
    """From a threaded caller (the batch in a clean process, the callback on the caller's
    thread): a callback's own call of the destination its batch writes, named through a
    linked folder, is refused at once, whether that call waits in its own clean process
    (``download``) or in a process of its own batch (``download_many``)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    blob = _paced_blob(make, server, 79570)
    said: list[Any] = []
    settings = fast_settings(lock_timeout=3600.0)
    real = tmp_path / "real" / "out"

    def again_from_inside(event: blobdl.BatchEvent) -> None:
        if said or not (isinstance(event.event, blobdl.Progress) and event.event.done > 0):
            return
        try:
            if inner == "download_many":
                said.extend(blobdl.download_many([Item(blob.url, str(real))], settings=settings))
                return
            blobdl.download(blob.url, real, settings=settings)
            said.append(AssertionError("the callback's download went through"))
        except BaseException as exc:  # what the call said is the point
            said.append(exc)

    results: list[blobdl.ItemResult] = []

    def batch() -> None:
        results.extend(blobdl.download_many(
            [Item(blob.url, str(tmp_path / "link" / "out"))], on_event=again_from_inside,
            settings=fast_settings(progress_interval=0.01, min_part_size=4 * PART,
                                   max_part_size=4 * PART),
        ))  # fmt: skip

    raised = _in_a_thread(batch)
    assert raised is None, repr(raised)
    error = said[0].error if isinstance(said[0], blobdl.ItemResult) else said[0]
    assert len(said) == 1 and isinstance(error, blobdl.DestinationLocked), said
    assert results[0].ok, results
    assert sha256_file(real) == blob.sha256
