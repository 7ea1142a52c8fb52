"""The hostile server against a batch (issues #9, #23): faults on some of its items.

A batch of 3-5 items, most of them small (fetched whole by their first GET, on the seats of
the batch's pool, over kept connections), one at times larger; the server scripts faults on
any of them (every fault the single download's property draws, per item). Whatever it does,
the CLI (``-i``, JSON lines) ends so: each item either has a ``finished`` event and its exact
bytes at the path it names, no two items at one path, or one ``failed`` event with an exit
code of 2-5 in words and nothing at its destination; the exit code is the first failure's;
nothing half-written is left (a lock file never, a partial only with its record); the
budget holds at both servers; no process is left; the ``Authorization`` header never
reaches another origin.

``BLOBDL_HOSTILE_EXAMPLES=N`` searches longer, as for the single download.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, sha256_file
from tests.integration.test_hostile import (
    CLASS_NAME,
    EXAMPLES,
    HOLD,
    RUN_TIMEOUT,
    SECRET,
    STALL,
    explored,
    files_under,
    no_secret_at,
    run_cli_tagged,
)
from tests.strategies import Target, hostile_fault

Make = Callable[..., Blob]
PART = 16_384  # one request holds a blob this large: a small item
SIZES = (0, 1, 5_000, PART, 2 * PART + 7)  # the last one is fetched the ordinary way
SIDE = (".blobdl-tmp", ".blobdl-state")
# How an item is asked for, and the path of its last hop (where its faults are scripted).
ENTRIES = [("/files/NAME", "/files/"), ("/redirect/1/NAME", "/files/"),
           ("/redirect-abs/1/NAME", "/files/"), ("/cd/NAME", "/cd/")]  # fmt: skip


@st.composite
def batches(
    draw: st.DrawFn, server: ServerHandle, other: ServerHandle, make: Make, base: Path
) -> dict:
    sandbox = Path(tempfile.mkdtemp(prefix="batch-", dir=base))
    digest = draw(st.booleans())
    sizes = draw(st.lists(st.sampled_from(SIZES), min_size=3, max_size=5))
    blobs, rules, lines, named = [], [], [], []
    for n, size in enumerate(sizes):
        blob = make(size, seed=9100 + n)
        target = Target(blob.name, size, server.port, other.port, str(sandbox))
        # Where it is asked for; its last hop (where the faults are) serves it from `final`.
        entry, final = draw(st.sampled_from(ENTRIES))
        if entry.startswith("/cd/"):  # the server names it (when the manifest does not)
            entry += "?filename=" + draw(st.sampled_from(["shared.bin", "o0", blob.name]))
        faults = draw(st.lists(hostile_fault(target, HOLD, digest, RUN_TIMEOUT + 5), max_size=2))
        skips = draw(st.lists(st.sampled_from([0, 0, 1]), min_size=len(faults),
                              max_size=len(faults)))  # fmt: skip
        rules += [{"path": final + blob.name, "skip": skip, "times": 1, **fault}
                  for skip, fault in zip(skips, faults, strict=True)]  # fmt: skip
        line: dict[str, object] = {"url": server.route(entry.replace("NAME", blob.name))}
        named.append(draw(st.booleans()))
        if named[-1]:
            line["path"] = f"o{n}"
        if digest:
            line["digest"] = f"sha256:{blob.sha256}"
        blobs.append(blob)
        lines.append(json.dumps(line))
    return {"sandbox": sandbox, "blobs": blobs, "rules": rules, "manifest": lines,
            "connections": draw(st.integers(1, 3)), "named": named}  # fmt: skip


def batch_args(case: dict, work: Path) -> list[str]:
    manifest = case["sandbox"] / "manifest"
    manifest.write_text("\n".join(case["manifest"]) + "\n")
    return ["-i", str(manifest), "--base-dir", str(work), "--json",
            "--connections", str(case["connections"]), "--per-host", str(case["connections"]),
            "--min-part-size", str(PART), "--max-part-size", str(PART),
            "--stall-timeout", str(STALL), "--max-backoff", "0.05", "--retries", "2",
            "--progress-interval", "0.05", "-H", f"Authorization: {SECRET}"]  # fmt: skip


def check_batch(run: object, case: dict, work: Path) -> None:
    code, stderr, stdout = run.code, run.stderr, run.stdout  # type: ignore[attr-defined]
    assert code is not None, f"hang: no exit within {RUN_TIMEOUT}s; stderr={stderr!r}"
    assert not run.leftovers, f"processes left behind: {run.leftovers}"  # type: ignore[attr-defined]
    assert "Traceback" not in stderr, stderr
    noise = [ln for ln in stderr.splitlines() if not ln.startswith("blobdl: warning:")]
    assert not noise, f"stderr besides warnings: {noise}"
    outside = [f for f in files_under(case["sandbox"]) if f not in ("manifest", "work")
               and not f.startswith("work/")]  # fmt: skip
    assert not outside, f"written outside the base directory: {outside}"
    records = [json.loads(line) for line in stdout.splitlines()]
    ends: dict[int, dict] = {}
    for record in records:
        if record.get("event") in ("finished", "failed"):
            item = record["item"]
            assert item not in ends, f"item {item} ended twice: {ends[item]} and {record}"
            ends[item] = record
    blobs: list[Blob] = case["blobs"]
    assert sorted(ends) == list(range(len(blobs))), f"items without an end: {ends}"
    written: dict[str, int] = {}
    failed: list[int] = []
    for item, record in sorted(ends.items()):
        if record["event"] == "finished":
            path = str(Path(record["path"]).resolve())
            assert path not in written, f"items {written[path]} and {item} both end at {path}"
            written[path] = item
            assert sha256_file(Path(path)) == blobs[item].sha256, f"item {item}: wrong bytes"
            continue
        failed.append(item)
        assert 2 <= record["exit_code"] <= 5, f"item {item}: {record}"
        assert not CLASS_NAME.search(record["error"]), f"a class name: {record['error']}"
        if case["named"][item]:
            assert not (work / f"o{item}").exists(), f"failed item {item} left its destination"
    summary = records[-1] if records else {}
    assert summary.get("event") == "summary" and summary["failed"] == len(failed), records[-1:]
    first = ends[failed[0]]["exit_code"] if failed else 0
    assert code == first, f"exit {code}, but the first failure's code is {first}"
    names = files_under(work)
    left = sorted(set(names) - {str(Path(p).relative_to(work)) for p in written})
    assert all(n.endswith(SIDE) for n in left), f"left besides partials: {left}"
    partials = {n.removesuffix(suffix) for n in left for suffix in SIDE if n.endswith(suffix)}
    assert left == sorted(p + s for p in partials for s in SIDE), f"half a partial: {left}"


def quiet(origin: ServerHandle) -> None:
    """Reset once no connection is open at ``origin`` (a server's handler may still hold the
    last example's for a while: its stalls last ``HOLD`` s)."""
    deadline = time.monotonic() + 2 * HOLD
    while origin.stats()["active"] and time.monotonic() < deadline:
        time.sleep(0.02)
    origin.reset()


@settings(settings.get_profile("hostile"), max_examples=max(4, EXAMPLES - 2))
@given(data=st.data())
def test_hostile_server_batch_of_small_items(
    server: ServerHandle, other: ServerHandle, make: Make, tmp_path: Path, data: st.DataObject
) -> None:
    for origin in (server, other):  # the last example's connections, gone: the count is ours
        quiet(origin)
    case = data.draw(batches(server, other, make, tmp_path))
    work = case["sandbox"] / "work"
    work.mkdir()
    server.set_faults(*case["rules"])
    args = batch_args(case, work)
    run = run_cli_tagged(args, work, stdout=True)
    try:
        with explored({**case, "blob": case["blobs"][0]}, args, server):
            check_batch(run, case, work)
            for origin in (server, other):
                most = origin.stats()["max_concurrent"]
                assert most <= case["connections"], f"{most} at once: {case['manifest']}"
            no_secret_at(other)
    finally:
        server.reset()
