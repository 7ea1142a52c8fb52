"""A seat of a batch keeps its lock file from one destination to the next (issue #23): a
batch of small items then makes one lock inode per seat, not one per item, which ext4 makes
each later file pay for. Every other writer sees the locks it always saw: a destination is
locked exactly while its writer holds it, and between two items the kept file is out of
every destination's way, as a lock file its holder has removed."""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blobdl.errors import DestinationLocked, LocalFileError
from blobdl.store import _lock
from blobdl.store._lock import DestinationLock, KeptLockFile
from blobdl.store._resume import drop_unrecorded
from tests.conftest import opened_by


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


def test_a_writer_of_a_finished_destination_keeps_its_lock(tmp_path: Path) -> None:
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
    assert not lock_of(a).exists()  # free: nothing of the seat's at a's lock
    kept_at = kept.at()
    assert kept_at is not None and Path(kept_at).parent == tmp_path
    Path(kept_at).unlink()  # a sweep, say: an unlocked lock file is stale
    with DestinationLock(b, 0, kept):
        assert not Path(kept_at).exists() and lock_of(b).exists()
    kept.close()
    assert list(tmp_path.iterdir()) == []


WAITER = """
import sys
from pathlib import Path
from blobdl.store._lock import DestinationLock
with DestinationLock(Path(sys.argv[1]), 30):
    print("locked", flush=True)
"""


def test_a_writer_waiting_for_a_destination_gets_it_once_the_seat_moves_on(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    kept = KeptLockFile()
    with DestinationLock(a, 0, kept):
        waiter = subprocess.Popen(
            [sys.executable, "-c", WAITER, str(a)], stdout=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 10
        while not opened_by(waiter.pid, lock_of(a)) and time.monotonic() < deadline:
            time.sleep(0.01)  # it waits for a, the file it opened
    try:
        with DestinationLock(b, 0, kept):  # the seat's next item: a is nobody's from now on
            assert waiter.stdout is not None
            ready, _, _ = select.select([waiter.stdout], [], [], 5)
            assert ready and waiter.stdout.readline() == "locked\n"
    finally:
        kept.close()
        waiter.wait(30)
    assert list(tmp_path.iterdir()) == []


class _Overtaken(DestinationLock):
    """A writer the seat overtakes: between its opening the lock file and its locking it,
    the seat takes that file for its next item."""

    def __init__(self, dest: Path, kept: KeptLockFile, then: Path) -> None:
        super().__init__(dest, 0)
        self.seat, self.then = DestinationLock(then, 0, kept), True

    def _open(self) -> int:
        fd = super()._open()
        if self.then:
            self.then = False
            self.seat.__enter__()
        return fd


def test_a_destination_the_seat_has_left_is_not_reported_locked(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    kept = KeptLockFile()
    with DestinationLock(a, 0, kept):
        pass
    writer = _Overtaken(a, kept, b)
    with writer:  # --lock-timeout 0: nobody writes a, so no DestinationLocked
        assert lock_of(a).exists() and inode(lock_of(a)) != inode(lock_of(b))
    writer.seat.__exit__(None, None, None)
    kept.close()
    assert list(tmp_path.iterdir()) == []


def test_a_destination_left_unfinished_is_not_kept_for_its_next_writer(tmp_path: Path) -> None:
    """A seat's item that goes on elsewhere (too large for a seat: the batch's own child
    takes its lock at once) or fails: the keeper keeps no file that writer opens; moving or
    removing it later would lock it under that writer (DestinationLocked at --lock-timeout 0)."""
    a, b = tmp_path / "a", tmp_path / "b"
    kept = KeptLockFile()
    with pytest.raises(RuntimeError), DestinationLock(a, 0, kept):
        raise RuntimeError("not small")
    assert not lock_of(a).exists() and kept.at() is None
    with DestinationLock(b, 0, kept):  # the next item makes its own
        pass
    kept.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("then", ["next item", "pool ends"])
def test_a_writer_of_a_finished_destination_never_meets_the_seat_moving_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """The seat locks its kept file a moment to move it on (its next item) or remove it (the
    pool ends). A writer of the destination it finished, at that very moment, must not be
    told the destination is locked (--lock-timeout 0): nobody writes it."""
    a, b = tmp_path / "a", tmp_path / "b"
    kept = KeptLockFile()
    with DestinationLock(a, 0, kept):
        pass
    met: list[BaseException | None] = []
    checked = _lock.still_at

    def and_meanwhile(path: str | os.PathLike[str], fd: int) -> bool:
        if not met:  # the seat holds its file now: a writer of a comes, in another process
            met.append(None)
            writer = subprocess.run([sys.executable, "-c", WAITER.replace("30", "0"), str(a)],
                                    capture_output=True, text=True, timeout=30)  # fmt: skip
            met[0] = None if writer.stdout == "locked\n" else RuntimeError(writer.stderr)
        return checked(path, fd)

    monkeypatch.setattr(_lock, "still_at", and_meanwhile)
    if then == "next item":
        with DestinationLock(b, 0, kept):
            pass
    kept.close()
    assert met == [None], met
    assert list(tmp_path.iterdir()) == []


def kept_name(slot: int) -> str:
    return f".blobdl-kept-{slot}.blobdl-lock"


def test_a_kept_file_a_killed_batch_left_is_removed_by_the_next_keeper_of_its_name(
    tmp_path: Path,
) -> None:
    """A batch SIGKILLed between two items leaves its seats' kept files (nobody is left to
    remove them). Their names are the seats' own, so the next batch's seat that keeps a
    file in that directory finds its name taken by a file nobody holds: it removes it."""
    stale = tmp_path / kept_name(0)
    stale.write_bytes(b"4242")  # what a killed seat leaves: unlocked
    kept = KeptLockFile(0)
    with DestinationLock(tmp_path / "a", 0, kept):
        pass
    assert [p.name for p in tmp_path.iterdir()] == [stale.name]
    assert stale.read_bytes() == str(os.getpid()).encode()  # ours now, the stale one gone
    kept.close()
    assert list(tmp_path.iterdir()) == []


def test_a_kept_file_another_batch_holds_is_never_touched(tmp_path: Path) -> None:
    """Two batches writing one directory have seats of the same numbers: a kept name taken
    by a file locked (that batch's seat is moving it on) stays; ours is removed as usual."""
    other = tmp_path / kept_name(0)
    other.write_bytes(b"4242")
    fd = os.open(other, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held by the other batch's seat
        kept = KeptLockFile(0)
        with DestinationLock(tmp_path / "a", 0, kept):
            pass
        assert [p.name for p in tmp_path.iterdir()] == [other.name]
        assert other.read_bytes() == b"4242" and kept.at() is None
        kept.close()
    finally:
        os.close(fd)


def test_a_link_planted_at_the_kept_name_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("victim")
    planted = tmp_path / kept_name(0)
    planted.symlink_to(target)
    kept = KeptLockFile(0)
    with DestinationLock(tmp_path / "a", 0, kept):
        pass
    kept.close()
    assert planted.is_symlink() and target.read_text() == "victim"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([planted.name, "target"])


def test_a_sweep_removes_only_unheld_kept_files_of_ours(tmp_path: Path) -> None:
    """A batch sweeps the folders it writes into of the kept files a batch killed whole left
    (``sweep_kept``): files named as a seat names its own, nobody holding them. A link at
    such a name is not followed, and neither it nor anything else there is touched."""
    stale = [tmp_path / kept_name(slot) for slot in (0, 7, 123)]
    for path in stale:
        path.write_bytes(b"4242")
    target = tmp_path / "target"
    target.write_text("victim")
    link = tmp_path / kept_name(5)
    link.symlink_to(target)
    (tmp_path / kept_name(6)).mkdir()
    others = [".blobdl-kept-x.blobdl-lock", kept_name(8) + ".bak", "a.blobdl-lock",
              "x" + kept_name(9), ".blobdl-kept-.blobdl-lock"]  # fmt: skip
    for name in others:
        (tmp_path / name).write_bytes(b"4242")
    _lock.sweep_kept(tmp_path)
    assert not any(path.exists() for path in stale)
    assert link.is_symlink() and target.read_text() == "victim"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*others, "target", kept_name(5), kept_name(6)]
    )


def test_a_sweep_of_a_folder_it_cannot_read_does_nothing(tmp_path: Path) -> None:
    _lock.sweep_kept(tmp_path / "absent")  # no error: the batch's items say what is wrong
    (tmp_path / "file").write_text("x")
    _lock.sweep_kept(tmp_path / "file")
    _lock.sweep_kept(tmp_path / "nul\0byte")  # a name no folder can have (the item says so)


def test_a_dead_seats_partial_goes_only_if_nobody_holds_it_and_no_record_vouches(
    tmp_path: Path,
) -> None:
    """What a pool process killed mid-item leaves (``Seats._sweep``): the partial of a small
    item, which starts over, goes; a destination another writer holds, or whose partial an
    earlier run's record vouches for, keeps it."""
    orphan, held, recorded = tmp_path / "orphan", tmp_path / "held", tmp_path / "recorded"
    for dest in (orphan, held, recorded):
        dest.with_name(dest.name + ".blobdl-tmp").write_bytes(b"partial")
    recorded.with_name("recorded.blobdl-state").write_text("{}")
    kept = tmp_path / ".blobdl-kept-3.blobdl-lock"
    assert _lock.locked_destination(kept) is None
    assert _lock.locked_destination(tmp_path / ".blobdl-lock") is None
    assert _lock.locked_destination(tmp_path / "orphan.blobdl-tmp") is None
    with DestinationLock(held, 0):
        for dest in (orphan, held, recorded):
            lock = _lock.locked_destination(lock_of(dest))
            assert lock == dest
            drop_unrecorded(lock)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["held.blobdl-tmp", "recorded.blobdl-state", "recorded.blobdl-tmp"]
