"""A Hugging Face repository as the Hub names it, and its files as the tree API lists them.

Pure: names checked, listings parsed, patterns matched; no I/O beyond hashing a local file.
Everything a server says that becomes a path on our disk (a file's path, a blob's name, a
commit) is checked here first: a hostile listing never chooses where we write.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from pathlib import PureWindowsPath
from typing import Any, NamedTuple

from ..config import check_text
from ..errors import BadResponse, EntryNotFound, UsageError
from ..store._digest import hash_range

# (folder and API word, URL prefix) per repository type, as huggingface_hub writes them.
REPO_TYPES = {
    "model": ("models", ""),
    "dataset": ("datasets", "datasets/"),
    "space": ("spaces", "spaces/"),
    "kernel": ("kernels", "kernels/"),  # what the `kernels` library loads
}
_REPO_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]+")  # fullmatch: "$" passes a final "\n"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_REPO_ID = 96  # huggingface_hub's validate_repo_id


class Repo(NamedTuple):
    id: str  # "org/name" (or "name")
    type: str  # "model", "dataset", "space" or "kernel"

    @property
    def folder(self) -> str:
        """Its folder in huggingface_hub's cache: ``models--org--name``."""
        return "--".join([REPO_TYPES[self.type][0], *self.id.split("/")])

    @property
    def api_path(self) -> str:
        """``/api/models/org/name``: where the Hub answers questions about it."""
        return f"/api/{REPO_TYPES[self.type][0]}/{self.id}"

    @property
    def url_path(self) -> str:
        """``/org/name`` (``/datasets/org/name``...): where its files are resolved."""
        return f"/{REPO_TYPES[self.type][1]}{self.id}"

    def __str__(self) -> str:
        return self.id if self.type == "model" else f"{self.type} {self.id}"


def parse_repo(repo_id: str, repo_type: str = "model") -> Repo:
    """A repository id as huggingface_hub accepts it (``org/name``: letters, digits, ``-``,
    ``_``, ``.``; no ``--`` or ``..``, at most 96 characters)."""
    check_text("repo id", repo_id)
    if repo_type not in REPO_TYPES:
        raise UsageError(f"repo type must be one of {', '.join(REPO_TYPES)}, not {repo_type!r}")
    bad = (
        not _REPO_ID.fullmatch(repo_id)
        or len(repo_id) > MAX_REPO_ID
        or "--" in repo_id
        or ".." in repo_id
        or repo_id.endswith(".git")
        or any(
            part.startswith((".", "-")) or part.endswith((".", "-")) for part in repo_id.split("/")
        )
    )
    if bad:
        raise UsageError(f"not a repository id: {repo_id!r} (expected org/name)")
    return Repo(repo_id, repo_type)


def is_commit(revision: str) -> bool:
    return _COMMIT.fullmatch(revision) is not None


def _utf8(text: str) -> bool:
    """Whether ``text`` is Unicode text: an argument's bytes that are not UTF-8 come as lone
    surrogates, which no URL can carry, and JSON may spell one (``"\\udcff"``)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_revision(revision: str) -> str:
    """A branch, tag or commit that may name a file under ``refs/`` (``refs/pr/1`` nests)."""
    check_text("revision", revision)
    parts = revision.split("/")
    bad = not revision or _CONTROL.search(revision) or not _utf8(revision)
    if bad or any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"not a revision: {revision!r}")
    return revision


def check_commit(commit: object, where: str) -> str:
    """A commit the Hub named: 40 lower-case hex digits, or it is not a folder we make."""
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        raise BadResponse(where, f"the Hub named the commit {commit!r:.80}, not 40 hex digits")
    return commit


def check_path(path: object, where: str) -> str:
    """A file's path in the repository, safe to join under a folder of ours: ``/``-separated
    segments, none empty, ``.`` or ``..``, no control characters; and, as huggingface_hub
    refuses them too, no ``..`` between backslashes and no segment Windows reads as anchored
    (``\\x``, ``C:x``): a cache or local dir may be read from Windows later."""
    ok = isinstance(path, str) and 0 < len(path) <= 4096 and not _CONTROL.search(path)
    ok = ok and _utf8(str(path))
    segments = str(path).split("/")
    if not ok or any(p in ("", ".", "..") or _unsafe_on_windows(p) for p in segments):
        raise BadResponse(where, f"the Hub listed a file path that is not safe: {path!r:.200}")
    return str(path)


def _unsafe_on_windows(segment: str) -> bool:
    windows = PureWindowsPath(segment)
    return ".." in segment.split("\\") or bool(windows.drive or windows.root)


# --- the files of a commit ----------------------------------------------------------------


class RepoFile(NamedTuple):
    """One file of a commit, as the tree API lists it (huggingface_hub's tree-cache fields)."""

    path: str
    size: int
    blob_id: str  # git blob sha1 (for an LFS file: of its pointer)
    lfs_sha256: str | None = None
    lfs_size: int | None = None
    xet_hash: str | None = None

    @property
    def etag(self) -> str:
        """The blob's name in the cache: the LFS sha256, else the git blob sha1 (what the Hub
        sends as ``X-Linked-Etag`` / ``ETag`` on ``resolve``)."""
        return self.lfs_sha256 or self.blob_id

    @property
    def digest(self) -> str | None:
        """``sha256:<hex>`` the engine checks (an LFS file's); None for a git file."""
        return f"sha256:{self.lfs_sha256}" if self.lfs_sha256 else None

    def tree_record(self) -> dict[str, Any]:
        """Its entry in ``trees/<commit>.json``, as huggingface_hub writes it."""
        record: dict[str, Any] = {"size": self.size, "blob_id": self.blob_id}
        if self.lfs_sha256 is not None:
            record["lfs_sha256"], record["lfs_size"] = self.lfs_sha256, self.lfs_size
        if self.xet_hash is not None:
            record["xet_hash"] = self.xet_hash
        return record


def parse_tree_page(doc: Any, where: str) -> list[RepoFile]:
    """The files of one page of ``/tree/<commit>?recursive=true`` (folders are skipped)."""
    if not isinstance(doc, list):
        raise BadResponse(where, "the tree listing is not a JSON list")
    files = []
    for entry in doc:
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind == "file":
            files.append(_file(entry, where))
        elif kind != "directory":
            raise BadResponse(
                where, f"a tree entry that is neither file nor folder: {entry!r:.200}"
            )
    return files


def recorded_file(path: object, record: object, where: str) -> RepoFile:
    """A file from its entry in ``trees/<commit>.json`` (``tree_record`` read back), checked
    as the Hub's listing is: the record on disk decides what is joined under our folders."""
    if not isinstance(record, dict):
        raise BadResponse(where, f"{path!r:.200}: its record is not a JSON object")
    lfs = record.get("lfs_sha256")
    entry = {"path": path, "size": record.get("size"), "oid": record.get("blob_id"),
             "lfs": None if lfs is None else {"oid": lfs, "size": record.get("lfs_size")},
             "xetHash": record.get("xet_hash")}  # fmt: skip
    return _file(entry, where)


def _file(entry: dict[str, Any], where: str) -> RepoFile:
    path = check_path(entry.get("path"), where)
    size = _count(entry.get("size"), where, path)
    blob_id = entry.get("oid")
    if not isinstance(blob_id, str) or not _COMMIT.fullmatch(blob_id):
        raise BadResponse(where, f"{path!r}: its oid is not a git sha1")
    lfs, xet = entry.get("lfs"), entry.get("xetHash")
    if xet is not None and not (isinstance(xet, str) and _SHA256.fullmatch(xet)):
        raise BadResponse(where, f"{path!r}: its xetHash is not 64 hex digits")
    if lfs is None:
        return RepoFile(path, size, blob_id, xet_hash=xet)
    oid = lfs.get("oid") if isinstance(lfs, dict) else None
    if not isinstance(oid, str) or not _SHA256.fullmatch(oid):
        raise BadResponse(where, f"{path!r}: its LFS oid is not a sha256")
    lfs_size = _count(lfs.get("size"), where, path)
    if lfs_size != size:
        raise BadResponse(where, f"{path!r}: its LFS size {lfs_size} is not its size {size}")
    return RepoFile(path, size, blob_id, oid, lfs_size, xet)


def _count(value: object, where: str, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise BadResponse(where, f"{path!r}: its size is not a byte count")
    return value


def check_listing(files: Sequence[RepoFile], where: str) -> None:
    """A commit's files can all exist at once: no path twice, none both a file and a folder."""
    paths = {f.path for f in files}
    if len(paths) != len(files):
        raise BadResponse(where, "the tree listing names a path twice")
    sizes = {f.etag: f.size for f in files}
    if any(sizes[f.etag] != f.size for f in files):
        raise BadResponse(where, "the tree listing gives the same bytes two sizes")
    for f in files:
        parts = f.path.split("/")
        clash = next((p for i in range(1, len(parts)) if (p := "/".join(parts[:i])) in paths), None)
        if clash is not None:
            raise BadResponse(where, f"the tree listing has {clash!r} as a file and a folder")


# --- which files ------------------------------------------------------------------------------


class Wanted(NamedTuple):
    """The files a call asks for: PATHs, then include/exclude patterns (``select``)."""

    paths: Sequence[str]
    include: Sequence[str] | None
    exclude: Sequence[str] | None

    def pick(self, files: Iterable[RepoFile], repo: Repo, revision: str) -> list[RepoFile]:
        where = {"repo": str(repo), "revision": revision}
        return select(files, self.paths, self.include, self.exclude, **where)


def select(
    files: Iterable[RepoFile],
    paths: Sequence[str] = (),
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    repo: str = "",
    revision: str = "",
) -> list[RepoFile]:
    """The files asked for: each of ``paths`` exactly (one ending in ``/`` is a folder: all
    under it; one that matches nothing is ``EntryNotFound``), then ``include``/``exclude`` as
    huggingface_hub's ``filter_repo_objects`` reads them (``fnmatchcase``, where ``*`` also
    matches ``/``; a pattern ending in ``/`` gets ``*``; ``\\`` counts as ``/`` in a pattern
    and in a path)."""
    chosen = list(files)
    if paths:
        for path in paths:
            if not any(_named(f.path, path) for f in chosen):
                raise EntryNotFound(repo, revision, path)
        chosen = [f for f in chosen if any(_named(f.path, path) for path in paths)]
    allow = [_pattern(p) for p in include] if include is not None else None
    deny = [_pattern(p) for p in exclude or ()]
    return [f for f in chosen if _allowed(_slashed(f.path), allow, deny)]


def _allowed(path: str, allow: list[str] | None, deny: list[str]) -> bool:
    if allow is not None and not any(fnmatchcase(path, p) for p in allow):
        return False
    return not any(fnmatchcase(path, p) for p in deny)


def _named(path: str, asked: str) -> bool:
    return path.startswith(asked) if asked.endswith("/") else path == asked


def _pattern(pattern: str) -> str:
    pattern = _slashed(pattern)
    return pattern + "*" if pattern.endswith("/") else pattern


def _slashed(text: str) -> str:
    """``\\`` read as ``/``, in a pattern and in the path it is matched against alike."""
    return text.replace("\\", "/")


# --- git's name for a file ------------------------------------------------------------------


def git_blob_sha1(fd: int) -> str:
    """``sha1(b"blob <size>\\0" + content)`` of an open file: the name git (and the Hub)
    gives a file that is not in LFS."""
    digest = hashlib.sha1(usedforsecurity=False)
    size = os.fstat(fd).st_size
    digest.update(b"blob %d\0" % size)
    hash_range(digest, fd, 0, size)
    return digest.hexdigest()
