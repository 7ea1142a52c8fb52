"""The same multi-file command run again after a kill: exact bytes, nothing fetched twice,
and nothing of the killed run left once the rerun has succeeded.

A kill lands anywhere; the narrowest moments are the ones where the work is already done:
the blob renamed into place (a destination, a cache entry, a layer staged for the store),
its record and lock not yet removed. The rerun then finds the blob complete and must still
sweep what the killed run left beside it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from faultserver.registry import Registry
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, run_cli, sha256_file
from tests.integration.test_pull import assert_store
from tests.integration.test_trust_stops import CLI, Cli

Make = Callable[..., Blob]

# The CLI, its process that renamed a blob whose name holds NAME into place SIGKILLed right
# after the rename (``Resume.finished`` is the first call after it), whichever process of
# the batch that is.
KILL_AFTER_THE_RENAME = """
import os, signal, sys
from blobdl.store._resume import Resume
name, original = sys.argv[1], Resume.finished

def killed(self):
    if name in self.temp.name:
        os.kill(os.getpid(), signal.SIGKILL)
    original(self)

Resume.finished = killed
sys.argv = ["blobdl", *sys.argv[2:]]
from blobdl.cli import run
run()
"""


def killed_after_the_rename(name: str, args: list[str], cwd: Path) -> Cli:
    return Cli([sys.executable, "-c", KILL_AFTER_THE_RENAME, name, *args], cwd=cwd)


def leftovers(*folders: Path) -> list[str]:
    return sorted(p.name for folder in folders for p in folder.iterdir() if ".blobdl-" in p.name)


@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "cache"])
def test_a_rerun_after_a_kill_once_the_blob_was_renamed_leaves_nothing_of_the_killed_run(
    make: Make, server: ServerHandle, tmp_path: Path, cache: bool
) -> None:
    big, small = make(512 * 1024, seed=7100), make(100, seed=7101)
    out, store = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    manifest = tmp_path / "manifest"
    manifest.write_text(
        f"{small.url} {out / 'small'} sha256:{small.sha256}\n"
        f"{big.url} {out / 'big'} sha256:{big.sha256}\n"
    )
    args = ["-i", str(manifest), *CLI, *(["--cache-dir", str(store)] if cache else [])]
    # The large item's process is killed right after its blob's rename.
    killed = killed_after_the_rename("sha256-" + big.sha256 if cache else "big", args, tmp_path)
    code, lines = killed.finish()
    assert code == 3 and "download process died" in "\n".join(lines), lines
    server.reset()

    rerun = run_cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert sha256_file(out / "big") == big.sha256 and sha256_file(out / "small") == small.sha256
    assert server.stats()["bytes_sent"] == 0  # the blob was complete: nothing fetched again
    folders = [out, store] if cache else [out]
    assert leftovers(*folders) == []  # no record, lock or scratch of the killed run


def test_a_pull_rerun_after_a_kill_once_a_layer_was_staged_leaves_nothing_of_the_killed_run(
    registry: Registry, tmp_path: Path
) -> None:
    model = registry.push_model("library/renamed", "v1", (300 * 1024, 200 * 1024, 5 * 1024))
    layer = json.loads(model.manifest)["layers"][0]["digest"].replace(":", "-")
    models = tmp_path / "models"
    args = ["pull", f"http://{registry.host}/{model.repo}:{model.tag}", "--models-dir",
            str(models), *CLI]  # fmt: skip
    killed = killed_after_the_rename(layer, args, tmp_path)  # its layer's process, staged
    code, lines = killed.finish()
    assert code == 3 and "download process died" in "\n".join(lines), lines
    assert leftovers(models / "blobs-partial")  # the staged layer, its record and lock

    rerun = run_cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert_store(models, registry, model)
    assert leftovers(models / "blobs-partial") == []


# The CLI, SIGKILLed right after the first layer is moved into blobs/, its fetch lock held.
KILL_AFTER_THE_FIRST_PLACE = """
import os, signal, sys
from blobdl.registry._store import Store
original = Store.place

def killed(self, blob, staged):
    original(self, blob, staged)
    os.kill(os.getpid(), signal.SIGKILL)

Store.place = killed
sys.argv = ["blobdl", *sys.argv[1:]]
from blobdl.cli import run
run()
"""


def test_a_pull_rerun_after_a_kill_once_a_layer_was_in_blobs_leaves_no_fetch_lock(
    registry: Registry, tmp_path: Path
) -> None:
    """Locks of finished blobs do not accumulate, even when the pull that held one was
    killed: the next pull finds the blob present and still removes its lock."""
    model = registry.push_model("library/placed", "v1", (300 * 1024, 200 * 1024, 5 * 1024))
    models = tmp_path / "models"
    args = ["pull", f"http://{registry.host}/{model.repo}:{model.tag}", "--models-dir",
            str(models), *CLI]  # fmt: skip
    killed = Cli([sys.executable, "-c", KILL_AFTER_THE_FIRST_PLACE, *args], cwd=tmp_path)
    code, _ = killed.finish()
    assert code == -9
    assert list((models / "blobs-partial").glob("*.pull-lock"))  # the killed pull's

    rerun = run_cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert_store(models, registry, model)
    assert list((models / "blobs-partial").glob("*.pull-lock")) == []
