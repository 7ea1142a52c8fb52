"""A stop that lands in the middle of a step that must be whole takes effect once it is.

A signal raises at an arbitrary bytecode of the main thread. A message read off a pipe (its
length prefix, then its body) and an item's last line (the item noted as ended, then its line
written) are steps that a stop must not cut in two: a stop between the halves left the stream
out of step (a committed download then reported as interrupted), or an item that finished
without its ``finished`` line. Each test sends a real signal at the exact point between the
halves, from a patch the test's own program makes (no hook in blobdl).

A download that a caller's callback makes (B, inside A) is a step of its own too: its commit
is B's, and neither B's success nor A's leaves the other deaf to a stop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl.errors import EXIT_INTERRUPTED
from faultserver.serverctl import ServerHandle
from tests.conftest import REPO, Blob, interrupted_once_under_way, sha256_file

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


# A caller whose callback downloads too: A, checked against its digest, starts; its Started
# callback stops A's hasher (SIGSTOP, its pid printed) and downloads B, which commits. A then
# waits for its hasher's answer: the test sends SIGINT there, then lets the hasher go on.
NESTED = """
import os, signal, sys
import blobdl
from blobdl.engine import _hasher
url_a, out_a, digest_a, url_b, out_b = sys.argv[1:6]
original, hashers = _hasher.PrefixHasher.__init__, []

def init(self, *args):
    original(self, *args)
    hashers.append(self._proc.pid)

_hasher.PrefixHasher.__init__ = init

def on_event(event):
    if type(event).__name__ == "Started" and event.url == url_a:
        os.kill(hashers[0], signal.SIGSTOP)
        print(hashers[0], flush=True)
        blobdl.download(url_b, out_b)

try:
    result = blobdl.download(url_a, out_a, digest=digest_a, on_event=on_event)
except blobdl.BlobdlError as exc:
    print(type(exc).__name__, exc, flush=True)
else:
    print("finished", result.size, flush=True)
"""


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _waits_for(pid: int, hasher: int) -> None:
    """Until ``pid``'s main thread sleeps reading a socket with only ``hasher`` left as its
    child: every worker is gone, so the read is the hasher's answer (``finish``)."""
    wchan = Path(f"/proc/{pid}/wchan")
    give_up = time.monotonic() + 60  # a guard against a hang, not a measure
    while not (wchan.read_text() == "unix_stream_read_generic" and _children(pid) == {hasher}):
        assert time.monotonic() < give_up, "the caller never waited for its hasher"
        time.sleep(0.005)


def test_a_download_in_a_callback_commits_only_for_itself(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """B, downloaded in A's callback, is complete; A is not: a SIGINT while A waits for its
    digest stops A (its partial kept), as it would have without B."""
    a, b = make(SIZE, seed=5104), make(SIZE // 4, seed=5105)
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    args = [a.url, str(out_a), f"sha256:{a.sha256}", b.url, str(out_b)]
    caller = subprocess.Popen([sys.executable, "-c", NESTED, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip
    assert caller.stdout is not None
    try:
        hasher = int(caller.stdout.readline())
        try:
            _waits_for(caller.pid, hasher)
            caller.send_signal(signal.SIGINT)
        finally:
            os.kill(hasher, signal.SIGCONT)
        said, errors = caller.communicate(timeout=60)
    finally:
        caller.kill()
        caller.wait()
    assert "Traceback" not in errors, errors
    assert said.strip() == f"Interrupted interrupted by signal {signal.SIGINT}"
    assert not out_a.exists()
    assert sha256_file(out_b) == b.sha256


# A caller whose callback downloads B: in A's Started callback (A runs on), or once A has
# finished (its Finished callback). B's outcome and A's are printed, each on a line.
CALLBACK_CALLS = """
import os, signal, sys
import blobdl
url_a, out_a, url_b, out_b, when, cut = sys.argv[1:7]

def cut_b(event):
    if cut == "b-finished" and type(event).__name__ == "Finished":
        os.kill(os.getpid(), signal.SIGINT)

def on_event(event):
    if type(event).__name__ == when and getattr(event, "result", event).url == url_a:
        print("calling", flush=True)
        try:
            said = f"finished {blobdl.download(url_b, out_b, on_event=cut_b).size}"
        except blobdl.BlobdlError as exc:
            said = f"{type(exc).__name__} {exc}"
        print("B", said, flush=True)

try:
    result = blobdl.download(url_a, out_a, on_event=on_event)
except blobdl.BlobdlError as exc:
    print("A", type(exc).__name__, exc, flush=True)
else:
    print("A finished", result.size, flush=True)
"""


def call_back(
    blob_a: Blob, blob_b: Blob, tmp_path: Path, when: str, cut: str
) -> subprocess.Popen[str]:
    args = [blob_a.url, str(tmp_path / "a"), blob_b.url, str(tmp_path / "b"), when, cut]
    return subprocess.Popen([sys.executable, "-c", CALLBACK_CALLS, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip


def test_a_signal_after_a_nested_downloads_commit_stops_the_outer_one_only(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """B, downloaded in A's callback, is cut as its own Finished is told: B has committed (its
    file is in place), so B succeeds; A has not, and stops."""
    a, b = make(SIZE, seed=5106), make(SIZE // 4, seed=5107)
    caller = call_back(a, b, tmp_path, "Started", "b-finished")
    said, errors = caller.communicate(timeout=60)
    assert "Traceback" not in errors, errors
    sig = signal.SIGINT
    assert said.splitlines() == [
        "calling",
        f"B finished {b.size}",
        f"A Interrupted interrupted by signal {sig}",
    ]
    assert sha256_file(tmp_path / "b") == b.sha256
    assert not (tmp_path / "a").exists()


def test_a_download_in_a_finished_downloads_callback_can_be_stopped(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A has committed; B, downloaded in A's Finished callback, has not: a SIGINT while B
    waits for its server's answer stops B, as Ctrl-C stops a callback's wait."""
    a, b = make(SIZE, seed=5108), make(SIZE // 4, seed=5109)
    path = f"/files/{b.name}"
    server.set_faults({"path": path, "action": "no_response", "hold": 30})
    caller = call_back(a, b, tmp_path, "Finished", "")
    try:
        assert caller.stdout is not None
        assert caller.stdout.readline() == "calling\n"
        while not server.stats()["per_path"].get(path):  # B's request is held by the server
            time.sleep(0.005)
        caller.send_signal(signal.SIGINT)
        said, errors = caller.communicate(timeout=60)
    finally:
        caller.kill()
        caller.wait()
    assert "Traceback" not in errors, errors
    sig = signal.SIGINT
    assert said.splitlines() == [
        f"B Interrupted interrupted by signal {sig}",
        f"A finished {a.size}",
    ]
    assert sha256_file(tmp_path / "a") == a.sha256


# A caller whose callback downloads an optional B when A has started, and lets B's
# failure pass (``except BlobdlError``): a stop that lands in B is B's failure, and A's too. A is
# one download, or a batch of one item on this machine (its callback told each item's events).
SIDECAR = """
import sys, threading
import blobdl
url_a, out_a, url_b, out_b, threaded, around = sys.argv[1:7]
if threaded == "threaded":  # each download then runs in a clean process of its own
    threading.Thread(target=threading.Event().wait, daemon=True).start()

def b_event(event):
    if type(event).__name__ == "Progress" and not b_event.said:
        b_event.said = True
        print("B under way", flush=True)

def on_event(event):
    event = getattr(event, "event", event)  # a batch's: the item's own inside
    if type(event).__name__ == "Started" and not on_event.asked:
        on_event.asked = True
        try:
            blobdl.download(url_b, out_b, on_event=b_event, parts=1, progress_interval=0.05)
        except blobdl.BlobdlError as exc:  # optional: its failure is only said
            print("B", type(exc).__name__, flush=True)

def download_a():
    if around == "download":
        return blobdl.download(url_a, out_a, on_event=on_event, parts=1, progress_interval=0.05)
    [done] = blobdl.download_many([blobdl.Item(url_a, out_a)], on_event=on_event, parts=1,
                                  progress_interval=0.05)
    return done.result if done.ok else done.error

on_event.asked = b_event.said = False
try:
    result = download_a()
except blobdl.BlobdlError as exc:
    print("A", type(exc).__name__, exc, exc.exit_code, flush=True)
else:
    print("A ended", result, flush=True)
"""


@pytest.mark.parametrize("around", ["download", "batch"])
@pytest.mark.parametrize("caller", ["single", "threaded"])
def test_a_stop_that_a_callbacks_own_download_lets_pass_still_stops_the_download_around_it(
    make: Make, server: ServerHandle, tmp_path: Path, caller: str, around: str
) -> None:
    """A SIGINT while B (in A's callback) is under way stops B; the callback lets B's
    ``Interrupted`` pass, as it lets any failure of B pass. The signal was A's too: A (a
    download, or a batch on this machine) stops at once, ``Interrupted`` (exit 130), its
    partial kept, never running on to its last byte first (40 s at its pace)."""
    a, b = make(4 * SIZE, seed=5110), make(SIZE, seed=5111)
    paced = {"times": None, "action": "rate", "bps": 100_000}
    server.set_faults({"path": f"/files/{a.name}", **paced}, {"path": f"/files/{b.name}", **paced})
    args = [a.url, str(tmp_path / "a"), b.url, str(tmp_path / "b"), caller, around]
    said, errors = interrupted_once_under_way(SIDECAR, args, 30)  # 30 s: a guard, not a measure
    assert "Traceback" not in errors, errors
    stopped = f"A Interrupted interrupted by signal {signal.SIGINT} {EXIT_INTERRUPTED}"
    assert said.splitlines() == ["B Interrupted", stopped]
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


# A batch caller whose callback notes each item's last word, then (with CUT) is stopped by a
# SIGINT to itself before it returns from the first: the word it was told, and what its
# callback saw raised in it.
LAST_WORD = """
import json, os, signal, sys
import blobdl
url, out, cut = sys.argv[1:4]
said = []

def on_event(batch_event):
    name = type(batch_event.event).__name__
    if name not in ("Finished", "Failed"):
        return
    said.append([batch_event.item, name])
    if cut == "cut" and len(said) == 1:
        try:
            os.kill(os.getpid(), signal.SIGINT)  # raises here, at once
        except KeyboardInterrupt:
            said.append("cut")
            raise

try:
    blobdl.download_many([blobdl.Item(url, out)], on_event=on_event)
except blobdl.Interrupted:
    said.append("Interrupted")
print(json.dumps(said))
"""


@pytest.mark.parametrize("cut", ["cut", "whole"])
def test_an_items_last_word_is_told_again_only_to_a_callback_a_stop_cut_short(
    make: Make, server: ServerHandle, tmp_path: Path, cut: str
) -> None:
    """The item finished (its file in place). A callback a stop cut short as it heard its
    ``Finished`` (the KeyboardInterrupt raised in it) may not have taken it in, and is told
    it again as the batch stops (docs/library.md); one that heard it to its end, never."""
    blob = make(SIZE, seed=5112)
    out = tmp_path / "out"
    args = [sys.executable, "-c", LAST_WORD, blob.url, str(out), cut]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "Traceback" not in done.stderr, done.stderr
    said = json.loads(done.stdout)
    if cut == "cut":
        assert said == [[0, "Finished"], "cut", [0, "Finished"], "Interrupted"]
    else:
        assert said == [[0, "Finished"]]
    assert sha256_file(out) == blob.sha256
