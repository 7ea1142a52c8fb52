"""A batch of large and small items stopped mid-body (SIGKILL, SIGTERM, Ctrl-C), then run
again with a changed manifest: every file exact, a large item kept by URL resumed with
only its missing bytes, one whose URL changed started over, and nothing of the stopped run
left in the folder (no partial, record, lock or scratch)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, run_cli, sha256_file
from tests.integration.test_trust_batch import BPART, alive, pace, spawn_batch, wait_for

Make = Callable[..., Blob]
ARGS = ("--connections", "4", "--per-host", "4", "--min-part-size", str(BPART),
        "--max-part-size", str(BPART), "--checkpoint-interval", "0.05")  # fmt: skip


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_batch_stopped_mid_body_then_run_with_a_changed_manifest(
    make: Make, server: ServerHandle, tmp_path: Path, how: str
) -> None:
    a, b, c = (make(32 * PART, seed=2620 + i) for i in range(3))
    s1, s2, s3 = (make(100_000, seed=2630 + i) for i in range(3))
    for blob in (a, b, c, s1, s2, s3):  # a second old: a finished item's record vouches
        made = Path(server.root) / blob.name
        os.utime(made, (made.stat().st_mtime - 10,) * 2)
    out = tmp_path / "out"
    out.mkdir()
    first = tmp_path / "first"
    first.write_text(
        f"{a.url} {out / 'big'} sha256:{a.sha256}\n{c.url} {out / 'c'}\n"
        f"{s1.url} {out / 's1'}\n{s2.url} {out / 's2'} sha256:{s2.sha256}\n"
    )
    pace(server, 20_000)
    proc = spawn_batch(first, tmp_path, *ARGS)
    states = [out / "big.blobdl-state", out / "c.blobdl-state"]
    try:
        wait_for(lambda: all(s.exists() for s in states), "both large items' checkpoints")
        tree = psutil.Process(proc.pid).children(recursive=True)
        if how == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
        else:
            proc.send_signal(getattr(signal, how))
        code = proc.wait(timeout=30)
    finally:
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    assert code == (-9 if how == "SIGKILL" else 130), stderr
    wait_for(lambda: not alive(tree), "the stopped batch's processes")
    kept_c = sum(p[2] - p[0] for p in json.loads(states[1].read_text())["state"]["parts"])

    server.reset()
    second = tmp_path / "second"  # big is now another blob; s2's path another small one
    second.write_text(
        f"{b.url} {out / 'big'} sha256:{b.sha256}\n{c.url} {out / 'c'}\n"
        f"{s1.url} {out / 's1'}\n{s3.url} {out / 's2'} sha256:{s3.sha256}\n"
    )
    rerun = run_cli("-i", str(second), "--json", *ARGS)
    failed = [line for line in rerun.stdout.splitlines() if '"failed"' in line]
    assert rerun.returncode == 0, (failed, stderr)
    for blob, name in ((b, "big"), (c, "c"), (s1, "s1"), (s3, "s2")):
        assert sha256_file(out / name) == blob.sha256, name
    finished = {e["item"]: e for e in map(json.loads, rerun.stdout.splitlines())
                if e["event"] == "finished"}  # fmt: skip
    assert finished[1]["resumed"] == kept_c > 0
    assert finished[1]["bytes_fetched"] == c.size - kept_c
    assert finished[0]["resumed"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["big", "c", "s1", "s2"]
