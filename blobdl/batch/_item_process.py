"""The large items' own processes, and both ends of their pipes.

``LargeItems`` is the scheduler's handle on them: it forks an item's child once its lanes
and its share of the rate are in a slot of the batch's ``Shares`` (rewritten as items start
and end), and frees the slot when the child has ended. Once the scheduler's process has
a thread (a callback started one: a tqdm bar's monitor, say), it forks no more: the child
is a fresh interpreter instead (``_spawn.start_clean``), handed the ``Shares`` by their
descriptor (``clean_item_main``). ``item_main`` is what the child runs:
the item as one download, the coordinator of its own workers. The child sends each event as
``("event", event)`` and, last, ``("done", outcome)``; an exec'd one also sends blobdl's log
records, ``("log", record)``, which a forked one writes through the handlers it inherited.
``receive`` is the scheduler's read of that, where a pipe at its end (the child died before
its outcome) reads ``("died", None)``.

The batch counts an item's lanes at one host, its URL's at first. A child that probes its
item itself (one said to be large) asks before its probe's request to another host (a
redirect to a CDN), with ``("hop", host)``, and waits for the scheduler's answer (``go``,
its lanes counted there now), holding nothing meanwhile, as a seat asks (``_pool._Hop``):
so the lanes its coordinator then opens there are counted there. Its coordinator's refresh
(an expired signed URL resolved again) asks as its probe does, and so does that of an item
a seat probed, counted at first where that probe's redirects led.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from ..config import Settings
from ..engine._download import Downloader
from ..engine._share import Share, Shares
from ..errors import BlobdlError, Interrupted
from ..events import DownloadResult, Event
from ..http._pool import prepare_tls
from ..http._remote import Remote
from ..processes._child import Child, Execed
from ..processes._clean_child import forward_logs
from ..processes._signals import decided, held, interrupted
from ..processes._spawn import start, start_watched, threaded
from ._items import Item


class Running(NamedTuple):
    """A large item, fetched by a child of its own."""

    item: int
    proc: Child
    conn: Connection
    slot: int  # its slot in the batch's Shares


class LargeItems:
    """The children running large items, by item, and their slots of the batch's ``Shares``
    (at most one each). The ``Shares`` hold a slot for each of the pool's ``seats`` too,
    after the items' (``seat_shares``): there a seat says whom it receives from."""

    def __init__(self, slots: int, seats: int = 0) -> None:
        self.shares = Shares(slots + seats)
        self.free = list(range(slots))
        self.seat_shares = [self.shares.share(slots + seat) for seat in range(seats)]
        self.running: dict[int, Running] = {}

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def start(
        self,
        index: int,
        item: Item,
        remote: Remote | None,
        settings: Settings,
        rate: int | None,
        lanes: int,
    ) -> Running:
        """Start the child for item ``index`` (forked, or exec'd once this process has a
        thread), its lanes and rate in its slot before it starts."""
        slot = self.free[-1]
        self.shares.set(slot, rate, lanes)
        proc: Child
        if threaded() and self.shares.fd is not None:  # (no memory file at all: forked)
            proc, receiver = self._exec(item, remote, settings, slot)
        else:
            if remote is not None:  # the context its probe (a seat's) met: built here once,
                # every item's child inherits it, not loading the CA store again (~40 ms each)
                with contextlib.suppress(BlobdlError):  # the child fails on it, as its own
                    prepare_tls(settings, remote.final_url)
            args = (item, remote, settings, self.shares.share(slot))
            # Not a daemon: it forks workers of its own.
            name = f"blobdl-item-{index}"
            # Duplex: the child asks to move its lanes to another host (``hop``), and waits.
            proc, receiver = start(
                item_main, args, name=name, daemon=False, duplex=True, coordinator=True
            )
        self.free.pop()
        self.running[index] = Running(index, proc, receiver, slot)
        return self.running[index]

    def _exec(
        self, item: Item, remote: Remote | None, settings: Settings, slot: int
    ) -> tuple[Execed, Connection]:
        """The child as a fresh interpreter, given its job and the ``Shares``' descriptor.
        One that dies before it reads its job is heard as any child that died: its pipe
        reads EOF."""
        assert self.shares.fd is not None
        proc, conn = start_watched(clean_item_main, keep=(self.shares.fd,))
        level = logging.getLogger("blobdl").getEffectiveLevel()
        job = (item, remote, settings, self.shares.slots, slot, self.shares.fd, level)
        with contextlib.suppress(OSError):
            conn.send(job)
        return proc, conn

    def go(self, index: int) -> None:
        """Tell item ``index``'s child that its lanes are counted where it asked (``hop``):
        its probe goes on there."""
        with contextlib.suppress(OSError):  # it died meanwhile: its pipe's end says so
            self.running[index].conn.send(None)

    def close(self) -> None:
        """The batch is over: the ``Shares``' descriptor goes."""
        self.shares.close()

    def share(self, rates: dict[int, int], granted: Callable[[int], int]) -> None:
        """Write each running item's share of the rate limit and its lanes in its slot."""
        for index, running in self.running.items():
            self.shares.set(running.slot, rates.get(index), granted(index))

    def end(self, running: Running) -> None:
        """Its child has ended (joined, its pipe no longer watched): its slot is free, and
        asks nowhere (it may have died while its probe asked)."""
        running.conn.close()
        self.shares.ended(running.slot)
        del self.running[running.item]
        self.free.append(running.slot)

    def reaped(self) -> None:
        """Every child was stopped and reaped (``_stop.stop``)."""
        self.running.clear()


def receive(running: Running) -> tuple[str, Any]:
    """What the child said: ``("event", event)``, ``("done", outcome)``, or ``("died",
    None)`` once its pipe is at its end."""
    try:
        kind, payload = running.conn.recv()
    except (EOFError, OSError):
        return "died", None
    return kind, payload


def _tell_parent(conn: Connection) -> Callable[[Event], None]:
    def send(event: Event) -> None:
        conn.send(("event", event))

    return send


class _Counted:
    """Where the batch counts the child's lanes (its item's URL's host at first, or where
    its seat's probe led), moved before a probe's request to another host: the probe's
    ``to_host``, its refresh's too (an expired URL resolved again)."""

    def __init__(self, conn: Connection, url: str) -> None:
        self.conn, self.host = conn, urlsplit(url).hostname or ""

    def to_host(self, host: str) -> None:
        """Ask the scheduler to count the lanes at ``host``, and wait until it does (a stop
        cuts the wait short, as it would the probe's own)."""
        if host == self.host:
            return
        with held():  # the question goes whole: a stop meanwhile raises once it is sent
            self.conn.send(("hop", host))
        try:
            self.conn.recv()  # None: counted there now
        except EOFError:  # the batch is gone (its death signal comes): so are we
            raise Interrupted(signal.SIGTERM) from None
        self.host = host


def clean_item_main(conn: Connection) -> None:
    """``item_main`` in a fresh interpreter (``_spawn.child_setup`` ran first): its job comes
    over ``conn``, and its slot is mapped from the ``Shares``' descriptor it inherited. It
    inherited no logging configuration: its records go to the scheduler's, over ``conn``."""
    try:
        item, remote, settings, slots, slot, fd, level = conn.recv()
    except (EOFError, OSError):  # the batch is gone: so are we
        return
    except KeyboardInterrupt as stop:  # stopped before it started: nothing to save
        conn.send(("done", interrupted(stop)))
        return
    forward_logs(conn, level)
    item_main(item, remote, settings, Shares.inherited(slots, fd).share(slot), conn)


def item_main(
    item: Item, remote: Remote | None, settings: Settings, share: Share, conn: Connection
) -> None:
    """One large download, in its own process: the coordinator of its own workers (started
    as one: it handles SIGINT/SIGTERM itself, saving its state), under the lanes and the
    rate its batch gives it (``share``, read as they change)."""
    outcome: DownloadResult | BlobdlError
    try:
        path = Path(item.path) if item.path else None
        tell = _tell_parent(conn)
        downloader = Downloader(settings)
        if remote is None:  # said to be large: probed here, as a download is
            counted = _Counted(conn, item.url)
            outcome = downloader._run(
                item.url, None, path, item.digest, tell, share, counted.to_host
            )
        else:  # counted where its seat's probe led: a refresh may lead elsewhere
            counted = _Counted(conn, remote.final_url)
            outcome = downloader._download_resolved(
                remote, path, digest=item.digest, on_event=tell, share=share,
                to_host=counted.to_host,
            )  # fmt: skip
    except BlobdlError as exc:
        outcome = exc
    except KeyboardInterrupt as stop:  # before (or after) its download's own report
        outcome = interrupted(stop)
    decided()  # the batch's stop from now on would cut the outcome in two
    conn.send(("done", outcome))
    conn.close()
