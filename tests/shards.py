"""Run the suite as N pytest sessions side by side (``python -m tests.shards N [ARGS]``).

Most tests wait on servers, processes and timeouts rather than compute, so one session
leaves a 2-core machine half idle. Each session is an ordinary single-threaded pytest run
(blobdl behaves differently in a threaded process, so an in-process runner such as
pytest-xdist, whose workers run threads, cannot host the suite); it runs its share of
the tests (``BLOBDL_TEST_SHARD``, read by ``tests/conftest.py``: consecutive tests that
took a session's share of the time recorded in ``tests/durations.json``, ``sessions_of``),
writes to its own log, and the logs are printed in order once all have ended. The exit
status is the first failing session's. With ``BLOBDL_TEST_DURATIONS=FILE`` each session
records what its tests took, and the runner merges them into FILE (``make durations``).

Stopped (Ctrl-C, or SIGTERM from a job runner that cancels), it interrupts every session
still running, waits for them to stop (pytest tears down its servers on SIGINT), prints
their logs and exits 128 + the signal: a session left behind would go on running the
suite, and its servers, on its own.
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

#: What each test took (seconds, its set-up and teardown included) in a whole run: how the
#: suite is cut into sessions. ``make durations`` records it again.
DURATIONS = Path(__file__).resolve().parent / "durations.json"

# Seconds a stopped session may take to tear down before it is killed.
_STOP_GRACE = 30.0


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python -m tests.shards N [PYTEST ARGS...]", file=sys.stderr)
        return 2
    count, args = int(argv[0]), argv[1:]
    started = time.monotonic()
    record = os.environ.pop("BLOBDL_TEST_DURATIONS", "")
    record = str(Path(record).resolve()) if record else ""
    _compile_sources()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_stopped)
    with tempfile.TemporaryDirectory(prefix="blobdl-shards-") as folder:
        runs: list[tuple[IO[bytes], subprocess.Popen[bytes]]] = []
        try:
            for k in range(count):
                log = open(os.path.join(folder, f"shard-{k}.log"), "w+b")  # noqa: SIM115
                env = {**os.environ, "BLOBDL_TEST_SHARD": f"{k}/{count}"}
                if record:
                    env["BLOBDL_TEST_DURATIONS"] = f"{record}.{k}"
                command = [sys.executable, *_warning_flags(), "-m", "pytest", *args]
                # A session of its own: a Ctrl-C at the terminal reaches the runner alone,
                # which hands it on once (a second SIGINT would cut pytest's teardown short).
                run = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
                runs.append((log, run))
            print(
                f"{count} pytest sessions side by side; their logs follow as they end", flush=True
            )
            codes, stopped = [run.wait() for _, run in runs], None
        except _Stopped as exc:
            stopped = exc.signum
            for signum in (signal.SIGINT, signal.SIGTERM):  # stopping is not cut half-way
                signal.signal(signum, signal.SIG_IGN)
            codes = _stop([run for _, run in runs])
        for k, (output, _run) in enumerate(runs):
            output.seek(0)
            print(f"===== session {k + 1} of {count} =====")
            sys.stdout.flush()
            sys.stdout.buffer.write(output.read())
            output.close()
    if record:
        _merge_durations(Path(record), count)
    took = time.monotonic() - started
    print(f"===== {count} sessions: exit {codes} in {took:.0f} s =====", flush=True)
    if stopped is not None:
        return 128 + stopped
    # A session left no test by a narrow selection says "no tests ran" (5): not a failure
    # while another session ran some.
    if 5 in codes and any(code != 5 for code in codes):
        codes = [0 if code == 5 else code for code in codes]
    return next((code for code in codes if code), 0)


#: The project's own code, imported by the interpreters the tests start.
_SOURCES = ("blobdl", "faultserver", "tests", "benchmarks")


def _compile_sources() -> None:
    """Byte-compile the project's own code once, before the sessions start. The suite starts
    thousands of interpreters (each CLI run, each download's exec'd coordinator, the servers,
    the clients that judge): where PYTHONDONTWRITEBYTECODE is set (as on this project's
    machines), none of them writes its __pycache__, so each compiled blobdl's modules again,
    some 15% of the suite's CPU. compileall writes them whatever that variable says; an
    interpreter that finds them only reads them."""
    root = Path(__file__).resolve().parent.parent
    for name in _SOURCES:
        compileall.compile_dir(root / name, quiet=1)


def sessions_of(weights: Sequence[float], count: int) -> list[int]:
    """Which of ``count`` sessions runs each test, given what each took (in collection
    order): the tests cut into ``count`` runs of consecutive tests that take about as long
    as each other (a test goes to the share its middle falls in), so sessions end together,
    within a test of each other, and a module's servers start in one session, or two where
    a cut falls in it, not in every session."""
    total = sum(weights)
    if total <= 0:
        return [i * count // len(weights) for i in range(len(weights))]
    shares, before = [], 0.0
    for weight in weights:
        shares.append(min(count - 1, int((before + weight / 2) / total * count)))
        before += weight
    return shares


def weights(names: Sequence[str], durations: Path = DURATIONS) -> list[float]:
    """What each named test took when ``durations`` was recorded; a test not in it (new
    since, or renamed) counts as a typical (the median) one."""
    try:
        took: dict[str, float] = json.loads(durations.read_text())
    except (OSError, ValueError):
        took = {}
    typical = statistics.median(took.values()) if took else 1.0
    return [took.get(name, typical) for name in names]


def _merge_durations(target: Path, count: int) -> None:
    """The sessions' files (``TARGET.K``) as one, sorted, then removed. A run that some
    session did not record (stopped before it ended) only updates TARGET's tests it ran."""
    parts = [target.with_name(f"{target.name}.{k}") for k in range(count)]
    took: dict[str, float] = {}
    if not all(part.exists() for part in parts):
        with contextlib.suppress(OSError, ValueError):
            took = json.loads(target.read_text())
    for part in parts:
        if part.exists():
            took.update(json.loads(part.read_text()))
            part.unlink()
    if took:
        rounded = {name: round(took[name], 3) for name in sorted(took)}
        target.write_text(json.dumps(rounded, indent=0) + "\n")


def _stop(runs: list[subprocess.Popen[bytes]]) -> list[int]:
    """Interrupt every session still running (SIGINT: pytest then tears its servers down),
    and their exit codes once they end (killed past ``_STOP_GRACE``)."""
    for run in runs:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
    deadline = time.monotonic() + _STOP_GRACE
    codes = []
    for run in runs:
        try:
            codes.append(run.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            run.kill()
            codes.append(run.wait())
    return codes


def _warning_flags() -> list[str]:
    """The interpreter's own -W options (the Makefile's -W error on 3.12+) go to every session."""
    return [f"-W{option}" for option in sys.warnoptions]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
