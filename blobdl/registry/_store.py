"""Ollama's store, as ``pull`` fills it, so that ``ollama`` lists, keeps and runs the result::

    DIR/blobs/sha256-<hex>                                  complete, verified blobs only
    DIR/manifests/<host[:port]>/<namespace>/<model>/<tag>   the exact manifest bytes
    DIR/blobs-partial/sha256-<hex>...                       downloads in progress, with the
                                                            engine's files and our locks
    DIR/.blobdl-tmp/                                        a manifest being written

A blob is downloaded to ``blobs-partial/``, digest-checked by the engine, then renamed into
``blobs/`` (same filesystem, so atomic) with its mtime now. Ollama's start-up prune deletes
blobs older than an hour that no manifest names, so every blob a manifest names is touched
just before the manifest is written, and checked present after. The manifest is written by
rename from ``.blobdl-tmp/``, never from a file at depth 4 of ``manifests/``, where Ollama
would read a leftover as a (corrupt) model. A folder linked to another file system, or
mounted (even from the same disk: a container's volume), changes where the staging
(``blobs/.blobdl-partial/``) or the scratch (``MODEL/.blobdl-tmp/``) is, so that every
rename stays on one mount. Who uses which blob is ``_claims``; deleting the
blobs nobody uses, ``_prune.free``.

``locate`` finds the store Ollama reads; when root writes into a store another user owns
(Ollama's service runs as ``ollama``), new files and folders take that owner (``_owner``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from ..errors import InsufficientSpace, LocalFileError
from ..store._destination import temp_path
from ..store._digest import sha256_fd
from ..store._files import (
    atomic_write,
    fsync_dir,
    local_error,
    local_errors,
    open_own,
    still_at,
)
from ._catalog import Catalog, read_digests, scan
from ._claims import Claims
from ._names import GO_SPACE, Reference
from ._oci import Blob, Manifest
from ._owner import enter, hand_over, identity, make_dirs, owner_for

PARTIAL_DIR = "blobs-partial"
STAGING_IN_BLOBS = ".blobdl-partial"  # blobs-partial/ when blobs/ is on another file system
SCRATCH_DIR = ".blobdl-tmp"
SERVICE_STORE = Path("/usr/share/ollama/.ollama/models")  # Ollama's Linux service (install.sh)
BLOB_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")  # what names a file in blobs/ (fullmatch)
WRITE_TRIES = 3  # a folder removed under us (a prune of empty folders) is made again


def freed_by_removing(info: os.stat_result) -> int:
    """The disk space that removing the file ``info`` describes gives back: its blocks, or
    nothing for a symlink, a folder, or a file another hard link keeps (the user's copy)."""
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        return 0
    return info.st_blocks * 512


class Location(NamedTuple):
    path: Path
    source: str  # why this one: "--models-dir", "$OLLAMA_MODELS", "default", "service"


def locate(
    given: str | os.PathLike[str] | None,
    env: Mapping[str, str],
    home: Path,
    service: Path = SERVICE_STORE,
) -> Location:
    """The store Ollama reads: ``given``, else ``$OLLAMA_MODELS`` with surrounding space and
    quotes stripped (Ollama's ``envconfig.Var``), else ``~/.ollama/models``, unless that is
    absent and the system service's store exists."""
    if given is not None:
        return Location(Path(given), "--models-dir")
    value = ollama_env(env, "OLLAMA_MODELS")
    if value:
        return Location(Path(value), "$OLLAMA_MODELS")
    own = home / ".ollama" / "models"
    if not os.path.lexists(own) and service.is_dir():
        return Location(service, "service")
    return Location(own, "default")


def ollama_env(env: Mapping[str, str], name: str) -> str:
    """An environment variable as Ollama's ``envconfig.Var`` reads it: white space around it
    trimmed, then every quote (' or ") at either end."""
    return env.get(name, "").strip(GO_SPACE).strip("\"'")


class Store:
    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = root
        self.owner = owner_for(root)
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self.scratch = root / SCRATCH_DIR
        if create:
            make_dirs(root, self.owner)
        self.folder(self.blobs, create=create)
        self.partial = self._staging_folder()
        self.claims = Claims(self.partial, self.owner)  # who uses a blob
        for folder in (self.partial, self.scratch, self.manifests):
            self.folder(folder, create=create and folder != self.manifests)
        self._partial_id = identity(self.partial)  # the folder we checked, to know it again
        if create and not stat.S_ISDIR(os.lstat(self.scratch).st_mode):
            raise LocalFileError(str(self.scratch), "is not a directory (a link?); remove it")

    def _staging_folder(self) -> Path:
        """Where downloads are staged: ``blobs-partial/``, unless ``blobs/`` is on another
        file system or mount (a link to a bigger disk, which ``ollama pull`` copes with, a
        container's volume): a blob could not be renamed from one to the other once whole,
        and the disk the user moved the blobs off is the one without room for them. Then
        ``blobs/.blobdl-partial/``: a folder, which Ollama's prune of ``blobs/`` leaves alone
        (it removes files)."""
        usual = self.root / PARTIAL_DIR
        blobs = _device(self.blobs)
        if blobs is None or blobs == (_device(usual) or _device(self.root)):
            return usual
        return self.blobs / STAGING_IN_BLOBS

    def folder(self, path: Path, *, create: bool = True) -> None:
        """Make sure ``path``, a folder inside the store, is one: made where missing (0755,
        the store's owner) unless not ``create``; writable. On the way down from the root,
        a link is followed only if we or root made it: one another user planted (root
        pulling into the store of Ollama's service user) could send our writes, and the
        files we give that user, anywhere."""
        enter(self.root, path, self.owner, create=create)

    def trusted(self, path: Path) -> bool:
        """Whether every folder from the store's root down to ``path`` is one we may follow."""
        try:
            self.folder(path, create=False)
        except LocalFileError:
            return False
        return True

    def blob_path(self, blob: Blob) -> Path:
        return self.blobs / f"sha256-{blob.hex}"

    def staging_path(self, blob: Blob) -> Path:
        return self.partial / f"sha256-{blob.hex}"

    def manifest_path(self, ref: Reference) -> Path:
        return self.manifests.joinpath(*ref.parts)

    def catalog(self) -> Catalog:
        return scan(self.manifests)

    # --- blobs ------------------------------------------------------------------------------

    def has(self, blob: Blob) -> bool:
        """In ``blobs/``. Blobs get there only verified, so the name vouches for the bytes,
        as it does for Ollama. One whose size is not the manifest's is hashed: the right
        bytes are kept (the manifest is wrong, and ``size`` tells), wrong ones removed."""
        path = self.blob_path(blob)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise local_error(path, exc) from None
        if not stat.S_ISREG(info.st_mode):
            raise LocalFileError(str(path), "is not a regular file; remove it")
        if info.st_size == blob.size or self._verify(path, blob):
            return True
        with local_errors(path):
            path.unlink(missing_ok=True)
        return False

    def size(self, blob: Blob) -> int:
        with local_errors(self.blob_path(blob)):
            return os.stat(self.blob_path(blob)).st_size

    def _verify(self, path: Path, blob: Blob) -> bool:
        with local_errors(path):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
            try:
                return stat.S_ISREG(os.fstat(fd).st_mode) and sha256_fd(fd) == blob.hex
            finally:
                os.close(fd)

    def check_space(self, missing: list[Blob]) -> None:
        """Refuse, before the first byte, a pull that cannot fit. A kept partial already
        holds its space (the engine preallocates), so only what it lacks is needed."""
        needed = sum(blob.size - self.reserved(blob) for blob in missing)
        free = shutil.disk_usage(self.partial).free
        if needed > free:
            raise InsufficientSpace(str(self.root), needed, free)

    def reserved(self, blob: Blob) -> int:
        """Bytes of ``blob`` the filesystem already holds for its kept partial."""
        try:
            info = temp_path(self.staging_path(blob)).lstat()
        except OSError:
            return 0
        if not stat.S_ISREG(info.st_mode):
            return 0
        return min(blob.size, info.st_blocks * 512)

    def place(self, blob: Blob, staged: Path) -> None:
        """Move a verified download into ``blobs/``: 0644, the store's owner, mtime now
        (never the server's Last-Modified: an old blob is one Ollama's prune may take).
        Only our own file moves: a link or a hard link planted at ``staged`` is refused,
        and what is changed is changed through the file we opened, not through its name."""
        dest = self.blob_path(blob)
        fd = open_own(staged, os.O_RDONLY)
        try:
            with local_errors(staged):
                os.fchmod(fd, 0o644)
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
                os.utime(fd)
                os.replace(staged, dest)
            if not still_at(dest, fd):
                raise LocalFileError(str(staged), "was replaced while it was moved into blobs/")
            with local_errors(dest):
                fsync_dir(self.blobs)
        finally:
            os.close(fd)

    def hand_over(self, blobs: Iterable[Blob]) -> None:
        """The engine's files of ``blobs`` in ``blobs-partial/`` (a partial kept for a resume,
        its state, a staged blob), made by us, become the store's owner's, as all we add:
        that user can resume them. (A pull killed outright leaves them ours.)"""
        hand_over(self.partial, self._partial_id, self.owner, (f"sha256-{b.hex}" for b in blobs))

    def touch(self, blob: Blob) -> bool:
        """Set the blob's mtime to now (the entry itself, as Ollama's prune reads it);
        False if it is gone. One another user wrote (0644: Ollama's service, another user's
        pull) may be there untouchable: it is used as Ollama's own pull uses it, untouched
        (the check after the manifest is written still catches it if it goes)."""
        path = self.blob_path(blob)
        try:
            os.utime(path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except PermissionError:
            return os.path.lexists(path)
        except OSError as exc:
            raise local_error(path, exc) from None
        return True

    def remove_blob(self, digest: str) -> int | None:
        """Unlink ``blobs/sha256-<hex>`` (a link itself, never its target); the bytes it
        held, or None if it was not there."""
        size = self.blob_bytes(digest)
        with local_errors(self._blob_file(digest)):
            self._blob_file(digest).unlink(missing_ok=True)
        return size

    def blob_bytes(self, digest: str) -> int | None:
        """What removing ``blobs/sha256-<hex>`` frees on disk, or None if absent."""
        try:
            info = os.lstat(self._blob_file(digest))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise local_error(self._blob_file(digest), exc) from None
        return freed_by_removing(info)

    def _blob_file(self, digest: str) -> Path:
        if not BLOB_DIGEST.fullmatch(digest):
            raise ValueError(f"not a blob digest: {digest!r}")
        return self.blobs / f"sha256-{digest[7:]}"

    # --- manifests --------------------------------------------------------------------------

    def manifest_digests(self, ref: Reference) -> frozenset[str] | None:
        """What the manifest now stored for ``ref`` names, if Ollama can read it."""
        return read_digests(self.manifest_path(ref))

    def write_manifest(self, ref: Reference, manifest: Manifest) -> Path:
        """Written durably by rename (its name tells ``ollama`` the model is there), 0644
        whatever the umask. The scratch file is created anew (never through a link) in
        ``.blobdl-tmp/``, outside the depth Ollama reads, and removed if anything fails."""
        path = self.manifest_path(ref)
        for attempt in range(WRITE_TRIES):
            self.folder(path.parent)
            folder = self._scratch_folder(path.parent)
            self.folder(folder)
            scratch = folder / f"manifest-{os.getpid()}-{os.urandom(4).hex()}"
            try:
                atomic_write(path, manifest.raw, scratch=scratch, exact_mode=True, sync_dir=True)
                break
            except LocalFileError:
                if (path.parent.is_dir() and folder.is_dir()) or attempt == WRITE_TRIES - 1:
                    raise
        if folder != self.scratch:  # another pull may be writing there: then it stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        if self.owner is not None:
            with local_errors(path):
                os.chown(path, *self.owner, follow_symlinks=False)
        return path

    def _scratch_folder(self, target: Path) -> Path:
        """Where a manifest for the folder ``target`` is written before its rename:
        ``.blobdl-tmp/``, unless ``target`` is on another file system or mount (a folder of
        ``manifests/`` that is a link to another disk, a volume): then ``target/.blobdl-tmp/``, a
        folder at the depth of manifests, which Ollama skips (it reads files there)."""
        self.folder(self.scratch)
        if _device(target) == _device(self.scratch):
            return self.scratch
        return target / SCRATCH_DIR

    def withdraw(self, path: Path, manifest: Manifest) -> None:
        """Remove the manifest we wrote at ``path`` (if it is still ours): it names a blob
        that could not be kept."""
        with contextlib.suppress(OSError):
            if path.read_bytes() == manifest.raw:
                path.unlink()


Volume = tuple[int, int]  # (st_dev, the mount's id): where a rename(2) can go


def _device(path: Path) -> Volume | None:
    """The file system ``path`` (through links) is on, and the mount it is seen through;
    None if it is not there. rename(2) fails (EXDEV) across mounts, not only across file
    systems: a folder bind-mounted from the same disk (a container's volume at ``blobs/``)
    has the same st_dev as the rest of the store, but another mount."""
    try:
        dev = os.stat(path).st_dev
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return None
    return dev, _mount_id(real)


def _mount_id(real: str) -> int:
    """The id of the mount an absolute, resolved path is under, from
    ``/proc/self/mountinfo`` (the last of the mounts at the longest mount point that holds
    it: the one on top); -1 where there is no such file (not Linux)."""
    try:
        with open("/proc/self/mountinfo", "rb") as file:
            lines = file.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return -1
    best, found = -1, -1
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5 or not fields[0].isdigit():
            continue
        point = _MOUNT_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, found = len(point), int(fields[0])
    return found


_MOUNT_ESCAPE = re.compile(r"\\([0-7]{3})")  # how mountinfo writes a space, a tab, a backslash
