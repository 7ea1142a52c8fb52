"""The shapes a user gives Ollama's store that ``ollama pull`` copes with: a folder of the
store that is a link to another file system (a bigger disk for the blobs, the manifests
elsewhere), at any depth. A pull fills it as Ollama would, and Ollama reads the result."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from faultserver.registry import Registry
from tests.conftest import mounted_tmpfs, run_cli
from tests.integration.test_ollama_store import age
from tests.integration.test_pull import ref
from tests.ollama_model import assert_ollama_reads, prune_layers

KB = 1024


@pytest.fixture
def other_disk(tmp_path: Path) -> Iterator[Path]:
    """A real second file system (tmpfs): the disk the user moved part of the store to."""
    with mounted_tmpfs(tmp_path / "disk", "16m") as mount:
        yield mount


@pytest.mark.parametrize(
    "moved", ["blobs", "manifests", "manifests/HOST", "manifests/HOST/library"]
)
def test_a_store_folder_linked_to_another_file_system_is_filled_as_ollama_fills_it(
    registry: Registry, tmp_path: Path, other_disk: Path, moved: str
) -> None:
    model = registry.push_model("library/moved", "v1", (200 * KB, 3 * KB), seed=len(moved))
    models = tmp_path / "models"
    linked = models / moved.replace("HOST", registry.host)
    linked.parent.mkdir(parents=True)
    (other_disk / "there").mkdir()
    linked.symlink_to(other_disk / "there")

    done = run_cli("pull", ref(registry, model), "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    manifest = models / "manifests" / registry.host / model.repo / model.tag
    assert manifest.read_bytes() == model.manifest
    for digest, data in model.blobs.items():
        assert (models / "blobs" / digest.replace(":", "-")).read_bytes() == data
    assert assert_ollama_reads(models).keys() == {manifest.relative_to(models / "manifests").parts}
    assert prune_layers(models, now=2e10) == []  # Ollama's start-up prune, hours later
    assert os.listdir(other_disk / "there")  # written there, through the link
    assert not list((models / "manifests").glob("*/*/*/.*"))  # no scratch left by a model
    # A second pull finds it all there.
    again = run_cli("pull", ref(registry, model), "--models-dir", str(models))
    assert again.returncode == 0 and "0 of 3 blobs to fetch" in again.stderr, again.stderr


def test_prune_clears_what_a_killed_pull_left_on_the_other_file_system(
    registry: Registry, tmp_path: Path, other_disk: Path
) -> None:
    model = registry.push_model("library/moved", "v2", (100 * KB,), seed=7)
    models = tmp_path / "models"
    (models / "manifests" / registry.host).mkdir(parents=True)
    for name, link in (("blobs", models / "blobs"),
                       ("library", models / "manifests" / registry.host / "library")):  # fmt: skip
        (other_disk / name).mkdir()
        link.symlink_to(other_disk / name)
    done = run_cli("pull", ref(registry, model), "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    # What a pull killed mid-way leaves there: a partial, and a manifest scratch file.
    partial = models / "blobs" / ".blobdl-partial" / f"sha256-{'ab' * 32}.part"
    partial.write_bytes(b"x" * 1000)
    scratch = models / "manifests" / registry.host / "library" / "moved" / ".blobdl-tmp"
    scratch.mkdir()
    left = scratch / "manifest-123-0123abcd"
    left.write_bytes(b"{")
    for path in (partial, left):
        age(path)

    pruned = run_cli("prune", "--models-dir", str(models))
    assert pruned.returncode == 0, pruned.stderr
    assert not partial.exists() and not left.exists(), pruned.stdout
    assert_ollama_reads(models)
    assert sorted(p.name for p in (models / "blobs").iterdir() if p.is_file()) == sorted(
        d.replace(":", "-") for d in model.blobs
    )


@contextlib.contextmanager
def bind_mounted(source: Path, mount: Path) -> Iterator[None]:
    """``source`` seen at ``mount`` too (a bind mount, as a container's volume is): the same
    file system, the same st_dev, yet rename(2) from one mount to the other fails (EXDEV)."""
    done = subprocess.run(["mount", "--bind", str(source), str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, f"cannot bind mount here: {done.stderr!r}"
    try:
        yield
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("moved", ["blobs", "manifests", "manifests/HOST/library"])
def test_a_store_folder_bind_mounted_from_the_same_file_system_is_filled_as_ollama_fills_it(
    registry: Registry, tmp_path: Path, moved: str
) -> None:
    """A container's volume mounted at ``blobs/`` (or a folder of manifests) from the disk the
    rest of the store is on: same st_dev, but another mount, where a rename from the rest of
    the store fails with EXDEV once every byte is in. (A space in the path: mountinfo
    escapes it.)"""
    model = registry.push_model("library/bound", "v1", (100 * KB, 3 * KB), seed=len(moved) + 9)
    models = tmp_path / "ollama models"
    mount = models / moved.replace("HOST", registry.host)
    mount.mkdir(parents=True)
    (tmp_path / "volume").mkdir()
    assert os.stat(tmp_path / "volume").st_dev == os.stat(models).st_dev
    with bind_mounted(tmp_path / "volume", mount):
        done = run_cli("pull", ref(registry, model), "--models-dir", str(models))
        assert done.returncode == 0, done.stderr
        manifest = models / "manifests" / registry.host / model.repo / model.tag
        assert manifest.read_bytes() == model.manifest
        assert assert_ollama_reads(models).keys() == {
            manifest.relative_to(models / "manifests").parts
        }
        assert os.listdir(tmp_path / "volume")  # written there, through the mount
        assert not list((models / "manifests").glob("*/*/*/.*"))  # no scratch left by a model
        again = run_cli("pull", ref(registry, model), "--models-dir", str(models))
        assert again.returncode == 0 and "0 of 3 blobs to fetch" in again.stderr, again.stderr
        pruned = run_cli("prune", "--models-dir", str(models))
        assert pruned.returncode == 0, pruned.stderr
        assert_ollama_reads(models)
