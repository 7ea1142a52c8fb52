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
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from . import _isolate
from ._api import Downloader
from ._cache import entry_path as cache_entry
from ._digest import parse_digest
from ._events import DownloadResult, Event, Failed
from ._http import Remote, resolve
from ._plan import plan
from ._signals import Interrupts, child_signals
from .config import Settings, parse_header
from .errors import BlobdlError, Interrupted, UsageError


class Item(NamedTuple):
    """One blob to fetch."""

    url: str
    path: str | None = None  # destination (None: a safe name from the server or URL)
    digest: str | None = None  # sha256:<hex> the bytes must have
    headers: tuple[tuple[str, str], ...] = ()  # extra request headers for this item


class ItemResult(NamedTuple):
    item: Item
    result: DownloadResult | None  # None when it failed
    error: BlobdlError | None  # None when it succeeded

    @property
    def ok(self) -> bool:
        return self.error is None


class BatchEvent(NamedTuple):
    item: int  # index of the item in the list given
    event: Event


BatchCallback = Callable[[BatchEvent], None]


def parse_manifest(text: str) -> list[Item]:
    """One item per line: ``URL [PATH] [sha256:HEX]`` or a JSON object with the fields
    ``url``, ``path``, ``digest``, ``headers`` (a {name: value} map). Blank lines and
    lines starting with ``#`` are skipped."""
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            items.append(_json_item(line) if line.startswith("{") else _plain_item(line))
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"manifest line {number}: {exc}") from None
    return items


def _plain_item(line: str) -> Item:
    words = line.split()
    if len(words) > 3:
        raise ValueError(f"expected 'URL [PATH] [sha256:HEX]', got {len(words)} fields")
    url, rest = words[0], words[1:]
    digest = next((w for w in rest if w.lower().startswith("sha256:")), None)
    paths = [w for w in rest if w is not digest]
    return _checked(Item(url, paths[0] if paths else None, digest))


def _json_item(line: str) -> Item:
    record = json.loads(line)
    headers = tuple(parse_header(f"{k}: {v}") for k, v in (record.get("headers") or {}).items())
    return _checked(Item(record["url"], record.get("path"), record.get("digest"), headers))


def _checked(item: Item) -> Item:
    if item.digest is not None:
        parse_digest(item.digest)
    return item


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
    **overrides: Any,
) -> list[ItemResult]:
    """Download every item sharing ``max_connections`` connections (at most ``per_host``
    to one host); return one result per item, in order. The same URL and destination
    listed twice is downloaded once."""
    if max_connections < 1 or per_host < 1:
        raise UsageError("max_connections and per_host must be at least 1")
    base = Downloader(settings, **overrides).settings
    batch = [Item(i) if isinstance(i, str) else i for i in items]
    if _isolate.threaded():  # never fork a threaded process: a clean one schedules instead
        _first_of_each(batch)  # usage errors from the calling thread, before any process
        return _isolate.call(_many_here, (batch, base, max_connections, per_host), on_event)
    return _Scheduler(batch, base, max_connections, per_host, on_event).run()


def _many_here(
    batch: list[Item],
    settings: Settings,
    budget: int,
    per_host: int,
    on_event: BatchCallback | None,
) -> list[ItemResult]:
    """``download_many`` in the clean process ``_isolate`` started for a threaded caller."""
    return _Scheduler(batch, settings, budget, per_host, on_event).run()


class _Scheduler:
    def __init__(
        self,
        items: list[Item],
        settings: Settings,
        budget: int,
        per_host: int,
        on_event: BatchCallback | None,
    ) -> None:
        self.items, self.settings, self.on_event = items, settings, on_event
        self.budget, self.per_host = budget, per_host
        self.results: dict[int, ItemResult] = {}
        self.remotes: dict[int, Remote] = {}
        self.running: list[_Running] = []
        self.context = multiprocessing.get_context("fork")
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
            result = dataclasses.replace(result, bytes_fetched=0, retries=0, steals=0)
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
        if self._cached(item, settings):  # served from the cache: no probe, no connection
            self._fork(index, item, None, settings, "", 0)
            return True
        if index not in self.remotes and self._free_for(urlsplit(item.url).hostname or "") == 0:
            return False  # the probe is a connection too: wait until its host has one spare
        try:
            remote = self.remotes.get(index) or resolve(item.url, settings)
        except BlobdlError as exc:  # failed at the probe: no child will report it
            if self.on_event is not None:
                failed = Failed(item.url, item.path or "", str(exc), exc.exit_code)
                self.on_event(BatchEvent(index, failed))
            self._done(index, ItemResult(item, None, exc))
            return True
        self.remotes[index] = remote  # probed once, even if it has to wait for its host
        host = urlsplit(remote.final_url).hostname or ""
        granted = min(self._wanted(remote, settings), self._free(), self._free_for(host))
        if granted == 0:
            return False
        settings = dataclasses.replace(
            settings, connections=granted, limit_rate=self._rate_share(settings, granted)
        )
        self._fork(index, item, remote, settings, host, granted)
        return True

    def _cached(self, item: Item, settings: Settings) -> bool:
        if not (settings.cache_dir and item.digest):
            return False
        return cache_entry(Path(settings.cache_dir), parse_digest(item.digest)).is_file()

    def _fork(
        self,
        index: int,
        item: Item,
        remote: Remote | None,
        settings: Settings,
        host: str,
        granted: int,
    ) -> None:
        receiver, sender = self.context.Pipe(duplex=False)
        proc = self.context.Process(
            target=_item_main,
            args=(index, item, remote, settings, sender),
            name=f"blobdl-item-{index}",
            daemon=False,  # it forks workers of its own
        )
        proc.start()
        sender.close()
        self.running.append(_Running(index, proc, receiver, host, granted))

    def _settings_for(self, item: Item) -> Settings:
        if not item.headers:
            return self.settings
        return dataclasses.replace(self.settings, headers=self.settings.headers + item.headers)

    def _wanted(self, remote: Remote, settings: Settings) -> int:
        parts = len(plan(remote.size, settings)) if remote.ranges and remote.size else 1
        return max(1, min(parts, settings.connections))

    def _rate_share(self, settings: Settings, granted: int) -> int | None:
        """--limit-rate is for the whole batch: an item gets the share of its connections."""
        if settings.limit_rate is None:
            return None
        return max(1, settings.limit_rate * granted // self.budget)

    def _free(self) -> int:
        return self.budget - sum(r.granted for r in self.running)

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
            if self.on_event is not None:
                self.on_event(BatchEvent(running.item, payload))
            return
        running.proc.join()
        running.conn.close()
        self.running.remove(running)
        item = self.items[running.item]
        if isinstance(payload, DownloadResult):
            self._done(running.item, ItemResult(item, payload, None))
        else:
            self._done(running.item, ItemResult(item, None, payload))

    def _done(self, index: int, result: ItemResult) -> None:
        self.results[index] = result

    def _stop_children(self, signum: int) -> None:
        """Pass the signal on; each child saves its state and exits; wait for all."""
        for running in self.running:
            if running.proc.pid is not None:
                os.kill(running.proc.pid, signum)
        for running in list(self.running):
            running.proc.join()
            running.conn.close()
        self.running.clear()


def _first_of_each(items: list[Item]) -> list[int]:
    """For each item, the index of the first item it duplicates (itself if none).

    Only an identical request is a duplicate: same URL, destination, digest and headers.
    The same destination asked for with anything else different is a usage error: one of
    the two would silently overwrite the other."""
    seen: dict[tuple[object, ...], int] = {}
    claimed: dict[str, int] = {}
    firsts = []
    for index, item in enumerate(items):
        where = os.path.abspath(item.path) if item.path else None
        digest = parse_digest(item.digest) if item.digest else None
        first = seen.setdefault((item.url, where, digest, item.headers), index)
        if where is not None and claimed.setdefault(where, first) != first:
            raise UsageError(f"items {claimed[where]} and {index} both write {item.path}")
        firsts.append(first)
    return firsts


def _relay(conn: Connection) -> Callable[[Event], None]:
    def send(event: Event) -> None:
        conn.send(("event", event))

    return send


def _item_main(
    index: int, item: Item, remote: Remote | None, settings: Settings, conn: Connection
) -> None:
    """One download, in its own process: the coordinator of its own workers."""
    child_signals()
    # A coordinator again: it handles SIGINT/SIGTERM itself (saving state) once running.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    outcome: DownloadResult | BlobdlError
    try:
        path = Path(item.path) if item.path else None
        relay = _relay(conn)
        downloader = Downloader(settings)
        if remote is None:  # a cache hit: no probe, no network
            outcome = downloader.download(item.url, path, digest=item.digest, on_event=relay)
        else:
            outcome = downloader.download_resolved(remote, path, digest=item.digest, on_event=relay)
    except BlobdlError as exc:
        outcome = exc
    except KeyboardInterrupt:
        outcome = Interrupted(signal.SIGINT)
    conn.send(("done", outcome))
    conn.close()
