"""The coordinator: runs one download's parts as lanes, watches them, and decides when to act.

It runs in the calling process. One download, in the order of the code below:

- ``run`` loops (``_loop``) until every part is done. ``_launch_ready`` starts each pending
  part, and each waiting one whose backoff is over, as far as its ``_allowance`` lets it
  (its connections, and under a rate limit the lanes that fill it); a connection left idle
  steals (``_steal.choose`` picks, ``Parts.split`` cuts). ``_launch`` starts a
  lane (``_lane.run_attempt``) on a thread of a forked worker process (``_worker``), and
  the part measures the attempt from there (``Part.start_attempt``).
- The loop waits on the lanes' result pipes, so a lane that ends, or whose process dies, is
  noticed at once (``_finish``): its part is done, or ``_failed`` asks ``_failure.decide``
  what now. A final error fails the download, and so do ``retries`` failures in a row
  without progress (every other lane ends with it); any other failure is retried from the
  part's offset after Ollama's backoff, once an expired signed URL is refreshed
  (``_pinned``).
- Every ``WATCH_INTERVAL`` (or ``progress_interval`` when shorter) ``_sample`` measures
  each lane (``Part.observe``, the rates in ``_rates``), ends one that made no progress for
  ``stall_timeout`` (even one still waiting for a status line), and restarts one far below
  its peers (``_steal.laggards``) without counting a failure. Checkpoints go out every
  ``checkpoint_interval``, progress every ``progress_interval``.
- ``_wind_down`` reaps the workers and saves the last checkpoint; ``run`` returns what the
  parts did (``Parts.tally``).
- A batch item runs under a ``Share`` its batch writes: how many lanes it may run and its
  share of the rate limit, read afresh (``_allowance``) at every launch and sample (they
  grow as the batch's other items end); a single download runs under its settings.

The coordinator decides *when*; the rest lives beside it: each part's record, measurements
and counter-table slot in ``_parts``, the workers in ``_worker``, the lane in ``_lane``,
what to do after a failure in ``_failure``, what to steal and what lags in ``_steal``, the
rates in ``_rates``, the remote and its refresh in ``_pinned``, what it may run now in
``_allowance``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from pathlib import Path

from ..config import MAX_BYTES, Settings
from ..errors import RetriesExhausted, Stalled, WorkerCrashed
from ..events import EventCallback, PartRetried, PartStalled
from ..http._pool import prepare_tls
from ..http._remote import Remote
from ..http._retry import Retry
from ..processes._signals import Interrupts
from ..store._destination import check_partial, start_writeback
from ..store._resume import CheckpointCallback, PartRecord
from . import _failure
from ._allowance import Allowance
from ._failure import decide
from ._lane import Attempt
from ._parts import RUNNING, Part, Parts, Tally
from ._pinned import Pinned, Refresh
from ._rates import BestRate, RateWindow
from ._share import Receiving, Share
from ._steal import answer_wait, choose, laggards
from ._worker import Crew

log = logging.getLogger("blobdl")

WATCH_INTERVAL = 0.1  # seconds between two looks at the lanes' counters (at most)
LAG_GRACE = 0.5  # seconds a new attempt has (connection, first byte) before it can lag


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
        share: Share | None = None,
        to_host: Callable[[str], None] | None = None,
    ) -> None:
        self.settings, self.fd, self.path = settings, fd, path
        self.tell, self.on_checkpoint = tell, on_checkpoint
        self.ranged = remote.ranges and remote.size is not None
        prepare_tls(settings, remote.final_url)  # once, here: the workers inherit it
        self.receiving = Receiving(share)  # who of its batch receives where (a batch item's)
        # ``to_host``: where its batch counts its lanes, asked before a refresh moves them
        refresh = Refresh(settings, self.receiving, to_host, lambda: self.interrupts)
        self.pinned = Pinned(remote, refresh)
        self.parts = Parts(parts, settings.connections, Retry.from_settings(settings))
        self.table = self.parts.table  # the hasher follows it too
        self.crew = Crew(settings, self.table)  # forked when the first lanes start
        self.best = BestRate()  # the best lane's rate lately: a slow lane's yardstick
        self.window = RateWindow(0.0, 0)  # the download's rate, for progress
        self.last_checkpoint = self.last_told = 0.0
        # what it may run now: its lanes and their rate (a batch item's live grant, ``share``)
        self.allowance = Allowance(settings, share, self.crew, self.parts, self.pinned)

    # --- the loop ---------------------------------------------------------------------------

    def run(self, started: Callable[[], None] = lambda: None) -> Tally:
        """Run the parts; ``started()`` once the first lanes are launched (their workers
        forked): a callback that starts a thread on ``Started`` comes after those forks."""
        self.window = RateWindow(time.monotonic(), self.parts.done())
        with Interrupts() as self.interrupts:
            try:
                self._launch_ready(time.monotonic())
                self.receiving.lanes(self.parts, self.pinned.remote.final_url)  # they ask
                started()
                self._loop()
            except BaseException:  # an interrupt now waits until workers are reaped, state saved
                self._wind_down(failing=True)
                raise
            self._wind_down(failing=False)
        tally = self.parts.tally(self.pinned.remote.size)
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
            sentinels = {p.worker.sentinel: p for p in self.parts.runners() if p.worker is not None}
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
        disk): they are reported in a warning instead.

        The checkpoint is saved on success too: what can still fail (the last progress's
        callback, the digest, the fsync and the rename) must leave a partial that a rerun
        only renames. A small blob, for which it would cost most, has no coordinator."""
        try:
            self.parts.stop()
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
        """When the first waiting part may start; none while every lane is busy (no
        spinning)."""
        first = self.parts.next_retry()
        if first is None or self.parts.running() >= self.allowance.lanes():
            return []  # (or the lanes fill the rate limit: the next look decides)
        return [first]

    def _launch_ready(self, now: float) -> None:
        """Start what may start (pending parts, waiting ones whose backoff is over) as far
        as its allowance has room now (its connections; under a rate limit, the lanes that
        fill it), then let idle connections steal. Its cost is the lanes it starts, whatever
        the number of parts."""
        room = self.allowance.room(now)
        while room > 0:
            part = self.parts.next_ready(now)
            if part is None:
                break
            self._launch(part, now)
            room -= 1
        while room > 0 and self._steal(now):
            room -= 1

    def _steal(self, now: float) -> bool:
        """Give an idle connection the tail of a slow or large lane; False if none is worth it."""
        if not (self.ranged and self.settings.steal) or self.parts.full():
            return False
        grace = 2 * self.settings.progress_interval
        lanes = self.parts.lanes(now)
        answer_time = self.pinned.remote.answer_time  # a lane waiting that long is not quiet
        decision = choose(lanes, self.best.value, self.settings.min_steal_size, grace, answer_time)
        if decision is None:
            return False
        victim = self.parts[decision.victim]
        if decision.cut and not victim.waits_on_network():
            return False
        thief = self.parts.split(decision)
        if decision.cut:  # a lane that has all but stopped: end it, keep its bytes
            self.parts.kill(victim)
            victim.finish()
        self._launch(thief, now)
        return True

    def _launch(self, part: Part, now: float) -> None:
        counts = self.parts.ready(part, over=not self.ranged)  # no ranges: from the start
        self.parts.share(self.allowance.limit(), joining=part)  # everyone else's smaller
        # Without stealing nothing moves a lane's end: one request per attempt does.
        first = self.settings.min_steal_size if self.settings.steal else MAX_BYTES
        attempt = Attempt(part.slot, self.ranged, first, self.fd, self.path)
        worker = self.crew.launch(attempt, self.pinned.remote)
        part.start_attempt(now, counts, self.pinned.generation, worker)

    # --- outcomes ---------------------------------------------------------------------------

    def _finish(self, part: Part) -> None:
        """A lane ended: collect its result, then mark the part done or retry it."""
        assert part.worker is not None
        error = part.worker.outcome()
        self.parts.release(part)
        self.receiving.lanes(self.parts, self.pinned.remote.final_url)
        if error is None and self.parts.complete(part):
            part.finish()
            # A lane that finished between two samples still shows what a good lane does.
            self.best.saw(part.pace.overall(time.monotonic(), self.table.received(part.slot)))
        else:
            self._failed(part, error or WorkerCrashed(0))
        self.parts.share(self.allowance.limit())  # what it was given goes to the others now

    def _failed(self, part: Part, error: BaseException) -> None:
        """Ask the policy what now, and do it."""
        pos, end = self.table.pos(part.slot), self.table.end(part.slot)
        pinned = self.pinned
        others = self.parts.others_receiving(part) or self.receiving.full(error)
        facts = part.failure(error, pos, end, pinned.redirected, pinned.generation, others)
        verdict = decide(facts)
        if verdict.action == _failure.FAIL:
            raise error
        if verdict.action == _failure.EXHAUSTED:
            raise RetriesExhausted(part.slot, part.start, end, part.attempts, error)
        if verdict.action == _failure.DONE:  # died after its last write: all there
            part.finish()
            return
        if verdict.action == _failure.REFRESH:  # blocks the loop: rare and short
            pinned.refresh()
            part.refreshed(pos)
        part.wait(verdict, time.monotonic())
        if verdict.action in (_failure.RETRY, _failure.FULL):  # a refresh is no failure
            failures = verdict.retry.failures + verdict.retry.waits  # in a row, both kinds
            self._tell(PartRetried(part.slot, failures, verdict.delay, str(error)))

    # --- sampling, stalls, shutdown ---------------------------------------------------------

    def _sample(self, now: float) -> None:
        # The file replaced or truncated under the workers: stop now, not once the rest of
        # the blob went into it (``finalize`` checks again before its rename).
        check_partial(self.fd, Path(self.path), self.pinned.remote.size)
        self.parts.share(self.allowance.limit())
        self.receiving.lanes(self.parts, self.pinned.remote.final_url)
        told = now - self.last_told >= self.settings.progress_interval
        if told:
            self.best.fade()
        for part in self.parts.runners():
            if part.state == RUNNING:  # still: watching one may end another (none today)
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
        self.parts.sample(part, now)
        self.best.saw(part.pace.rate)
        quiet = part.pace.quiet(now)
        if quiet >= self.settings.stall_timeout:  # > 0: a lane that just moved is not quiet
            self.parts.kill(part)
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
        waits = answer_wait(self.pinned.remote.answer_time)
        for lane in laggards(self.parts.lanes(now), grace, waits):
            part = self.parts[lane.slot]
            if not part.waits_on_network():
                continue
            pos = self.table.pos(part.slot)
            if not part.restarting(pos):
                continue
            log.debug("part %d lags its peers: restarting it at %d", part.slot, pos)
            self.parts.kill(part)
            self._launch(part, now)

    def _checkpoint(self) -> None:
        """Hand the parts' positions to the checkpointer."""
        if self.on_checkpoint is not None and self.ranged:
            self.on_checkpoint(self.parts.records())

    def _tell(self, event: PartRetried | PartStalled) -> None:
        if self.tell is not None:
            self.tell(event)

    def _tell_progress(self, now: float) -> None:
        if self.tell is not None:
            size = self.pinned.remote.size
            self.tell(self.parts.progress(now, self.window, size))
