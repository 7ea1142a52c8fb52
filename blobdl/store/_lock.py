"""One writer per destination: an advisory ``flock`` on ``DEST.blobdl-lock``; and many
blobs fetched by several processes in turns (``in_turns``), as many claimed at once as the
process may hold open.

The kernel drops a flock when its holder dies, so a crashed download never leaves the
destination stuck. The lock file is removed by its holder on release; a waiter that locked
a file which was removed meanwhile notices (different inode) and tries again, as does one
still waiting on a file that has left the name (a seat moved it on). A seat of a
batch's pool keeps its lock file instead, from one destination to the next
(``KeptLockFile``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import resource
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from ..errors import DestinationLocked, LocalFileError
from ..processes._signals import held
from ..processes._spawn import threaded
from ..processes._stack_writes import batch_writes_around, batch_writes_here, holding, let_go
from ._files import LOCK_POLL, open_own, rename_new, still_at, take_lock, unlink_gone

log = logging.getLogger("blobdl")

LOCK_SUFFIX = ".blobdl-lock"
KEPT_PREFIX = ".blobdl-kept-"  # + a seat's number + LOCK_SUFFIX: a kept file (KeptLockFile)
_KEPT_NAME = re.compile(re.escape(KEPT_PREFIX) + "[0-9]+" + re.escape(LOCK_SUFFIX), re.ASCII)
T = TypeVar("T")
# The lock files this process holds ((device, inode): the process that took it; a forked
# child inherits the entries, not the locks' place up its stack). Who holds a lock is known
# here, never from the process id a holder writes in the file: those are words for a
# message, and a holder in another pid namespace (a container on a shared volume) or one
# that has just locked a file a holder of ours left can bear our number.
_OURS: dict[tuple[int, int], int] = {}


class DestinationLock:
    """The lock of ``dest``, waited for ``timeout`` seconds at most. ``kept``: the lock
    file is taken from it, and given back to it on release, instead of created anew and
    removed (a seat's, see ``KeptLockFile``)."""

    def __init__(self, dest: Path, timeout: float, kept: KeptLockFile | None = None) -> None:
        self.path = dest.with_name(dest.name + LOCK_SUFFIX)
        self.dest, self.timeout, self.kept = dest, timeout, kept
        self.fd: int | None = None
        self.noted: tuple[int, int] | None = None  # its lock file in ``_OURS``, while held

    def __enter__(self) -> DestinationLock:
        if self.kept is not None:
            with held():  # the lock taken is the lock noted: __exit__ lets go of it
                self.fd = self.kept.take(self.path)
                if self.fd is not None:
                    self.noted = _note(self.fd, self.dest)
            if self.fd is not None:
                return self
        deadline = time.monotonic() + self.timeout
        while True:
            fd = None
            try:
                with held():  # a file opened is a file noted (and let go of if we stop)
                    fd = self._open()
                taken = self._wait(fd, deadline)  # Ctrl-C ends it
                if taken is False:
                    ours = _held_up_our_stack(fd, self.dest)
                    raise DestinationLocked(str(self.dest), _read_holder(fd), ours)
                with held():  # the lock taken is the lock noted: __exit__ lets go of it
                    if taken and still_at(self.path, fd):
                        self.fd = fd
                        self.noted = _note(fd, self.dest)
                        _write_holder(fd)
                        return self
            except BaseException as exc:
                if self.fd is not None:
                    self.__exit__(type(exc), exc, None)  # we held it: no lock file left
                elif fd is not None:
                    # Stopped after the file was made (or locked), before it was noted: it
                    # may be one we just created, which nobody would ever remove. Removed
                    # only if we can lock it (nobody else holds it) and it is still dest's.
                    with held(drop=True):  # a second signal must not cut this short
                        _close_removing(fd, self.path)
                raise
            os.close(fd)  # a file its holder removed (or a seat moved) meanwhile: not dest's

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Let go: the lock file removed, then closed. Best-effort, and never an error of
        its own: a directory that became read-only (or vanished) must not replace the
        error on its way out, nor fail a download that is complete."""
        if self.fd is None:
            return
        with held(drop=True):
            if self.noted is not None:
                _OURS.pop(self.noted, None)
                self.noted = None
            let_go(self.dest)
            # Kept only for a destination finished: one left unfinished (too large for a
            # seat, say) has a next writer at once, which a seat must not lock under it.
            if kind is None and self.kept is not None and self.kept.keep(self.fd, self.path):
                self.fd = None
                return
            try:
                _remove(self.path)  # still holding the lock: nobody else owns this name now
            finally:
                os.close(self.fd)
                self.fd = None

    def _wait(self, fd: int, deadline: float) -> bool | None:
        """Lock ``fd``, polling until ``deadline``: True once held, False once past it. None
        once ``fd`` has left our name while held by another: a seat that kept it has moved
        it to its next destination (``KeptLockFile``), or its holder removed it. Waiting on
        it would wait for a destination that is not ours, and a holder that is not ours."""
        while not take_lock(fd, wait=False):
            if not still_at(self.path, fd):
                return None
            if time.monotonic() >= deadline or _held_up_our_stack(fd, self.dest):
                return False
            time.sleep(LOCK_POLL)
        return True

    def _open(self) -> int:
        # Truncated once locked: a link planted at the name must not lead us to a victim.
        return open_own(self.path, os.O_RDWR | os.O_CREAT)


class KeptLockFile:
    """The lock file one thread keeps from one of its destinations to the next (a seat of a
    batch's pool, which writes one small file after another). Created anew and removed for
    each, it would cost an inode each, and on ext4 every inode freed makes the next ones
    allocated in its group look further (measured: 7-10 % of the CPU of 400 × 1 MiB).

    On release, while the destination is still locked, the file is moved out of its name
    to a name of the keeper's own beside it (``.blobdl-kept-SEAT``), then let go: to any other
    writer the lock file went, as when a holder removes it. For the next destination the
    keeper locks it again and moves it there. Other writers see what they always saw:
    - A finished destination has no lock file: free at once. A writer that opened the file
      before it moved (it waited for the destination) finds it gone once it locks it, and
      opens the name again; none ever opens the file between two items, so none meets the
      keeper locking it to move it on (which would refuse it a destination nobody writes).
    - The file is moved only while locked, only from the name it still has, and only to a
      name that nothing has (``rename_new``). A lock another writer holds, or a file planted
      where the next lock goes, is never touched. One that removes the kept file (a sweep)
      makes the keeper start a new one.

    ``close`` removes the file (the pool ends): a keeper closed keeps nothing more. A pool
    process killed between two items leaves the file, unlocked: its scheduler, told where
    it is (``at``), removes it (``remove_stale``). A batch killed whole leaves one per seat:
    the next batch sweeps every folder it writes into before its pool starts (``sweep_kept``),
    and a seat that finds its own name taken by an unheld file removes it too. A kept name
    held by another batch's seat (numbered alike) is left alone: the keeper then keeps
    nothing, and its lock file is removed as usual."""

    def __init__(self, slot: int = 0) -> None:
        self._guard = threading.Lock()  # the pool's end may close it while its seat runs
        self._kept: tuple[int, Path] | None = None
        self._closed = False
        self._name = f"{KEPT_PREFIX}{slot}{LOCK_SUFFIX}"  # the seat's: unique in its batch

    def take(self, path: Path) -> int | None:
        """The kept file, locked and moved to ``path``: its descriptor, now the caller's,
        who writes nothing in it (our process id is in it already). None if there is none
        that can go there: the caller makes a new one."""
        with self._guard:
            kept, self._kept = self._kept, None
        if kept is None:
            return None
        fd, name = kept
        try:
            if take_lock(fd, wait=False) and still_at(name, fd):  # ours again
                try:
                    if rename_new(name, path):
                        return fd
                except OSError:  # another filesystem, say
                    pass
                _remove(name)  # locked by us: nobody else owns this name now
        except OSError:
            pass
        os.close(fd)  # never ours again: another writer took it, or it was removed
        return None

    def keep(self, fd: int, path: Path) -> bool:
        """Take back the lock file ``fd``, still locked at ``path``, once its destination is
        finished: moved to the keeper's own name, unlocked, kept open. False if it cannot
        be moved, or once the keeper is closed: the holder removes it as usual (as it does
        for a destination left unfinished, see ``DestinationLock.__exit__``)."""
        with self._guard:
            if self._closed or self._kept is not None:
                return False
            kept = path.with_name(self._name)
            try:  # still locked: nobody else owns this name now, as when a holder removes it
                # Taken: by a file a killed batch's seat left (nobody holds it: it goes),
                # or by another batch's seat of our number (held: it stays, we keep none).
                if not rename_new(path, kept) and not (
                    remove_stale(kept) and rename_new(path, kept)
                ):
                    return False
            except OSError:
                return False
            fcntl.flock(fd, fcntl.LOCK_UN)  # the destination is free from now on
            self._kept = (fd, kept)
            return True

    def at(self) -> str | None:
        """The name of the file kept now, if any (to be removed if our process is killed)."""
        with self._guard:
            return None if self._kept is None else str(self._kept[1])

    def close(self) -> None:
        """Remove the kept file, if it is still ours; keep none from now on."""
        with self._guard:
            kept, self._kept, self._closed = self._kept, None, True
        if kept is not None:
            _close_removing(*kept)


def remove_stale(path: Path) -> bool:
    """Remove the lock file at ``path`` if nobody holds it: the one a killed seat kept
    (``KeptLockFile``). A lock file held, or anything but one of ours, stays. Whether
    nothing is at ``path`` now."""
    try:
        fd = open_own(path, os.O_RDWR)
    except LocalFileError:  # gone already, or not ours to touch
        return not os.path.lexists(path)
    _close_removing(fd, path)
    return not os.path.lexists(path)


def locked_destination(lock: Path) -> Path | None:
    """The destination whose lock file ``lock`` is named as; None for a kept file (a seat's,
    between its items: ``KeptLockFile``) or a name that is no lock file's."""
    if _KEPT_NAME.fullmatch(lock.name) or not lock.name.endswith(LOCK_SUFFIX):
        return None
    name = lock.name[: -len(LOCK_SUFFIX)]
    return lock.with_name(name) if name else None


def sweep_kept(folder: Path) -> None:
    """Remove the kept files in ``folder`` nobody holds: those of a batch killed whole
    (``KeptLockFile``). Only regular files named as a seat names its own; each goes as
    ``remove_stale`` decides (a link is never followed, a held file stays). A live batch's
    seat between two items holds none, and copes: it starts a new one. A scan of the folder:
    once per folder per batch, never per item. Best-effort: a folder that cannot be read,
    or that no folder can be (a NUL byte: ValueError), is left as it is (the items written
    there say what is wrong, each failing alone)."""
    for path in kept_files(folder):
        remove_stale(path)


def kept_files(folder: Path) -> list[Path]:
    """The files in ``folder`` named as a seat names the lock file it keeps (regular files
    only, never a link); none where the folder cannot be read, or no folder can be (a NUL
    byte: ValueError)."""
    try:
        with os.scandir(folder) as entries:
            return [folder / e.name for e in entries if _KEPT_NAME.fullmatch(e.name) and _file(e)]
    except (OSError, ValueError):
        return []


def unheld(path: Path) -> bool:
    """Whether nobody holds the lock file at ``path``: looked at (locked for an instant),
    neither created nor removed. False if it cannot be opened as one of ours."""
    try:
        fd = open_own(path, os.O_RDONLY)
    except LocalFileError:
        return False
    try:
        return take_lock(fd, wait=False)
    except OSError:
        return False
    finally:
        os.close(fd)  # the lock, if taken, goes with it


def _file(entry: os.DirEntry[str]) -> bool:
    """A regular file, not a link to one (told by the directory entry, mostly: no stat)."""
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _close_removing(fd: int, path: Path) -> None:
    """Close the lock file ``fd``, removing it first if nobody holds it and ``path`` still
    names it."""
    try:
        if take_lock(fd, wait=False) and still_at(path, fd):
            _remove(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        unlink_gone(path)
    except OSError as exc:
        log.warning("could not remove the lock file %s: %s", path, exc.strerror)


def _write_holder(fd: int) -> None:
    """Our process id in the lock file, for a waiter's message only: a full disk that cannot
    take it must not fail the download (the flock is the lock, not these bytes)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)


def _held_up_our_stack(fd: int, dest: Path) -> bool:
    """Whether the lock's holder is this very process, or a batch it runs (``dest`` is one
    of its items', ``processes._stack_writes``), and it has no other thread: then it is held up our
    own call stack (a callback's download of what its own download or batch writes), and
    the wait would last as long as the deadline, its holder stuck until it ends. In a
    process a batch forked (a callback's batch), what the batches around that one write in
    its parent is held up the parent's stack, whatever threads this process has."""
    if batch_writes_around(dest):
        return True  # the parent's own (a callback's batch of what its call writes)
    if threaded():
        return False
    key = _identity(fd)
    if key is not None and _OURS.get(key) == os.getpid():
        return True
    return batch_writes_here(dest)


def _note(fd: int, dest: Path) -> tuple[int, int] | None:
    """The lock file ``fd`` of ``dest`` is held by this process (``_OURS``, and
    ``holding``: a batch a callback starts meanwhile counts it among what the calls around
    it write): its key there, for the holder to take out as it lets go (no second
    ``fstat``)."""
    key = _identity(fd)
    if key is not None:
        _OURS[key] = os.getpid()
    holding(dest)
    return key


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _read_holder(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode() or "x")
    except (OSError, ValueError):
        return None


def in_turns(
    items: Sequence[T],
    claim: Callable[[T, bool], AbstractContextManager[bool]],
    missing: Callable[[T], bool],
    fetch: Callable[[list[T]], None],
    *,
    at_once: int | None = None,
) -> None:
    """Fetch, all at once, the missing items no other process holds (``claim(item, False)``
    yields False without waiting when another does); then, one by one, each of the others
    once its holder lets go, if the holder did not leave it behind. Two processes sharing a
    store so fetch each item once, and neither waits while it has work of its own.

    A claim holds a file open: they are taken ``at_once`` items at a time (``held_at_once``
    by default), each group fetched before the next is claimed, so that a repository of
    more files than the process may open is fetched all the same."""
    size = at_once or held_at_once()
    others: list[T] = []
    for start in range(0, len(items), size):
        group = items[start : start + size]
        with contextlib.ExitStack() as held:
            mine = [held.enter_context(claim(item, False)) for item in group]
            fetch([item for item, ours in zip(group, mine, strict=True) if ours and missing(item)])
        others += [item for item, ours in zip(group, mine, strict=True) if not ours]
    for item in others:
        with claim(item, True):
            if missing(item):
                fetch([item])


def held_at_once() -> int:
    """Claims a process may hold at once: a quarter of the files it may open (the soft
    limit; 1,024 by default), the rest left to the downloads (sockets, pipes, files)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    return max(8, soft // 4)
