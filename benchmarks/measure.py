"""Run one command and measure its whole process tree: wall time, CPU time, peak memory."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import IO

import psutil

SAMPLE_INTERVAL = 0.1  # seconds between two memory samples of the tree


@dataclass(frozen=True)
class Measured:
    exit_code: int | None  # None: killed at the timeout
    wall_s: float
    #: user + system seconds of the process and every descendant it reaped.
    cpu_s: float
    #: Largest sum of USS over the process and its live descendants, one sample at a time
    #: (None: the tree had ended before the first sample reached it).
    peak_uss: int | None
    stdout: str
    stderr: str
    #: (seconds since start, summed USS, open descriptors, processes) of the tree, per sample.
    samples: tuple[tuple[float, int, int, int], ...] = ()


def run_measured(
    cmd: list[str], *, timeout: float, cwd: str | None = None, env: dict[str, str] | None = None
) -> Measured:
    """Run ``cmd`` to completion (or ``timeout``), sampling its tree every 0.1 s.

    CPU comes from ``getrusage(RUSAGE_CHILDREN)`` deltas: it includes workers that were
    reaped between two samples, which sampling psutil would miss. The caller must not reap
    other children meanwhile (a running server child is fine: it is reaped only later).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        # A session of its own, so a timeout can kill the tool and all its workers at once.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        sampler = _TreeSampler(proc.pid)
        sampler.look()  # at once, here: a short run may end before the thread first runs
        sampler.start()
        exit_code = _wait(proc, timeout)
        wall = time.perf_counter() - started
        sampler.stop()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        samples = tuple(sampler.samples)
        return Measured(exit_code, wall, cpu, sampler.peak, _text(out), _text(err), samples)


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        return None
    except BaseException:  # Ctrl-C: take the tool and its workers down with us
        _kill_tree(proc)
        raise


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _text(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


class _TreeSampler(threading.Thread):
    """Samples the summed USS, descriptors and processes of a process tree until stopped;
    keeps the peak USS and every sample."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak: int | None = None  # None until a sample finds a live process
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop_event = threading.Event()
        self._root: psutil.Process | None = None
        self._since = time.perf_counter()  # (Thread has a _started of its own)

    def run(self) -> None:
        while not self._stop_event.is_set() and self.look():
            self._stop_event.wait(SAMPLE_INTERVAL)

    def look(self) -> bool:
        """One sample; False once the tree's root is gone."""
        try:
            root = self._root or psutil.Process(self.pid)
        except psutil.Error:
            return False
        self._root = root
        uss, fds, procs = _tree_sample(root)
        if procs:
            self.peak = max(self.peak or 0, uss)
            self.samples.append((time.perf_counter() - self._since, uss, fds, procs))
        return True

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _tree_sample(root: psutil.Process) -> tuple[int, int, int]:
    """(summed USS, open descriptors, live processes) of the tree now."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    total = fds = alive = 0
    for proc in procs:
        # A worker may exit between the listing and the read; one that has ended but is not
        # yet reaped reads as zero bytes and descriptors, and is not counted.
        with contextlib.suppress(psutil.Error):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            total += proc.memory_full_info().uss
            fds += proc.num_fds()
            alive += 1
    return total, fds, alive
