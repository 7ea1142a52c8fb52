"""huggingface_hub's cache, as ``hf_download`` fills it, so that ``transformers`` & co. find
the files there (``file_download.py`` in huggingface_hub 2.x)::

    CACHE/CACHEDIR.TAG
    CACHE/.locks/models--ORG--NAME/<etag>.lock          flock()ed around a blob's download
    CACHE/models--ORG--NAME/blobs/<etag>                complete, checked blobs only
    CACHE/models--ORG--NAME/snapshots/<commit>/<path>   relative symlinks to ../../blobs/<etag>
    CACHE/models--ORG--NAME/refs/<revision>             the commit, no newline (not for a commit)
    CACHE/models--ORG--NAME/trees/<commit>.json         every file of the commit

Offline (``HF_HUB_OFFLINE``) the revision is read from ``refs/`` and the commit's files from
``trees/``, as huggingface_hub reads them (``ref_commit``, ``recorded``).

A blob is the LFS sha256 or the git blob sha1 of its bytes. It is downloaded as
``blobs/<etag>.blobdl-part`` (the engine's ``-tmp``/``-state`` beside it while it runs, so
an interrupted download resumes), checked, and renamed onto ``blobs/<etag>``: a blob
appears only complete. A snapshot link appears after its blob, the ref after every link.
huggingface_hub makes no folder of a snapshot a link, nor ``blobs/``, ``refs/``, ``trees/`` or
the repository's ``.locks/``: one that leads out of the repository's folder (or the cache's)
is refused before anything is written there. The repository's folder itself may be a link.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from ..errors import LocalFileError
from ..store._files import atomic_write, local_errors, read_own
from ._disk import (
    Confined,
    Made,
    check_staged,
    fits,
    flocked,
    hashed,
    holds_other,
    inside,
    make_dirs,
    move_into_place,
    read_tree,
    staged_path,
    tag_cache_dir,
    tree_path,
    write_tree,
)
from ._repo import Repo, RepoFile, is_commit

log = logging.getLogger("blobdl")


def ref_commit(cache_dir: Path, repo: Repo, revision: str) -> str | None:
    """The commit ``revision`` names in the cache, without the Hub, as huggingface_hub finds
    it offline: a commit names itself, a branch, tag or PR ref its ``refs/`` file; None if
    that file is not there or names no commit."""
    if is_commit(revision):
        return revision
    repo_dir = cache_dir / repo.folder
    ref = repo_dir / "refs" / revision
    inside(repo_dir, ref.parent)
    with contextlib.suppress(LocalFileError, UnicodeDecodeError):
        named = read_own(ref).decode()
        return named if is_commit(named) else None
    return None


class CacheLayout:
    """One repository's part of the cache, at one commit."""

    kind = "cache"

    def __init__(self, cache_dir: Path, repo: Repo, commit: str) -> None:
        self.cache_dir, self.commit = cache_dir, commit
        self.repo_dir = cache_dir / repo.folder
        self.blobs = self.repo_dir / "blobs"
        self.snapshot = self.repo_dir / "snapshots" / commit
        self.locks = cache_dir / ".locks" / repo.folder
        self.refs = self.repo_dir / "refs"
        self.confined = Confined(self.snapshot)
        self.made = Made()

    @property
    def where(self) -> Path:
        """What the caller is given: the snapshot folder."""
        return self.snapshot

    def prepare(self, files: Sequence[RepoFile], chosen: Sequence[RepoFile]) -> None:
        # The repository's folder may be a link (moved to another disk: the user's choice);
        # what huggingface_hub makes in it never is, nor are its locks.
        inside(self.cache_dir, self.locks)
        for folder in (self.refs, self.repo_dir / "trees"):
            inside(self.repo_dir, folder)
        self.made.hold(self.repo_dir)  # until the run ends: see abandon
        for folder in (inside(self.repo_dir, self.blobs), inside(self.repo_dir, self.snapshot)):
            self.made.dirs(folder)
        tag_cache_dir(self.cache_dir, self.made)
        write_tree(self.repo_dir, self.commit, files, self.made)

    def abandon(self, wrote: bool) -> None:
        """After a failed run, what ``prepare`` made goes unless it still serves: the tree
        record while the snapshot holds a file (huggingface_hub reads the snapshot as
        incomplete by it), ``snapshots/`` while the repository's folder holds anything
        (``hf cache ls`` calls a repository without it corrupt), the cache's tag while the
        cache does. So a refused run leaves no empty revision; a stopped one, its partials.
        Nothing goes while another run into the repository's folder holds it: it may have
        found them made, and relies on them."""
        tree, tag = tree_path(self.repo_dir, self.commit), self.cache_dir / "CACHEDIR.TAG"
        snapshots = self.snapshot.parent

        def serves(path: Path) -> bool:
            if path == tree:
                return wrote or holds_other(self.snapshot)
            return holds_other(path.parent, path) if path in (tag, snapshots) else False

        self.made.undo(serves)

    def release(self) -> None:
        self.made.release()

    def recorded(self) -> list[RepoFile] | None:
        """Every file of the commit, as ``trees/<commit>.json`` lists them (None: no record)."""
        inside(self.repo_dir, self.repo_dir / "trees")
        return read_tree(self.repo_dir, self.commit)

    def key(self, f: RepoFile) -> str:
        """Files with the same bytes share one blob: one download."""
        return f.etag

    def present(self, f: RepoFile) -> bool:
        """Its snapshot entry holds its bytes already: a link that leads to its blob (which
        is here), or a copy of its size, as huggingface_hub leaves where it cannot link
        (``HF_HUB_DISABLE_SYMLINKS``). Anything else there (a link to other bytes, a FIFO)
        is not it, and is replaced."""
        path = self.file_path(f)
        with contextlib.suppress(OSError):
            entry = os.lstat(path)
            if not stat.S_ISLNK(entry.st_mode):
                return stat.S_ISREG(entry.st_mode) and entry.st_size == f.size
            return self.have(f) and os.path.samestat(os.stat(path), os.stat(self.blob_path(f)))
        return False

    def have(self, f: RepoFile) -> bool:
        """Its blob is here (it got here checked, so its name vouches for its bytes): a
        regular file of its size. Anything else at its name (a FIFO a reader would wait on
        for ever, a link to a device) is no blob: it is fetched, and replaced."""
        with contextlib.suppress(OSError):
            info = os.stat(self.blob_path(f))
            return stat.S_ISREG(info.st_mode) and info.st_size == f.size
        return False

    def staging(self, f: RepoFile) -> Path:
        return staged_path(self.blob_path(f))

    def claim(self, f: RepoFile, *, wait: bool) -> contextlib.AbstractContextManager[bool]:
        """huggingface_hub's own lock on the blob: one downloader at a time, of either kind."""
        return flocked(self.locks / f"{f.etag}.lock", wait=wait)

    def place(self, f: RepoFile, where: str, *, engine_checked: bool) -> Path:
        """The staged download, checked (``check_staged``), becomes the blob (the folder
        renamed in is returned, for the caller to sync)."""
        staged = self.staging(f)
        check_staged(staged, f, where, engine_checked=engine_checked)
        return move_into_place(staged, self.blob_path(f))

    def link(self, f: RepoFile) -> None:
        """``snapshots/<commit>/<path>`` -> ``../../blobs/<etag>`` (relative, one ``..`` per
        folder), unless its entry is ``present`` (a copy huggingface_hub made is kept, never
        replaced by a link to a blob it never wrote), replacing whatever else was there;
        created beside and renamed, so a reader sees the old entry or the new one. A blob
        not there (``hf cache rm`` or ``prune`` took it while the run went on) is never
        linked: the run fails, and the next one fetches it."""
        if self.present(f):
            return
        if not self.have(f):
            raise LocalFileError(
                str(self.blob_path(f)),
                f"the blob of {f.path!r} was removed while the run went on; run again to fetch it",
            )
        link = self.file_path(f)
        target = os.path.relpath(self.blob_path(f), link.parent)
        make_dirs(link.parent)
        with local_errors(link):
            try:
                os.symlink(target, link)
                return
            except FileExistsError:
                if os.path.islink(link) and os.readlink(link) == target:
                    return
            scratch_name = f".{link.name}.blobdl-link-{os.getpid()}"
            if not fits(scratch_name, 0):  # huggingface_hub links names of up to 255 bytes
                scratch_name = f".{hashed(f.path)}.blobdl-link-{os.getpid()}"
            scratch = link.with_name(scratch_name)
            scratch.unlink(missing_ok=True)
            os.symlink(target, scratch)
            os.replace(scratch, link)

    def finish(self, revision: str) -> None:
        """``refs/<revision>`` names the commit (no newline), last; not for a commit itself.
        One that cannot be written (``refs/v1`` a tag's file where the branch ``v1/fix``
        needs a folder; a cache no one may write to) is warned of, as huggingface_hub does:
        the snapshot is complete, only an offline look-up by that name will not find it."""
        if revision == self.commit:
            return
        ref = self.refs / revision
        inside(self.repo_dir, ref.parent)  # a link planted out of the repository stays refused
        with contextlib.suppress(LocalFileError):
            if read_own(ref) == self.commit.encode():
                return
        try:
            make_dirs(ref.parent)
            atomic_write(ref, self.commit.encode(), mode=0o666, sync_dir=True)
        except LocalFileError as exc:
            log.warning("the ref %s was not written (%s): offline, %r is not found in the "
                        "cache", ref, exc, revision)  # fmt: skip

    def file_path(self, f: RepoFile) -> Path:
        path = self.snapshot / f.path
        self.confined.check(path.parent)
        return path

    def blob_path(self, f: RepoFile) -> Path:
        return self.blobs / f.etag
