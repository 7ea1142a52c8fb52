"""``pull``: a model from an OCI/Ollama registry into Ollama's store, end to end.

Read the reference as Ollama reads it, spelled as the store already spells it (``_names``);
fetch its manifest (``_oci``); claim every blob it names, so that nobody deletes one before
the manifest names it (``_store``, ``_claims``); fetch what the store lacks under one budget
(two pulls that share a blob take turns on it); touch every blob, write the manifest, check
every blob is still there (fetching again what vanished), and free what a moved tag left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import resource
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..batch._items import BY_INDEX
from ..batch._scheduler import BatchEvent, Item, ItemResult, download_numbered
from ..config import Settings, check_callback, check_path, overridden
from ..errors import AuthRefused, BadResponse, HTTPStatusError, LocalFileError, OutOfResources
from ..events import DownloadResult, Finished
from ..processes._signals import called
from ._catalog import decode
from ._claims import LockFile
from ._names import Reference, adopt_case, parse_reference, require_reachable
from ._oci import Blob, Manifest, Registry
from ._prune import free
from ._pull_events import PullCallback, PullEvent, PullStarted, WorkerEvent
from ._store import Store, locate, ollama_env

AUTH_ROUNDS = 3  # fresh tokens / presigned URLs a pull asks for before it gives up
SETTLE_ROUNDS = 3  # times a pull fetches again blobs deleted under it before it gives up
FETCH_BATCH = 128  # blobs whose fetch locks a round holds open at once
SPARE_FILES = 256  # open files a pull needs besides its locks (the engine's, Python's)


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
    models_dir: Path = Path()
    freed: tuple[tuple[str, int], ...] = ()  # (digest, bytes) of blobs the old tag left
    kept: tuple[str, ...] = ()  # blobs the old tag left, kept: Ollama cannot read a manifest

    @property
    def bytes_fetched(self) -> int:
        return sum(r.download.bytes_fetched for r in self.layers if r.download is not None)

    @property
    def bytes_received(self) -> int:
        """Body bytes read off the wire, kept or not (see ``DownloadResult``)."""
        return sum(r.download.bytes_received for r in self.layers if r.download is not None)


@called()  # SIGTERM is Ctrl-C from the manifest on, not only while a round fetches
def pull(
    ref: str,
    models_dir: str | os.PathLike[str] | None = None,
    *,
    on_event: PullCallback | None = None,
    settings: Settings | None = None,
    insecure: bool = False,
    cluster: Any = None,
    **overrides: Any,
) -> PullResult:
    """Pull ``ref`` (``[http(s)://HOST[:PORT]/][NS/]MODEL[:TAG][@sha256:HEX]``) into
    ``models_dir`` (default: the store Ollama reads). Every blob shares ``connections``
    connections, as in ``download_many``. No second cache: the store is content-addressed.
    ``insecure``: the registry is reached over plain HTTP (``ollama pull --insecure``).
    With ``cluster`` (a ``distributed.Client``, an address, ``"local[:N]"``) the pull runs on
    one of its workers, into the store that worker sees (``pull_every_worker``: every one)."""
    started = time.monotonic()
    check_path("models_dir", models_dir)
    check_callback("on_event", on_event)
    base = dataclasses.replace(overridden(settings, overrides), cache_dir=None)
    if cluster is not None:
        from ._pull_cluster import on_one_worker  # only with a cluster: it needs distributed

        where = functools.partial(pull, insecure=insecure)
        return on_one_worker(cluster, where, ref, models_dir, base, on_event)  # type: ignore[no-any-return]
    wanted = parse_reference(ref)
    require_reachable(wanted)
    location = locate(models_dir, os.environ, Path.home())
    store = Store(location.path)
    reference = adopt_case(wanted, store.catalog().models)
    registry = Registry(reference, base, plain_http=insecure)
    old = store.manifest_digests(reference)
    manifest = registry.manifest()
    _require_readable(manifest, reference)
    unsized = manifest.unsized  # the sizes the registry's answers gave, not the manifest
    manifest = _sized(store, registry, manifest)
    # The user's headers go with the registry's requests (``blob_sources`` says which go to
    # storage), never as the engine's headers for every URL a blob's GET ends up at.
    fetcher = _Fetcher(store, registry, dataclasses.replace(base, headers=()), on_event)
    allow_open_files(len(manifest.blobs))
    with store.claims.shared(manifest.blobs):
        # Touched when found, so that Ollama's prune spares them while we fetch the rest.
        missing = [b for b in manifest.blobs if not (store.has(b) and store.touch(b))]
        store.claims.sweep(b for b in manifest.blobs if b not in missing)
        _require_sizes(store, [b for b in manifest.blobs if b not in missing], reference, unsized)
        if on_event is not None:
            on_event(PullStarted(str(reference), manifest.digest, len(manifest.blobs),
                                 len(missing), sum(b.size for b in missing),
                                 str(location.path), location.source))  # fmt: skip
        store.check_space(missing)
        path = _settle(store, reference, manifest, fetcher, missing)
    freed, kept = _free_moved(store, old, manifest, os.environ)
    layers = tuple(_layer(store, b, fetcher.fetched.get(b.digest)) for b in manifest.blobs)
    return PullResult(str(reference), path, manifest.digest, layers,
                      time.monotonic() - started, location.path, freed, kept)  # fmt: skip


def default_models_dir() -> Path:
    """The store Ollama reads in this process's environment (``locate`` without
    ``--models-dir``): on a cluster, each worker's own."""
    return locate(None, os.environ, Path.home()).path


@called()  # on the client, as the CLI's --every-worker
def pull_every_worker(
    ref: str,
    cluster: Any,
    models_dir: str | os.PathLike[str] | None = None,
    *,
    on_event: Callable[[WorkerEvent], None] | None = None,
    settings: Settings | None = None,
    insecure: bool = False,
    **overrides: Any,
) -> dict[str, PullResult]:
    """``pull`` into the store of every worker of ``cluster``, once per store (workers on
    one host share one); {worker name: its store's PullResult}. A second run fetches nothing."""
    from ._pull_cluster import on_every_store  # (see ``pull``)

    check_path("models_dir", models_dir)
    check_callback("on_event", on_event)
    base = overridden(settings, overrides)
    where = functools.partial(pull, insecure=insecure)
    return on_every_store(cluster, where, default_models_dir, ref, models_dir, base, on_event)


def allow_open_files(blobs: int) -> None:
    """Every blob's claim stays open for the whole pull, and a round's fetch locks while it
    runs (a safetensors model has a blob per tensor: hundreds): raise the soft limit of open
    files to what that needs, up to the hard limit (as Go's runtime raises it for Ollama),
    or refuse before anything is claimed."""
    needed = blobs + min(blobs, FETCH_BATCH) + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise OutOfResources(f"pull a model of {blobs} blobs", f"it needs {needed} open files "
                             f"at once, and at most {hard} are allowed (ulimit -n)")  # fmt: skip
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _layer(store: Store, blob: Blob, download: DownloadResult | None) -> LayerResult:
    return LayerResult(blob.digest, blob.media_type, blob.size, store.blob_path(blob), download)


def _require_readable(manifest: Manifest, ref: Reference) -> None:
    """Ollama reads the manifest file with Go's JSON decoder: it must read it, and find in
    it exactly the blobs we fetch (or it would list a model we did not complete)."""
    seen = decode(manifest.raw)
    if seen is None:
        raise BadResponse(str(ref), "the manifest is not one Ollama can read")
    if seen != {b.digest for b in manifest.blobs}:
        raise BadResponse(str(ref), "Ollama would read other blobs from the manifest than it lists")


def _sized(store: Store, registry: Registry, manifest: Manifest) -> Manifest:
    """``manifest`` with a size for every blob it gives none: a blob in the store is trusted
    by its name, as Ollama trusts it; the registry is asked for the others, as Ollama asks
    its HEAD. The manifest is written as served all the same."""
    sizes = {}
    for blob in (b for b in manifest.blobs if b.digest in manifest.unsized):
        present = store.blob_path(blob).is_file()
        sizes[blob.digest] = store.size(blob) if present else registry.blob_size(blob)
    return manifest.with_sizes(sizes)


def _require_sizes(
    store: Store, present: list[Blob], ref: Reference, unsized: frozenset[str]
) -> None:
    """A verified blob whose size is not the one the manifest gives (or, where it gives
    none, the registry's answer to the blob's first byte): the manifest, or that answer, is
    wrong. Said once, without fetching the blob again (now or on a later pull)."""
    for blob in present:
        size = store.size(blob)
        if size != blob.size:
            who = "the registry's answer" if blob.digest in unsized else "the manifest"
            raise BadResponse(str(ref), f"{who} gives {blob.digest} as {blob.size} bytes, "
                              f"but its verified bytes are {size}")  # fmt: skip


def _settle(
    store: Store, ref: Reference, manifest: Manifest, fetcher: _Fetcher, missing: list[Blob]
) -> Path:
    """Fetch what is missing, touch every blob (Ollama's prune spares what is younger than
    an hour), write the manifest, and check every blob is still there: one deleted meanwhile
    (a prune, ``ollama rm`` of a model sharing it) is fetched again. A manifest naming a
    missing blob never stays: after ``SETTLE_ROUNDS`` the pull fails and withdraws it."""
    path = None
    for _round in range(SETTLE_ROUNDS):
        fetcher.fetch_all(missing)
        _require_sizes(store, [b for b in missing if store.has(b)], ref, manifest.unsized)
        missing = [b for b in manifest.blobs if not store.touch(b)]
        if missing:
            continue
        path = store.write_manifest(ref, manifest)
        missing = [b for b in manifest.blobs if not store.has(b)]
        if not missing:
            return path
    if path is not None:
        store.withdraw(path, manifest)
    raise LocalFileError(str(store.blob_path(missing[0])), f"was deleted {SETTLE_ROUNDS} times "
                         "while the pull ran (by Ollama's prune or another program)")  # fmt: skip


def _free_moved(
    store: Store, old: frozenset[str] | None, manifest: Manifest, env: Mapping[str, str]
) -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    """A tag that moved frees the blobs its old manifest named and nothing names now, as
    ``ollama pull`` does (and as it does not with ``OLLAMA_NOPRUNE`` set). Returns the freed
    (digest, bytes) and the blobs kept because a manifest Ollama cannot read may need them."""
    left = (old or frozenset()) - {b.digest for b in manifest.blobs}
    if not left or no_prune(env):
        return (), ()
    freed = free(store, left)
    return tuple(freed.removed), tuple(freed.kept)


def no_prune(env: Mapping[str, str]) -> bool:
    """``OLLAMA_NOPRUNE`` as Ollama's ``envconfig.Bool`` reads it: unset or empty is false,
    Go's false spellings are false, anything else is true."""
    value = ollama_env(env, "OLLAMA_NOPRUNE")
    return bool(value) and value not in ("0", "f", "F", "false", "FALSE", "False")


# --- fetching ---------------------------------------------------------------------------------


class _Fetcher:
    def __init__(
        self, store: Store, registry: Registry, settings: Settings, on_event: PullCallback | None
    ) -> None:
        self.store, self.registry, self.settings = store, registry, settings
        self.on_event = on_event
        self.fetched: dict[str, DownloadResult] = {}
        self._placed: Callable[[Blob], None] = _nothing  # told as each blob is placed
        self._in_place: set[str] = set()  # the blobs this round has placed

    def fetch_all(self, blobs: list[Blob]) -> dict[str, DownloadResult]:
        """Fetch what no other pull is fetching, ``FETCH_BATCH`` blobs at once (each one's
        lock is a file held open, and let go as soon as its blob is placed: a pull waiting
        for a small blob does not wait out our big ones); then, one by one, what another
        pull was fetching and did not finish."""
        waiting = []
        fetching = self.store.claims.fetching
        for start in range(0, len(blobs), FETCH_BATCH):
            batch = blobs[start : start + FETCH_BATCH]
            with contextlib.ExitStack() as held:
                locks = {b: self.store.claims.fetch_lock(b) for b in batch}
                for lock in locks.values():
                    held.callback(lock.release)
                mine = [b for b in batch if locks[b].take(shared=False, wait=False)]
                self._placed = functools.partial(_let_go, locks)
                try:
                    self._fetch([b for b in mine if not self.store.has(b)])
                finally:
                    self._placed = _nothing
            waiting += [b for b in batch if b not in mine]
        for blob in waiting:
            with fetching(blob, wait=True):
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
            if len(expired) < len(failed):
                raise next(e for _, e in failed if e is not None)
            if round_ == AUTH_ROUNDS:
                raise _still_refused(failed[0][1])
            self.registry.forget_token()
            todo = expired

    def _round(self, blobs: list[Blob]) -> list[ItemResult]:
        self._in_place = set()
        sources = self.registry.blob_sources(blobs)
        items = [
            Item(source.url, str(self.store.staging_path(blob)), blob.digest, source.headers,
                 size=blob.size)
            for blob, source in zip(blobs, sources, strict=True)
        ]  # fmt: skip
        # The pull's budget is the user's --connections, shared by every layer like -i does;
        # the per-download cap stays the same, so one big layer can take all of it.
        budget = self.settings.connections
        try:
            results = download_numbered(
                items,
                BY_INDEX,
                max_connections=budget,
                per_host=budget,
                settings=self.settings,
                on_event=self._relay(blobs),
                probed={n: s.remote for n, s in enumerate(sources) if s.remote is not None},
            )
        finally:  # what the engine kept (a partial to resume) is the store's owner's too
            self.store.hand_over(blobs)
        for blob, result in zip(blobs, results, strict=True):
            if result.result is not None:
                self._place(blob, result.result)
        return results

    def _place(self, blob: Blob, result: DownloadResult) -> None:
        """Into ``blobs/`` once whole (as it finishes, not when the round ends), its fetch
        lock let go: another pull that needs it takes it from there."""
        if blob.digest in self._in_place:
            return
        self.store.place(blob, result.path)
        self._in_place.add(blob.digest)
        self.fetched[blob.digest] = result
        self._placed(blob)

    def _relay(self, blobs: list[Blob]) -> Callable[[BatchEvent], None]:
        def relay(batch_event: BatchEvent) -> None:
            blob, event = blobs[batch_event.item], batch_event.event
            if isinstance(event, Finished):
                self._place(blob, event.result)
            if self.on_event is not None:
                self.on_event(PullEvent(blob.digest, event))

        return relay


def _nothing(blob: Blob) -> None:
    """No fetch lock to let go of."""


def _let_go(locks: Mapping[Blob, LockFile], blob: Blob) -> None:
    locks[blob].release()


def _auth_expired(error: BaseException | None) -> bool:
    """A 401 (token expired) or 403 (presigned URL expired), directly or as the last
    error of a part that ran out of retries."""
    return _refusal(error) is not None


def _refusal(error: BaseException | None) -> HTTPStatusError | None:
    inner = getattr(error, "last_error", None) or error
    if isinstance(inner, HTTPStatusError) and inner.status in (401, 403):
        return inner
    return None


def _still_refused(error: BaseException | None) -> AuthRefused:
    """A blob's GET refused again after every renewal: say what was tried, not "HTTP 401"."""
    refusal = _refusal(error)
    assert refusal is not None
    where = urlsplit(refusal.url).netloc
    return AuthRefused(refusal.url, f"{where} still answered {refusal.status} to the blob's GET "
                       f"after blobdl asked the registry {AUTH_ROUNDS} times for a fresh "
                       "location and token")  # fmt: skip
