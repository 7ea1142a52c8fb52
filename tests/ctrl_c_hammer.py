"""Ctrl-C pressed twice, fast, at a threaded caller whose main thread downloads.

``python -m tests.ctrl_c_hammer [TRIALS] [SIGNALS]``: each trial starts a caller (a thread
besides the main one, so blobdl takes the clean-process path), lets its download run, then
sends it SIGNALS SIGINTs 0 to 0.4 ms apart (sent back to back, they merge into one pending
signal). Every trial should end in ``Interrupted`` at once, the partial kept, as it does for
a single-threaded caller (``HL_SINGLE=1``: 15 of 15). Found in review (branch
``hostile-library``), 30 trials of 3 signals on a threaded caller: 8 ``Interrupted``; 12 a
raw KeyboardInterrupt (a later SIGINT lands inside ``_clean_process._follow``'s handling of
the first, in ``_stop``, or in ``_reap``); 10 a raw KeyboardInterrupt only after the whole
download, the blob in place (it landed before ``_stop`` signalled the child, and ``call``'s
``finally`` then waits for a child that was never told to stop: 8 s instead of 0.7 s). With
the first fix, one caller in 20 hung for ever: a Ctrl-C inside ``Popen.wait`` left the
Popen's lock held. After the fixes (``_clean_process`` waits with waitpid, and stops the
child on anything that cuts it short), 20 trials: 18 ``Interrupted`` at once, 2 a raw
KeyboardInterrupt at once (the second Ctrl-C landing after the stop was decided), the
partial kept every time, none hung. A statistical tool, not a test (timing decides).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from faultserver.serverctl import make_blob, start_server

PART = 64 * 1024
CALLER = r"""
import json, os, sys, threading, time
import blobdl
url, out = sys.argv[1:3]
if os.environ.get("HL_SINGLE") != "1":
    threading.Thread(target=threading.Event().wait, daemon=True).start()
print("ready", flush=True)
started = time.monotonic()
try:
    blobdl.download(url, out, min_part_size=4 * 65536, max_part_size=4 * 65536,
                    connections=4, progress_interval=0.01, checkpoint_interval=0.05)
    outcome = "ok"
except BaseException as exc:
    outcome = type(exc).__name__
print(json.dumps({"outcome": outcome, "seconds": round(time.monotonic() - started, 1),
                  "files": sorted(os.listdir(os.path.dirname(out)))}), flush=True)
"""


def trial(url: str, signals: int, pause: float, gap: float) -> str:
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "out")
        proc = subprocess.Popen(
            [sys.executable, "-c", CALLER, url, out], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(pause)
        for _ in range(signals):
            proc.send_signal(signal.SIGINT)
            time.sleep(gap)  # signals sent back to back merge into one pending signal
        try:
            said, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return "hung (killed after 30 s)"
    lines = said.strip().splitlines()
    if not lines:
        return "no outcome (the caller died)"
    record = json.loads(lines[-1])
    done = "blob in place" if "out" in record["files"] else "partial kept"
    slow = "after the whole download" if record["seconds"] > 3 else "at once"
    return f"{record['outcome']}, {slow}, {done}"


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    signals = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory() as root:
        server = start_server(Path(root))
        try:
            name = "hammer.bin"
            make_blob(Path(root), name, 64 * PART)
            server.set_faults({"path": f"/files/{name}", "skip": 1, "times": None,
                               "action": "rate", "bps": 100_000})  # fmt: skip
            tally: collections.Counter[str] = collections.Counter()
            for n in range(trials):
                gap = 0.0001 * (n % 5)
                tally[trial(server.url(name), signals, 0.6 + 0.01 * (n % 20), gap)] += 1
        finally:
            server.stop()
    for outcome, count in tally.most_common():
        print(f"{count:4d}  {outcome}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    main()
