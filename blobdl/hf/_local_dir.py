"""``--local-dir``: the files themselves in a folder of the user's, with the bookkeeping
huggingface_hub keeps there (``_local_folder.py``), so that its next call sees them as up
to date and downloads nothing::

    DIR/<path>                                              the file (a real file, not a link)
    DIR/.cache/huggingface/.gitignore                       "*"
    DIR/.cache/huggingface/CACHEDIR.TAG
    DIR/.cache/huggingface/download/<path>.metadata         commit, etag, time.time(): one a line
    DIR/.cache/huggingface/download/<path>.lock             flock()ed around the file's download
    DIR/.cache/huggingface/trees/<commit>.json

huggingface_hub trusts a ``.metadata`` only if its timestamp is not older than the file
(``mtime - 1 <= timestamp``): it is written after the file is in place. A download is staged
as ``download/<path>.blobdl-part`` (resumable) and moved onto ``DIR/<path>`` once checked.
``DIR`` may be a link; a folder in it that is a link leading out of it is refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import BadResponse, LocalFileError
from ..store import _files
from ..store._destination import STAGED_BESIDE, path_problem
from ..store._digest import sha256_fd
from ..store._files import atomic_write, local_error, read_own
from . import _disk
from ._repo import RepoFile, git_blob_sha1, is_commit

BOOKKEEPING = ".cache/huggingface"


def held_commits(root: Path) -> list[str]:
    """The commits whose listing the local dir keeps (``trees/<commit>.json``): it records
    no branch, so offline a branch or tag is read as the commit it holds, if one."""
    trees = _disk.inside(root, root / BOOKKEEPING / "trees")
    try:
        names = os.listdir(trees)
    except OSError:
        return []
    return sorted(c for n in names if n.endswith(".json") and is_commit(c := n[: -len(".json")]))


class LocalDirLayout:
    """A folder of the user's holding the files of one commit."""

    kind = "local dir"

    def __init__(self, root: Path, commit: str) -> None:
        self.root, self.commit = root, commit
        self.meta = root / ".cache" / "huggingface"
        self.downloads = self.meta / "download"
        self.in_root, self.in_downloads = _disk.Confined(root), _disk.Confined(self.downloads)
        self.made = _disk.Made()

    @property
    def where(self) -> Path:
        return self.root

    def prepare(self, files: Sequence[RepoFile], chosen: Sequence[RepoFile]) -> None:
        """The folders made and the commit's listing written, once the files ``chosen`` are
        known to fit: none's bookkeeping is where another's folder must be."""
        clash = _clash({f.path for f in chosen})
        if clash is not None:
            raise BadResponse(
                str(self.root),
                f"the repository holds {clash[0]!r} and {clash[1]!r}, whose bookkeeping in "
                f"{BOOKKEEPING}/ would be one path (leave one out with an exclude pattern)",
            )
        problem = _files.directory_problem(self.root) if os.path.lexists(self.root) else None
        if problem is not None:  # a file named as the local dir: say so, not "no .cache"
            raise problem
        self.in_root.check(self.downloads)
        self.made.hold(self.meta)  # until the run ends: see abandon
        self.made.dirs(self.downloads)
        self.in_root.check(self.meta / "trees")
        _disk.tag_cache_dir(self.meta, self.made)
        if self.made.new(self.meta / ".gitignore"):
            atomic_write(self.meta / ".gitignore", b"*", mode=0o666, durable=False)
        _disk.write_tree(self.meta, self.commit, files, self.made)

    def abandon(self, wrote: bool) -> None:
        """After a failed run, what ``prepare`` made goes unless it still serves: the tree
        record if the run put a file here; the tag and ``.gitignore`` while the bookkeeping
        holds anything else (a lock file, a partial to resume: kept out of git and
        backups). The local dir itself goes if the run made it and it is left empty.
        Nothing goes while another run into the local dir holds its bookkeeping's folder: it
        may have found them made, and relies on them."""
        tree = _disk.tree_path(self.meta, self.commit)
        markers = (self.meta / "CACHEDIR.TAG", self.meta / ".gitignore")

        def serves(path: Path) -> bool:
            if path == tree:
                return wrote
            return _disk.holds_other(self.meta, *markers) if path in markers else False

        self.made.undo(serves)

    def release(self) -> None:
        self.made.release()

    def recorded(self) -> list[RepoFile] | None:
        """Every file of the commit, as ``trees/<commit>.json`` lists them (None: no record)."""
        self.in_root.check(self.meta / "trees")
        return _disk.read_tree(self.meta, self.commit)

    def key(self, f: RepoFile) -> str:
        return f.path

    def present(self, f: RepoFile) -> bool:
        """The file is there with these bytes: its metadata says so (and is not older than
        the file), or, with no metadata, its hash does (the metadata is then written).
        Asked of every file first: its folders and its bookkeeping's are checked here, and
        a file that would be (or hold) the bookkeeping's folder is refused."""
        if _in_the_way(f.path):
            raise BadResponse(
                str(self.root),
                f"the repository holds {f.path!r}, in the way of the local dir's "
                f"{BOOKKEEPING}/ (leave it out with an exclude pattern)",
            )
        # Staged as download/<path>.blobdl-part, a name the engine refuses as one of its own
        # side files when <path>'s is (a.blobdl-tmp); a folder so named (a.blobdl-tmp/b) may
        # be where another file's is: said here, before any download.
        if any(path_problem(name) is not None for name in f.path.split("/")):
            raise BadResponse(
                str(self.root),
                f"the repository holds {f.path!r}, named like blobdl's own files beside a "
                "download, which a local dir cannot stage (leave it out with an exclude "
                "pattern, or download to the cache)",
            )
        path, recorded = self.file_path(f), self._metadata(f)
        try:
            info = os.lstat(path)
        except OSError:
            return False
        # Only a regular file is the file. A link is not, wherever it leads: huggingface_hub
        # follows one, but the metadata would then vouch for bytes that the owner of what it
        # leads to may change at any time after; it is replaced, never read through.
        if not stat.S_ISREG(info.st_mode) or info.st_size != f.size:
            return False
        if recorded is not None:
            etag, stamp = recorded
            if info.st_mtime - 1 <= stamp:  # it vouches for the file as it is
                return etag == f.etag
        # No metadata, or one older than the file (touched, copied by `cp -r`, restored): as
        # huggingface_hub ignores it then, the hash decides, not a download of every shard.
        if not self._same_bytes(f):
            return False
        self._write_metadata(f)
        return True

    def have(self, f: RepoFile) -> bool:
        """No store of blobs here: the file's bytes are here when the file is."""
        return self.present(f)

    def staging(self, f: RepoFile) -> Path:
        """``download/<path>.blobdl-part``; for a name too long to take that and the engine's
        files beside it (huggingface_hub writes names of up to 246 bytes, its ``.metadata``
        255), a name made of the path's hash, in the same folder."""
        staged = _disk.staged_path(self._bookkeeping(f, ""))
        if _disk.fits(staged.name, STAGED_BESIDE):
            return staged
        return staged.with_name(f"{_disk.hashed(f.path)}.blobdl-long{_disk.STAGED}")

    def claim(self, f: RepoFile, *, wait: bool) -> contextlib.AbstractContextManager[bool]:
        """huggingface_hub's lock on the file's metadata, ``download/<path>.lock``."""
        return _disk.flocked(self._bookkeeping(f, ".lock"), wait=wait)

    def place(self, f: RepoFile, where: str, *, engine_checked: bool) -> Path:
        staged = self.staging(f)
        _disk.check_staged(staged, f, where, engine_checked=engine_checked)
        final = self.file_path(f)
        _disk.make_dirs(final.parent)
        folder = _disk.move_into_place(staged, final)
        self._write_metadata(f)
        return folder

    def link(self, f: RepoFile) -> None:
        """A present file's metadata names this commit (huggingface_hub refreshes it too)."""
        recorded = self._metadata(f, with_commit=True)
        if recorded is None or recorded[0] != self.commit:
            self._write_metadata(f)

    def finish(self, revision: str) -> None:
        pass  # no refs: the folder holds one commit, named in each file's metadata

    def file_path(self, f: RepoFile) -> Path:
        path = self.root / f.path
        self.in_root.check(path.parent)
        return path

    def _bookkeeping(self, f: RepoFile, suffix: str) -> Path:
        """``download/<path><suffix>``: the file's metadata, lock or staged download."""
        path = self.downloads / f"{f.path}{suffix}"
        self.in_downloads.check(path.parent)
        return path

    # --- the metadata -------------------------------------------------------------------

    def _metadata_path(self, f: RepoFile) -> Path:
        return self._bookkeeping(f, ".metadata")

    def _metadata(self, f: RepoFile, *, with_commit: bool = False) -> tuple[str, float] | None:
        """(etag, timestamp), or (commit, timestamp) ``with_commit``; None if unreadable."""
        path = self._metadata_path(f)
        try:
            lines = read_own(path).decode().splitlines()
            commit, etag, stamp = lines[0], lines[1], float(lines[2])
        except (LocalFileError, UnicodeDecodeError, IndexError, ValueError):
            return None
        return (commit if with_commit else etag), stamp

    def _write_metadata(self, f: RepoFile) -> None:
        """Three lines, each ending in a newline: commit, etag, ``time.time()``; written
        after the file, so its timestamp is not older than the file's."""
        path = self._metadata_path(f)
        _disk.make_dirs(path.parent)
        text = f"{self.commit}\n{f.etag}\n{time.time()}\n".encode()
        # Replaced by a rename: a reader sees the old record or the new one, never half. The
        # scratch's usual name (the record's, longer) may not fit beside a long one's.
        scratch = None
        if not _disk.fits(path.name, len(".tmp-4194304-12345678") + 1):
            scratch = path.with_name(f".{_disk.hashed(f.path)}.metadata.tmp-{os.getpid()}-"
                                     f"{os.urandom(4).hex()}")  # fmt: skip
        atomic_write(path, text, scratch=scratch, mode=0o666, durable=False)

    def _same_bytes(self, f: RepoFile) -> bool:
        """An existing file without metadata is kept if it hashes to the file's etag; what
        is not a regular file (a FIFO would wait for a writer for ever; a link, even one
        put there since it was looked at) is replaced."""
        path = self.file_path(f)
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT):
                return False
            raise local_error(path, exc) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            return (sha256_fd(fd) if f.lfs_sha256 else git_blob_sha1(fd)) == f.etag
        finally:
            os.close(fd)


def _in_the_way(path: str) -> bool:
    """A repository path that is the bookkeeping's folder, a folder above it, or in it."""
    return f"{BOOKKEEPING}/".startswith(f"{path}/") or path.startswith(f"{BOOKKEEPING}/")


# What a file's bookkeeping adds to its path in download/: its lock, metadata, staged copy.
_BESIDE = (".lock", ".metadata", _disk.STAGED)


def _clash(paths: set[str]) -> tuple[str, str] | None:
    """A file whose bookkeeping (``download/x.lock``) is the folder another file's needs
    (``x.lock/y``): the two, if any."""
    for path in sorted(paths):
        parts = path.split("/")
        for depth, name in enumerate(parts[:-1], 1):
            suffix = next((s for s in _BESIDE if name.endswith(s)), None)
            if suffix is not None:
                other = "/".join(parts[:depth])[: -len(suffix)]
                if other in paths:
                    return other, path
    return None
