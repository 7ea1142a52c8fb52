"""``blobdl prune`` shares the store with pulls and other prunes: a leftover another one
removed first, or a folder a pull wrote into since it was listed, is not an error."""

from __future__ import annotations

from pathlib import Path

from blobdl.registry._prune import _remove


def test_a_folder_a_pull_wrote_into_since_it_was_listed_stays(tmp_path: Path) -> None:
    folder = tmp_path / "manifests" / "h" / "ns" / "m"
    folder.mkdir(parents=True)
    (folder / "v1").write_bytes(b"{}")  # written after prune found the folder empty
    assert _remove(folder, "empty manifest folder", dry_run=False) == []
    assert (folder / "v1").read_bytes() == b"{}"


def test_a_leftover_already_gone_is_not_counted(tmp_path: Path) -> None:
    assert _remove(tmp_path / "manifest-1-0badf00d", "manifest scratch", dry_run=False) == []
