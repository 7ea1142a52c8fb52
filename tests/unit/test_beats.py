"""How the scheduler tells a stalled pool process (``blobdl/batch/_beats.py``): only the
time it spent waiting for news counts, and a beat wipes the slate."""

from __future__ import annotations

from blobdl.batch._beats import Beats, stalled


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
