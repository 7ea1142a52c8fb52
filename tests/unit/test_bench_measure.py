"""The benchmark harness's memory sampling (benchmarks/measure.py): a process tree that
ended before any sample reached it has no measured peak, not a peak of zero bytes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from benchmarks.measure import _TreeSampler


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_tree_that_ended_before_its_first_sample_has_no_peak() -> None:
    proc = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while _state(proc.pid) != "Z":  # ended, not yet reaped: what a late sampler meets
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sampler = _TreeSampler(proc.pid)
        sampler.look()
        assert sampler.peak is None
    finally:
        proc.wait()


def test_a_live_tree_has_a_peak() -> None:
    proc = subprocess.Popen(["sleep", "5"])
    try:
        sampler = _TreeSampler(proc.pid)
        sampler.look()
        assert sampler.peak is not None and sampler.peak > 0
    finally:
        proc.kill()
        proc.wait()
