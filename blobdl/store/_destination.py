"""The destination and its temporary file: names, checks, preallocation, the final rename."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from .._libc import libc_function
from ..config import unnameable
from ..errors import (
    DestinationExists,
    InsufficientSpace,
    LocalFileError,
    PartialChanged,
    UsageError,
)
from ._files import (
    directory_problem,
    fsync_dir,
    local_error,
    local_errors,
    open_own,
    rename_new,
    require_regular,
    unlink_gone,
)

TEMP_SUFFIX = ".blobdl-tmp"
#: A destination staged for a store another program keeps (huggingface_hub's cache:
#: ``blobs/<etag>.blobdl-part``, moved onto ``blobs/<etag>`` once checked) ...
STAGED_SUFFIX = ".blobdl-part"
#: ... has its partial named as that program's tools count and reclaim partials,
#: ``*.incomplete`` (``scan_cache_dir``, ``hf cache ls`` and ``hf cache prune``); never
#: ``<etag>.incomplete`` itself, which huggingface_hub before 2.4 resumed from its size (a
#: reserved partial's size is the whole blob's).
STAGED_TEMP_SUFFIX = TEMP_SUFFIX + ".incomplete"
#: Every file blobdl keeps beside a destination has this in its name (-tmp, -state, -lock...).
SIDE_MARK = ".blobdl-"
#: What follows SIDE_MARK in the name of a file the engine keeps beside a destination
#: (-tmp, -state and -state.new, -bad, -lock, a cache's -link scratch, a seat's -kept lock).
_ENGINE_SIDE = re.compile(re.escape(SIDE_MARK) + r"(tmp|state|bad|lock|link|kept)")
#: What the longest name blobdl keeps beside a destination adds to the destination's own:
#: its resume record's scratch, ``DEST.blobdl-state.new``; a staged destination's partial.
BESIDE = len(".blobdl-state.new")
STAGED_BESIDE = max(BESIDE, len(STAGED_TEMP_SUFFIX))
#: The shortest NAME_MAX of the filesystems in use (eCryptfs; most have 255).
_ANY_NAME_MAX = 143
#: NAME_MAX (255) less our longest side-file suffix (a cache scratch: .blobdl-link-PID-HEX).
MAX_NAME_BYTES = 255 - 40
# fallocate(2) errors that mean "this filesystem cannot": the file stays sparse.
_NO_FALLOCATE = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS, errno.ENODEV}
)


def path_problem(path: str | os.PathLike[str]) -> str | None:
    """What is wrong with a destination path as its caller wrote it, if anything (before
    ``Path``, which drops a final slash): one that ends as a directory does (``models/``,
    ``x/.``: a file ``models`` would surprise), and one named like a file the engine keeps
    beside some destination (``a.blobdl-tmp``): that is another download's partial, record
    or lock, which that download renames into place as its own, or removes, while this one
    would say it succeeded."""
    raw = os.fspath(path)
    if not isinstance(raw, str):
        return None  # (a bytes path is refused where a Path is made of it)
    if (problem := unnameable(raw)) is not None:
        return f"path {problem}"
    if raw.endswith(("/", "/.")):
        return f"path {raw!r} names a directory: name the file to write"
    if _ENGINE_SIDE.search(os.path.basename(raw)) is not None:
        return f"path {raw!r} is named like blobdl's own files beside a download"
    return None


def given_destination(path: str | os.PathLike[str]) -> Path:
    """The destination a caller gave, as a ``Path``; a UsageError if it cannot be one
    (``path_problem``)."""
    problem = path_problem(path)
    if problem is not None:
        raise UsageError(problem)
    return Path(path)


def temp_path(dest: Path) -> Path:
    """Where bytes land until the download is complete (same directory: rename is atomic);
    a staged destination's as its store's tools know a partial (``STAGED_TEMP_SUFFIX``)."""
    staged = dest.name.endswith(STAGED_SUFFIX)
    return dest.with_name(dest.name + (STAGED_TEMP_SUFFIX if staged else TEMP_SUFFIX))


def safe_basename(name: str | None) -> str | None:
    """Reduce a server- or URL-supplied name to a plain file name, or None if nothing is left.

    ``../../x`` and ``/etc/x`` become ``x``: a remote never chooses our directory. A name
    of one of our own side files (``x.blobdl-tmp``) is no name at all: a finished download
    must never pass for a partial one. A long name is cut (keeping a short extension) so
    that it and our side files beside it fit the filesystem's 255-byte limit.
    """
    if not name:
        return None
    base = PurePosixPath(name.replace("\\", "/")).name.strip()
    base = "".join(c for c in base if c.isprintable() and c != "\x00")
    if base in ("", ".", "..") or base.startswith("."):
        base = base.lstrip(".")
    if SIDE_MARK in base:
        return None
    return _fit(base) or None


def _fit(name: str) -> str:
    """``name`` cut to MAX_NAME_BYTES of UTF-8, on a character boundary, keeping a short
    extension."""
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext.encode()) > 16:
        stem, ext = name, ""
    room = MAX_NAME_BYTES - len(ext.encode()) - (1 if ext else 0)
    cut = stem.encode()[:room].decode(errors="ignore")
    return f"{cut}.{ext}" if ext else cut


def check_destination(dest: Path, beside: int = BESIDE, *, writable: bool = True) -> None:
    """Fail early (before any network traffic) if ``dest`` cannot be written.

    Only a regular file (or nothing) may be there: a FIFO would hang us, a device or a
    socket would be replaced by a file. A symbolic link is judged by its target; it is
    itself replaced by the final rename, never written through. Its name must leave room
    for the files kept beside it (``beside``: what the longest adds to its name). Without
    ``writable``, a folder we may not write in is the caller's to judge (``folder_writable``:
    a file there may be kept as it is)."""
    if "\0" in str(dest):  # the system cannot name such a file: ask for another name
        raise UsageError(f"destination {str(dest)!r} holds a NUL byte")
    if (problem := path_problem(dest)) is not None:  # a name derived from the given one
        raise UsageError(problem)
    parent = dest.parent
    broken = directory_problem(parent)
    if broken is not None:
        raise broken
    _check_room(dest, max(beside, len(temp_path(dest).name) - len(dest.name)))  # its partial too
    require_regular(dest)
    if writable and not folder_writable(dest):
        raise not_writable(dest)


def folder_writable(dest: Path) -> bool:
    """Whether files may be made, renamed and removed beside ``dest`` (a read-only mount, an
    immutable folder or one of another user's is not)."""
    return os.access(dest.parent, os.W_OK | os.X_OK)


def not_writable(dest: Path) -> LocalFileError:
    return LocalFileError(str(dest), f"directory {dest.parent} is not writable")


def _check_room(dest: Path, beside: int) -> None:
    """A name the directory's filesystem holds with ``beside`` bytes more (255 on most)."""
    size = len(os.fsencode(dest.name))
    if size + beside <= _ANY_NAME_MAX:
        return  # fits anywhere: no need to ask the filesystem (a statfs per small file)
    try:
        limit = os.pathconf(dest.parent, "PC_NAME_MAX") - beside
    except (OSError, ValueError):
        limit = 255 - beside
    if size > limit:
        raise LocalFileError(
            str(dest),
            f"its name is {size} bytes: with the files blobdl keeps beside it "
            f"({beside} bytes longer) it may be at most {limit} bytes",
        )


def check_free_space(dest: Path, needed: int) -> None:
    """Refuse a download that cannot fit, naming what is needed and what is free. Its folder
    may have gone since it was checked (after the lock, while the probe ran): that is said
    of the folder (``local_error``), as any other step on our files says it."""
    with local_errors(dest):
        free = shutil.disk_usage(dest.parent).free
    if needed > free:
        raise InsufficientSpace(str(dest), needed, free)


def open_temp(path: Path, *, fresh: bool) -> int:
    """Open the temporary file for positional writes: created anew for a fresh download
    (never reusing whatever is at the name), the existing one to resume."""
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if fresh else 0)
    return open_own(path, flags)


def set_size(fd: int, size: int, path: Path) -> None:
    """Give the temporary file its final size (sparse until written or reserved)."""
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        raise local_error(path, exc) from None


def reserve(fd: int, size: int, path: Path) -> bool:
    """Preallocate ``size`` bytes so writes cannot fail half-way for lack of space (and the
    file is not fragmented); keep the sparse file where the filesystem cannot. Whether the
    bytes are reserved: the file is then at least ``size`` long (fallocate(2) without
    FALLOC_FL_KEEP_SIZE extends it), and needs no ``set_size``.

    Call it before any worker writes. It is the fallocate(2) syscall itself, never
    ``os.posix_fallocate``: where the syscall is unsupported (NFSv3, FUSE, ext4 without
    extents) glibc emulates it by writing a zero into every block it reads as zero, which
    stamps zeros over bytes a concurrent writer just put there."""
    if not size or _fallocate is None:
        return False
    while _fallocate(fd, 0, 0, size) != 0:
        err = ctypes.get_errno()
        if err == errno.EINTR:
            continue
        if err in _NO_FALLOCATE:
            return False
        raise local_error(path, OSError(err, os.strerror(err))) from None
    return True


# fallocate(2) itself, never glibc's emulation. fallocate64 takes 64-bit offsets everywhere;
# plain fallocate does on 64-bit systems. Without it the file stays sparse.
_fallocate = libc_function(
    ("fallocate64", "fallocate") if ctypes.sizeof(ctypes.c_long) == 8 else ("fallocate64",),
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int64,
    ctypes.c_int64,
)


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = libc_function(
    ("sync_file_range",), ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
)


def start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages to disk now, without waiting for them.

    The final fsync (and each checkpoint's fdatasync) then finds little left to write:
    the disk works while the network does, instead of after it. Where the call is missing
    or fails, the kernel's own writeback does the same later (its result is not needed)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def check_partial(fd: int, temp: Path, size: int | None) -> None:
    """``temp`` still names the file ``fd`` writes, at least ``size`` bytes long (None: not
    known), else ``PartialChanged``. The workers write through ``fd``: a file another
    program renamed onto the name would be renamed into place instead of theirs (its
    bytes, whatever a digest of theirs says), and one it truncated keeps holes where their
    bytes were. Neither can be told from the bytes by a rerun: the partial is not kept."""
    try:
        held, named = os.fstat(fd), os.lstat(temp)
    except OSError as exc:
        raise local_error(temp, exc) from None
    if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
        raise PartialChanged(str(temp), "replaced by another program while it was written")
    if size is not None and held.st_size < size:
        detail = (
            f"truncated by another program while it was written ({held.st_size} of {size} bytes)"
        )
        raise PartialChanged(str(temp), detail)


def finalize(
    fd: int,
    temp: Path,
    dest: Path,
    size: int,
    *,
    sync_dir: bool = True,
    stamp: Callable[[int], None] | None = None,
    replace: bool = True,
) -> None:
    """Make the complete temp file durable and move it onto ``dest`` atomically.

    Takes ownership of ``fd``: it is closed here whatever happens. Without ``sync_dir`` the
    caller fsyncs the directory later (a batch, once for many renames in it): until then a
    crash may lose the rename, never make ``dest`` name an incomplete file. ``stamp(fd)``
    marks the file once nothing more changes it (``_source.stamp``: where it came from),
    made durable with it. Without ``replace`` a file at ``dest`` is refused
    (``DestinationExists``), never replaced (``_rename_onto_nothing``)."""
    try:
        try:
            check_partial(fd, temp, size)  # what is renamed is what was written
            os.ftruncate(fd, size)  # the last change of its mtime
            if stamp is not None:
                stamp(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temp, dest)
        else:
            _rename_onto_nothing(temp, dest)
    except OSError as exc:
        # The partial removed under the download: say so, not that the destination is missing.
        gone = exc.errno == errno.ENOENT and not os.path.lexists(temp)
        raise local_error(temp if gone else dest, exc) from None
    if sync_dir:
        sync_dir_quietly(dest.parent)


def _rename_onto_nothing(temp: Path, dest: Path) -> None:
    """Rename ``temp`` to ``dest`` unless something is there: nothing was when the download
    was checked, and a file that appeared since (another program, the user) is no more ours
    to replace than one there at the start."""
    if rename_new(temp, dest):
        return
    if os.path.lexists(dest):
        raise DestinationExists(str(dest))
    os.replace(temp, dest)  # a filesystem that cannot refuse: nothing was there just now


def sync_dir_quietly(directory: Path) -> None:
    """Make the renames done in ``directory`` durable. A rename is done by then: a
    filesystem that cannot fsync a directory (some FUSE and network filesystems) must not
    turn a complete download into a reported failure."""
    with contextlib.suppress(OSError):
        fsync_dir(directory)


def discard(temp: Path) -> None:
    """Remove the temp file after a failure (never leaves a half file behind)."""
    unlink_gone(temp)
