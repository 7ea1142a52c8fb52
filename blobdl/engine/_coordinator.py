"""The coordinator: starts lanes, samples their counters, detects stalls, reassigns work.

It runs in the calling process. Each attempt at a part is a lane (``_lane.run_attempt``)
on a thread of one of the crew's forked worker processes (``_worker``). The loop waits on
the lanes' result pipes, so a lane that ends, or whose process dies, is noticed at once;
every ``WATCH_INTERVAL`` (or ``progress_interval`` when shorter) it samples the shared
counter table, ends any lane whose part made no progress for ``stall_timeout`` (including
one still waiting for a status line), and restarts a lane far below its peers
(``_steal.laggards``) without counting a failure; progress and checkpoints go out every
``progress_interval``. A failed attempt is retried from the part's current offset after
Ollama's backoff; ``retries`` failures in a row without progress fail the download, and
every other lane is ended with it.

The coordinator decides *when*; the rest lives beside it: the parts and their table in
``_parts``, the worker processes and their lanes in ``_worker``, what to do after a failure in
``_failure.decide``, what to steal in ``_steal.choose``, and the rates in ``_rates``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from multiprocessing.connection import wait
from typing import NamedTuple

from ..config import MAX_BYTES, Settings
from ..errors import RetriesExhausted, Stalled, WorkerCrashed
from ..events import EventCallback, PartRetried, PartStalled, Progress
from ..http._pool import prepare_tls
from ..http._probe import resolve
from ..http._remote import Remote
from ..http._retry import Retry
from ..processes._signals import Interrupts
from ..store._destination import start_writeback
from ..store._resume import CheckpointCallback, PartRecord
from . import _failure
from ._failure import Failure, decide
from ._lane import Attempt
from ._parts import DONE, PENDING, RUNNING, WAITING, Part, Parts
from ._pinned import Pinned
from ._rates import BestRate, Pace, RateWindow
from ._steal import choose, laggards
from ._worker import Crew

log = logging.getLogger("blobdl")

WATCH_INTERVAL = 0.1  # seconds between two looks at the lanes' counters (at most)
LAG_GRACE = 0.5  # seconds a new attempt has (connection, first byte) before it can lag


class Tally(NamedTuple):
    bytes_fetched: int  # bytes written over all attempts (refetches included)
    bytes_received: int  # body bytes read off the wire over all attempts, kept or not
    retries: int  # failed attempts that were retried
    parts: int  # parts the blob was cut into
    steals: int  # ranges taken over from slow lanes or split off large ones
    final_size: int  # bytes in the file (the size learned at EOF when unknown upfront)


class Coordinator:
    """Runs the parts of one download to completion, or raises the reason it cannot."""

    def __init__(
        self,
        remote: Remote,
        parts: Sequence[PartRecord],
        fd: int,
        path: str,
        settings: Settings,
        tell: EventCallback | None = None,
        on_checkpoint: CheckpointCallback | None = None,
    ) -> None:
        self.settings, self.fd, self.path = settings, fd, path
        self.tell, self.on_checkpoint = tell, on_checkpoint
        self.ranged = remote.ranges and remote.size is not None
        prepare_tls(settings, remote.final_url)  # once, here: the workers inherit it
        self.pinned = Pinned(remote, lambda url: resolve(url, settings))
        self.parts = Parts(parts, settings.connections, Retry.from_settings(settings))
        self.table = self.parts.table  # the hasher follows it too
        self.crew = Crew(settings, self.table)  # forked when the first lane starts
        self.last_checkpoint = 0.0
        self.retries = 0
        self.steals = 0
        self.best = BestRate()  # the best lane's rate lately: a slow lane's yardstick
        self.fetched = 0
        self.started = 0.0
        self.last_told = 0.0
        self.window = RateWindow(0.0, 0)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> Tally:
        self.started = time.monotonic()
        self.window = RateWindow(self.started, self.parts.done())
        with Interrupts() as self.interrupts:
            try:
                self._loop()
            except BaseException:  # an interrupt now waits until workers are reaped, state saved
                self._wind_down(failing=True)
                raise
            self._wind_down(failing=False)
        # Without a known size, the blob ends where the single stream reached EOF.
        size = self.pinned.remote.size
        size = size if size is not None else self.table.pos(0)
        received = sum(self.table.received(p.slot) for p in self.parts)
        tally = Tally(self.fetched, received, self.retries, self.parts.planned(), self.steals, size)
        self.table.close()
        return tally

    def _loop(self) -> None:
        # Lanes are watched more often than progress is told: a lane that goes quiet must be
        # seen within a fraction of a second, not after a progress interval or two.
        interval = min(self.settings.progress_interval, WATCH_INTERVAL)
        next_sample = time.monotonic() + interval
        while not self.parts.finished():
            self.interrupts.check()
            now = time.monotonic()
            self._launch_ready(now)
            wake = min([next_sample, *self._retry_times()])
            sentinels = {p.worker.sentinel: p for p in self.parts if p.worker is not None}
            timeout = max(0.0, wake - time.monotonic())
            for ready in wait([*sentinels, *self.interrupts.waitables()], timeout=timeout):
                if ready in sentinels:
                    self._finish(sentinels[ready])
            self.interrupts.check()
            now = time.monotonic()
            if now >= next_sample:
                self._sample(now)
                next_sample = max(next_sample + interval, now)

    def _wind_down(self, failing: bool) -> None:
        """Reap every worker, save the last checkpoint, then tell the last progress. While an
        error is on its way out, neither step may replace it (a raising callback, a full
        disk): they are reported in a warning instead."""
        try:
            self._stop_all()
        finally:
            self.crew.stop()
        for step in (self._checkpoint, lambda: self._tell_progress(time.monotonic())):
            if not failing:
                step()
                continue
            try:
                step()
            except Exception as exc:
                log.warning("while stopping after a failure: %s", exc)

    def _retry_times(self) -> list[float]:
        """When waiting parts may start; none while every connection is busy (no spinning)."""
        if self.parts.running() >= self.settings.connections:
            return []
        return [p.not_before for p in self.parts if p.state == WAITING]

    def _launch_ready(self, now: float) -> None:
        running = self.parts.running()
        for part in self.parts:
            if running >= self.settings.connections:
                return
            if part.state == PENDING or (part.state == WAITING and part.not_before <= now):
                self._launch(part, now)
                running += 1
        while running < self.settings.connections and self._steal(now):
            running += 1

    def _steal(self, now: float) -> bool:
        """Give an idle connection the tail of a slow or large lane; False if none is worth it."""
        if not (self.ranged and self.settings.steal) or self.parts.full():
            return False
        grace = 2 * self.settings.progress_interval
        lanes = self.parts.lanes(now)
        decision = choose(lanes, self.best.value, self.settings.min_steal_size, grace)
        if decision is None or (decision.cut and not self._waiting(self.parts[decision.victim])):
            return False
        thief = self.parts.split(decision)
        self.steals += 1
        if decision.cut:  # a lane that has all but stopped: end it, keep its bytes
            victim = self.parts[decision.victim]
            self._kill(victim)
            victim.state = DONE
        self._launch(thief, now)
        return True

    def _launch(self, part: Part, now: float) -> None:
        if not self.ranged:  # without ranges a new attempt starts over
            self.table.set_pos(part.slot, 0)
        # Without stealing nothing moves a lane's end: one request per attempt does.
        first = self.settings.min_steal_size if self.settings.steal else MAX_BYTES
        attempt = Attempt(part.slot, self.ranged, first, self.fd, self.path)
        # Read before the launch: the lane may write its first bytes before launch returns.
        pos = self.table.pos(part.slot)
        self.table.set_asked(part.slot, pos)  # nothing asked yet
        part.state = RUNNING
        self.parts.share(self.settings.limit_rate)  # the newcomer's, and everyone else's smaller
        part.worker = self.crew.launch(attempt, self.pinned.remote)
        part.attempts += 1
        part.generation = self.pinned.generation
        part.pace = Pace(now, pos)

    # --- outcomes ---------------------------------------------------------------------------

    def _finish(self, part: Part) -> None:
        """A lane ended: collect its result, then mark the part done or retry it."""
        assert part.worker is not None
        error = part.worker.outcome()
        self._release(part)
        if error is None and self.parts.complete(part):
            part.state = DONE
            # A lane that finished between two samples still shows what a good lane does.
            self.best.saw(part.pace.overall(time.monotonic(), self.table.pos(part.slot)))
        else:
            self._failed(part, error or WorkerCrashed(0))

    def _failed(self, part: Part, error: BaseException) -> None:
        """Ask the policy what now, and do it."""
        pos, end = self.table.pos(part.slot), self.table.end(part.slot)
        stale = part.generation < self.pinned.generation
        redirected = self.pinned.redirected
        facts = Failure(error, pos, end, part.retry, redirected, stale, part.refreshed_at)
        verdict = decide(facts)
        part.retry = verdict.retry
        if verdict.action == _failure.FAIL:
            raise error
        if verdict.action == _failure.EXHAUSTED:
            raise RetriesExhausted(part.slot, part.start, end, part.attempts, error)
        if verdict.action == _failure.DONE:  # died after its last write: all there
            part.state = DONE
            return
        if verdict.action == _failure.REFRESH:  # blocks the loop: rare and short
            self.pinned.refresh()
            part.refreshed_at = pos
        part.state, part.not_before = WAITING, time.monotonic() + verdict.delay
        if verdict.action not in (_failure.REFRESH, _failure.AGAIN):
            self.retries += 1
            self._tell(PartRetried(part.slot, part.retry.failures, verdict.delay, str(error)))

    def _release(self, part: Part) -> None:
        """Forget a finished attempt: count its bytes."""
        self.fetched += max(0, self.table.pos(part.slot) - part.pace.origin)
        part.worker = None

    # --- sampling, stalls, shutdown ---------------------------------------------------------

    def _sample(self, now: float) -> None:
        self.parts.share(self.settings.limit_rate)
        told = now - self.last_told >= self.settings.progress_interval
        if told:
            self.best.fade()
        for part in self.parts:
            if part.state == RUNNING:
                self._watch(part, now)
        self._restart_lagging(now)
        start_writeback(self.fd)  # the disk works while the network does (see there)
        if now - self.last_checkpoint >= self.settings.checkpoint_interval:
            self._checkpoint()
            self.last_checkpoint = now
        if told:
            self.last_told = now
            self._tell_progress(now)

    def _watch(self, part: Part, now: float) -> None:
        """Sample a running lane; end it if it made no progress for ``stall_timeout``."""
        self.parts.observe(part, now)
        self.best.saw(part.pace.rate)
        quiet = part.pace.quiet(now)
        if quiet >= self.settings.stall_timeout:  # > 0: a lane that just moved is not quiet
            self._kill(part)
            self._tell(PartStalled(part.slot, quiet))
            self._failed(part, Stalled(self.settings.stall_timeout))

    def _restart_lagging(self, now: float) -> None:
        """Restart a lane far below its peers (``_steal.laggards``) on a new connection from
        where it is, without waiting for a worker to go idle. It is no failure: the retry
        budget is untouched (the stall timeout still decides what fails), and a part is
        restarted again only after it made progress."""
        if not self.ranged:  # one stream, nothing to compare it with
            return
        grace = max(LAG_GRACE, 2 * min(self.settings.progress_interval, WATCH_INTERVAL))
        for lane in laggards(self.parts.lanes(now), grace):
            part = self.parts[lane.slot]
            if not self._waiting(part):
                continue
            pos = self.table.pos(part.slot)
            if pos <= part.restarted_at:
                continue  # slow again at once: the range may be slow for everyone
            log.debug("part %d lags its peers: restarting it at %d", part.slot, pos)
            self._kill(part)
            part.restarted_at = pos
            self.steals += 1  # the lane's range is taken over by a new connection
            self._launch(part, now)

    @staticmethod
    def _waiting(part: Part) -> bool:
        """Cut only a lane whose worker waits on the network (not one starved of CPU)."""
        return part.worker is not None and part.worker.waiting()

    def _checkpoint(self) -> None:
        """Hand the parts' positions to the checkpointer."""
        if self.on_checkpoint is not None and self.ranged:
            self.on_checkpoint(self.parts.records())

    def _kill(self, part: Part) -> None:
        """End a lane that cannot be trusted to notice by itself (blocked on its socket)."""
        if part.worker is not None:
            part.worker.kill()
        self._release(part)

    def _stop_all(self) -> None:
        for part in self.parts:
            if part.worker is not None:
                self._kill(part)
                if part.state == RUNNING:
                    part.state = PENDING

    def _tell(self, event: PartRetried | PartStalled) -> None:
        if self.tell is not None:
            self.tell(event)

    def _tell_progress(self, now: float) -> None:
        if self.tell is None:
            return
        parts = self.parts.progress()
        done = sum(p.done for p in parts)
        rate, elapsed = self.window.rate(now, done), now - self.started
        active = self.parts.running()
        total = self.pinned.remote.size
        self.tell(Progress(done, total, rate, elapsed, active, self.retries, parts))
