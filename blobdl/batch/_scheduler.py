"""Many downloads under one connection budget: ``download_many`` and manifests.

The scheduler runs in the calling process and stays single-threaded. For each item it
probes the remote (so it knows how many parts the blob has), grants it connections from
the global budget — as many as it has parts, up to the per-download ``connections``, the
free budget and the per-host cap — and forks a child that runs that one download as its
own coordinator with exactly that many connections. Children report events and their
result through a pipe. One item failing does not stop the others.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .._redact import redact_url
from ..config import Settings, parse_header
from ..engine._download import Downloader, default_name, name_from_url
from ..engine._plan import download_part_count
from ..errors import BlobdlError, Interrupted, UsageError
from ..events import DownloadResult, Event, Failed
from ..http._probe import resolve
from ..http._remote import Remote
from ..http._urls import check_url, lift_userinfo
from ..processes import _clean_process
from ..processes._signals import Interrupts
from ..processes._spawn import start
from ..store._cache import entry_path as cache_entry
from ..store._digest import parse_digest

# The batch's vocabulary lives in _items (the cluster uses it too); re-exported from here.
from ._items import BatchCallback as BatchCallback
from ._items import BatchEvent as BatchEvent
from ._items import Item as Item
from ._items import ItemResult as ItemResult
from ._items import _first_of_each, _inside
from ._items import confine as confine


def parse_manifest(text: str | bytes, base_dir: str | os.PathLike[str] | None = None) -> list[Item]:
    """One item per line: ``URL [PATH] [sha256:HEX]`` or a JSON object with the fields
    ``url``, ``path``, ``digest`` (strings), ``headers`` (a {name: value} map of strings).
    Blank lines and lines starting with ``#`` are skipped. Anything else is a usage error
    naming its line: bytes that are not UTF-8, a NUL, a JSON field that is unknown, repeated
    or of the wrong type. With ``base_dir``, a path that would lead outside it is one too
    (the paths are returned as given)."""
    items = []
    for number, line in enumerate(_manifest_text(text).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if "\0" in line:
                raise ValueError("holds a NUL byte")
            item = _json_item(line) if line.startswith("{") else _plain_item(line)
            if base_dir is not None and item.path is not None:
                confine(Path(base_dir), item.path)
            items.append(item)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise UsageError(f"manifest line {number}: {exc}") from None
    return items


def _manifest_text(data: str | bytes) -> str:
    """A manifest's text: bytes must be UTF-8 (a byte order mark is allowed)."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"manifest line {line}: not UTF-8 text") from None


def _plain_item(line: str) -> Item:
    words = line.split()
    if len(words) > 3:
        raise ValueError(f"expected 'URL [PATH] [sha256:HEX]', got {len(words)} fields")
    url, rest = words[0], words[1:]
    digest = next((w for w in rest if w.lower().startswith("sha256:")), None)
    paths = [w for w in rest if w is not digest]
    return _checked(Item(url, paths[0] if paths else None, digest))


_FIELDS = ("url", "path", "digest", "headers")


def _json_item(line: str) -> Item:
    record = json.loads(line, object_pairs_hook=_unique_fields)
    unknown = sorted(set(record) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (the fields are {', '.join(_FIELDS)})")
    url, path, digest = (_string(record, name) for name in ("url", "path", "digest"))
    if url is None:
        raise ValueError("the field 'url' is missing")
    headers = record.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise ValueError("the field 'headers' must be an object of strings")
    named = tuple(parse_header(f"{k}: {_header_value(k, v)}") for k, v in (headers or {}).items())
    return _checked(Item(url, path, digest, named))


def _unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (parsers differ on which repeat wins)."""
    record = dict(pairs)
    if len(record) != len(pairs):
        repeated = next(k for k in record if [p[0] for p in pairs].count(k) > 1)
        raise ValueError(f"the field {repeated!r} is given twice")
    return record


def _string(record: dict[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is not None and not (isinstance(value, str) and value):
        raise ValueError(f"the field {name!r} must be a non-empty string")
    if value is not None and "\0" in value:
        raise ValueError(f"the field {name!r} holds a NUL byte")
    return value


def _header_value(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"the header {name!r} must have a string value")
    return value


def _checked(item: Item) -> Item:
    check_url(item.url)  # a bad URL is a usage error before anything starts
    if item.digest is not None:
        parse_digest(item.digest)
    return item


def _host(url: str) -> str:
    """The host a URL's connections count against (checked: a bad URL is a UsageError)."""
    check_url(url)
    return urlsplit(url).hostname or ""


def _normalized(item: Item) -> Item:
    """The item as the scheduler works with it: ``user:pass@`` moved out of its URL into an
    Authorization header, its digest parsed once (to bare hex; a bad one is a UsageError)."""
    url, headers = lift_userinfo(item.url, item.headers)
    digest = parse_digest(item.digest) if item.digest is not None else None
    return item._replace(url=url, headers=headers, digest=digest)


class _Running(NamedTuple):
    item: int
    proc: BaseProcess
    conn: Connection
    host: str
    granted: int


def download_many(
    items: Iterable[Item | str],
    *,
    max_connections: int = 16,
    per_host: int = 8,
    on_event: BatchCallback | None = None,
    settings: Settings | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    cluster: Any = None,
    **overrides: Any,
) -> list[ItemResult]:
    """Download every item sharing ``max_connections`` connections (at most ``per_host``
    to one host); return one result per item, in order. The same URL and destination
    listed twice is downloaded once.

    With ``base_dir`` every item's path is taken relative to it and must stay inside it
    (no absolute path, no ``..``, no symbolic link leading out: a UsageError names the
    item), and an item without a path gets its name from the server inside it."""
    if max_connections < 1 or per_host < 1:
        raise UsageError("max_connections and per_host must be at least 1")
    base = Downloader(settings, **overrides).settings
    given = [Item(i) if isinstance(i, str) else i for i in items]
    batch, where = [_normalized(item) for item in given], None
    if cluster is not None:
        from ._cluster import download_many_on  # only with a cluster: it needs distributed

        spread = download_many_on(cluster, batch, base, max_connections, per_host, on_event,
                                  None if base_dir is None else os.fspath(base_dir))  # fmt: skip
        return [r._replace(item=item) for r, item in zip(spread, given, strict=True)]
    if base_dir is not None:
        where = Path(base_dir)
        if not where.is_dir():
            raise UsageError(f"base directory {str(where)!r} is not a directory")
        batch = [_inside(where, item, f"item {n}") for n, item in enumerate(batch)]
    if _clean_process.threaded():  # never fork a threaded process: a clean one schedules instead
        _first_of_each(batch)  # usage errors from the calling thread, before any process
        args = (batch, base, max_connections, per_host, where)
        results = _clean_process.call(_many_here, args, on_event)
    else:
        results = _Scheduler(batch, base, max_connections, per_host, on_event, where).run()
    return [r._replace(item=item) for r, item in zip(results, given, strict=True)]


def _many_here(
    batch: list[Item],
    settings: Settings,
    max_connections: int,
    per_host: int,
    base_dir: Path | None,
    on_event: BatchCallback | None,
) -> list[ItemResult]:
    """``download_many`` in the clean process ``_clean_process`` started for a threaded caller."""
    return _Scheduler(batch, settings, max_connections, per_host, on_event, base_dir).run()


class _Scheduler:
    def __init__(
        self,
        items: list[Item],
        settings: Settings,
        max_connections: int,
        per_host: int,
        on_event: BatchCallback | None,
        base_dir: Path | None = None,
    ) -> None:
        self.items, self.settings, self.tell = items, settings, on_event
        self.base_dir = base_dir  # where items without a path are named
        self.max_connections, self.per_host = max_connections, per_host
        self.results: dict[int, ItemResult] = {}
        self.remotes: dict[int, Remote] = {}
        self.running: list[_Running] = []
        self.first = _first_of_each(items)

    def run(self) -> list[ItemResult]:
        todo = [i for i in range(len(self.items)) if self.first[i] == i]
        with Interrupts() as interrupts:
            try:
                while todo or self.running:
                    interrupts.check()
                    todo = self._launch_what_fits(todo, interrupts)
                    self._collect(interrupts)
                interrupts.check()  # a signal during the last probe is not lost
            except Interrupted as exc:
                self._stop_children(exc.signum)
                raise
            except BaseException:  # a raising callback, say: never leave children running
                self._stop_children(signal.SIGTERM)
                raise
        return [self._result_for(i) for i in range(len(self.items))]

    def _result_for(self, index: int) -> ItemResult:
        """A duplicate shares its first's outcome, but fetched nothing itself."""
        first = self.results[self.first[index]]
        result = first.result
        if index != self.first[index] and result is not None:
            result = dataclasses.replace(
                result, bytes_fetched=0, bytes_received=0, retries=0, steals=0
            )
        return ItemResult(self.items[index], result, first.error)

    # --- launching ------------------------------------------------------------------------

    def _launch_what_fits(self, todo: list[int], interrupts: Interrupts) -> list[int]:
        """Start items in order while the budget allows; return those still waiting."""
        waiting: list[int] = []
        for position, index in enumerate(todo):
            interrupts.check()  # probes block: look for Ctrl-C between them
            if self._free() == 0:
                return waiting + todo[position:]
            if not self._start(index):
                waiting.append(index)
        return waiting

    def _start(self, index: int) -> bool:
        """Probe and fork the item; False if its host has no connection to spare."""
        item = self.items[index]
        settings = self._settings_for(item)
        cached = self._cached(item, settings)  # a cache hit needs no probe
        try:
            host = _host(item.url)
            if index not in self.remotes and self._free_for(host) == 0:
                return False  # the probe is a connection too: wait until its host has one spare
            remote = None if cached else self.remotes.get(index) or resolve(item.url, settings)
            item = self._named(index, item, remote)
        except BlobdlError as exc:  # failed before any child could report it
            if self.tell is not None:
                failed = Failed(redact_url(item.url), item.path or "", str(exc), exc.exit_code)
                self.tell(BatchEvent(index, failed))
            self._store(index, ItemResult(item, None, exc))
            return True
        if remote is None:
            # A hit costs no connection, unless its entry fails its check and it fetches
            # after all: then it must stay within a grant like any other item.
            wanted = settings.connections
        else:
            self.remotes[index] = remote  # probed once, even if it has to wait for its host
            host = _host(remote.final_url)
            wanted = self._wanted(remote, settings, hashing=item.digest is not None)
        granted = min(wanted, self._free(), self._free_for(host))
        if granted == 0:
            return False
        settings = dataclasses.replace(
            settings, connections=granted, limit_rate=self._rate_share(settings, granted)
        )
        self._fork(index, item, remote, settings, host, granted)
        return True

    def _named(self, index: int, item: Item, remote: Remote | None) -> Item:
        """With a base directory, an item without a path is named inside it (the name the
        server gives, as a download without a path would use; from the URL for a cache hit)."""
        if self.base_dir is None or item.path is not None:
            return item
        name = default_name(remote) if remote is not None else name_from_url(item.url)
        return _inside(self.base_dir, item._replace(path=name), f"item {index}")

    def _cached(self, item: Item, settings: Settings) -> bool:
        if not (settings.cache_dir and item.digest):
            return False
        return cache_entry(Path(settings.cache_dir), item.digest).is_file()

    def _fork(
        self,
        index: int,
        item: Item,
        remote: Remote | None,
        settings: Settings,
        host: str,
        granted: int,
    ) -> None:
        args = (item, remote, settings)
        # Not a daemon: it forks workers of its own.
        name = f"blobdl-item-{index}"
        proc, receiver = start(_item_main, args, name=name, daemon=False, coordinator=True)
        self.running.append(_Running(index, proc, receiver, host, granted))

    def _settings_for(self, item: Item) -> Settings:
        if not item.headers:
            return self.settings
        return dataclasses.replace(self.settings, headers=self.settings.headers + item.headers)

    def _wanted(self, remote: Remote, settings: Settings, *, hashing: bool) -> int:
        """Connections the item can use: one per part (planned as its download will plan
        them), up to its ``connections``."""
        parts = download_part_count(remote.size, remote.ranges, settings, hashing=hashing)
        return max(1, min(parts, settings.connections))

    def _rate_share(self, settings: Settings, granted: int) -> int | None:
        """--limit-rate is for the whole batch: an item gets the share of its connections."""
        if settings.limit_rate is None:
            return None
        return max(1, settings.limit_rate * granted // self.max_connections)

    def _free(self) -> int:
        return self.max_connections - sum(r.granted for r in self.running)

    def _free_for(self, host: str) -> int:
        return self.per_host - sum(r.granted for r in self.running if r.host == host)

    # --- collecting -----------------------------------------------------------------------

    def _collect(self, interrupts: Interrupts) -> None:
        """Relay events until at least one item ends (or a signal arrives)."""
        if not self.running:
            return
        by_conn = {r.conn: r for r in self.running}
        for ready in wait([*by_conn, *interrupts.waitables()]):
            if ready in by_conn:
                self._receive(by_conn[ready])

    def _receive(self, running: _Running) -> None:
        try:
            kind, payload = running.conn.recv()
        except (EOFError, OSError):
            running.proc.join()
            crash = BlobdlError(f"download process died (exit code {running.proc.exitcode})")
            kind, payload = "done", crash
        if kind == "event":
            if self.tell is not None:
                self.tell(BatchEvent(running.item, payload))
            return
        running.proc.join()
        running.conn.close()
        self.running.remove(running)
        item = self.items[running.item]
        if isinstance(payload, DownloadResult):
            self._store(running.item, ItemResult(item, payload, None))
        else:
            self._store(running.item, ItemResult(item, None, payload))

    def _store(self, index: int, result: ItemResult) -> None:
        self.results[index] = result

    def _stop_children(self, signum: int) -> None:
        """Pass the signal on; each child saves its state and exits; wait for all.

        Their pipes are drained meanwhile: a child stopping sends a last Progress event,
        which for thousands of parts is more than a pipe holds, and a child blocked on a
        full pipe never exits (its events are dropped: the batch is being abandoned)."""
        for running in self.running:
            if running.proc.pid is not None:
                os.kill(running.proc.pid, signum)
        pipes = {r.conn for r in self.running}
        sentinels = {r.proc.sentinel for r in self.running}
        while sentinels:
            for ready in wait([*pipes, *sentinels]):
                if isinstance(ready, int):  # that child has exited
                    sentinels.discard(ready)
                elif isinstance(ready, Connection) and not _discard(ready):
                    pipes.discard(ready)
        for running in self.running:
            running.proc.join()
            running.conn.close()
        self.running.clear()


def _discard(conn: Connection) -> bool:
    """Read and drop one message; False at EOF."""
    try:
        conn.recv()
    except (EOFError, OSError):
        return False
    return True


def _tell_parent(conn: Connection) -> Callable[[Event], None]:
    def send(event: Event) -> None:
        conn.send(("event", event))

    return send


def _item_main(item: Item, remote: Remote | None, settings: Settings, conn: Connection) -> None:
    """One download, in its own process: the coordinator of its own workers (started as
    one: it handles SIGINT/SIGTERM itself, saving its state)."""
    outcome: DownloadResult | BlobdlError
    try:
        path = Path(item.path) if item.path else None
        tell = _tell_parent(conn)
        downloader = Downloader(settings)
        if remote is None:  # a cache hit: no probe, no network
            outcome = downloader.download(item.url, path, digest=item.digest, on_event=tell)
        else:
            outcome = downloader._download_resolved(remote, path, digest=item.digest, on_event=tell)
    except BlobdlError as exc:
        outcome = exc
    except KeyboardInterrupt:
        outcome = Interrupted(signal.SIGINT)
    conn.send(("done", outcome))
    conn.close()
