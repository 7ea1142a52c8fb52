"""A seat of a batch keeps its lock file from one destination to the next (issue #23): a
batch of small items then makes one lock inode per seat, not one per item, which ext4 makes
each later file pay for. Every other writer sees the locks it always saw: a destination is
locked exactly while its writer holds it, and the kept file, between two items, is as free
as a lock file its holder has let go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blobdl.errors import DestinationLocked, LocalFileError
from blobdl.store._lock import DestinationLock, KeptLockFile


def lock_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".blobdl-lock")


def inode(path: Path) -> int:
    return os.lstat(path).st_ino


def test_the_kept_file_moves_to_the_next_destination_which_it_locks(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    kept = KeptLockFile()
    with DestinationLock(a, 0, kept):
        first = inode(lock_of(a))
    with DestinationLock(b, 0, kept):
        assert inode(lock_of(b)) == first and not lock_of(a).exists()
        with pytest.raises(DestinationLocked), DestinationLock(b, 0):
            pass  # another writer of b waits (or fails at once), as always
    kept.close()
    assert list(tmp_path.iterdir()) == []


def test_a_finished_destination_is_free_at_once_for_another_writer(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    kept = KeptLockFile()
    with DestinationLock(a, 0, kept):
        pass
    with DestinationLock(a, 0):  # the kept file is let go: no DestinationLocked
        pass
    assert not lock_of(a).exists()  # that writer removed it, as a holder does
    with DestinationLock(b, 0, kept):  # the keeper finds it gone and makes a new one
        assert lock_of(b).exists()
    kept.close()
    assert list(tmp_path.iterdir()) == []


def test_a_writer_that_took_the_kept_file_keeps_its_lock(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    kept = KeptLockFile()
    with DestinationLock(a, 0, kept):
        pass
    other = DestinationLock(a, 0).__enter__()  # another writer of a, between our items
    try:
        with DestinationLock(b, 0, kept):
            assert lock_of(a).exists() and lock_of(b).exists()
            assert inode(lock_of(a)) != inode(lock_of(b))
            with pytest.raises(DestinationLocked), DestinationLock(a, 0):
                pass  # a is still the other writer's
    finally:
        other.__exit__(None, None, None)
    kept.close()
    assert list(tmp_path.iterdir()) == []


def test_a_file_at_the_next_name_is_never_replaced(tmp_path: Path) -> None:
    a, b, target = tmp_path / "a", tmp_path / "b", tmp_path / "target"
    target.write_text("victim")
    kept = KeptLockFile()
    with DestinationLock(a, 0, kept):
        pass
    lock_of(b).symlink_to(target)  # planted where b's lock goes
    with pytest.raises(LocalFileError, match="symbolic link"), DestinationLock(b, 0, kept):
        pass
    assert lock_of(b).is_symlink() and target.read_text() == "victim"
    assert not lock_of(a).exists()  # the kept file went: it was ours, and had no use
    kept.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.blobdl-lock", "target"]


def test_a_closed_keeper_keeps_nothing(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    kept = KeptLockFile()
    with DestinationLock(a, 0, kept):
        kept.close()  # the pool ends while an item still runs
    assert not lock_of(a).exists()
    with DestinationLock(b, 0, kept):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_kept_file_removed_by_a_sweeper_is_not_resurrected(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    kept = KeptLockFile()
    with DestinationLock(a, 0, kept):
        pass
    lock_of(a).unlink()  # `blobdl prune`, say: an unlocked lock file is stale
    with DestinationLock(b, 0, kept):
        assert not lock_of(a).exists() and lock_of(b).exists()
    kept.close()
    assert list(tmp_path.iterdir()) == []
