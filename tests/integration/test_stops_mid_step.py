"""A stop that lands in the middle of a step that must be whole takes effect once it is.

A signal raises at an arbitrary bytecode of the main thread. A message read off a pipe (its
length prefix, then its body) and an item's last line (the item noted as ended, then its line
written) are steps that a stop must not cut in two: a stop between the halves left the stream
out of step (a committed download then reported as interrupted), or an item that finished
without its ``finished`` line. Each test sends a real signal at the exact point between the
halves, from a patch the test's own program makes (no hook in blobdl).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from blobdl.errors import EXIT_INTERRUPTED
from faultserver.serverctl import ServerHandle
from tests.conftest import REPO, Blob, sha256_file

Make = Callable[..., Blob]
SIZE = 1_000_000

# A threaded caller (a thread waits beside its main thread) downloading from its main thread,
# in a clean process: SIGTERM is sent to itself just after the length prefix of the first
# message from that process that names WHAT (peeked at) is read, before the message's body.
PREFIX_CUT = """
import os, signal, socket, struct, sys, threading
from multiprocessing.connection import Connection
import blobdl
url, out, what = sys.argv[1], sys.argv[2], sys.argv[3].encode()
threading.Thread(target=threading.Event().wait, daemon=True).start()
original, fired = Connection._recv, []

def recv(self, size, *args):
    got = original(self, size, *args)
    if size == 4 and not fired:
        length = struct.unpack("!i", got.getvalue())[0]
        with socket.socket(fileno=os.dup(self.fileno())) as peer:
            body = peer.recv(length, socket.MSG_PEEK | socket.MSG_WAITALL)
        if what in body:
            fired.append(what)
            os.kill(os.getpid(), signal.SIGTERM)
    return got

Connection._recv = recv
try:
    result = blobdl.download(url, out, min_part_size=65536, max_part_size=65536)
except blobdl.BlobdlError as exc:
    print(type(exc).__name__, exc, fired)
else:
    print("finished", result.size, fired)
"""


def cut_at(what: str, blob: Blob, out: Path) -> str:
    """What the caller of PREFIX_CUT printed."""
    done = subprocess.run([sys.executable, "-c", PREFIX_CUT, blob.url, str(out), what],
                          capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout.strip()


def test_a_signal_between_a_messages_prefix_and_body_loses_no_finished(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The signal lands as the ``Finished`` message is read: the download had committed (its
    file is in place), so the caller gets its result, as in its own process."""
    blob = make(SIZE, seed=5101)
    out = tmp_path / "out"
    assert cut_at("Finished", blob, out) == f"finished {SIZE} [b'Finished']"
    assert sha256_file(out) == blob.sha256


def test_a_signal_between_a_messages_prefix_and_body_still_stops_the_download(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The same cut in a message before the commit (``Started``): the download stops, as
    the signal says, its partial kept; nothing misread on the way."""
    blob = make(SIZE, seed=5102)
    out = tmp_path / "out"
    said = cut_at("Started", blob, out)
    assert said == f"Interrupted interrupted by signal {signal.SIGTERM} [b'Started']"
    assert not out.exists()


# ``blobdl ARGS`` with SIGTERM sent to itself as its callback starts on the first ``finished``
# event of an item: the item is noted as ended, its line not yet written.
LINE_CUT = """
import os, signal, sys
from blobdl.cli._display import Display
original, fired = Display.item_event, []

def item_event(self, batch_event):
    if type(batch_event.event).__name__ == "Finished" and not fired:
        fired.append(batch_event)
        os.kill(os.getpid(), signal.SIGTERM)
    return original(self, batch_event)

Display.item_event = item_event
sys.argv = ["blobdl", *sys.argv[1:]]
from blobdl.cli import run
run()
"""


def test_a_signal_as_an_items_finished_line_is_written_loses_no_line(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """-i --json: the signal lands between the item noted as ended and its line written.
    The run stops (exit 130), and the item that finished (its file in place) has its
    ``finished`` line, once: a consumer of the lines hears of every file it has."""
    blob = make(SIZE, seed=5103)
    out = tmp_path / "out"
    (tmp_path / "list").write_text(f"{blob.url} {out}\n")
    args = [sys.executable, "-c", LINE_CUT, "-i", str(tmp_path / "list"), "--json"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == EXIT_INTERRUPTED, done
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    ends = [(r.get("item"), r["event"]) for r in lines if r["event"] in ("finished", "failed")]
    assert ends.count((0, "finished")) == 1, lines
    assert [r for r in lines if r.get("item") == 0][-1]["event"] == "finished", lines
    assert sha256_file(out) == blob.sha256
