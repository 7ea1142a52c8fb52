"""What the calls up the caller's stack write: a callback's wait for one of those waits on
its own call, which waits for the callback (refused at once instead: ``store._lock``).

Two records, each kept by the call that owns it. ``batch_writes``: while a batch runs in
this process, its items' destinations (and cache entries) are its own, though its children
hold their locks; an item it names once probed, as it is named.
``calling_writes``: while a threaded caller's thread follows its call in a clean process
(running its callbacks), what that call writes; a callback's own call hands it to its own
clean process (``callers_writes``), where ``batch_writes`` holds it; a name that batch
learns of there is told back to the calling thread (``told_to``), whose record gains it.
Paths are kept as the file they name (``which_files``: ``link/x`` is ``real/x``, whose
lock it shares) and compared so.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

# Destination -> the process whose batch writes it. A forked child inherits the entries,
# never as its own (another process id).
_BATCHES: dict[str, int] = {}
# What the batches around the innermost one a process runs write (a callback's batch in
# theirs), and that process: one the innermost batch forked (a seat of its pool, a large
# item's) that waits for one of those waits on its parent's stack, held up in the callback.
_AROUND: tuple[frozenset[str], int] = (frozenset(), 0)
_FORKED_FROM = 0  # the process that forked this one for blobdl (``forked_by``), if any
# Destinations (as named) whose lock a call of this process holds -> that process
# (``holding``): a batch a callback starts meanwhile counts them among the writes around it.
_HOLDING: dict[str, int] = {}
_CALLING = threading.local()  # .writes: what each call up this thread's stack writes
# Who hears what this process's batch adds to its writes, and this process: a clean
# process's caller, whose thread runs the callbacks (``told_to``). A fork is not it.
_TOLD: tuple[Callable[[str, str], None], int] | None = None


class BatchRecord:
    """What a running batch of this process writes, as ``batch_writes`` keeps it: a name it
    learns of is added (an item named once probed); an item's destination goes once the
    item has ended, its lock let go (another process that takes it then is waited for, as
    any holder, never refused as ours). Each told to a clean process's caller (``told_to``)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.added: set[str] = set()  # what this record put in ``_BATCHES`` (an outer's stay)
        self.running = True

    def add(self, destination: Path) -> None:
        for path in which_files([destination]) if self.running else ():
            self.add_file(path)

    def add_file(self, path: str) -> None:
        """``add`` of a path already as the file it names (``which_files``)."""
        if self.running and _BATCHES.get(path) != self.pid:
            _BATCHES[path] = self.pid
            self.added.add(path)
            self._tell("writes", path)  # a callback's call waits on its caller's thread too

    def ended(self, destination: Path) -> None:
        for path in which_files([destination]) if self.running else ():
            if path in self.added:
                self.added.discard(path)
                _BATCHES.pop(path, None)
            self._tell("ended", path)  # a given path: the caller's record has it from the start

    def _tell(self, kind: str, path: str) -> None:
        if _TOLD is not None and _TOLD[1] == self.pid:
            _TOLD[0](kind, path)


@contextlib.contextmanager
def batch_writes(destinations: Iterable[Path]) -> Iterator[BatchRecord]:
    """While the block runs, ``destinations`` are this process's batch's own (see the
    module); an outer batch's stay its own. The block is given the record, to add a name it
    learns of meanwhile or let go of an item's destination once that item has ended."""
    global _AROUND
    paths, pid, around = set(which_files(destinations)), os.getpid(), _AROUND
    held = which_files(Path(p) for p, holder in _HOLDING.items() if holder == pid)
    _AROUND = (frozenset([*(p for p, r in _BATCHES.items() if r == pid), *held]), pid)
    record = BatchRecord()
    for path in paths:  # resolved once above, each folder once
        record.add_file(path)
    try:
        yield record
    finally:
        record.running = False
        _AROUND = around
        for path in record.added:
            _BATCHES.pop(path, None)


def batch_writes_here(destination: Path) -> bool:
    """Whether a batch this very process runs writes ``destination``."""
    return _BATCHES.get(*which_files([destination])) == os.getpid()


def batch_writes_around(destination: Path) -> bool:
    """Whether, in a process a batch forked, a batch around that one (in its parent, whose
    callback runs it) writes ``destination`` (``_AROUND``)."""
    return bool(a_batchs_fork()) and which_files([destination])[0] in _AROUND[0]


def holding(destination: Path) -> None:
    """A call of this process holds ``destination``'s lock (``store._lock``), till
    ``let_go``."""
    _HOLDING[os.fspath(destination)] = os.getpid()


def let_go(destination: Path) -> None:
    _HOLDING.pop(os.fspath(destination), None)


def forked_by(parent: int) -> None:
    """This process was forked by blobdl in ``parent`` (``_spawn.child_setup``): a batch's
    seat or large item, a worker. A process the caller forked is not: its parent goes on."""
    global _FORKED_FROM
    _FORKED_FROM = parent


def a_batchs_fork() -> int:
    """The process whose running batch forked this one (0 if none): held up in a callback,
    as long as it runs one, it waits for us."""
    runner = _AROUND[1]
    return runner if runner == _FORKED_FROM == os.getppid() else 0


@contextlib.contextmanager
def told_to(tell: Callable[[str, str], None]) -> Iterator[None]:
    """While the block runs, what a batch of this process adds to its writes (a name it
    learns of: "writes") or lets go of (an ended item's: "ended") is told to ``tell`` too:
    this clean process's caller (see the module)."""
    global _TOLD
    before, _TOLD = _TOLD, (tell, os.getpid())
    try:
        yield
    finally:
        _TOLD = before


@contextlib.contextmanager
def calling_writes(destinations: Iterable[Path]) -> Iterator[Callable[[str, str], None]]:
    """While the block runs, this thread's call (in a clean process) writes ``destinations``
    (see the module). The block is given how to hear what its clean process's batch adds
    or lets go of meanwhile (``told_to``), as the file it names already: one set per call
    up the stack, so a path told again is still one, and an ended item's goes whole."""
    before: tuple[set[str], ...] = getattr(_CALLING, "writes", ())
    mine = set(which_files(destinations))
    _CALLING.writes = (*before, mine)
    running = [True]

    def heard(kind: str, path: str) -> None:
        if running[0]:
            (mine.add if kind == "writes" else mine.discard)(path)  # this call's, never above

    try:
        yield heard
    finally:
        running[0] = False
        _CALLING.writes = before


def callers_writes() -> tuple[str, ...]:
    """What the calls up this thread's stack write (``calling_writes``)."""
    return tuple(path for call in getattr(_CALLING, "writes", ()) for path in call)


def which_files(paths: Iterable[Path]) -> list[str]:
    """The file each path names, as its lock file is found beside it: absolute, its folders'
    links followed as far as they exist (``link/x`` and ``real/x`` share one lock), its own
    name not. A ``..`` goes only as the kernel takes it, after the link before it
    (``link/../x`` lies beside the link's target: ``abspath`` would say the current folder,
    and count another file's lock as ours). Each folder resolved once."""
    real: dict[str, str] = {}
    files = []
    for path in paths:
        try:
            folder, name = os.path.split(os.path.join(os.getcwd(), path))
            if folder not in real:
                real[folder] = os.path.realpath(folder)
            files.append(os.path.join(real[folder], name))
        except (OSError, ValueError):  # no current folder, a NUL byte: as the path says
            files.append(os.fspath(path))
    return files
