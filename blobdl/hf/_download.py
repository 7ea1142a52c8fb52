"""``hf_download``: a Hugging Face repository (or some of its files) into huggingface_hub's
cache or a local folder, end to end.

Ask the Hub which commit the revision names and which files that commit holds (``_hub``),
choose the files asked for (``_repo``), leave out those already there, download the rest
under one connection budget (``download_many``: a big file is split into parts like any
blob; LFS files are checked by their sha256, git files by their blob sha1), move each into
place once checked, then link the snapshot and write the ref (``_cache``, ``_local_dir``).
Under ``HF_HUB_OFFLINE`` the Hub is never asked: what the disk already holds is the answer.
Two runs that share a folder take turns on each blob, on huggingface_hub's own lock files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..batch._items import BatchEvent
from ..batch._scheduler import BatchCallback, Item, download_many
from ..config import Settings, check_callback, check_path, check_text, overridden
from ..errors import (
    AuthRefused,
    BlobdlError,
    EntryNotFound,
    HTTPStatusError,
    IntegrityError,
    RepositoryNotFound,
    UsageError,
)
from ..events import DownloadResult, Event, Finished
from ..processes._signals import called
from ..store._destination import sync_dir_quietly
from ..store._lock import in_turns
from . import _env
from ._disk import leftovers, resume_older_partial
from ._hub import Hub
from ._layouts import Layout, folders, layout_for
from ._offline import on_disk
from ._repo import Repo, RepoFile, Wanted, check_revision, is_commit, parse_repo

log = logging.getLogger("blobdl")
_REFUSALS = frozenset({401, 403, 404})  # what the Hub answers a file it will not serve


class HfStarted(NamedTuple):
    repo: str
    revision: str  # as asked
    commit: str  # what it named
    files: int  # files chosen
    missing: int  # of those, files not there yet
    bytes_needed: int  # what their downloads add up to (a blob shared by files counts once)


class HfEvent(NamedTuple):
    path: str  # the file (the first of those that share its bytes) this engine event is about
    event: Event


HfCallback = Callable[[HfStarted | HfEvent], None]


@dataclasses.dataclass(frozen=True)
class HfFile:
    path: str  # in the repository
    size: int
    local_path: Path  # snapshots/<commit>/<path>, or DIR/<path> with a local dir
    download: DownloadResult | None  # None: it was there already (or another file's bytes)


@dataclasses.dataclass(frozen=True)
class HfResult:
    repo: str
    revision: str
    commit: str
    path: Path  # the snapshot folder, or the local dir
    files: tuple[HfFile, ...]
    elapsed: float

    @property
    def downloads(self) -> tuple[DownloadResult, ...]:
        """What this run fetched, one result per blob."""
        return tuple(f.download for f in self.files if f.download is not None)

    @property
    def bytes_fetched(self) -> int:
        return sum(d.bytes_fetched for d in self.downloads)

    @property
    def bytes_received(self) -> int:
        """Body bytes read off the wire, kept or not (see ``DownloadResult``)."""
        return sum(d.bytes_received for d in self.downloads)


@called()  # SIGTERM is Ctrl-C from the listing on, not only while files download
def hf_download(
    repo_id: str,
    paths: Sequence[str] = (),
    *,
    revision: str = "main",
    repo_type: str = "model",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    on_event: HfCallback | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> HfResult:
    """Download ``repo_id`` at ``revision`` (all its files, or ``paths``, then filtered by
    ``include``/``exclude`` globs) into huggingface_hub's cache (``cache_dir``, default
    ``$HF_HUB_CACHE``) or into ``local_dir``. The Hub is ``endpoint`` or ``$HF_ENDPOINT``;
    the token ``token``, ``$HF_TOKEN`` or huggingface_hub's token file (``token=False``:
    none at all, ``True``: the usual one, as huggingface_hub reads them). Every file shares
    ``connections`` connections, as in ``download_many``. With ``$HF_HUB_OFFLINE`` on, no
    request is sent: the files come from the disk if all are there, else
    ``OfflineNotCached``."""
    started = time.monotonic()
    check_path("cache_dir", cache_dir)
    check_path("local_dir", local_dir)
    check_callback("on_event", on_event)
    if isinstance(token, bool):  # huggingface_hub's: False sends none, True the usual one
        token = None if token else ""  # (a token given empty is none: ``_env.token``)
    # Read deep inside (stripped, cut): one that is no text failed there, a raw error.
    check_text("token", token, optional=True)
    check_text("endpoint", endpoint, optional=True)
    # blobdl's own content-addressed cache stays out of it: huggingface_hub's is the cache.
    base = dataclasses.replace(overridden(settings, overrides), cache_dir=None)
    repo = parse_repo(repo_id, repo_type)
    check_revision(revision)
    include, exclude = _patterns("include", include), _patterns("exclude", exclude)
    paths = _patterns("paths", paths, "a path in the repository or a list of them") or ()
    if cache_dir is not None and local_dir is not None:
        raise UsageError("give a cache dir or a local dir, not both")
    cache_dir, local_dir = folders(cache_dir, local_dir)
    wanted = Wanted(paths, include, exclude)
    offline = _env.offline()
    if offline is not None:  # not one request: the disk serves it all, or nothing is done
        held = on_disk(repo, revision, wanted, cache_dir, local_dir, offline)
        look = _Look(held.commit, held.layout, held.chosen, [], [], [])
        _warn_if_nothing_matched(repo, revision, wanted, look.chosen)
        _tell_started(on_event, repo, revision, look)
        return _result(repo, revision, look, {}, started)
    hub = Hub(_env.endpoint(given=endpoint), repo, _env.token(token), base)
    try:
        look = _look(hub, revision, wanted, cache_dir, local_dir)
    finally:
        hub.close()  # no socket of ours may be inherited by the downloads' processes
    layout, chosen = look.layout, look.chosen
    fetcher = _Fetcher(layout, hub, look.commit, base, on_event)
    try:  # from the first word out: a callback that raises (a Ctrl-C in it) is a stop too
        _warn_if_nothing_matched(repo, revision, wanted, chosen)
        _tell_started(on_event, repo, revision, look)
        fetched = fetcher.fetch_all(look.blobs)
        fetcher.tidy(chosen)
        for f in chosen:
            layout.link(f)
        layout.finish(revision)
    except BaseException:  # refused, failed or stopped: Ctrl-C too
        _left_after_failure(layout, chosen, wrote=fetcher.placed > 0)
        raise
    finally:
        layout.release()
    return _result(repo, revision, look, fetched, started)


def _left_after_failure(layout: Layout, chosen: list[RepoFile], *, wrote: bool) -> None:
    """What a failed run leaves: each chosen file whose bytes are here is linked into the
    snapshot, as huggingface_hub leaves the files a failed ``snapshot_download`` got (the
    tree record then tells it the snapshot is incomplete; no ref names it, the run did
    not finish); what the run made and nothing then needs goes (``abandon``): a run that
    wrote no file leaves no empty revision, a stopped one its partials, to resume."""
    with contextlib.suppress(BlobdlError, OSError):  # best effort: the failure is what is said
        for f in chosen:
            if layout.have(f):
                layout.link(f)
    layout.abandon(wrote)


def _tell_started(on_event: HfCallback | None, repo: Repo, revision: str, look: _Look) -> None:
    if on_event is not None:
        needed = sum(f.size for f in look.to_fetch)
        chosen, missing = len(look.chosen), len(look.missing)
        on_event(HfStarted(str(repo), revision, look.commit, chosen, missing, needed))


def _warn_if_nothing_matched(
    repo: Repo, revision: str, wanted: Wanted, chosen: Sequence[RepoFile]
) -> None:
    """Patterns that leave no file (a typo: ``*.safetensor``) are said, as huggingface_hub
    warns "No files matched": the run succeeds with nothing, which a summary line (or none,
    with ``-q``) would not make plain."""
    patterns = (("include", wanted.include), ("exclude", wanted.exclude))
    given = [(name, p) for name, p in patterns if p is not None]
    if chosen or not given:
        return
    said = ", ".join(f"{name}={list(globs)!r}" for name, globs in given)
    log.warning("no file of %s at %s matches %s", repo, revision, said)


def _result(
    repo: Repo, revision: str, look: _Look, fetched: dict[str, DownloadResult], started: float
) -> HfResult:
    layout = look.layout
    files = tuple(
        HfFile(f.path, f.size, layout.file_path(f), fetched.get(f.path)) for f in look.chosen
    )
    elapsed = time.monotonic() - started
    return HfResult(str(repo), revision, look.commit, layout.where, files, elapsed)


class _Look(NamedTuple):
    """What the Hub and the disk say before anything is downloaded."""

    commit: str
    layout: Layout
    chosen: list[RepoFile]  # the files asked for
    missing: list[RepoFile]  # of those, the ones not there yet
    blobs: list[RepoFile]  # one file for each blob they need (the first that has it)
    to_fetch: list[RepoFile]  # of those, the blobs not on disk either


def _look(
    hub: Hub,
    revision: str,
    wanted: Wanted,
    cache_dir: str | os.PathLike[str] | None,
    local_dir: str | os.PathLike[str] | None,
) -> _Look:
    """The commit, its files, the ones asked for and what they lack; the access to their
    bytes is checked now, so a gated or private repository is one clear error, not one per
    file later."""
    commit = revision if is_commit(revision) else hub.commit(revision)
    listing = hub.files(commit)
    chosen = wanted.pick(listing, hub.repo, revision)
    layout = layout_for(hub.repo, commit, cache_dir, local_dir)
    try:
        layout.prepare(listing, chosen)
        missing = [f for f in chosen if not layout.present(f)]
        blobs = list({layout.key(f): f for f in reversed(missing)}.values())[::-1]
        to_fetch = [f for f in blobs if not layout.have(f)]
        if to_fetch:
            hub.check_access(commit, to_fetch[0].path)
    except BaseException:  # a gated repository lists its files to anyone: refused here
        layout.abandon(wrote=False)
        raise
    return _Look(commit, layout, chosen, missing, blobs, to_fetch)


class _Fetcher:
    def __init__(
        self, layout: Layout, hub: Hub, commit: str, settings: Settings, on_event: HfCallback | None
    ) -> None:
        self.layout, self.hub, self.commit, self.settings = layout, hub, commit, settings
        self.on_event = on_event
        self.fetched: dict[str, DownloadResult] = {}  # by the path of the file downloaded
        self.placed = 0  # files moved into place, fetched or left behind by a stopped run

    def fetch_all(self, blobs: list[RepoFile]) -> dict[str, DownloadResult]:
        """Fetch what is missing, taking turns with any other run on each blob (claimed in
        groups when they are more than a process may hold open: the largest in the first)."""
        layout = self.layout
        in_turns(
            sorted(blobs, key=lambda f: -f.size),
            lambda f, wait: layout.claim(f, wait=wait),
            lambda f: not layout.have(f),
            self._fetch,
        )
        return self.fetched

    def tidy(self, files: list[RepoFile]) -> None:
        """What a stopped run left for a blob that is here now (fetched since by another
        run, or by huggingface_hub) goes: it could be most of a 10 GB shard. Removed under
        the blob's claim, so never while a run is downloading it; a held one is left."""
        for f in files:
            left = leftovers(self.layout.staging(f))
            if not left:
                continue
            with self.layout.claim(f, wait=False) as ours:
                if ours and self.layout.have(f):
                    for path in left:
                        with contextlib.suppress(OSError):  # best-effort: the run succeeded
                            path.unlink(missing_ok=True)

    def _fetch(self, files: list[RepoFile]) -> None:
        """Download ``files`` under one budget and move each into place once checked; the
        ones that succeed stay even if another fails (the first failure is raised)."""
        # Largest first, each with its size: a shard is known to be large, so it skips the
        # batch's small-item seats (no first GET thrown away) and claims its lanes at once.
        todo = sorted((f for f in files if not self._left_behind(f)), key=lambda f: -f.size)
        if not todo:
            return
        for f in todo:
            resume_older_partial(self.layout.staging(f))
        url = self.hub.resolve_url
        items = [
            Item(url(self.commit, f.path), str(self.layout.staging(f)), f.digest,
                 self.hub.auth_headers(), f.size)
            for f in todo
        ]  # fmt: skip
        # One budget, --connections, for every file (the Hub and its storage are two hosts;
        # either may take all of it), and each file may use all of it too.
        whole = self.settings.connections
        tell = _relayed(self.on_event, todo)
        errors: dict[int, BlobdlError] = {}
        tried: set[int] = set()
        placed: set[Path] = set()

        def place(index: int, result: DownloadResult) -> None:
            if index in tried:  # once: a stop may tell a file's ``Finished`` again
                return
            tried.add(index)
            try:
                placed.add(self.layout.place(todo[index], items[index].url, engine_checked=True))
            except BlobdlError as exc:
                errors[index] = exc
                return
            self.placed += 1
            self.fetched[todo[index].path] = result

        def heard(told: BatchEvent) -> None:
            # Each file is placed as it finishes, not once all have: one a stop (Ctrl-C, a
            # failure) leaves staged is a name no cache tool of huggingface_hub's knows.
            if isinstance(told.event, Finished):
                place(told.item, told.event.result)
            if tell is not None:
                tell(told)

        try:
            results = download_many(items, max_connections=whole, per_host=whole,
                                    settings=self.settings, on_event=heard)  # fmt: skip
            for index, outcome in enumerate(results):
                if outcome.error is not None:
                    errors.setdefault(index, outcome.error)
                elif outcome.result is not None:
                    place(index, outcome.result)
        finally:
            for folder in placed:  # their renames durable, once a folder, before any link
                sync_dir_quietly(folder)
        if errors:
            first = min(errors)
            raise self._worded(todo[first], errors[first])

    def _worded(self, f: RepoFile, error: BlobdlError) -> BlobdlError:
        """A file the Hub itself refused (the token revoked, the access withdrawn since the
        listing) is said as a refusal of the listing is, in the Hub's words and with what
        to do (``Hub.check_access`` asks again, whose answer ``Hub`` words): the engine's
        error holds the status and the body, not the Hub's ``X-Error-Code``. A refusal by
        the storage, or an answer that no longer refuses, keeps the engine's words."""
        if not isinstance(error, HTTPStatusError) or error.status not in _REFUSALS:
            return error
        if error.redirected or not self.hub.on_hub(error.url):
            return error
        try:
            self.hub.check_access(self.commit, f.path)
        except (RepositoryNotFound, AuthRefused, EntryNotFound) as said:
            return said
        except BlobdlError:
            pass
        return error

    def _left_behind(self, f: RepoFile) -> bool:
        """A download that finished but was not moved into place (the run stopped between
        the two) is checked and moved now; a bad one (another revision's, in a local dir)
        is removed and fetched again."""
        staged = self.layout.staging(f)
        if not staged.exists():
            return False
        try:
            sync_dir_quietly(self.layout.place(f, str(staged), engine_checked=False))
        except IntegrityError:
            return False
        self.placed += 1
        return True


def _relayed(tell: HfCallback | None, files: list[RepoFile]) -> BatchCallback | None:
    """The batch's events, told as the file's (the batch numbers them as ``files``)."""
    if tell is None:
        return None
    return lambda batch_event: tell(HfEvent(files[batch_event.item].path, batch_event.event))


def _patterns(
    name: str, given: object, what: str = "a glob or a list of globs"
) -> tuple[str, ...] | None:
    """Globs (or paths) as huggingface_hub takes them: one string is one (not its
    characters)."""
    if given is None:
        return None
    if isinstance(given, str):
        return (given,)
    if not isinstance(given, (list, tuple, set, frozenset)) or not all(
        isinstance(g, str) for g in given
    ):
        raise UsageError(f"{name} must be {what}")
    return tuple(given)
