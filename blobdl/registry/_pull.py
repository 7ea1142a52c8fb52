"""``pull``: a model from an OCI/Ollama registry into Ollama's store, end to end.

The store is Ollama's layout, so ``ollama`` can use the result::

    DIR/blobs/sha256-<hex>                                  complete, verified blobs only
    DIR/manifests/<host[:port]>/<namespace>/<model>/<tag>   the exact manifest bytes
    DIR/blobs-partial/sha256-<hex>                          a blob being downloaded, with the
                                                            engine's state, lock and temp files

A blob is downloaded to ``blobs-partial/`` with its digest checked by the engine, then
renamed into ``blobs/`` (same filesystem, so atomic). The manifest is written last, also by
rename, so an interrupted pull never leaves a manifest naming a missing blob. Two pulls that
share a blob take turns on ``blobs-partial/sha256-<hex>.pull-lock``: the second finds the
blob in ``blobs/`` once the first is done and fetches nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ..batch._scheduler import BatchEvent, Item, ItemResult, download_many
from ..config import Settings
from ..engine._download import Downloader
from ..errors import HTTPStatusError, InsufficientSpace
from ..events import DownloadResult, Event
from ..store._destination import temp_path
from ..store._files import local_error
from ._names import Reference, parse_reference
from ._oci import Blob, Manifest, Registry

PARTIAL_DIR = "blobs-partial"
LOCK_SUFFIX = ".pull-lock"
AUTH_ROUNDS = 3  # fresh tokens / presigned URLs a pull asks for before it gives up
_LOCK_POLL = 0.05


class PullStarted(NamedTuple):
    reference: str  # as resolved: host/namespace/model:tag
    manifest_digest: str
    blobs: int  # config and layers
    missing: int  # blobs not yet in the store
    bytes_needed: int  # their total size


class PullEvent(NamedTuple):
    digest: str  # the layer (sha256:<hex>) this engine event is about
    event: Event


PullCallback = Callable[[PullStarted | PullEvent], None]


@dataclasses.dataclass(frozen=True)
class LayerResult:
    digest: str
    media_type: str
    size: int
    path: Path  # DIR/blobs/sha256-<hex>
    download: DownloadResult | None  # None: it was already in the store


@dataclasses.dataclass(frozen=True)
class PullResult:
    reference: str  # as resolved: host/namespace/model:tag
    manifest_path: Path
    manifest_digest: str
    layers: tuple[LayerResult, ...]  # the config first
    elapsed: float

    @property
    def bytes_fetched(self) -> int:
        return sum(r.download.bytes_fetched for r in self.layers if r.download is not None)

    @property
    def bytes_received(self) -> int:
        """Body bytes read off the wire, kept or not (see ``DownloadResult``)."""
        return sum(r.download.bytes_received for r in self.layers if r.download is not None)


def default_models_dir() -> Path:
    """``$OLLAMA_MODELS``, else ``~/.ollama/models`` (Ollama's own default)."""
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")


def pull(
    ref: str,
    models_dir: str | os.PathLike[str] | None = None,
    *,
    on_event: PullCallback | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> PullResult:
    """Pull ``ref`` (``[http(s)://][HOST[:PORT]/][NS/]MODEL[:TAG|@sha256:HEX]``) into
    ``models_dir``. Every blob shares ``connections`` connections, as in ``download_many``."""
    started = time.monotonic()
    base = Downloader(settings, **overrides).settings
    reference = parse_reference(ref)
    store = Store(Path(models_dir) if models_dir is not None else default_models_dir())
    registry = Registry(reference, base)
    manifest = registry.manifest()
    missing = [b for b in manifest.blobs if not store.has(b)]
    needed = sum(b.size for b in missing)
    if on_event is not None:
        on_event(PullStarted(str(reference), manifest.digest, len(manifest.blobs),
                             len(missing), needed))  # fmt: skip
    store.check_space(missing)
    fetched = _Fetcher(store, registry, base, on_event).fetch_all(missing)
    path = store.write_manifest(reference, manifest)
    layers = tuple(store.layer(b, fetched.get(b.digest)) for b in manifest.blobs)
    return PullResult(str(reference), path, manifest.digest, layers, time.monotonic() - started)


# --- the store --------------------------------------------------------------------------------


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.partial = root / PARTIAL_DIR
        for folder in (self.blobs, self.partial):
            make_dirs(folder)

    def blob_path(self, blob: Blob) -> Path:
        return self.blobs / f"sha256-{blob.hex}"

    def staging_path(self, blob: Blob) -> Path:
        return self.partial / f"sha256-{blob.hex}"

    def has(self, blob: Blob) -> bool:
        """Present with the right size. Blobs get here only verified, so the name vouches
        for the bytes; a size that differs is damage, and the blob is fetched again."""
        try:
            return self.blob_path(blob).stat().st_size == blob.size
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise local_error(self.blob_path(blob), exc) from None

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
        """Move a verified download into ``blobs/``."""
        with _local(staged):
            os.chmod(staged, 0o644)
            os.replace(staged, self.blob_path(blob))
            fsync_dir(self.blobs)

    def write_manifest(self, ref: Reference, manifest: Manifest) -> Path:
        folder = self.root / "manifests" / ref.host / ref.namespace / ref.model
        make_dirs(folder)
        path = folder / ref.tag
        temp = folder / f".{ref.tag}.tmp-{os.getpid()}"
        with _local(path):
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(manifest.raw)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(temp, 0o644)
                os.replace(temp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            fsync_dir(folder)
        return path

    def layer(self, blob: Blob, download: DownloadResult | None) -> LayerResult:
        return LayerResult(blob.digest, blob.media_type, blob.size, self.blob_path(blob), download)

    @contextlib.contextmanager
    def claim(self, blob: Blob, wait: bool) -> Iterator[bool]:
        """Hold ``blobs-partial/sha256-<hex>.pull-lock``; yields False (without waiting) when
        another pull holds it. The kernel drops the lock when its holder dies."""
        path = self.partial / f"sha256-{blob.hex}{LOCK_SUFFIX}"
        with _local(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            yield _flock(fd, wait)
        finally:
            os.close(fd)  # releases the lock; the file stays (removing it would race)


def make_dirs(folder: Path) -> None:
    """Create ``folder`` and its parents as 0755 (whatever the umask); fail early if the
    store cannot be written."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.is_dir():
            break
        missing.append(parent)
    with _local(folder):
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o755)
                os.chmod(path, 0o755)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")


def _flock(fd: int, wait: bool) -> bool:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if not wait:
                return False
            time.sleep(_LOCK_POLL)  # polled, so Ctrl-C always gets through


@contextlib.contextmanager
def _local(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise local_error(path, exc) from None


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- fetching ---------------------------------------------------------------------------------


class _Fetcher:
    def __init__(
        self, store: Store, registry: Registry, settings: Settings, on_event: PullCallback | None
    ) -> None:
        self.store, self.registry, self.settings = store, registry, settings
        self.on_event = on_event
        self.fetched: dict[str, DownloadResult] = {}

    def fetch_all(self, blobs: list[Blob]) -> dict[str, DownloadResult]:
        """Fetch what no other pull is fetching, all at once; then, one by one, what
        another pull was fetching and did not finish."""
        with contextlib.ExitStack() as held:
            mine = [b for b in blobs if held.enter_context(self.store.claim(b, wait=False))]
            self._fetch(mine)
        for blob in blobs:
            if blob in mine:
                continue
            with self.store.claim(blob, wait=True):
                if not self.store.has(blob):
                    self._fetch([blob])
        return self.fetched

    def _fetch(self, blobs: list[Blob]) -> None:
        """Download ``blobs`` under one budget. A 401/403 (a token or a presigned URL that
        expired) gets fresh ones from the registry and another round; partials resume."""
        todo = blobs
        for round_ in range(AUTH_ROUNDS + 1):
            if not todo:
                return
            results = self._round(todo)
            failed = [(b, r.error) for b, r in zip(todo, results, strict=True) if r.error]
            expired = [b for b, error in failed if _auth_expired(error)]
            if len(expired) < len(failed) or round_ == AUTH_ROUNDS:
                raise next(e for _, e in failed if e is not None)
            self.registry.forget_token()
            todo = expired

    def _round(self, blobs: list[Blob]) -> list[ItemResult]:
        items = []
        for blob in blobs:
            url, headers = self.registry.blob_source(blob)
            items.append(Item(url, str(self.store.staging_path(blob)), blob.digest, headers))
        # The pull's budget is the user's --connections, shared by every layer like -i does;
        # the per-download cap stays the same, so one big layer can take all of it.
        budget = self.settings.connections
        results = download_many(
            items,
            max_connections=budget,
            per_host=budget,
            settings=self.settings,
            on_event=self._relay(blobs),
        )
        for blob, result in zip(blobs, results, strict=True):
            if result.result is not None:
                self.store.place(blob, result.result.path)
                self.fetched[blob.digest] = result.result
        return results

    def _relay(self, blobs: list[Blob]) -> Callable[[BatchEvent], None]:
        def relay(batch_event: BatchEvent) -> None:
            if self.on_event is not None:
                self.on_event(PullEvent(blobs[batch_event.item].digest, batch_event.event))

        return relay


def _auth_expired(error: BaseException | None) -> bool:
    """A 401 (token expired) or 403 (presigned URL expired), directly or as the last
    error of a part that ran out of retries."""
    inner = getattr(error, "last_error", None) or error
    return isinstance(inner, HTTPStatusError) and inner.status in (401, 403)
