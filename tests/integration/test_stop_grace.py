"""A stopped batch whose pool outlives its grace leaves what a dead pool leaves: nothing.

On Ctrl-C or SIGTERM the pool's processes give their seats ``STOP_GRACE`` to end their items
(each removes its temporary file and its lock file as it ends). A seat blocked where no cut
reaches it (a ``connect`` to a host that never answers, a disk whose ``fsync`` hangs) is
still running when that grace is over: its process then ends without it, or is killed. Its
item's lock file and ``.blobdl-tmp`` are then the scheduler's to remove, exactly as after a
pool process that died (SIGKILL, OOM): no stop leaves a lock file, and nothing of a small
item is kept. The grace is shrunk by a module attribute set before the pool forks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

import blobdl
from blobdl import Item
from blobdl.errors import EXIT_INTERRUPTED
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file
from tests.integration.test_trust_stops import STOPS, Cli, one_error, wait_for

Make = Callable[..., Blob]
SMALL = PART // 2

# The CLI with its pool's grace shrunk (inherited by the forked pool). With "fsyncN" the file
# fsync of the Nth item finalized hangs as on a dead disk ("held" is
# touched, and it never returns); with "+dir" the pool's closing directory fsync hangs too.
WRAPPER = """
import os, sys, time
from pathlib import Path
from blobdl.batch import _pool

_pool.STOP_GRACE = 0.2
point, folder = sys.argv[1], Path(sys.argv[2])
fsync, finalized = os.fsync, []

def hang():
    (folder / "held").touch()
    time.sleep(3600)

def hung(fd):
    if sys._getframe(1).f_code.co_name == "finalize":
        finalized.append(fd)
        if len(finalized) == int(point[len("fsync")]):
            hang()
    fsync(fd)

if point.startswith("fsync"):
    os.fsync = hung
if point.endswith("+dir"):
    _pool.sync_dir_quietly = lambda directory: hang()
sys.argv = ["blobdl", *sys.argv[3:]]
from blobdl.cli import run
run()
"""


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A port on loopback whose every new ``connect`` waits (its SYNs are dropped): a listener
    that never accepts, its queue (of one, with a backlog of 0) filled by our own connection."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        yield listener.getsockname()[1]


def connecting_to(port: int) -> bool:
    """Whether some socket is waiting in ``connect`` to ``port`` (SYN sent, no answer)."""
    return any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_SYN_SENT
               for c in psutil.net_connections("tcp4"))  # fmt: skip


def manifest(tmp_path: Path, urls: list[str]) -> tuple[Path, Path]:
    """A manifest of ``urls`` into ``out/o0``, ``out/o1``...: its path, and ``out``."""
    out = tmp_path / "out"
    out.mkdir()
    path = tmp_path / "manifest"
    path.write_text("".join(f"{url} {out / f'o{n}'}\n" for n, url in enumerate(urls)))
    return path, out


def cli(point: str, tmp_path: Path, listed: Path) -> Cli:
    """``blobdl -i LISTED`` on one seat (see WRAPPER). A connect waits up to its timeout
    (30 s): far longer than the grace."""
    args = ["-i", str(listed), "--connections", "1", "--stall-timeout", "60"]
    return Cli.of([point, str(tmp_path), *args], wrapper=WRAPPER)


@pytest.mark.parametrize("signum", STOPS, ids=["SIGTERM", "SIGINT"])
def test_a_seat_in_a_connect_that_outlasts_the_grace_leaves_no_lock_file(
    make: Make, server: ServerHandle, tmp_path: Path, signum: int
) -> None:
    """The seat's first item is done (its lock file is then kept for the next), the second
    is locked and connecting to a host that never answers when the stop comes."""
    blob = make(SMALL, seed=2700)
    with blackhole() as port:
        listed, out = manifest(tmp_path, [blob.url, f"http://127.0.0.1:{port}/never"])
        run = cli("plain", tmp_path, listed)
        wait_for(lambda: connecting_to(port), "the second item's connect")
        run.signal(signum)
        code, lines = run.finish()
    assert code == EXIT_INTERRUPTED, lines
    assert f"signal {int(signum)}" in one_error(lines), lines
    assert sha256_file(out / "o0") == blob.sha256
    assert sorted(p.name for p in out.iterdir()) == ["o0"]  # no lock file, kept or not


@pytest.mark.parametrize("signum", STOPS, ids=["SIGTERM", "SIGINT"])
def test_a_seat_in_an_fsync_that_outlasts_the_grace_leaves_no_partial(
    make: Make, server: ServerHandle, tmp_path: Path, signum: int
) -> None:
    """The item's bytes are all in its ``.blobdl-tmp`` when the disk stops answering its
    fsync: a small item starts over, so nothing of it is kept, lock file or partial."""
    blob = make(SMALL, seed=2701)
    listed, out = manifest(tmp_path, [blob.url])
    run = cli("fsync1", tmp_path, listed)
    wait_for((tmp_path / "held").exists, "the item's fsync")
    run.signal(signum)
    code, lines = run.finish()
    assert code == EXIT_INTERRUPTED, lines
    assert f"signal {int(signum)}" in one_error(lines), lines
    assert sorted(p.name for p in out.iterdir()) == []


def test_a_pool_process_killed_past_its_grace_leaves_what_a_dead_one_leaves(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The first item is done, the second hangs in its file's fsync when the stop comes;
    after the grace the process fsyncs the folder the first was renamed in, and that hangs
    too: it is killed. Its items' lock file and partial are removed as a dead one's are."""
    blobs = [make(SMALL, seed=2703 + n) for n in range(2)]
    listed, out = manifest(tmp_path, [b.url for b in blobs])
    run = cli("fsync2+dir", tmp_path, listed)
    wait_for((tmp_path / "held").exists, "the second item's fsync")
    run.signal(signal.SIGINT)
    code, lines = run.finish()
    assert code == EXIT_INTERRUPTED, lines
    assert sha256_file(out / "o0") == blobs[0].sha256
    assert sorted(p.name for p in out.iterdir()) == ["o0"]


class _Raised(Exception):
    pass


@pytest.mark.parametrize("how", ["signal", "raise"])
def test_a_library_batch_stopped_past_its_grace_leaves_no_lock_file(
    make: Make, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """``download_many`` stopped by a signal (``Interrupted``) or by its callback raising, as
    one seat connects to a host that never answers: the caller gets its exception, the
    other item is whole, no lock file is left."""
    from blobdl.batch import _pool

    monkeypatch.setattr(_pool, "STOP_GRACE", 0.2)  # before the pool forks
    blob = make(SMALL, seed=2702)
    with blackhole() as port:
        items = [Item(f"http://127.0.0.1:{port}/never", str(tmp_path / "o0")),
                 Item(blob.url, str(tmp_path / "o1"))]  # fmt: skip

        stopped: list[bool] = []

        def stop_once_connecting(said: blobdl.BatchEvent) -> None:
            # Once: a last word the stop cut short is told again (docs/library.md).
            if said.item == 1 and isinstance(said.event, blobdl.Finished) and not stopped:
                stopped.append(True)
                wait_for(lambda: connecting_to(port), "the first item's connect")
                if how == "raise":
                    raise _Raised
                os.kill(os.getpid(), signal.SIGINT)

        expected = _Raised if how == "raise" else blobdl.Interrupted
        with pytest.raises(expected):
            blobdl.download_many(items, max_connections=2, on_event=stop_once_connecting,
                                 settings=fast_settings(stall_timeout=60))  # fmt: skip
    assert sha256_file(tmp_path / "o1") == blob.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o1"]
