"""A stop that lands just as one of our files is made leaves nothing behind.

Every file blobdl makes beside a destination (its lock, its partial, a scratch file) is
created, then handed to what removes it on failure. A signal raises at an arbitrary bytecode
of the main thread: one that lands between the two left the file behind, owned by nobody
(a ``DEST.blobdl-lock`` after every download stopped there). Each test sends a real signal
just as the file is made (a patch its own program makes: no hook in blobdl), and checks the
folder's exact listing and exit 130.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl.errors import EXIT_INTERRUPTED
from faultserver.registry import Registry
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob
from tests.integration.test_stops_anywhere import stopped
from tests.integration.test_trust_stops import CLI, Cli

Make = Callable[..., Blob]
SIZE = 1_000_000

# The CLI, with SIGNUM sent to itself just after the first call of MODULE:ATTR (a dotted
# attribute path) that names MARK among its arguments returns: inside whatever ``held``
# step makes the call, or (outside one) before its caller has the result in hand. With
# THEN (MODULE:ATTR too), sent once more just before THEN's next call after that: inside
# the clean-up the first one started.
AFTER = """
import importlib, os, sys
target, signum, mark, then = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
fired = []

def patch(target, wrap):
    module, _, path = target.partition(":")
    owner = importlib.import_module(module)
    *heads, name = path.split(".")
    for head in heads:
        owner = getattr(owner, head)
    setattr(owner, name, wrap(getattr(owner, name)))

def first(original):
    def fire_after(*args, **kwargs):
        result = original(*args, **kwargs)
        if not fired and mark in " ".join(map(str, args)):
            fired.append(1)
            os.kill(os.getpid(), signum)
        return result
    return fire_after

def second(original):
    def fire_before(*args, **kwargs):
        if len(fired) == 1:
            fired.append(2)
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)
    return fire_before

patch(target, first)
if then:
    patch(then, second)
sys.argv = ["blobdl", *sys.argv[5:]]
from blobdl.cli import run
run()
"""


def after(target: str, mark: str, args: list[str], cwd: Path, then: str = "") -> Cli:
    signum = str(int(signal.SIGTERM))
    return Cli([sys.executable, "-c", AFTER, target, signum, mark, then, *args], cwd=cwd)


# Where each file a single download makes is created: (the call, a mark of its arguments).
SINGLE = {
    "lock": ("blobdl.store._lock:DestinationLock._open", ""),
    "partial": ("blobdl.engine._download:open_temp", ".blobdl-tmp"),
}


@pytest.mark.parametrize("made", sorted(SINGLE))
def test_a_signal_as_a_downloads_file_is_made_leaves_nothing(
    make: Make, server: ServerHandle, tmp_path: Path, made: str
) -> None:
    """Stopped before a byte landed: no destination, and none of its side files."""
    blob = make(SIZE, seed=7101)
    out = tmp_path / "out"
    target, mark = SINGLE[made]
    stopped(after(target, mark, [blob.url, "-o", str(out), *CLI], tmp_path), signal.SIGTERM)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_signal_as_a_lock_is_taken_leaves_no_lock_file(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The lock file was made and locked, not yet noted as held: it is ours to remove."""
    blob = make(SIZE, seed=7102)
    out = tmp_path / "out"
    cli = after("blobdl.store._lock:take_lock", "", [blob.url, "-o", str(out), *CLI], tmp_path)
    stopped(cli, signal.SIGTERM)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# Where each file a pull makes is created: (the call, a mark of its arguments).
PULL = {
    "claim": ("blobdl.registry._claims:open_own", ".claim"),
    "fetch lock": ("blobdl.registry._claims:open_own", ".pull-lock"),
    "blob lock": ("blobdl.store._lock:DestinationLock._open", ""),
}


@pytest.mark.parametrize("made", sorted(PULL))
def test_a_signal_as_a_pulls_file_is_made_leaves_nothing(
    registry: Registry, tmp_path: Path, made: str
) -> None:
    """Stopped before a blob's byte landed: no file in the store (its folders may stay)."""
    assert _pull_stopped(registry, tmp_path, made) == []


def test_a_second_signal_as_an_unheld_lock_file_is_removed_leaves_nothing(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The first signal lands as the lock file is made; the second as it is being removed
    (locked, to be sure nobody else holds it): the removal is not cut short."""
    blob = make(SIZE, seed=7103)
    out = tmp_path / "out"
    cli = after("blobdl.store._lock:DestinationLock._open", "", [blob.url, "-o", str(out), *CLI],
                tmp_path, then="blobdl.store._lock:take_lock")  # fmt: skip
    stopped(cli, signal.SIGTERM)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("made", ["claim", "fetch lock"])
def test_a_second_signal_as_a_pulls_lock_file_is_removed_leaves_nothing(
    registry: Registry, tmp_path: Path, made: str
) -> None:
    assert _pull_stopped(registry, tmp_path, made, then="blobdl.registry._claims:take_lock") == []


def _pull_stopped(registry: Registry, tmp_path: Path, made: str, then: str = "") -> list[str]:
    """A pull signalled as its ``made`` file is made (and again at ``then``), seen to stop
    as interrupted: the files it left in the store."""
    model = registry.push_model("library/stop", "v1", (300_000, 100))
    reference = f"http://{registry.host}/{model.repo}:{model.tag}"
    models = tmp_path / "models"
    target, mark = PULL[made]
    args = ["pull", reference, "--models-dir", str(models), "--retries", "0"]
    code, lines = after(target, mark, args, tmp_path, then=then).finish()
    assert code == EXIT_INTERRUPTED, lines
    assert lines[-1] == f"blobdl: error: interrupted by signal {signal.SIGTERM}", lines
    return sorted(str(p.relative_to(models)) for p in models.rglob("*") if not p.is_dir())


def test_a_signal_as_a_resume_records_scratch_is_made_leaves_no_scratch(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The record is written while the coordinator's loop notes signals (never raises them
    mid-step): the download stops, its partial and record kept together or neither."""
    blob = make(SIZE, seed=7104)
    out = tmp_path / "out"
    cli = after("blobdl.store._files:open_own", ".blobdl-state.new",
                [blob.url, "-o", str(out), *CLI], tmp_path)  # fmt: skip
    stopped(cli, signal.SIGTERM)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names in ([], ["out.blobdl-state", "out.blobdl-tmp"])


def cached(blob: Blob, out: Path, cache: Path) -> list[str]:
    return [blob.url, "-o", str(out), "--cache-dir", str(cache), "--digest", blob.sha256, *CLI]


@pytest.mark.parametrize("then", ["", "pathlib:Path.unlink"], ids=["once", "twice"])
def test_a_signal_as_a_cache_entrys_seal_is_written_leaves_no_scratch(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """The entry just filled is sealed (its identity written to a scratch file renamed
    into place) before the destination is linked to it: stopped there, the entry stays,
    complete, and nothing else does (no destination, no scratch seal); ``twice``: a second
    signal lands as the scratch is removed."""
    seals, cache, out = tmp_path / "seals", tmp_path / "cache", tmp_path / "work" / "out"
    monkeypatch.setenv("BLOBDL_SEAL_DIR", str(seals))
    out.parent.mkdir()
    blob = make(SIZE, seed=7105)
    args = cached(blob, out, cache)
    cli = after("blobdl.store._files:open_own", ".tmp-", args, tmp_path, then=then)
    stopped(cli, signal.SIGTERM)
    assert sorted(p.name for p in seals.iterdir()) == []
    assert sorted(p.name for p in cache.iterdir()) == [f"sha256-{blob.sha256}"]
    assert sorted(p.name for p in out.parent.iterdir()) == []


def test_a_second_signal_as_a_cache_scratch_link_is_removed_leaves_none(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The destination's scratch link to the entry is made, a signal stops the placing, and
    a second one lands as the scratch is removed: it is removed all the same."""
    monkeypatch.setenv("BLOBDL_SEAL_DIR", str(tmp_path / "seals"))
    cache, out = tmp_path / "cache", tmp_path / "work" / "out"
    out.parent.mkdir()
    blob = make(SIZE, seed=7106)
    cli = after("blobdl.store._cache:_link_or_copy", "", cached(blob, out, cache), tmp_path,
                then="pathlib:Path.unlink")  # fmt: skip
    stopped(cli, signal.SIGTERM)
    assert sorted(p.name for p in cache.iterdir()) == [f"sha256-{blob.sha256}"]
    assert sorted(p.name for p in out.parent.iterdir()) == []


def test_a_signal_as_a_batchs_lock_files_are_made_leaves_nothing(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The signal is sent in each process as it first makes a lock file: the pool's, as its
    seat locks the item's destination (SIGTERM ends a pool process), then the batch's own,
    as it makes the destination's lock to clean up after that pool (``drop_unrecorded``).
    The batch stops, and leaves nothing but its manifest."""
    blob = make(1000, seed=7107)
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{blob.url} {tmp_path / 'out'}\n")
    args = ["-i", str(manifest), *CLI]
    code, lines = after("blobdl.store._lock:DestinationLock._open", "", args, tmp_path).finish()
    assert code == EXIT_INTERRUPTED, lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest"], lines
