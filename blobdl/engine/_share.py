"""What a batch lets each of its running downloads use now: a share of its rate limit and a
number of connections.

``Shares`` is shared memory created by the batch scheduler before it forks anything (a
memfd: the children it forks inherit the mapping, and one it starts by exec, once it has a
thread, maps the same memory from the descriptor it is handed): the scheduler writes each
running item's share whenever an item starts or ends, and the item's coordinator reads its
own (``Share``) at every look at its lanes. So the rate and the connections that finished
items free go to the items still running, instead of staying split as they were when each
item started. One writer per word, aligned 8-byte stores: no lock.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile

_FIELDS = 2  # rate (bytes/s, 0: no limit), connections
_WORD = 8


class Shares:
    """One slot per download that may run at once; the batch writes, downloads read.

    Memory of no file (a memfd; where a sandbox refuses one, an unlinked temporary file),
    inherited by the processes the batch forks, and mapped by one it starts by exec from
    the descriptor it is handed (``fd``, ``inherited``); or, given ``path``, a file of its
    own that another process opens by that name (a cluster task's download runs in a
    clean process, started by exec), which is how it pickles."""

    def __init__(self, slots: int, path: str | None = None, *, fd: int | None = None) -> None:
        self.slots, self.path = slots, path
        self.fd: int | None = None  # the memory file, kept to hand to a child started by exec
        size = max(1, slots) * _FIELDS * _WORD
        if fd is not None:  # ours by inheritance (``inherited``)
            self._map = mmap.mmap(fd, size)
            os.close(fd)
        elif path is None:
            self.fd = _memory_file(size)
            if self.fd is None:  # no memory file at all: for forked children only
                self._map = mmap.mmap(-1, size)
            else:
                self._map = mmap.mmap(self.fd, size)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
                self._map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        self._words = memoryview(self._map).cast("q")

    @classmethod
    def inherited(cls, slots: int, fd: int) -> Shares:
        """The batch's ``Shares`` in a child started by exec, handed their memfd as ``fd``
        (closed here once mapped)."""
        return cls(slots, fd=fd)

    def close(self) -> None:
        """The batch is over: its descriptor goes (the mapping stays while anything uses it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __reduce__(self) -> tuple[type[Shares], tuple[int, str]]:
        if self.path is None:
            raise TypeError("a batch's Shares are inherited (or handed by descriptor), not pickled")
        return (Shares, (self.slots, self.path))

    def set(self, slot: int, rate: int | None, connections: int) -> None:
        self._words[slot * _FIELDS] = rate or 0
        self._words[slot * _FIELDS + 1] = connections

    def rate(self, slot: int) -> int | None:
        return int(self._words[slot * _FIELDS]) or None

    def connections(self, slot: int) -> int:
        return int(self._words[slot * _FIELDS + 1])

    def share(self, slot: int) -> Share:
        return Share(self, slot)


class Share:
    """One download's slot: what it may use now (read at every look, it changes)."""

    def __init__(self, shares: Shares, slot: int) -> None:
        self._shares, self.slot = shares, slot

    def rate(self) -> int | None:
        """Bytes/s for all its lanes together (None: no limit)."""
        return self._shares.rate(self.slot)

    def connections(self) -> int:
        """Lanes it may run at once."""
        return self._shares.connections(self.slot)


def _memory_file(size: int) -> int | None:
    """A descriptor of ``size`` bytes of memory no name leads to, for an exec'd child to
    map: a memfd, or where a sandbox refuses memfd_create (gVisor, older seccomp profiles),
    an unlinked file of the temporary directory. Without one, a threaded scheduler would
    have to fork its items, which it must not (a lock another thread holds stays held in
    the child). Either file may be refused its size (a file-size limit below it, ulimit -f,
    binds a memfd too; a full temporary directory): then there is none."""
    with contextlib.suppress(OSError):
        return _sized(os.memfd_create("blobdl-shares", os.MFD_CLOEXEC), size)
    try:
        with tempfile.TemporaryFile(prefix="blobdl-shares-") as file:  # unlinked at once
            # not inheritable: handed to a child by pass_fds
            return _sized(os.dup(file.fileno()), size)
    except OSError:
        return None


def _sized(fd: int, size: int) -> int:
    """``fd``, grown to ``size`` bytes; closed if it cannot be (OSError)."""
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd
