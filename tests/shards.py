"""Run the suite as N pytest sessions side by side (``python -m tests.shards N [ARGS]``).

Most tests wait on servers, processes and timeouts rather than compute, so one session
leaves a 2-core machine half idle. Each session is an ordinary single-threaded pytest run
(blobdl behaves differently in a threaded process, so an in-process runner such as
pytest-xdist, whose workers run threads, cannot host the suite); it runs every Nth test
(``BLOBDL_TEST_SHARD``, read by ``tests/conftest.py``), writes to its own log, and the logs
are printed in order once all have ended. The exit status is the first failing session's.
What failed, and its messages, is said once more at the very end: a job runner often shows
only a log's tail, and the failing session's log may be the first of several.

Stopped (Ctrl-C, or SIGTERM from a job runner that cancels), it interrupts every session
still running, waits for them to stop (pytest tears down its servers on SIGINT), prints
their logs and exits 128 + the signal: a session left behind would go on running the
suite, and its servers, on its own.
"""

from __future__ import annotations

import compileall
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import IO

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
    _compile_sources()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_stopped)
    with tempfile.TemporaryDirectory(prefix="blobdl-shards-") as folder:
        runs: list[tuple[IO[bytes], subprocess.Popen[bytes]]] = []
        try:
            for k in range(count):
                log = open(os.path.join(folder, f"shard-{k}.log"), "w+b")  # noqa: SIM115
                env = {**os.environ, "BLOBDL_TEST_SHARD": f"{k}/{count}"}
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
        failed: list[str] = []
        for k, (output, _run) in enumerate(runs):
            output.seek(0)
            print(f"===== session {k + 1} of {count} (tests #{k}, #{k + count}, ...) =====")
            sys.stdout.flush()
            text = output.read()
            sys.stdout.buffer.write(text)
            output.close()
            if codes[k] not in (0, 5):
                failed += [f"--- session {k + 1} (exit {codes[k]}):", *_what_failed(text)]
    took = time.monotonic() - started
    print(f"===== {count} sessions: exit {codes} in {took:.0f} s =====", flush=True)
    if failed:
        print("===== what failed (from the sessions' logs above) =====", *failed, sep="\n")
        sys.stdout.flush()
    if stopped is not None:
        return 128 + stopped
    # A session left no test by a narrow selection says "no tests ran" (5): not a failure
    # while another session ran some.
    if 5 in codes and any(code != 5 for code in codes):
        codes = [0 if code == 5 else code for code in codes]
    return next((code for code in codes if code), 0)


# Lines of one session's failures said again at the end: enough for the message, while an
# assertion that quotes a subprocess's whole output stays in the session's log above.
_FAILED_LINES = 60


def _what_failed(log: bytes) -> list[str]:
    """A failed session's failures in short: each failing test's header, its error lines
    (pytest's ``E`` lines and the file:line it failed at) and the short summary."""
    lines = log.decode(errors="replace").splitlines()
    kept = [
        line
        for line in lines
        if line.startswith(("____", "E ", "FAILED ", "ERROR "))
        or (":" in line and line.rstrip().endswith("Error") and not line.startswith(" "))
    ]
    if len(kept) > _FAILED_LINES:
        kept = [*kept[: _FAILED_LINES // 2], "[...]", *kept[-_FAILED_LINES // 2 :]]
    # A session that ended without a test's failure (a crash, an interrupt): its last lines.
    return kept or lines[-20:]


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
