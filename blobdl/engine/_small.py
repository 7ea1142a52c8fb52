"""A small download, whole on one thread of a batch's pool: its first GET is its probe.

A blob no larger than one request (``_plan.one_request``: one part, and less than a lane's
first request, which no steal would split) gains nothing from a coordinator, worker
processes or a resume record, and pays for them more than for its bytes. A seat of the
batch's pool (``blobdl/batch/_pool.py``) runs its whole story on its own thread, over the
connection it kept alive from its previous item.

``OneRequest`` is ``_download``'s story with two steps told another way. The probe asks for
the blob's first bytes (``Session.first``); when the answer holds all of it, the seat's
``Filler`` (the lane's own: the same splice, the same pacing, the same checks before a byte
is written) streams it into the temporary file. A retry goes on from where the bytes
stopped with a range request (from 0 without ranges), under the part's retry policy
(``_failure.decide``: Ollama's backoff, a refreshed URL when a signed one expired). A larger
blob raises ``NotSmall`` with what its probe learned, for the batch to fetch it the ordinary
way. Nothing resumes a small download: one interrupted starts over (its temporary file is
removed, as any partial without a record is). The seat's socket read timeout stands for the
stall timeout, and the bytes are digested from the page cache once written, instead of by a
hasher process following them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import BlobdlError, Interrupted, RetriesExhausted, TruncatedBody
from ..events import DownloadResult, EventCallback, PartProgress, PartRetried, Progress, Started
from ..http._body import RangeBody
from ..http._remote import Remote
from ..http._retry import Retry, retried
from ..http._session import Session
from ..http._span import Span
from ..store._destination import check_free_space, finalize
from ..store._digest import hash_range
from ..store._lock import DestinationLock, KeptLockFile
from ..store._resume import Resume, state_path
from ..store._source import unchanged
from . import _failure
from ._counter_table import CounterTable
from ._download import Downloader, Mark
from ._lane import Attempt, Cancel, Filler
from ._order import Order
from ._parts import RUNNING, WAITING, Tally
from ._pinned import Pinned
from ._plan import one_request
from ._rates import RateWindow
from ._share import Receiving, Share


class NotSmall(Exception):  # not an error: the batch's cue to fetch it the ordinary way
    """The blob is larger than one request; ``remote`` is what its probe learned."""

    def __init__(self, remote: Remote) -> None:
        super().__init__(remote)
        self.remote = remote


class Meter:
    """A small download's progress, told as a large one's coordinator tells it (``Progress``,
    every progress interval once it has run one): one part, the item's one request, whose
    ``done`` is what its slot of the counter table says is written. The seat's thread
    writes it as the request goes (``start``, ``attempt``, ``wait``, ``stop``); its pool
    process's main thread, which has nothing else to do, asks it for a ``Progress`` every
    interval (``progress``). An item done within its first interval tells none, and costs
    no more than a clock reading: its rate window is made at its first report."""

    def __init__(self, table: CounterTable, slot: int) -> None:
        self.table, self.slot = table, slot
        self.live = False  # a request runs or waits: set last, cleared first (see ``start``)
        self.size: int | None = None
        self.started = 0.0  # when its bytes began (its ``Started``): ``elapsed`` counts from it
        self.attempts = self.retries = 0
        self.state = RUNNING
        self.window: RateWindow | None = None

    def start(self, size: int | None) -> None:
        """The item's bytes begin (its slot is set for them already)."""
        self.size, self.attempts, self.retries, self.state = size, 0, 0, RUNNING
        self.started, self.window = time.monotonic(), None
        self.live = True

    def attempt(self) -> None:
        self.attempts += 1
        self.state = RUNNING

    def wait(self, retries: int) -> None:
        """A backoff before the next attempt: no request runs meanwhile."""
        self.retries, self.state = retries, WAITING

    def stop(self) -> None:
        """The bytes are over (in or failed): nothing more to tell, before the last word."""
        self.live = False

    def progress(self, now: float, interval: float) -> Progress | None:
        """The item's progress now, once it has run ``interval`` seconds (None: not yet, or
        no item runs)."""
        if not self.live or now - self.started < interval:
            return None
        done = self.table.pos(self.slot)
        if self.window is None:
            self.window = RateWindow(self.started, 0)
        end = -1 if self.size is None else self.size
        part = PartProgress(0, 0, end, done, self.state, self.attempts)
        rate, active = self.window.rate(now, done), int(self.state == RUNNING)
        return Progress(done, self.size, rate, now - self.started, active, self.retries, (part,))


class Seat:
    """What a small download borrows from the pool thread that runs it, kept from one item
    to the next: the session (its connection kept alive), the filler (its buffer, its
    splice pipe), its slot of the pool's counter table (where the batch writes its share of
    the rate limit), its slot of the batch's ``Shares`` (where it says whom it receives
    from, and hears who else of the batch does), what ends it, its lock file, and the
    directories whose renames wait for an fsync."""

    def __init__(
        self, table: CounterTable, slot: int, buffer_size: int, share: Share | None = None
    ) -> None:
        self.session = Session()
        self.share = share
        self.batch = Receiving(share)  # hears who else of its batch receives where
        self.cancel = Cancel(self.session)
        self.table, self.slot = table, slot
        self.filler = Filler(Attempt(slot, True, 0, -1, ""), table, buffer_size, self.cancel)
        self.meter = Meter(table, slot)  # its item's progress
        self.lock_file = KeptLockFile(slot)  # closed when its pool process ends
        self.unsynced: set[Path] = set()  # see ``OneRequest._finalize``
        self.signum: int = signal.SIGTERM  # the signal its batch was stopped by, once cut
        self.answer: tuple[Remote, RangeBody | None] | None = None  # the item's first GET

    def stop(self, signum: int) -> None:
        """End the item running on this seat (any thread may call it)."""
        self.signum = signum
        self.cancel.cut()

    def pause(self, seconds: float) -> None:
        """Sleep out a backoff, unless the seat is stopped meanwhile."""
        self.cancel.sleep(seconds)
        self.check()

    def check(self) -> None:
        if self.cancel.stopped:
            raise Interrupted(self.signum)

    def receiving(self, url: str) -> None:
        """A server let it in: it receives from ``url``'s origin until ``received``."""
        if self.share is not None:
            self.share.receive(url, lease=None)

    def received(self) -> None:
        """Its answer is over (read, or closed unread)."""
        if self.share is not None:
            self.share.received()

    def take(self) -> RangeBody | None:
        """The first answer's body, now the caller's to read and close."""
        answer = self.answer
        assert answer is not None
        self.answer = (answer[0], None)
        return answer[1]

    def let_go(self) -> None:
        """The item is over: an answer still unread (a destination kept as it was, a
        failure) goes, and with it its connection (its body would be read as the next
        response)."""
        answer, self.answer = self.answer, None
        if answer is not None and answer[1] is not None:
            answer[1].__exit__(None, None, None)
        self.received()


class OneRequest(Downloader):
    """One small download on ``seat``'s thread (see the module). ``name``: how an item given
    no path is named after its probe (a batch confines it to its base directory)."""

    def __init__(
        self,
        settings: Settings,
        seat: Seat,
        name: Callable[[Remote], Path] | None = None,
        size: int | None = None,
    ) -> None:
        super().__init__(settings)
        self.seat, self.name, self.size = seat, name, size  # size: the caller's hint
        self.dest: Path | None = None  # known once it is locked

    def run(
        self, url: str, path: str | None, digest: str | None, tell: EventCallback
    ) -> DownloadResult:
        """The download, on this thread (it forks nothing: no clean process is needed)."""
        try:
            return self._run_here(url, None, path, digest, tell)
        finally:
            self.seat.let_go()

    # --- the steps told another way ---------------------------------------------------------

    def _locked(self, order: Order, dest: Path, remote: Remote | None) -> DownloadResult:
        self.dest = dest
        return super()._locked(order, dest, remote)

    def _unlocked(self, order: Order, dest: Path, remote: Remote | None) -> DownloadResult:
        self.dest = dest  # its probe then asks for one byte, where a record may vouch
        return super()._unlocked(order, dest, remote)

    def _lock(self, dest: Path) -> DestinationLock:
        """The seat's kept lock file, moved to ``dest``'s lock (``KeptLockFile``)."""
        return DestinationLock(dest, self.settings.lock_timeout, self.seat.lock_file)

    def _probed(self, order: Order, remote: Remote | None) -> Remote:
        """The first GET, asking for as much as one request holds: the probe, retried as
        one (once per item: its answer waits for ``_fetch``). It asks for one byte when
        the blob is known to be larger (the caller's size hint, or a resume record beside
        it: that partial is resumed the ordinary way), since the bytes of a larger answer
        are thrown away. So does a destination already there whose record may vouch for it
        (``--force`` or not): the probe only checks the validators its record names
        (``store._existing``)."""
        seat = self.seat
        if remote is None and seat.answer is None:
            want = one_request(self.settings)
            if (self.size is not None and self.size > want) or self._known_there(order):
                want = 1
            session = seat.session
            with seat.batch.asking(order.url):  # the rest of its batch may be refused meanwhile
                seat.answer = retried(
                    lambda: session.first(order.url, self.settings, want),
                    Retry.from_settings(self.settings),
                    seat.batch.backoff(seat.pause),
                    seat.batch.refused,
                )
            if seat.answer[1] is not None:  # its body held unread: the server counts it
                seat.receiving(seat.answer[0].final_url)
        return remote or self._first()[0]

    def _known_there(self, order: Order) -> bool:
        """Bytes of the blob may be on disk already: a resume record, or a destination that
        its record may vouch for (``--force`` included: it replaces only what nothing
        vouches for). One that nothing can vouch for is refused before any request, or
        replaced: its whole body is asked for."""
        dest = self.dest
        if dest is None:
            return False
        checked = order.expected is None and unchanged(dest, order.url) is not None
        return checked or state_path(dest).exists()

    def _named(self, remote: Remote) -> Path:
        return self.name(remote) if self.name is not None else super()._named(remote)

    def _derived(self, **overrides: Any) -> Downloader:
        settings = dataclasses.replace(self.settings, **overrides)
        return OneRequest(settings, self.seat, self.name, self.size)

    def _fetch(self, order: Order, remote: Remote, dest: Path, resume: Resume) -> DownloadResult:
        if self._first()[1] is None and remote.size != 0:
            raise NotSmall(remote)
        resume.forget()  # a small download starts over: an earlier partial goes
        if remote.size:
            check_free_space(dest, remote.size)

        def run(fd: int) -> tuple[Tally, str | None]:
            order.tell(Started(order.url, str(dest), remote.size, 1 if remote.size else 0, 0))
            tally = self._stream(self.seat.take(), remote, fd, str(resume.temp), order.tell)
            return tally, _digest(fd, tally.final_size) if order.expected else None

        return self._written(order, remote, dest, resume, run)

    def _finalize(
        self, fd: int, temp: Path, dest: Path, size: int, mark: Mark, replace: bool
    ) -> None:
        """Its directory is fsynced later, once for all the renames in it (the pool does it
        when the batch ends): a crash before then may lose the rename, never leave the
        destination naming an incomplete file."""
        finalize(fd, temp, dest, size, sync_dir=False, stamp=mark, replace=replace)
        self.seat.unsynced.add(dest.parent)

    # --- the bytes --------------------------------------------------------------------------

    def _first(self) -> tuple[Remote, RangeBody | None]:
        assert self.seat.answer is not None, "the first GET comes before anything else"
        return self.seat.answer

    def _stream(
        self, body: RangeBody | None, remote: Remote, fd: int, path: str, tell: EventCallback
    ) -> Tally:
        """The blob into ``fd``: ``body`` first, then, after a failure, retries as the
        policy allows; what was done, as a coordinator would tally it. The seat's ``Meter``
        follows it meanwhile."""
        seat, size = self.seat, remote.size or 0
        table, slot = seat.table, seat.slot
        received = table.received(slot)
        table.set_start(slot, 0)
        table.set_pos(slot, 0)
        table.set_end(slot, size)
        table.set_asked(slot, size)
        seat.filler.aim(Attempt(slot, remote.ranges, size, fd, path))
        seat.meter.start(remote.size)
        try:
            fetched, retries = self._requests(body, remote, size, tell)
        finally:
            seat.meter.stop()  # before the item's last word: no progress comes after it
        got = table.received(slot) - received
        return Tally(fetched, got, retries, 1 if size else 0, 0, size)

    def _requests(
        self, body: RangeBody | None, remote: Remote, size: int, tell: EventCallback
    ) -> tuple[int, int]:
        """The requests of ``_stream``: bytes fetched, and attempts retried."""
        seat, settings, meter = self.seat, self.settings, self.seat.meter
        table, slot = seat.table, seat.slot
        # A refresh (an expired signed URL) probes again over the seat's own connection,
        # retried as its first probe was (a stop cuts its backoffs; a full server waited for).
        pool = seat.session

        def refreshed(url: str) -> Remote:
            again = Retry.from_settings(settings)
            return retried(lambda: _reprobe(pool, url, settings), again, seat.pause,
                           seat.batch.elsewhere)  # fmt: skip

        pinned = Pinned(remote, refreshed)
        retry, retries, fetched, refreshed_at = Retry.from_settings(settings), 0, 0, None
        while table.pos(slot) < size:
            start = table.pos(slot) if remote.ranges else 0
            table.set_pos(slot, start)
            meter.attempt()
            try:
                self._attempt(body, pinned.remote, start, size)
            except BlobdlError as error:
                seat.check()
                pos = table.pos(slot)
                full = seat.batch.full(error)
                facts = _failure.Failure(
                    error, pos, size, retry, pinned.redirected, False, refreshed_at, full
                )
                verdict = _failure.decide(facts)
                if verdict.action == _failure.FAIL:
                    raise
                if verdict.action == _failure.EXHAUSTED:
                    raise RetriesExhausted(0, 0, size, retries + 1, error) from None
                if verdict.action == _failure.DONE:
                    break
                if verdict.action == _failure.REFRESH:
                    pinned.refresh()
                    refreshed_at = pos
                retry = verdict.retry
                if verdict.action in (_failure.RETRY, _failure.FULL):  # a refresh is no failure
                    retries += 1
                    failures = retry.failures + retry.waits  # in a row, both kinds
                    tell(PartRetried(0, failures, verdict.delay, str(error)))
                meter.wait(retries)
                seat.pause(verdict.delay)
            finally:
                body = None
                fetched += max(0, table.pos(slot) - start)
        return fetched, retries

    def _attempt(self, body: RangeBody | None, remote: Remote, start: int, size: int) -> None:
        """One request's worth: ``body`` if one is in hand, else a new GET from ``start``."""
        seat = self.seat
        try:
            with seat.session.pinned(remote) as session:
                if body is None:
                    body = session.range(Span(start, size)) if remote.ranges else session.whole(0)
                    seat.receiving(remote.final_url)
                with body:
                    end = seat.filler.take(body, start)
        finally:
            seat.received()
        seat.check()
        if end < size:
            raise TruncatedBody(remote.final_url, end - start, size - start)


def _reprobe(session: Session, url: str, settings: Settings) -> Remote:
    """The probe again, over the kept session (a signed URL that expired, say)."""
    remote, body = session.first(url, settings, 1)
    if body is not None:
        body.__exit__(None, None, None)
    return remote


def _digest(fd: int, size: int) -> str:
    """The sha256 of the blob just written: from the page cache, one read."""
    digest = hashlib.sha256()
    hash_range(digest, fd, 0, size)
    return digest.hexdigest()
