"""How the scheduler tells a stalled pool process (``blobdl/batch/_beats.py``): only the
time it spent waiting for news counts, and a beat wipes the slate."""

from __future__ import annotations

import selectors
import socket
import time
from types import SimpleNamespace

from blobdl.batch._beats import Beats, stalled
from blobdl.batch._stalls import Stalls
from blobdl.batch._watch import Watch
from blobdl.config import Settings


def test_a_process_is_quiet_only_for_the_time_the_scheduler_waited_since_its_last_beat() -> None:
    beats = Beats(2)
    beats.beat(0)
    beats.beat(1)
    beats.listened(0.5, [0, 1])  # both beat since the last look: nobody is quiet
    assert (beats.quiet(0), beats.quiet(1)) == (0.0, 0.0)
    beats.beat(1)
    beats.listened(0.75, [0, 1])
    beats.listened(0.75, [0, 1])
    assert (beats.quiet(0), beats.quiet(1)) == (1.5, 0.75)
    beats.beat(0)
    beats.listened(3.0, [0, 1])
    assert (beats.quiet(0), beats.quiet(1)) == (0.0, 3.75)


def test_a_process_not_looked_at_gathers_no_quiet_and_one_forked_again_starts_clean() -> None:
    beats = Beats(2)
    beats.listened(5.0, [1])
    assert (beats.quiet(0), beats.quiet(1)) == (0.0, 5.0)
    beats.restarted(1)
    assert beats.quiet(1) == 0.0
    beats.listened(1.0, [1])
    assert beats.quiet(1) == 1.0


def test_only_a_process_running_an_item_is_stalled_and_only_after_the_whole_timeout() -> None:
    assert stalled(30.0, True, 30.0)
    assert not stalled(29.9, True, 30.0)
    assert not stalled(300.0, False, 30.0)


def test_a_process_forked_again_is_judged_from_its_own_beats_not_its_predecessors() -> None:
    """The process that died beat after the scheduler's last look: the fork that replaces it
    starts from the count as it stands, so its first quiet wait counts (judged from the
    last look, one that never beats would go a whole look longer unkilled)."""
    beats = Beats(1)
    beats.listened(1.0, [0])
    beats.beat(0)  # the old process, after the last look, before it died
    beats.restarted(0)
    beats.listened(0.5, [0])  # the new one has not beaten yet
    assert beats.quiet(0) == 0.5


def test_the_scheduler_looks_every_quarter_of_the_stall_timeout_while_an_item_runs() -> None:
    """A process stopped mid-item is killed about a stall timeout after its last beat, not
    up to twice that: the scheduler's wait for news is cut at a quarter of it while a seat
    runs an item, and not cut at all when none does (or the pool is ending)."""
    stalls = Stalls(Settings(stall_timeout=2.0))
    running = SimpleNamespace(closing=False)
    assert stalls.listen_for(running, {0}) == 0.5  # type: ignore[arg-type]
    assert stalls.listen_for(running, set()) is None  # type: ignore[arg-type]
    assert stalls.listen_for(SimpleNamespace(closing=True), {0}) is None  # type: ignore[arg-type]
    assert stalls.listen_for(None, {0}) is None


class _Pool:
    """What ``Stalls.look`` reads of a pool: one process of one seat, and its kills."""

    def __init__(self) -> None:
        self.closing, self.ended, self.ranges = False, set[int](), [range(1)]
        self.procs, self.beats, self.kills = [None], Beats(1), list[int]()

    def kill(self, number: int) -> None:
        self.kills.append(number)


def test_a_stalled_process_is_killed_once_and_its_fork_is_judged_again() -> None:
    """Killed once while its death is not yet heard (looks go on meanwhile); heard dead, the
    process forked in its place is judged afresh: stalled in turn, it is killed in turn,
    not taken for one killed already (the batch would wait for it without end)."""
    stalls, pool = Stalls(Settings(stall_timeout=2.0)), _Pool()
    stalls.look(pool, {0}, 2.0)  # type: ignore[arg-type]
    stalls.look(pool, {0}, 0.5)  # type: ignore[arg-type]
    assert pool.kills == [0]
    assert stalls.silent(0) == 2.0  # heard dead: said once
    assert stalls.silent(0) is None
    pool.beats.restarted(0)
    stalls.look(pool, {0}, 2.0)  # type: ignore[arg-type]
    assert pool.kills == [0, 0]


def test_only_the_time_the_scheduler_spent_in_its_wait_is_said_to_be_waited() -> None:
    """``Watch.waited`` is the last wait for news alone: time the scheduler spent elsewhere
    between two waits (a slow callback of the caller's) is no process's quiet."""
    ours, theirs = socket.socketpair()
    with ours, theirs, Watch() as watch:
        watch.selector.register(ours, selectors.EVENT_READ, ("seat", 0))
        assert list(watch.ready(0.2)) == []
        assert 0.15 <= watch.waited < 1.0
        time.sleep(1.5)  # busy elsewhere
        theirs.send(b"x")
        assert list(watch.ready(5.0)) == [("seat", 0)]
        assert watch.waited < 1.0
