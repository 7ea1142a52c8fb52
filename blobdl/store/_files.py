"""File primitives, each written once: opening (``open_own``) and reading (``read_own``)
one of our own files without trusting its name, refusing a special file where a regular one
belongs (``require_regular``), replacing a file atomically (``atomic_write``), making a
rename durable (``fsync_dir``), moving a file to a name that nothing has (``rename_new``),
waiting for a lock (``take_lock``), making a directory (``make_directory``), and turning an
``OSError`` into a ``LocalFileError`` (``local_error``, ``local_errors``); and a C library
function where Python has none (``libc_function``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import resource
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .._libc import libc_function
from ..errors import DestinationLocked, LocalFileError
from ..processes._signals import held, whole

LOCK_POLL = 0.05  # seconds between two tries of a held lock


def require_regular(path: Path) -> None:
    """Refuse anything at ``path`` but a regular file (absent is fine); never blocks."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise local_error(path, exc) from None
    if not stat.S_ISREG(info.st_mode):
        raise LocalFileError(str(path), f"is {_kind(info.st_mode)}, not a regular file")


def open_own(path: Path, flags: int, mode: int = 0o644, *, shared: bool = False) -> int:
    """Open one of our own files (lock, temp, state, seal) without trusting its name.

    A symbolic link planted there is never followed, and only a regular file with no other
    hard link is accepted: writing through either would change a file that is not ours.
    ``shared`` accepts other hard links, for reading a file that has them by design (a
    cache entry, which destinations link to). Never blocks (a FIFO at the name is refused,
    not waited on)."""
    extra = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags | extra, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise LocalFileError(str(path), "is a symbolic link; refusing to follow it") from None
        raise local_error(path, exc) from None
    try:
        _require_own(fd, path, shared)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_own(path: Path) -> bytes:
    """The whole of one of our own small files, opened as ``open_own`` does."""
    with os.fdopen(open_own(path, os.O_RDONLY), "rb") as f:
        return f.read()


def _require_own(fd: int, path: Path, shared: bool) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise LocalFileError(str(path), f"is {_kind(info.st_mode)}, not a regular file")
    if info.st_nlink > 1 and not shared:  # 0 is fine: a file just unlinked by its owner
        raise LocalFileError(str(path), "has other hard links; refusing to write through it")


def strangers(path: Path, info: os.stat_result) -> bool:
    """Whether the file at ``path`` (``info``, its lstat) is another user's: neither ours
    nor the owner's of its folder, who may replace anything in it anyway (as root hands a
    store's partials to the store's user). What such a file says of itself (a resume
    record, a finished download's record) vouches for nothing: in a folder all may write
    to (a sticky /tmp), it was planted, and kept as ours it stays its planter's to edit."""
    if info.st_uid == os.geteuid():
        return False
    try:
        return info.st_uid != os.stat(path.parent).st_uid
    except OSError:
        return True


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISREG: "a file",
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISLNK: "a symbolic link",
    }
    return next((name for test, name in kinds.items() if test(mode)), "a special file")


def atomic_write(
    path: Path,
    data: bytes,
    *,
    scratch: Path | None = None,
    mode: int = 0o644,
    exact_mode: bool = False,
    durable: bool = True,
    sync_dir: bool = False,
) -> None:
    """Replace ``path`` with ``data``: a crash leaves the old file or the new one, never half.

    The bytes go into a scratch file created anew beside ``path`` (``scratch``, else a
    unique hidden name; whatever was at that name is removed, never written through), are
    fsynced when ``durable``, and the scratch file is renamed onto ``path``. ``sync_dir``
    also fsyncs the directory, so that the rename itself survives a crash. ``mode`` is
    masked by the umask unless ``exact_mode``. Nothing is left at the scratch name if it
    fails. Raises ``LocalFileError``."""
    scratch = scratch or path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    with local_errors(path):
        scratch.unlink(missing_ok=True)
        made = False
        try:
            # A scratch file made is one removed if we stop (or fail): a signal that lands
            # as it is made is raised once it is ours (below). One that arrived before, and
            # is being handled (a stopped download's last checkpoint), is not raised again.
            with whole():
                fd = open_own(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
                made = True
            _write_new(fd, data, mode if exact_mode else None, durable)
            os.replace(scratch, path)
        except BaseException:
            if made:  # (never what was at the name, if the open failed)
                with held(drop=True), contextlib.suppress(OSError):  # nor a second signal
                    scratch.unlink()
            raise
        if sync_dir:
            fsync_dir(path.parent)


def _write_new(fd: int, data: bytes, chmod: int | None, durable: bool) -> None:
    """Write all of ``data`` into the new file ``fd`` and close it."""
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        if chmod is not None:
            os.fchmod(f.fileno(), chmod)
        if durable:
            os.fsync(f.fileno())


def fsync_dir(directory: Path) -> None:
    """Make the renames and links made in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_renameat2 = libc_function(
    ("renameat2",), ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint
)


def rename_new(old: Path, new: Path) -> bool:
    """Move ``old`` to ``new`` if nothing is at ``new`` (``renameat2`` with
    ``RENAME_NOREPLACE``, atomically: a file another process puts there meanwhile is never
    replaced). False if something is there, or if the filesystem (or the C library) cannot
    do it; other errors (``old`` is gone, another filesystem) are ``OSError``."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EEXIST, errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(old), None, str(new))


def still_at(path: str | os.PathLike[str], fd: int) -> bool:
    """Whether ``fd`` is still the file named ``path`` (never through a link): a lock taken
    on a file that its holder removed (or another replaced) meanwhile is no lock on it."""
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def take_lock(
    fd: int, *, wait: bool = True, deadline: float | None = None, shared: bool = False
) -> bool:
    """Take an exclusive (or ``shared``) ``flock`` on ``fd``: True once it is held. Without
    ``wait``, or once ``deadline`` (a ``time.monotonic()`` instant) has passed, False instead
    of waiting.

    Polled rather than blocking in the kernel, so Ctrl-C always gets through."""
    kind = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(LOCK_POLL)


# The lock files this process holds, by the thread that took each (a shared one may be
# taken more than once), as their takers note them: a thread waiting for one it holds
# itself waits on its own call stack (a pull's or hf_download's callback fetching what its
# own run fetches), for ever. A forked child inherits the entries, never as its own.
Holder = tuple[int, int, int, int]  # device, inode, process, thread
_HELD: dict[Holder, int] = {}


def _holder(fd: int) -> Holder | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino, os.getpid(), threading.get_ident()


def note_held(fd: int) -> Holder | None:
    key = _holder(fd)
    if key is not None:
        _HELD[key] = _HELD.get(key, 0) + 1
    return key


def forget_held(key: Holder) -> None:
    left = _HELD.pop(key, 1) - 1
    if left:
        _HELD[key] = left


def held_by_this_thread(fd: int) -> bool:
    """Whether this very thread holds the lock ``fd`` is another open file of: waiting for
    it would wait for ourselves."""
    key = _holder(fd)
    return key is not None and key in _HELD


def take_lock_not_ours(fd: int, name: str, *, wait: bool, shared: bool = False) -> bool:
    """``take_lock``, but a wait for a lock this very thread holds (``note_held``: a
    callback's run of what its own run holds) would wait for ourselves: refused at once,
    ``DestinationLocked`` of ``name`` as this process's own."""
    if take_lock(fd, wait=False, shared=shared):
        return True
    if wait and held_by_this_thread(fd):
        raise DestinationLocked(name, None, ours=True)
    return wait and take_lock(fd, shared=shared)


def unlink_gone(path: Path) -> None:
    """Remove ``path`` if it is there. Under a folder that went away, or that is no folder
    now (replaced by a file), nothing is there either: ENOTDIR is as good as ENOENT."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        path.unlink()


def local_error(path: Path, exc: OSError) -> LocalFileError:
    """An OSError on our own files, as a blobdl error (ENOSPC, EIO, EACCES...). A file that
    cannot be opened because its directory is missing (or is no directory) names that
    directory, which the user can act on, not our side file in it."""
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        broken = directory_problem(path.parent)
        if broken is not None:
            return broken
    return LocalFileError(str(path), f"{exc.strerror or exc}{_limit_hint(exc)}")


def _limit_hint(exc: OSError) -> str:
    """What to change when a file may not grow (EFBIG) because of this process's file-size
    limit (ulimit -f), not the file system's; "" otherwise."""
    if exc.errno != errno.EFBIG:
        return ""
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit == resource.RLIM_INFINITY:
        return ""
    return f" (the file-size limit, ulimit -f, is {limit} bytes)"


def make_directory(directory: Path, mode: int = 0o777) -> None:
    """Make ``directory`` and its missing parents (``mode``, less the umask), unless it is
    there; a LocalFileError if it cannot be. A file (or a link to none) in the way is named
    as ``directory_problem`` names one, "is a file, not a directory", not as mkdir's
    "File exists"; a file in place of a parent names that parent (``local_error``)."""
    try:
        directory.mkdir(mode=mode, parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise (directory_problem(directory) or local_error(directory, exc)) from None
    except OSError as exc:
        raise local_error(directory, exc) from None


def absolute(path: str) -> str:
    """``path`` joined to the current directory, naming the file the kernel would open:
    only what changes nothing goes (``.``, doubled slashes), never a ``..``, which the
    kernel takes after the link before it (``link/../x`` lies beside the link's target,
    where ``abspath`` would say the current directory). A current directory that was
    removed, which a relative path needs and ``getcwd`` cannot give, is said as the error a
    download names it with."""
    try:
        return str(Path(path).absolute())
    except FileNotFoundError:
        raise LocalFileError(os.curdir, "the current directory was deleted") from None


def directory_problem(directory: Path) -> LocalFileError | None:
    """The error naming ``directory`` if it is not an existing directory; None if it is."""
    try:
        info = os.stat(directory)
    except NotADirectoryError:  # a file on the way: that file is what the user can act on
        return _file_on_the_way(directory) or LocalFileError(
            str(directory), "directory does not exist"
        )
    except OSError:
        return LocalFileError(str(directory), "directory does not exist")
    if not stat.S_ISDIR(info.st_mode):
        return LocalFileError(str(directory), f"is {_kind(info.st_mode)}, not a directory")
    if info.st_nlink == 0:  # removed, yet found: only the current directory can be
        current = directory == Path()
        return LocalFileError(
            str(directory), f"the {'current ' if current else ''}directory was deleted"
        )
    return None


def _file_on_the_way(directory: Path) -> LocalFileError | None:
    """The error naming the nearest folder above ``directory`` that is there and is no
    directory (``a/file/b/c``: ``a/file``); None if none is."""
    for above in directory.parents:
        try:
            info = os.stat(above)
        except NotADirectoryError:
            continue
        except OSError:
            return None
        if stat.S_ISDIR(info.st_mode):
            return None
        return LocalFileError(str(above), f"is {_kind(info.st_mode)}, not a directory")
    return None


@contextlib.contextmanager
def local_errors(path: Path) -> Iterator[None]:
    """Any OSError in the block becomes ``local_error(path, ...)``."""
    try:
        yield
    except OSError as exc:
        raise local_error(path, exc) from None
