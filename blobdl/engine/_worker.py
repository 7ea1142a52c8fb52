"""The worker processes, and the lanes each of them runs on its threads.

A download runs ``connections`` lanes at once; they need not be as many processes. Every
process is a fork of the coordinator and, on a small machine, costs more than the lane it
holds (its own copy of every page the interpreter touches: ~5 MB; the switches between 16
processes on 2 cores). A ``Crew`` forks ``processes`` workers, each with a fixed number of
*seats*; a lane is one attempt (``_lane.run_attempt``) on a thread of one worker, in one
seat. Decrypting, reading and writing release the GIL, so the threads of one worker run
side by side where it matters.

The coordinator sees each running lane through a ``Running`` handle, as it saw one process
per attempt before: a ``sentinel`` to wait on (the seat's own result pipe), its
``outcome``, whether it is ``waiting`` on the network, and ``kill``. A worker process
that dies ends every lane it held (their pipes read EOF: ``WorkerCrashed``); a new one is
forked for the next lane that needs a seat.

Ending one lane of a process that goes on with others cannot be a signal. ``kill`` asks
the worker to stop the lane: it flags it and shuts down the lane's sockets, which wakes it
from any wait on a connection it opened (the TLS handshake included), and the lane answers
on its seat's pipe. A lane that does not answer within ``STOP_GRACE`` (still resolving a
name or connecting, say) is ended the hard way: its whole process is killed, and its
sibling lanes are retried. Either way ``kill`` returns only once the lane can no longer
write, so its part may be started again at once.
"""

from __future__ import annotations

import functools
import mmap
import os
import threading
import time
from contextlib import suppress
from multiprocessing.connection import Connection, wait
from typing import NamedTuple

from ..config import Settings
from ..errors import BlobdlError, OutOfResources, WorkerCrashed
from ..http._remote import Remote
from ..processes._proc import kernel_state, own_thread, own_thread_id
from ..processes._spawn import private, seat_pipe, start, start_thread, threaded
from ._counter_table import CounterTable
from ._lane import Attempt, Cancel, run_attempt

STOP_GRACE = 2.0  # seconds a lane has to answer a stop before its process is killed
_RECUT = 0.05  # seconds between two cuts of a stopping lane's sockets (it may open one)


class _Run(NamedTuple):
    """Coordinator -> worker: start ``attempt`` in ``seat``."""

    seat: int  # which of the worker's seats (its result pipe) the lane answers on
    attempt: Attempt  # the part's slot and how to ask for it
    remote: Remote  # where to ask (re-resolved after a refresh), and what must not change


class _Stop(NamedTuple):
    """Coordinator -> worker: end the lane in ``seat``."""

    seat: int  # the seat of a lane whose result the coordinator has not collected yet


class Crew:
    """The coordinator's worker processes, forked when a lane first needs a seat. Once this
    process has another thread (a caller's callback may start one: a tqdm bar does), it
    forks no more: its lanes then take only the seats of the workers it has (``room``)."""

    def __init__(self, settings: Settings, table: CounterTable) -> None:
        self.settings, self.table = settings, table
        processes = settings.worker_processes(settings.connections)
        self.count = processes
        self.seats = -(-settings.connections // processes)  # per process, rounded up
        self._workers: list[_Worker | None] = [None] * processes
        self._dead: list[_Worker] = []  # died with lanes whose end is not collected yet

    def launch(self, attempt: Attempt, remote: Remote) -> Running:
        """Start ``attempt`` in a free seat of the least busy live worker."""
        worker = self._least_busy()
        seat = worker.free_seat()
        return worker.run(seat, attempt, remote)

    def room(self) -> int | None:
        """Lanes it can still seat: None for as many as asked (it may fork a worker for
        them), else the free seats of its live workers."""
        self._bury()
        if self._may_fork():
            return None
        return sum(self.seats - w.busy() for w in self._workers if w is not None)

    def stop(self) -> None:
        """End every worker (their lanes must have been collected or killed first)."""
        for worker in self._workers:
            if worker is not None:
                worker.quit()
        for worker in self._dead:
            worker.discard()
        self._workers = [None] * self.count
        self._dead = []

    def _least_busy(self) -> _Worker:
        self._bury()
        best: tuple[int, int] | None = None
        forks = self._may_fork()
        for index, worker in enumerate(self._workers):
            if worker is None and not forks:
                continue
            busy = worker.busy() if worker is not None else 0
            if busy < self.seats and (best is None or busy < best[1]):
                best = (index, busy)
        if best is None:
            raise RuntimeError("every seat is taken: more lanes than connections")
        index = best[0]
        worker = self._workers[index]
        if worker is None:
            worker = self._workers[index] = _Worker(index, self.seats, self.settings, self.table)
        return worker

    def _may_fork(self) -> bool:
        """Whether a worker may be forked: a slot is free, and no other thread is here."""
        return None in self._workers and not threaded()

    def _bury(self) -> None:
        """A worker that died leaves the roster at once (a new one may take its place); it
        is let go once the coordinator has collected the end of every lane it held."""
        for index, worker in enumerate(self._workers):
            if worker is not None and not worker.alive():
                self._dead.append(worker)
                self._workers[index] = None
        for worker in [w for w in self._dead if not w.busy()]:
            worker.discard()
            self._dead.remove(worker)


class _Worker:
    """One worker process and our ends of its pipes: one to command it, one per seat."""

    def __init__(self, index: int, seats: int, settings: Settings, table: CounterTable) -> None:
        pipes = [seat_pipe() for _ in range(seats)]
        self.results = [ours for ours, _ in pipes]
        for ours in self.results:  # before the fork: the worker itself must not keep them
            private(ours)
        self.tids = _ThreadIds(seats)
        writers = tuple(theirs for _, theirs in pipes)
        args = (writers, self.tids, settings, table)
        try:
            self.proc, self.control = start(
                worker_main, args, name=f"blobdl-worker-{index}", daemon=True, duplex=True
            )
        finally:
            for theirs in writers:  # the worker's now; ours would keep the pipes open
                theirs.close()
        self.taken = [False] * seats

    def alive(self) -> bool:
        return not self.proc.ended

    def busy(self) -> int:
        return sum(self.taken)

    def free_seat(self) -> int:
        return self.taken.index(False)

    def run(self, seat: int, attempt: Attempt, remote: Remote) -> Running:
        self.taken[seat] = True
        self.tids.set(seat, 0)  # not known until the lane's thread runs
        with suppress(OSError):  # dead: the seat's pipe reads EOF, a crash like any other
            self.control.send(_Run(seat, attempt, remote))
        return Running(self, seat)

    def stop(self, seat: int) -> None:
        """End the lane in ``seat``; return once it can no longer write."""
        result = self.results[seat]
        try:
            self.control.send(_Stop(seat))
            answered = bool(wait([result], timeout=STOP_GRACE))
        except OSError:
            answered = True  # dead already: nothing of it runs
        if answered:
            self.collect(seat)
        else:
            self.kill()  # its other lanes read EOF and are retried
            self.taken[seat] = False  # nothing of the lane is left to collect

    def collect(self, seat: int) -> BlobdlError | None:
        """The lane's result, now that its pipe is readable; the seat is free again."""
        self.taken[seat] = False
        try:
            result: BlobdlError | None = self.results[seat].recv()
            return result
        except (EOFError, OSError):
            self.proc.join(STOP_GRACE)
            return WorkerCrashed(self.proc.exitcode)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()

    def quit(self) -> None:
        with suppress(OSError):
            self.control.send(None)
        self.proc.join(STOP_GRACE)
        if not self.proc.ended:
            self.kill()
        self.discard()

    def discard(self) -> None:
        """Let go of a worker that has exited."""
        self.proc.join()
        for conn in (self.control, *self.results):
            conn.close()


class Running:
    """The coordinator's handle on one running lane (one attempt at one part)."""

    def __init__(self, worker: _Worker, seat: int) -> None:
        self._worker, self._seat = worker, seat

    @property
    def sentinel(self) -> Connection:
        """Ready for ``multiprocessing.connection.wait`` once the lane has ended."""
        return self._worker.results[self._seat]

    def outcome(self) -> BlobdlError | None:
        """After it ended: None for success, else why it failed (a crash if it said nothing)."""
        return self._worker.collect(self._seat)

    def waiting(self) -> bool:
        """Whether its thread is blocked waiting (on its socket), not runnable: a lane that has
        not moved while it could run is starved of CPU by us, not slowed by the network, and
        cutting it would only throw away what it has in flight. A thread waiting for the GIL
        another lane holds sleeps too, on a futex: that is starved as well."""
        tid, worker = self._worker.tids.get(self._seat), self._worker.proc.folder()
        if not tid or worker is None:
            return False  # not started, or gone: its result pipe tells the rest
        task = f"{worker}/task/{tid}"
        try:
            with open(f"{task}/wchan") as before:
                places = [before.read()]
            state = kernel_state(task)
            with open(f"{task}/wchan") as after:
                places.append(after.read())
        except OSError:
            return False  # not started, or gone: its result pipe tells the rest
        # Where it sleeps, read on both sides of its state: a thread waiting for the GIL
        # flips between running ("0") and a futex, and a thread just going to sleep is S
        # with "0" for a moment. A kernel that hides where threads sleep ("0" always)
        # leaves the state alone to decide.
        if state != "S":
            return False
        if not kernel_names_sleeps():
            return True
        named = [place for place in places if place not in ("", "0")]
        return bool(named) and not any("futex" in place for place in named)

    def kill(self) -> None:
        """End the lane now (at the latest within ``STOP_GRACE``, with its worker); its bytes
        so far stay written."""
        self._worker.stop(self._seat)


#: How long a thread of ours, surely asleep, is watched for where the kernel says it sleeps.
_WCHAN_LEARN = 0.1


@functools.cache
def kernel_names_sleeps() -> bool:
    """Whether this kernel says where a thread sleeps (``/proc/.../wchan``); some hide it
    and say "0" always. Learned once, from a thread of ours that is surely asleep: learning
    it from a worker's lanes instead took a starved lane, before any of them was seen
    asleep somewhere named, for one waiting on the network."""
    asleep, wake = threading.Event(), threading.Event()
    task: list[str | None] = []

    def sleeper() -> None:
        task.append(own_thread())
        asleep.set()
        wake.wait()

    thread = threading.Thread(target=sleeper, name="blobdl-wchan", daemon=True)
    start_thread(thread)
    asleep.wait()
    try:
        if task[0] is None:
            return False  # no /proc: nothing says where it sleeps
        deadline = time.monotonic() + _WCHAN_LEARN
        while time.monotonic() < deadline:
            try:
                with open(f"{task[0]}/wchan") as place:
                    if place.read() not in ("", "0"):
                        return True
            except OSError:
                return False
            time.sleep(0.001)
        return False
    finally:
        wake.set()
        thread.join()


class _ThreadIds:
    """Each seat's lane thread id as /proc numbers it (the worker writes, the coordinator
    reads), shared memory; 0 while not known."""

    def __init__(self, seats: int) -> None:
        self._map = mmap.mmap(-1, max(1, seats) * 8)
        self._words = memoryview(self._map).cast("q")

    def set(self, seat: int, tid: int) -> None:
        self._words[seat] = tid

    def get(self, seat: int) -> int:
        return int(self._words[seat])


# --- in the worker process ------------------------------------------------------------------


def worker_main(
    seats: tuple[Connection, ...],
    tids: _ThreadIds,
    settings: Settings,
    table: CounterTable,
    control: Connection,
) -> None:
    """Entry point in the worker process: run lanes as the coordinator says, until it says
    stop (None) or is gone."""
    # _spawn.child_setup ran first: Ctrl-C is ignored, and we die with the coordinator.
    stopping: list[tuple[threading.Thread, Cancel]] = []
    lanes: dict[int, tuple[threading.Thread, Cancel]] = {}
    while True:
        # Cut stopping lanes again until they end: one may have been opening a socket.
        stopping = [(thread, cancel) for thread, cancel in stopping if thread.is_alive()]
        for _, cancel in stopping:
            cancel.cut()
        if stopping and not control.poll(_RECUT):
            continue
        try:
            message = control.recv()
        except (EOFError, OSError):
            os._exit(1)  # the coordinator is gone: nobody will use our bytes
        if message is None:
            break
        if isinstance(message, _Run):
            lane = _start_lane(message, seats, tids, settings, table)
            if lane is not None:
                lanes[message.seat] = lane
        elif isinstance(message, _Stop) and message.seat in lanes:
            stopping.append(lanes.pop(message.seat))
    for thread, cancel in lanes.values():
        cancel.cut()
        thread.join()


def _start_lane(
    run: _Run,
    seats: tuple[Connection, ...],
    tids: _ThreadIds,
    settings: Settings,
    table: CounterTable,
) -> tuple[threading.Thread, Cancel] | None:
    """The lane's thread, started; None if the machine refused a thread (too many tasks,
    too little memory): the seat answers that at once, and the worker goes on."""
    cancel = Cancel()

    def lane() -> None:
        # The coordinator waits for this answer: a lane that ended without one would hold
        # its seat until the stall timeout, and then cost its whole worker.
        result: BlobdlError | None = BlobdlError("lane ended without a result")
        try:
            tids.set(run.seat, own_thread_id())
            result = run_attempt(run.attempt, run.remote, settings, table, cancel)
        except BaseException as exc:  # what run_attempt does not catch (SystemExit, ...)
            result = BlobdlError(f"lane failed unexpectedly: {exc!r}")
        finally:
            try:
                seats[run.seat].send(result)
            except Exception as exc:  # e.g. an error that does not pickle
                seats[run.seat].send(BlobdlError(f"lane's result could not be sent: {exc!r}"))

    thread = threading.Thread(target=lane, name=f"blobdl-lane-{run.attempt.slot}", daemon=True)
    try:
        start_thread(thread)
    except OutOfResources as exc:
        seats[run.seat].send(exc)
        return None
    return thread, cancel
