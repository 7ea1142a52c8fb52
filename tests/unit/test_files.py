"""The file primitives where no download pins them: a failed atomic write, modes, lock waits."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobdl.errors import LocalFileError
from blobdl.store._destination import check_destination, temp_path
from blobdl.store._files import absolute, atomic_write, open_own, take_lock

WAIT = 0.3  # seconds a lock wait is given before its deadline


def test_a_failed_atomic_write_leaves_what_was_there_and_no_scratch(tmp_path: Path) -> None:
    path = tmp_path / "record"
    (path / "occupied").mkdir(parents=True)  # the rename onto it fails
    with pytest.raises(LocalFileError) as caught:
        atomic_write(path, b"new", sync_dir=True)
    assert caught.value.path == str(path)
    assert os.listdir(tmp_path) == ["record"] and os.listdir(path) == ["occupied"]


def test_an_exact_mode_ignores_the_umask_and_a_plain_one_keeps_it(tmp_path: Path) -> None:
    umask = os.umask(0o077)
    try:
        atomic_write(tmp_path / "exact", b"x", exact_mode=True)
        atomic_write(tmp_path / "masked", b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "exact").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "masked").stat().st_mode) == 0o600


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A lock file held through one descriptor, and a second descriptor that wants it."""
    path = tmp_path / "lock"
    holder = open_own(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    waiter = open_own(path, os.O_RDWR)
    yield holder, waiter
    os.close(waiter)
    os.close(holder)


def test_a_lock_wait_gives_up_at_its_deadline(held: tuple[int, int]) -> None:
    _, waiter = held
    start = time.monotonic()
    assert not take_lock(waiter, deadline=start + WAIT)
    assert time.monotonic() - start >= WAIT


def test_a_lock_wait_without_waiting_answers_at_once(held: tuple[int, int]) -> None:
    _, waiter = held
    assert not take_lock(waiter, wait=False)
    assert not take_lock(waiter, deadline=time.monotonic())  # a deadline already passed


def test_a_lock_wait_takes_the_lock_once_its_holder_lets_go(held: tuple[int, int]) -> None:
    holder, waiter = held
    release = threading.Timer(WAIT, fcntl.flock, (holder, fcntl.LOCK_UN))
    release.start()
    try:
        assert take_lock(waiter)
    finally:
        release.join()


def test_an_absolute_path_names_the_file_the_kernel_would_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``link/../x`` lies beside the link's target, not in the current directory: the
    kernel follows ``link`` before taking ``..``. A destination made absolute (a cluster
    worker's, a local dir's) keeps the ``..`` for the kernel, never collapsing it as text."""
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "deep" / "er")
    monkeypatch.chdir(tmp_path)
    made = absolute("link/../x")
    with open(made, "wb") as file:
        file.write(b"here")
    assert (tmp_path / "deep" / "x").read_bytes() == b"here"
    assert not (tmp_path / "x").exists()
    assert absolute("./a//b") == str(tmp_path / "a" / "b")  # only what changes nothing goes


def test_a_staged_destination_leaves_room_for_its_partials_longer_name(tmp_path: Path) -> None:
    """``<x>.blobdl-part`` keeps its partial as ``<x>.blobdl-part.blobdl-tmp.incomplete``
    (``temp_path``), longer than the record's ``.blobdl-state.new``: a name with room for
    the record and not for the partial is refused up front, not by the partial's open."""
    room = 255 - len(temp_path(tmp_path / "x.blobdl-part").name) + len("x.blobdl-part")
    fits = tmp_path / ("a" * (room - len(".blobdl-part")) + ".blobdl-part")
    check_destination(fits)
    too_long = fits.with_name("a" + fits.name)
    assert len(too_long.name) + len(".blobdl-state.new") <= 255  # room for the record
    with pytest.raises(LocalFileError, match="its name is"):
        check_destination(too_long)
