"""What huggingface_hub's cache and a ``--local-dir`` share on disk: the ``CACHEDIR.TAG``,
the lock files huggingface_hub itself takes (so a blobdl and a huggingface_hub sharing a
folder wait for each other), the mode of a new file, ``trees/<commit>.json``, the move of
a verified download into place, and the rule that no link planted in a folder we write in
takes our writes out of it (``inside``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..errors import BadResponse, DigestMismatch, IntegrityError, LocalFileError
from ..processes._signals import held
from ..store._destination import STAGED_SUFFIX, TEMP_SUFFIX, temp_path
from ..store._digest import sha256_fd
from ..store._files import (
    atomic_write,
    forget_held,
    local_errors,
    make_directory,
    note_held,
    open_own,
    read_own,
    rename_new,
    take_lock_not_ours,
)
from ..store._lock import DestinationLock
from ..store._resume import state_path
from ._repo import RepoFile, check_listing, git_blob_sha1, recorded_file

# huggingface_hub's tag, byte for byte (_local_folder.py): backup tools skip the folder.
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by huggingface_hub.\n"
    "# For information about cache directory tags, see:\n"
    "#\thttps://bford.info/cachedir/\n"
)
LOCK_MODE = 0o664  # huggingface_hub's WeakFileLock: group-writable, so users sharing a cache wait
TREE_FORMAT = 1
STAGED = STAGED_SUFFIX  # a verified download's name until it moves into place


def inside(base: Path, folder: Path) -> Path:
    """``folder`` (under ``base``), refused if a symbolic link on its way leads out of
    ``base``: a repository's path is joined under a folder of ours, and a link planted among
    its folders would take our writes (and our reads) somewhere else. ``base`` itself may be
    a link (the user's choice); folders that do not exist yet are fine."""
    return Confined(base).check(folder)


class Confined:
    """``inside`` for the many folders of one run under one ``base``: each folder checked
    once (a repository's thousands of files sit in a few folders)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._real: Path | None = None  # base resolved, at the first check
        self._checked: set[Path] = set()

    def check(self, folder: Path) -> Path:
        if folder in self._checked:
            return folder
        if self._real is None:
            self._real = self.base.resolve()
        if not folder.resolve().is_relative_to(self._real):
            raise LocalFileError(
                str(folder), f"leads out of {self.base} through a symbolic link; refusing to use it"
            )
        self._checked.add(folder)
        return folder


def make_dirs(folder: Path) -> None:
    """``folder`` and its missing parents; a file in the way named as one."""
    make_directory(folder)


class Made:
    """What a run created before its first file (folders, the tree record, the tags), in
    the order it did, so that a run that fails having put no file there can take that away
    again and nothing else: never what an earlier run, huggingface_hub or the user made,
    nor what a run beside it found made and relies on (``hold``)."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self._held: int | None = None  # the folder every run of it holds shared (flock)

    def hold(self, folder: Path) -> None:
        """``dirs(folder)``, then a shared ``flock`` on it until ``release``: every run into
        one folder holds it, and ``undo`` takes away nothing unless its run holds it alone
        (a run that found the folders made relies on them: its downloads go into them, its
        tree record is in them). Waits only while a failed run takes its things away; one
        that removed the folder meanwhile left ours a lock on no folder: made again, held."""
        while self._held is None:
            self.dirs(folder)
            with held(), local_errors(folder):
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    with contextlib.suppress(FileNotFoundError):
                        if os.path.samestat(os.fstat(fd), os.stat(folder)):
                            self._held, fd = fd, -1
                finally:
                    if fd >= 0:
                        os.close(fd)

    def release(self) -> None:
        """The run is over: ``hold``'s lock let go (again: nothing)."""
        fd, self._held = self._held, None
        if fd is not None:
            os.close(fd)

    def _alone(self) -> bool:
        """Whether no other run holds the folder (or none was held)."""
        if self._held is None:
            return True
        try:
            fcntl.flock(self._held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another run: what we made is what it uses
            return False
        return True

    def dirs(self, folder: Path) -> None:
        """``make_dirs``, noting the folders it creates."""
        missing, above = [], folder
        while not os.path.lexists(above) and above != above.parent:
            missing.append(above)
            above = above.parent
        make_dirs(folder)
        self.paths += reversed(missing)

    def new(self, path: Path) -> bool:
        """Whether ``path`` is not there yet (then noted as made: the caller makes it)."""
        if os.path.lexists(path):
            return False
        self.paths.append(path)
        return True

    def undo(self, keep: Callable[[Path], bool]) -> None:
        """Remove what was made, the last first, unless ``keep`` says it still serves: a
        file, a folder if it is empty (a partial to resume, a lock file, another run's
        file in it keeps it). Passes repeat while they remove something: a tag goes once
        its folder holds nothing else. Nothing at all while another run holds the folder
        (``hold``). Best effort: the run's own error is what is said. Releases the hold.
        A second Ctrl-C meanwhile does not cut it short: the run is stopping already."""
        with held(drop=True):
            try:
                if self._alone():
                    self._undo(keep)
            finally:
                self.release()

    def _undo(self, keep: Callable[[Path], bool]) -> None:
        left, gone = list(reversed(self.paths)), True
        while gone:
            gone = False
            for path in list(left):
                with contextlib.suppress(OSError):
                    if not os.path.lexists(path):
                        pass  # gone already (another run's undo)
                    elif keep(path):
                        continue
                    elif os.path.isdir(path) and not os.path.islink(path):
                        path.rmdir()
                    else:
                        path.unlink()
                    left.remove(path)
                    gone = True
        self.paths = left[::-1]


def holds_other(folder: Path, *mine: Path) -> bool:
    """Whether ``folder`` holds anything but ``mine`` (if it cannot be read: it may)."""
    try:
        return any(folder / name not in mine for name in os.listdir(folder))
    except FileNotFoundError:
        return False
    except OSError:
        return True


def tag_cache_dir(folder: Path, made: Made) -> None:
    """Write ``CACHEDIR.TAG`` unless it is there."""
    tag = folder / "CACHEDIR.TAG"
    if made.new(tag):
        atomic_write(tag, CACHEDIR_TAG.encode(), mode=0o666, durable=False)


@contextlib.contextmanager
def flocked(path: Path, *, wait: bool) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created 0664, as huggingface_hub makes it, and
    never removed: removing a lock file races its next taker); yields False without waiting
    when another process holds it."""
    make_dirs(path.parent)
    fd = open_own(path, os.O_RDWR | os.O_CREAT, LOCK_MODE)
    noted = None
    try:
        with contextlib.suppress(OSError):  # not ours to chmod (another user made it): fine
            os.fchmod(fd, LOCK_MODE)
        taken = take_lock_not_ours(fd, str(path), wait=wait)  # a callback's run of our blob
        if taken:
            noted = note_held(fd)
        yield taken
    finally:
        if noted is not None:
            forget_held(noted)
        os.close(fd)


def new_file_mode() -> int:
    """What a new file gets here (``0666`` less the umask), as huggingface_hub gives a blob;
    the umask read without changing it (other threads may be creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def tree_path(folder: Path, commit: str) -> Path:
    return folder / "trees" / f"{commit}.json"


def write_tree(folder: Path, commit: str, files: Sequence[RepoFile], made: Made) -> None:
    """``trees/<commit>.json``: every file of the commit, as huggingface_hub writes it (its
    offline ``snapshot_download`` checks a snapshot against it). One that lists these files
    already is left as it is, as huggingface_hub leaves it: a cache no one may write to
    (a read-only mount) that holds every file asked for is then served, not refused."""
    listed = sorted(files, key=lambda f: f.path)
    recorded = read_tree(folder, commit)
    if recorded is not None and sorted(recorded, key=lambda f: f.path) == listed:
        return
    record = {
        "format_version": TREE_FORMAT,
        "files": {f.path: f.tree_record() for f in listed},
    }
    made.dirs(folder / "trees")
    text = json.dumps(record, indent=1).encode()
    path = tree_path(folder, commit)
    made.new(path)
    atomic_write(path, text, mode=0o600, exact_mode=True)


def read_tree(folder: Path, commit: str) -> list[RepoFile] | None:
    """``trees/<commit>.json`` read back (``write_tree``'s, or huggingface_hub's), its paths
    checked as a listing's are; None if it is not there or not such a record, as
    huggingface_hub ignores one it cannot read."""
    path = folder / "trees" / f"{commit}.json"
    where = str(path)
    try:
        record = json.loads(read_own(path))
        if record["format_version"] != TREE_FORMAT:
            return None
        files = [recorded_file(p, entry, where) for p, entry in record["files"].items()]
        check_listing(files, where)
    except (LocalFileError, IntegrityError, ValueError, LookupError, TypeError, AttributeError,
            RecursionError):  # fmt: skip
        return None
    return files


NAME_MAX = 255  # bytes of one name, on every filesystem huggingface_hub writes to


def fits(name: str, beside: int) -> bool:
    """Whether ``name`` and a name ``beside`` bytes longer fit ``NAME_MAX``: huggingface_hub
    writes a file's own name up to it, so our scratch names beside one may not fit."""
    return len(os.fsencode(name)) + beside <= NAME_MAX


def hashed(path: str) -> str:
    """A short name for a repository path's scratch or staged copy: its sha256's first 32
    hex digits."""
    return hashlib.sha256(path.encode()).hexdigest()[:32]


def staged_path(final: Path) -> Path:
    return final.with_name(final.name + STAGED)


def leftovers(staged: Path) -> list[Path]:
    """What a stopped run left for the download staged at ``staged``: the staged file, the
    engine's partial (and one of a blobdl that named it without ``.incomplete``), resume
    record and lock file, those that are there."""
    before = older_partial(staged)
    names = (staged, temp_path(staged), before, state_path(staged), DestinationLock(staged, 0).path)
    return [path for path in names if os.path.lexists(path)]


def older_partial(staged: Path) -> Path:
    """Where a blobdl before partials ended in ``.incomplete`` kept ``staged``'s partial."""
    return staged.with_name(staged.name + TEMP_SUFFIX)


def resume_older_partial(staged: Path) -> None:
    """An older blobdl's partial of ``staged`` takes the name a run resumes from (its record's
    name is the same), unless a partial has that name: fetched again beside it, the blob
    would be sent twice and held twice on disk (reserved whole) until done. Called under the
    blob's claim, so no run writes it; best-effort: if the rename fails the run starts over,
    and ``leftovers`` goes once the blob is there."""
    with contextlib.suppress(OSError):
        rename_new(older_partial(staged), temp_path(staged))


def check_staged(staged: Path, f: RepoFile, where: str, *, engine_checked: bool) -> None:
    """The bytes a download left are the file's: its size, and its etag (a git file's blob
    sha1; an LFS file's sha256 too, unless ``engine_checked``: this run's engine hashed them
    as they landed). A staged file an earlier run left is hashed whatever it is: a local dir
    stages by path, so it may hold another revision's file of the same size. A mismatch
    removes them."""
    with local_errors(staged):
        fd = open_own(staged, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        actual = None
        if size == f.size and not (f.lfs_sha256 is not None and engine_checked):
            actual = git_blob_sha1(fd) if f.lfs_sha256 is None else sha256_fd(fd)
    finally:
        os.close(fd)
    if size != f.size or (actual is not None and actual != f.etag):
        staged.unlink(missing_ok=True)
        if size != f.size:
            raise BadResponse(where, f"{f.path!r}: {size} bytes where the Hub listed {f.size}")
        kind = "git sha1 " if f.lfs_sha256 is None else "sha256:"
        raise DigestMismatch(f"{kind}{f.etag}", f"{kind}{actual}")


def move_into_place(staged: Path, final: Path) -> Path:
    """A checked download onto its final name, with the mode huggingface_hub would give it;
    the folder renamed in is returned: the caller makes its renames durable, once for all
    (1,000 fsyncs of one folder cost a quarter of a run of 1,000 small files)."""
    with local_errors(final):
        os.chmod(staged, new_file_mode())
        os.replace(staged, final)
    return final.parent
