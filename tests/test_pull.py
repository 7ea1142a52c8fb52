"""``blobdl pull`` against a real registry (Debian's docker-registry) on loopback."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import blobdl
from tests.conftest import fast_settings
from tests.registry import Model, Registry, start_registry

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/docker-registry").exists(), reason="needs Debian's docker-registry"
)
KB = 1024


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    handle = start_registry(tmp_path_factory.mktemp("registry"))
    yield handle
    handle.stop()


def ref(registry: Registry, model: Model) -> str:
    return f"http://{registry.host}/{model.repo}:{model.tag}"


def assert_store(models: Path, registry: Registry, model: Model) -> None:
    """The store holds exactly Ollama's layout: blobs by digest, the exact manifest bytes."""
    manifest = models / "manifests" / registry.host / model.repo / model.tag
    assert manifest.read_bytes() == model.manifest
    blobs = {p.name: p.read_bytes() for p in (models / "blobs").iterdir()}
    assert blobs == {d.replace(":", "-"): data for d, data in model.blobs.items()}
    for path in [manifest, *(models / "blobs").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    for folder in [models / "blobs", *manifest.relative_to(models).parents]:
        if str(folder) != ".":
            assert stat.S_IMODE((models / folder).stat().st_mode) == 0o755


def test_pull_writes_ollamas_store_byte_for_byte(registry: Registry, tmp_path: Path) -> None:
    model = registry.push_model("library/tiny", "1b", (300 * KB, 2 * KB, 100, 50))
    models = tmp_path / "models"
    result = blobdl.pull(ref(registry, model), models, settings=fast_settings())
    assert_store(models, registry, model)
    assert result.manifest_digest == model.digest
    assert result.bytes_fetched >= sum(len(b) for b in model.blobs.values())
