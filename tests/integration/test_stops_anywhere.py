"""A stop is never swallowed on its way: SIGINT and SIGTERM end the download wherever they land.

A signal raises at an arbitrary bytecode of the main thread, so it can land inside code that
catches every ``Exception``: ours (the redirect body drained for its connection, the scheduler
setting a batch up, an argument's parser), urllib3's, the standard library's (the email parser
that reads a Content-Disposition), a caller's callback. None of them may swallow it and let
the download go on: exit 130, one line naming the signal, no destination, nothing running.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl.errors import EXIT_INTERRUPTED
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob
from tests.integration.test_trust_stops import (
    CLI,
    STOPS,
    Cli,
    mount_namespaces,
    one_error,
    side_files,
    wait_for,
)

Make = Callable[..., Blob]
SIZE = 1_000_000

# The CLI, with SIGNUM sent to itself just before the NTH call of MODULE:ATTR (a dotted
# attribute path) runs, and so inside whatever code around that call catches exceptions
# (with a negative NTH: just after the call returns).
FIRE = """
import importlib, os, sys
target, signum, nth = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
module, _, path = target.partition(":")
owner = importlib.import_module(module)
*heads, name = path.split(".")
for head in heads:
    owner = getattr(owner, head)
original, calls = getattr(owner, name), []

def fire_first(*args, **kwargs):
    calls.append(1)
    if len(calls) == nth:
        os.kill(os.getpid(), signum)
    result = original(*args, **kwargs)
    if len(calls) == -nth:
        os.kill(os.getpid(), signum)
    return result

setattr(owner, name, fire_first)
sys.argv = ["blobdl", *sys.argv[4:]]
from blobdl.cli import run
run()
"""


def fired(target: str, signum: int, args: list[str], *, nth: int = 1, cwd: Path) -> Cli:
    return Cli([sys.executable, "-c", FIRE, target, str(int(signum)), str(nth), *args], cwd=cwd)


def stopped(cli: Cli, signum: int) -> list[str]:
    """Exit 130 and one line naming ``signum`` (no traceback, nothing left running)."""
    code, lines = cli.finish()
    assert code == EXIT_INTERRUPTED, lines
    assert f"signal {signum}" in one_error(lines), lines
    return lines


@pytest.mark.parametrize("signum", STOPS, ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_a_redirect_body_trickles_in_stops_the_download(
    make: Make, server: ServerHandle, tmp_path: Path, signum: int
) -> None:
    """The probe reads a short redirect body to keep its connection for the next hop; the
    server sends it a byte at a time. No patch: the signal lands in that read."""
    blob = make(SIZE, seed=3101)
    server.set_faults({"path": f"/files/{blob.name}", "action": "redirect", "endless": True,
                       "location": f"/files/{blob.name}", "length": 1000, "bps": 50})  # fmt: skip
    out = tmp_path / "out"
    cli = Cli.of([blob.url, "-o", str(out), *CLI])
    wait_for(lambda: server.stats()["requests"] >= 1, "the probe")
    cli.signal(signum)
    stopped(cli, signum)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "where",
    [
        "urllib3.response:HTTPResponse.drain_conn",  # our `except Exception` around the drain
        "email.message:Message.get_filename",  # ours around the standard library's parser
    ],
)
def test_a_signal_inside_code_that_catches_every_exception_stops_the_download(
    make: Make, server: ServerHandle, tmp_path: Path, where: str
) -> None:
    blob = make(SIZE, seed=3102)
    url = f"{server.base_url}/redirect/1/{blob.name}"  # a hop to the same origin: drained
    if "get_filename" in where:  # named by the server: its Content-Disposition is read
        url = f"{server.base_url}/cd/{blob.name}?filename=named.bin"
    cli = fired(where, signal.SIGTERM, [url, *CLI], cwd=tmp_path)
    stopped(cli, signal.SIGTERM)
    assert list(tmp_path.iterdir()) == [], "nothing named, nothing downloaded"


def test_a_signal_while_a_batch_is_set_up_stops_the_whole_batch(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A signal while the scheduler reads its items (an item's URL checked under ``except
    BlobdlError``) is the batch's, not that item's failure with the rest fetched."""
    blobs = [make(1000, seed=3103 + n) for n in range(3)]
    manifest = tmp_path / "manifest"
    manifest.write_text("".join(f"{b.url} {tmp_path / b.name}\n" for b in blobs))
    target = "blobdl.batch._scheduler:host_of"
    cli = fired(target, signal.SIGTERM, ["-i", str(manifest), *CLI], nth=2, cwd=tmp_path)
    stopped(cli, signal.SIGTERM)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest"]
    assert server.stats()["requests"] == 0


def test_a_signal_while_an_option_is_read_is_a_stop_not_a_usage_error(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(SIZE, seed=3106)
    cli = fired("blobdl.cli._args:parse_size", signal.SIGTERM,
                [blob.url, "-o", str(tmp_path / "out"), *CLI], cwd=tmp_path)  # fmt: skip
    stopped(cli, signal.SIGTERM)
    assert server.stats()["requests"] == 0


@pytest.mark.parametrize("many", [False, True], ids=["one", "-i"])
def test_a_second_signal_while_the_first_is_said_adds_no_second_line(
    make: Make, server: ServerHandle, tmp_path: Path, many: bool
) -> None:
    blob = make(SIZE, seed=3107)
    server.set_faults({"path": "/files/*", "times": None, "action": "ttfb", "delay": 30})
    args = [blob.url, "-o", str(tmp_path / "out")]
    if many:
        (tmp_path / "manifest").write_text(f"{blob.url} {tmp_path / 'out'}\n")
        args = ["-i", str(tmp_path / "manifest")]
    # The second comes just after the error line is written: it is that stop's, not another.
    cli = fired("blobdl.cli._display:_write", signal.SIGTERM, [*args, "-q", *CLI], nth=-1,
                cwd=tmp_path)  # fmt: skip
    wait_for(lambda: server.stats()["requests"] >= 1, "the probe")
    cli.signal(signal.SIGTERM)
    stopped(cli, signal.SIGTERM)


# A caller whose callback guards itself with `except Exception` (a log line that must never
# fail the download, say), and sends itself SIGTERM from inside it at the first event.
CALLER = """
import os, signal, sys
from blobdl import Interrupted, download
url, out = sys.argv[1], sys.argv[2]
def on_event(event):
    try:
        if type(event).__name__ == "Started":
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(10_000))  # the handler runs here, inside the try
    except Exception as exc:
        print("swallowed", repr(exc))
try:
    download(url, out, on_event=on_event, min_part_size=65536, max_part_size=65536)
except Interrupted as exc:
    sys.exit(f"stopped by signal {exc.signum}")
print("completed")
"""


def test_a_signal_inside_a_callback_that_catches_every_exception_stops_the_download(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(SIZE, seed=3104)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", CALLER, blob.url, str(out)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.stdout == "" and done.stderr.strip() == "stopped by signal 15", done
    assert not out.exists()


def test_a_signal_while_a_filled_cache_entry_is_copied_out_stops_the_copy(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The cache is on another filesystem: the destination is a copy of the entry just
    filled. That fill's success is the entry's, not the download's: a signal during the
    copy stops it (exit 130), as it does on a cache hit, and the entry stays for the rerun."""
    mount_namespaces()
    blob = make(SIZE, seed=3105)
    cache, out = tmp_path / "cache", tmp_path / "out"
    cache.mkdir()
    args = [blob.url, "-o", str(out), "--cache-dir", str(cache), "--digest", blob.sha256, *CLI]
    script = f'mount -t tmpfs tmpfs {cache} && exec "$0" "$@"'  # in a namespace of its own
    cli = Cli(["unshare", "-m", "sh", "-c", script, sys.executable, "-c", FIRE,
               "blobdl.store._cache:_copy", "15", "1", *args])  # fmt: skip
    stopped(cli, signal.SIGTERM)
    assert not out.exists() and side_files(out) == []  # no copy, no scratch file
