"""``pull``: a model from an OCI/Ollama registry into Ollama's store, end to end.

Resolve the reference and fetch its manifest (``_oci``), leave out the blobs the store
(``_store``) already has, check that the rest fits, download them under one budget (two
pulls that share a blob take turns on it), and write the manifest last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ..batch._scheduler import BatchEvent, Item, ItemResult, download_many
from ..config import Settings
from ..engine._download import Downloader
from ..errors import HTTPStatusError
from ..events import DownloadResult, Event
from ._names import parse_reference
from ._oci import Blob, Registry
from ._store import Store

AUTH_ROUNDS = 3  # fresh tokens / presigned URLs a pull asks for before it gives up


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
    layers = tuple(_layer(store, b, fetched.get(b.digest)) for b in manifest.blobs)
    return PullResult(str(reference), path, manifest.digest, layers, time.monotonic() - started)


def _layer(store: Store, blob: Blob, download: DownloadResult | None) -> LayerResult:
    return LayerResult(blob.digest, blob.media_type, blob.size, store.blob_path(blob), download)


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
            path = str(self.store.staging_path(blob))
            items.append(Item(url, path, blob.digest, headers, size=blob.size))
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
