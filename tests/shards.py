"""Run the suite as N pytest sessions side by side (``python -m tests.shards N [ARGS]``).

Most tests wait on servers, processes and timeouts rather than compute, so one session
leaves a 2-core machine half idle. Each session is an ordinary single-threaded pytest run
(blobdl behaves differently in a threaded process, so an in-process runner such as
pytest-xdist, whose workers run threads, cannot host the suite); it runs every Nth test
(``BLOBDL_TEST_SHARD``, read by ``tests/conftest.py``), writes to its own log, and the logs
are printed in order once all have ended. The exit status is the first failing session's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python -m tests.shards N [PYTEST ARGS...]", file=sys.stderr)
        return 2
    count, args = int(argv[0]), argv[1:]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="blobdl-shards-") as folder:
        runs = []
        for k in range(count):
            log = open(os.path.join(folder, f"shard-{k}.log"), "w+b")  # noqa: SIM115
            env = {**os.environ, "BLOBDL_TEST_SHARD": f"{k}/{count}"}
            command = [sys.executable, *_warning_flags(), "-m", "pytest", *args]
            run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            runs.append((log, run))
        print(f"{count} pytest sessions side by side; their logs follow as they end", flush=True)
        codes = []
        for k, (log, run) in enumerate(runs):
            codes.append(run.wait())
            log.seek(0)
            print(f"===== session {k + 1} of {count} (tests #{k}, #{k + count}, ...) =====")
            sys.stdout.flush()
            sys.stdout.buffer.write(log.read())
            log.close()
    took = time.monotonic() - started
    print(f"===== {count} sessions: exit {codes} in {took:.0f} s =====", flush=True)
    # A session left no test by a narrow selection says "no tests ran" (5): not a failure
    # while another session ran some.
    if 5 in codes and any(code != 5 for code in codes):
        codes = [0 if code == 5 else code for code in codes]
    return next((code for code in codes if code), 0)


def _warning_flags() -> list[str]:
    """The interpreter's own -W options (the Makefile's -W error on 3.12+) go to every session."""
    return [f"-W{option}" for option in sys.warnoptions]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
