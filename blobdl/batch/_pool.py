"""The batch's pool: worker processes whose seats (threads) run one small download after
another, for the whole batch.

A small item costs what a request costs only if nothing else is started for it: the pool's
processes are forked once by the scheduler, before it has any thread, and each of their
seats keeps its session (one connection kept alive, to the origin it spoke to last), its
filler and its slot of the pool's counter table from one item to the next. The scheduler
gives a seat an item (``_Job``), and the seat runs its whole story there
(``engine._small.OneRequest``: the first GET is the probe). The seat answers with the
item's events as they happen (``_Told``: all if the batch has a callback, else its last
word, ``Finished`` or ``Failed``, alone), then its
outcome (``_Done``), or with what the probe learned of a blob too large for one request
(``_Large``), which the scheduler then fetches the ordinary way. Either answer says which
host the seat still holds a connection to: the budget counts it. ``"drop"`` lets that
connection go (a large item needs the room). A request of the item's to another host (a
redirect to a CDN) first asks for room there (``_Hop``), which the budget may make it wait for.

While its seats run, a process's main thread waits for the scheduler's next word, and
meanwhile, every ``progress_interval``, tells the progress of each item that has run that
long (``engine._small.Meter``), as a large item's coordinator does: a small item may take
minutes on a capped link. It sends it on the seat's pipe, one message at a time with the
seat's own (``_Line``), and never after the item's bytes are over, so the item's last word
comes after its every ``Progress``.

A process starts its seats' threads once the scheduler has forked every process (``GO``),
so that a task limit (ulimit -u, a pids cgroup) refuses a seat, never a process, and says
how many started (``_Started``): the machine may refuse a thread, and the seats after it
never run (the scheduler retires them).

The processes ignore Ctrl-C (the scheduler owns cancellation) and die with the scheduler.
``stop`` cuts every seat's item (their temporary files go: nothing of a small download is
kept), ``end`` tells the pool to end once no small item is left, without waiting for it.
Either way a process removes the lock file each seat kept from item to item
(``store._lock.KeptLockFile``), and fsyncs, before it exits, the directories its seats
renamed files in, once each: the scheduler reaps it once it has. A stopped process waits
``STOP_GRACE`` for its seats, then ends without those still running (blocked where no cut
reaches: a ``connect``, an ``fsync``), or is killed past twice that (``_stop``): what they
leave, their items' lock files and partials, the scheduler removes (``Seats.stopped``), as
it does for a process that died.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from ..config import Settings
from ..engine._counter_table import CounterTable
from ..engine._share import Share
from ..engine._small import Meter, NotSmall, OneRequest, Seat
from ..engine._tell import tell_failed
from ..errors import BlobdlError, LocalFileError, OutOfResources
from ..events import DownloadResult, Event, Failed, Finished
from ..http._remote import Remote
from ..processes._child import Forked
from ..processes._spawn import private, seat_pipe, start, start_thread
from ..store._destination import sync_dir_quietly
from ..store._names import default_name
from ._beats import Beats
from ._items import Item, inside

log = logging.getLogger("blobdl")
STOP_GRACE = 2.0  # seconds a stopped pool's seats have to end their items (see the module)
DROP = "drop"  # scheduler -> seat: let the kept connection go; the seat answers DROPPED
DROPPED = "dropped"
GO = "go"  # scheduler -> pool process: every process is forked; start your seats


class _Job(NamedTuple):
    """Scheduler -> seat: fetch this item."""

    number: int  # the item's index in the batch
    label: str  # how its errors name it (``Numbering.one``): its manifest line, or its index
    item: Item  # normalized (credentials out of its URL, its digest bare hex)
    settings: Settings  # the batch's, with the item's own headers
    base_dir: Path | None  # an item without a path is named inside it
    events: bool  # send its events back (the batch has a callback)


class _Told(NamedTuple):
    """Seat -> scheduler: an event of the seat's item."""

    event: Event


class _Done(NamedTuple):
    """Seat -> scheduler: the item's outcome."""

    outcome: DownloadResult | BlobdlError
    kept: str | None  # the host the seat keeps a connection to (None: none)
    lock: str | None  # the lock file the seat keeps (a killed process leaves it behind)


class _Large(NamedTuple):
    """Seat -> scheduler: the blob is larger than one request; fetch it the ordinary way."""

    remote: Remote  # what its probe learned
    kept: str | None
    lock: str | None


class _Claim(NamedTuple):
    """Seat -> scheduler: the item is to be written at ``path`` (an item given no path, named
    after its probe); the scheduler answers None, or why not: which item writes there already."""

    path: str


class _Hop(NamedTuple):
    """Seat -> scheduler: the item's next request goes to ``host`` (a redirect led there):
    may its connection be counted there now? The scheduler answers None once it may (at
    once, or when that host has room: meanwhile the seat holds no connection)."""

    host: str


class _Started(NamedTuple):
    """Pool process -> scheduler, after ``GO``: its first ``seats`` seats run; the machine
    refused the next one's thread (``refused``), and the rest were not tried."""

    seats: int
    refused: OutOfResources | None  # None: every seat started


class _Stop(NamedTuple):
    """Scheduler -> pool process: end every seat's item now."""

    signum: int


Answer = _Told | _Done | _Large | _Claim | _Hop | str
HOP_POLL = 0.05  # seconds between a waiting seat's looks at whether its batch stops


class _Line:
    """A seat's pipe to the scheduler, in its pool process: its thread's answers and its
    item's events, and the progress the process's main thread tells of that item, one
    message at a time."""

    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self.lock = threading.Lock()
        self.events = False  # its item's events are wanted (the batch has a callback)

    def send(self, message: Answer) -> None:
        with self.lock:
            _answer(self.pipe, message)

    def recv(self) -> Any:
        return self.pipe.recv()  # only the seat's thread reads

    def progress(self, meter: Meter, now: float, interval: float) -> None:
        """Tell the item's progress, if it is wanted and due. Under the lock, so that the
        seat's thread, which stops the meter before its item's last word, sends that word
        after this (``Meter.stop``)."""
        if not self.events:  # set before the item starts, by the seat's own thread
            return
        with self.lock:
            if (progress := meter.progress(now, interval)) is not None:
                with contextlib.suppress(OSError):  # the seat or the scheduler is gone
                    self.pipe.send(_Told(progress))


# Forks of one pool process tried in a row, each silent as it starts (``Pool._go``).
GO_TRIES = 3


class Pool:
    """The scheduler's handle: ``processes`` processes, ``seats`` seats in all, a duplex
    pipe per seat, slots ``[0, seats)`` of ``table``."""

    def __init__(
        self,
        seats: int,
        processes: int,
        settings: Settings,
        table: CounterTable,
        shares: Sequence[Share] = (),
    ) -> None:
        self.settings, self.table = settings, table
        self.shares = shares  # the seats' slots of the batch's Shares (see ``Seat``), by seat
        self.count = max(1, min(processes, seats))
        per = -(-seats // self.count)
        self.ranges = [range(p * per, min(seats, (p + 1) * per)) for p in range(self.count)]
        self.ranges = [r for r in self.ranges if len(r)]
        self.pipes: list[Connection] = [None] * seats  # type: ignore[list-item]
        self.procs: list[Forked] = []
        self.controls: list[Connection] = []
        self.closing = False  # told to end (``end``): told once
        self.ended: set[int] = set()  # processes reaped for good (``reaped``)
        self.unstarted: set[int] = set()  # seats whose thread the machine refused (or after)
        self.refused: OutOfResources | None = None  # why, the last time
        self.beats = Beats(len(self.ranges))  # each process's signs of life (``_beats``)
        for number in range(len(self.ranges)):
            self._fork(number)
        for number in range(len(self.ranges)):  # every process first, then their threads
            self._go(number)

    def process_of(self, seat: int) -> int:
        return next(n for n, seats in enumerate(self.ranges) if seat in seats)

    def start(self, seat: int, job: _Job) -> None:
        self._send(seat, job)

    def tell(self, seat: int, taken: str | None) -> None:
        """Answer a seat's ``_Claim``: None (the path is its item's), or why not."""
        self._send(seat, taken)

    def drop(self, seat: int) -> None:
        """Have an idle seat let its kept connection go; return once it has (the budget
        counts it until then)."""
        self._send(seat, DROP)
        pipe = self.pipes[seat]
        with contextlib.suppress(EOFError, OSError):
            while pipe.poll(STOP_GRACE) and pipe.recv() != DROPPED:
                pass

    def answer(self, seat: int) -> Answer | None:
        """What the seat said (its pipe is readable); None at EOF (it, or its process, is
        gone). One message per readiness: the scheduler's selector reports the rest."""
        try:
            message: Answer = self.pipes[seat].recv()
            return message
        except (EOFError, OSError):
            return None

    def answers(self, seat: int) -> Iterator[Answer | None]:
        """Everything the seat has said so far (None at EOF: its process is gone)."""
        pipe = self.pipes[seat]
        try:
            while pipe.poll(0):
                yield pipe.recv()
        except (EOFError, OSError):
            yield None

    def kill(self, process: int) -> None:
        """Kill a process whose seat failed (its sentinel then reports it)."""
        self.procs[process].kill()  # nothing, if it has ended

    def restart(self, process: int) -> None:
        """Fork the process again (it died); its seats' pipes are new."""
        self._reap(process, STOP_GRACE)  # dead already
        self._fork(process)
        self.beats.restarted(process)
        self._go(process)

    def stop(self, signum: int) -> None:
        """End every seat's item now (their temporary files go)."""
        for control in self.controls:
            with contextlib.suppress(OSError):
                control.send(_Stop(signum))

    def end(self) -> None:
        """No small item is left: tell every process to end (once), and return at once. A
        process's seats end, and its last work is the fsync of the directories they renamed
        files in (no seat is busy by now), which a slow disk may take seconds over: the
        scheduler goes on serving the items still running meanwhile, and reaps each process
        as its sentinel says it ended (``reaped``). Never killed for taking its time: the
        batch's results wait for those fsyncs. Until it has ended, a process's seats still
        answer ``drop``: their kept connections may go for room."""
        if self.closing:
            return
        self.closing = True
        for control in self.controls:
            with contextlib.suppress(OSError):  # it died: its sentinel says so
                control.send(None)

    def reaped(self, process: int) -> None:
        """Process ``process`` has ended for good (its sentinel said so): reaped at once,
        never forked again."""
        self._reap(process, grace=None)
        self.ended.add(process)

    @property
    def over(self) -> bool:
        """Whether every process has ended for good."""
        return len(self.ended) == len(self.procs)

    def _fork(self, number: int) -> None:
        seats = self.ranges[number]
        pipes = [seat_pipe(duplex=True) for _ in seats]
        for ours, _ in pipes:  # before the fork: no child may keep them
            private(ours)
        theirs = tuple(end for _, end in pipes)
        shares = tuple(self.shares[seats.start : seats.stop])
        args = (theirs, seats.start, self.table, self.settings, shares, self.beats, number)
        try:
            proc, control = start(pool_main, args, name=f"blobdl-pool-{number}", daemon=True,
                                  duplex=True)  # fmt: skip
        finally:
            for end in theirs:  # the process's now; ours would keep the pipes open
                end.close()
        for seat, (ours, _) in zip(seats, pipes, strict=True):
            self.pipes[seat] = ours
        if number < len(self.procs):
            self.procs[number], self.controls[number] = proc, control
        else:
            self.procs.append(proc)
            self.controls.append(control)

    def _go(self, number: int) -> None:
        """Have process ``number`` start its seats, and hear which did. One that dies first
        is heard as any that dies: its seats' pipes read EOF, its sentinel is ready. One
        silent for the stall timeout (stopped as it was forked) is killed and forked again,
        ``GO_TRIES`` times in all; then left killed, for the scheduler to hear it died (with
        its signals checked in between: something that stops every process it forks must
        not make the batch deaf to Ctrl-C)."""
        seats = self.ranges[number]
        self.unstarted.difference_update(seats)
        try:
            for tries in itertools.count(1):
                if self._went(number):
                    break
                # Stopped (or wedged) before it answered, where its beats cannot be judged
                # yet: waited for without end, the batch would hang, deaf to Ctrl-C (this
                # wait is not one the scheduler checks signals in). Each fork is new: again.
                log.warning("pool process %d silent for %g s as it started: killed",
                            number, self.settings.stall_timeout)  # fmt: skip
                if tries == GO_TRIES:
                    self.procs[number].kill()  # its sentinel says it died
                    return
                self._reap(number, grace=0.0)  # killed
                self._fork(number)
                self.beats.restarted(number)
            started: _Started = self.controls[number].recv()
        except (EOFError, OSError):
            return
        self.unstarted.update(seats[started.seats :])
        if started.refused is not None:
            self.refused = started.refused

    def _went(self, number: int) -> bool:
        """Tell process ``number`` to go; whether it answered within the stall timeout."""
        self.controls[number].send(GO)
        return self.controls[number].poll(self.settings.stall_timeout)

    def reap(self) -> None:
        """Wait for every process (after ``stop``), killing one past ``STOP_GRACE``."""
        for process in range(len(self.procs)):
            self._reap(process, STOP_GRACE)

    def _reap(self, number: int, grace: float | None) -> None:
        """Wait for process ``number`` (killed after ``grace`` seconds; None: never)."""
        proc = self.procs[number]
        proc.join(grace)
        if not proc.ended:
            proc.kill()
            proc.join()
        for conn in (self.controls[number], *(self.pipes[s] for s in self.ranges[number])):
            conn.close()  # twice is harmless

    def _send(self, seat: int, message: Any) -> None:
        with contextlib.suppress(OSError):  # its process died: its pipe reads EOF
            self.pipes[seat].send(message)


# --- in a pool process ----------------------------------------------------------------------


def pool_main(
    pipes: tuple[Connection, ...],
    first: int,
    table: CounterTable,
    settings: Settings,
    shares: tuple[Share, ...],
    beats: Beats,
    number: int,
    control: Connection,
) -> None:
    """Entry point of pool process ``number``: a thread per seat (once told ``GO``), until
    the scheduler says stop (``_Stop``) or done (None), or is gone; meanwhile its main
    thread beats (``_beats``) and tells its seats' progress."""
    # _spawn.child_setup ran first: Ctrl-C is ignored, and we die with the scheduler.
    seats = [
        Seat(table, first + n, settings.buffer_size, shares[n] if shares else None)
        for n in range(len(pipes))
    ]
    lines = [_Line(pipe) for pipe in pipes]
    idle = [threading.Event() for _ in seats]
    for done in idle:
        done.set()
    try:
        control.recv()  # GO
        control.send(_start_seats(seats, lines, settings, idle))
        message = _progress_until_told(control, seats, lines, settings,
                                       lambda: beats.beat(number))  # fmt: skip
    except (EOFError, OSError):
        _close_lock_files(seats)
        os._exit(1)  # the scheduler is gone: nobody will use our bytes
    if isinstance(message, _Stop):
        for seat in seats:
            seat.stop(message.signum)
        deadline = time.monotonic() + STOP_GRACE
        for done in idle:  # each item removes its temporary file as it ends
            done.wait(max(0.0, deadline - time.monotonic()))
    _close_lock_files(seats)
    for directory in set().union(*(seat.unsynced for seat in seats)):
        sync_dir_quietly(directory)


def _progress_until_told(
    control: Connection,
    seats: list[Seat],
    lines: list[_Line],
    settings: Settings,
    beat: Callable[[], None],
) -> Any:
    """The scheduler's next word; until it comes, every progress interval, the progress of
    each seat's item that has run that long, and a beat at least every quarter of the stall
    timeout (the scheduler kills a process quiet for all of it)."""
    interval = settings.progress_interval
    tick = min(interval, settings.stall_timeout / 4)
    due = time.monotonic() + interval
    beat()
    while not control.poll(tick):
        beat()
        now = time.monotonic()
        if now + tick / 2 < due:  # (a poll may wake a hair early)
            continue
        due = now + interval
        for seat, line in zip(seats, lines, strict=True):
            line.progress(seat.meter, now, interval)
    return control.recv()


def _start_seats(
    seats: list[Seat],
    lines: list[_Line],
    settings: Settings,
    idle: list[threading.Event],
) -> _Started:
    """A thread per seat, in order, until the machine refuses one (a task limit, too little
    memory): the seats after it are not tried, and their pipes close (the scheduler never
    gives them an item)."""
    started, refused = 0, None
    for seat, line, done in zip(seats, lines, idle, strict=True):
        thread = threading.Thread(
            target=_seat_main, args=(seat, line, settings, done), name=f"blobdl-seat-{seat.slot}"
        )
        thread.daemon = True  # a seat waiting for its next item must not hold the exit up
        try:
            start_thread(thread)
        except OutOfResources as exc:
            refused = exc
            break
        started += 1
    for line in lines[started:]:
        line.pipe.close()
    return _Started(started, refused)


def _close_lock_files(seats: list[Seat]) -> None:
    """Remove the lock file each seat kept from its last item. A seat still running an item
    keeps none: it removes its lock as it ends (``KeptLockFile.close``)."""
    for seat in seats:
        seat.lock_file.close()


def _seat_main(seat: Seat, line: _Line, settings: Settings, idle: threading.Event) -> None:
    """One seat: one item after another, over the session it keeps. A seat that fails for
    any reason of its own closes its pipe: the scheduler reads EOF and takes the whole
    process down (its sentinel then fails the items it held, and it is forked again)."""
    try:
        with seat.session.kept(settings):
            while (message := line.recv()) is not None:
                idle.clear()
                try:
                    if message == DROP:
                        seat.session.drop()
                        line.send(DROPPED)
                    else:
                        line.send(_fetch(seat, message, line))
                finally:
                    idle.set()
    except (EOFError, OSError):
        pass  # the scheduler is gone, or says so
    except BaseException as exc:  # a bug: never leave the scheduler waiting for an answer
        log.error("seat %d of the batch's pool failed: %r", seat.slot, exc)
    finally:
        line.pipe.close()


def _fetch(seat: Seat, job: _Job, line: _Line) -> _Done | _Large:
    """The job's item on this seat: its outcome, or the cue to fetch it the ordinary way."""
    item = job.item
    line.events = job.events

    def tell(event: Event) -> None:
        # Its last word is sent even to a batch without a callback: should this process die
        # before the outcome that follows, the scheduler knows the item finished (its file
        # in place, to be made durable) or failed on its own, and does not run it again.
        if job.events or isinstance(event, Finished | Failed):
            line.send(_Told(event))

    def name(remote: Remote) -> Path:
        """The server's name (inside the base directory, if any), if no other item of the
        batch writes there: the scheduler says."""
        named = item._replace(path=default_name(remote))
        if job.base_dir is not None:
            named = inside(job.base_dir, named, job.label)
        path = named.path or ""
        line.send(_Claim(path))
        taken = line.recv()
        if taken is not None:
            raise LocalFileError(path, taken)
        return Path(path)

    seat.session.counted = urlsplit(item.url).hostname or ""  # as the budget counts it
    seat.session.ask = lambda host: _hop(seat, line, host)
    outcome: DownloadResult | BlobdlError
    download: OneRequest | None = None
    try:
        download = OneRequest(job.settings, seat, name if item.path is None else None, item.size)
        outcome = download.run(item.url, item.path, item.digest, tell)
    except NotSmall as large:
        return _Large(large.remote, seat.session.open_to(), seat.lock_file.at())
    except BlobdlError as exc:
        outcome = exc
    except Exception as exc:  # a bug: report it as this item's, and go on with the next
        outcome = BlobdlError(f"small download failed unexpectedly: {exc!r}")
        # Told as the story tells its own failures (``failures_told``): the item's last word.
        dest = download.dest if download is not None else None
        tell_failed(tell, item.url, dest or item.path, outcome)
    return _Done(outcome, seat.session.open_to(), seat.lock_file.at())


def _hop(seat: Seat, line: _Line, host: str) -> None:
    """Wait until the scheduler counts the seat's connection at ``host`` (``_Hop``); a stop
    of the batch meanwhile ends the item."""
    line.send(_Hop(host))
    while not line.pipe.poll(HOP_POLL):
        seat.check()
    line.recv()  # None: it may go


def _answer(pipe: Connection, message: Answer) -> None:
    """Send ``message``; an outcome that does not pickle is sent as a plain error. An
    ``OSError`` (the scheduler is gone) ends the seat."""
    try:
        pipe.send(message)
    except OSError:
        raise
    except Exception as exc:
        if not isinstance(message, _Done):
            raise
        failed = BlobdlError(f"the item's outcome could not be sent: {exc!r}")
        pipe.send(message._replace(outcome=failed))
