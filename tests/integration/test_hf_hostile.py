"""``blobdl hf`` against what it finds on disk: links planted where it writes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from faultserver.hub import HubHandle, HubRepo, start_hub
from tests.integration.test_hf import blobdl_hf, contents, resolves


def _small() -> HubRepo:
    repo = HubRepo("acme/small")
    repo.commit(
        {
            "config.json": b'{"hidden": 8}\n',
            "empty.txt": b"",
            "copy/config.json": b'{"hidden": 8}\n',
            "sub/dir/notes.txt": b"notes\n",
            "w.safetensors": os.urandom(200_000),
        }
    )
    return repo


@pytest.fixture(scope="module")
def repos() -> dict[str, HubRepo]:
    return {r.id: r for r in (_small(),)}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, repos: dict[str, HubRepo]) -> Iterator[HubHandle]:
    handle = start_hub(tmp_path_factory.mktemp("hub"), list(repos.values()))
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _fresh(hub: HubHandle) -> None:
    hub.reset()


def _commit(repos: dict[str, HubRepo], repo_id: str = "acme/small") -> str:
    return repos[repo_id].refs["main"]


# --- what is planted where blobdl writes ------------------------------------------------------

# (where, the folder that becomes a link out, relative to the local dir or the cache)
PLANTED = [
    ("local-dir", "sub"),
    ("local-dir", "sub/dir"),
    ("local-dir", ".cache"),
    ("local-dir", ".cache/huggingface/download/sub"),
    ("cache", "models--acme--small/snapshots/{commit}/sub"),
    ("cache", "models--acme--small/snapshots/{commit}"),
]


@pytest.mark.parametrize(("kind", "planted"), PLANTED, ids=[f"{k}:{p}" for k, p in PLANTED])
def test_a_folder_planted_as_a_link_out_is_never_written_through(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, kind: str, planted: str
) -> None:
    """A repository's folder (or the bookkeeping's) that is a link leading out of the folder
    blobdl was given: refused before any download, one line, nothing written out there."""
    where, outside = tmp_path / "dest", tmp_path / "outside"
    outside.mkdir()
    link = where / planted.format(commit=_commit(repos))
    link.parent.mkdir(parents=True)
    link.symlink_to(outside, target_is_directory=True)
    option = "--local-dir" if kind == "local-dir" else "--cache-dir"
    before = len(hub.log())
    done = blobdl_hf(hub, tmp_path, "acme/small", option, str(where))
    assert done.returncode == 5, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "symbolic link" in lines[-1] and lines[-1].startswith("blobdl: error:"), lines
    assert list(outside.iterdir()) == []
    assert resolves(hub, before) == [] and hub.storage.stats()["requests"] == 0


def test_the_local_dir_itself_may_be_a_link(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """The folder the user names is theirs to put anywhere: a link to it is followed."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "ld").symlink_to(real)
    done = blobdl_hf(hub, tmp_path, "acme/small", "--local-dir", str(tmp_path / "ld"))
    assert done.returncode == 0, done.stderr
    assert contents(real) == repos["acme/small"].contents[_commit(repos)]
