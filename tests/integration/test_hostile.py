"""The hostile server (issue #9): random faults per request, one invariant.

Whatever a server does — cut, stall, shift, wrong status, odd headers, redirects — the CLI
ends in one of two ways: exit 0 with the exact bytes at the destination, or a clean error
(exit 2–5, one ``blobdl: error:`` line on stderr besides warnings, in words: no traceback,
no class name) with no destination file (``DEST.blobdl-tmp``/``-state`` may stay for a
resume). Either way no
process is left behind, nothing is written outside the working directory, and the
``Authorization`` header never reaches another origin.

``BLOBDL_HOSTILE_EXAMPLES=300 pytest tests/integration/test_hostile.py`` runs a deeper,
random search (add ``BLOBDL_HOSTILE_LOG=FILE`` to log every failure and keep searching instead of
shrinking the first); the default is a small derandomized run that fits in ``make test``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import blobdl
from blobdl.errors import BlobdlError
from faultserver.serverctl import ServerHandle
from tests.conftest import REPO, Blob, sha256_file
from tests.strategies import Target, hostile_rules

Make = Callable[..., Blob]

EXAMPLES = int(os.environ.get("BLOBDL_HOSTILE_EXAMPLES", "12"))
DEEP = "BLOBDL_HOSTILE_EXAMPLES" in os.environ
LOG = os.environ.get("BLOBDL_HOSTILE_LOG")
settings.register_profile(
    "hostile",
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not DEEP,  # `make test` sees the same examples every run
    database=None if not DEEP else settings.default.database,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
    # In `make test` a failure is reported as found: shrinking re-runs (and re-hangs) cost minutes.
    phases=list(Phase) if DEEP else [Phase.explicit, Phase.reuse, Phase.generate],
)

SIZES = (0, 1, 5_000, 2 * 16_384 + 7, 100_003)
PART = "16KB"
STALL = 0.5  # the client's stall timeout, seconds
HOLD = 2.0  # how long a stalling server stays silent: longer than the client's read timeout
RUN_TIMEOUT = 15.0  # a run that takes longer is a hang
REAP_GRACE = 3.0  # workers of an exited CLI get this long to notice and go
SECRET = "Bearer hostile-secret"
KEEP_SUFFIXES = (".blobdl-tmp", ".blobdl-state")
MARK = "BLOBDL_HOSTILE_RUN"
# An error line speaks of hosts, ports and files, never of a class (issue #20, item 19).
CLASS_NAME = re.compile(r"\b[A-Z][a-z]+[A-Za-z]*(Error|Exception)\b|Connection\(host=")


# --- running the CLI and checking what it left ----------------------------------------------


class Run:
    def __init__(
        self, code: int | None, stderr: str, leftovers: list[str], stdout: str = ""
    ) -> None:
        self.code, self.stderr, self.leftovers, self.stdout = code, stderr, leftovers, stdout


def run_cli_tagged(args: list[str], cwd: Path, *, stdout: bool = False) -> Run:
    """Run ``python -m blobdl`` in its own session, tagged through its environment so every
    process it forks can be found afterwards, even orphans (``stdout``: keep its output)."""
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-m", "blobdl", *args],
        cwd=cwd,
        env={**os.environ, MARK: tag, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, stderr = proc.communicate(timeout=RUN_TIMEOUT)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, stderr = proc.communicate()
        code = None
    return Run(code, stderr, reap_tagged(tag), out or "")


def reap_tagged(tag: str) -> list[str]:
    """Processes still carrying ``tag`` after a grace period; killed, and described."""
    deadline = time.monotonic() + REAP_GRACE
    while True:
        alive = [p for p in psutil.process_iter() if _tagged(p, tag)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    described = []
    for p in alive:
        try:
            described.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            p.kill()
        except psutil.Error:
            pass
    return described


def _tagged(proc: psutil.Process, tag: str) -> bool:
    try:
        return proc.environ().get(MARK) == tag
    except psutil.Error:
        return False


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def check_invariant(run: Run, blob: Blob, sandbox: Path, work: Path, dest: Path | None) -> None:
    """Exit 0 with exact bytes, or a clean error with no destination file."""
    assert run.code is not None, f"hang: no exit within {RUN_TIMEOUT}s; stderr={run.stderr!r}"
    assert not run.leftovers, f"processes left behind: {run.leftovers}"
    last = run.stderr.strip().splitlines()[-1:] or [""]
    assert "Traceback" not in run.stderr, f"traceback (exit {run.code}): {last[0]}\n{run.stderr}"
    outside = [f for f in files_under(sandbox) if f != "work" and not f.startswith("work/")]
    assert not outside, f"written outside the working directory: {outside}"
    names = files_under(work)
    kept = [n for n in names if n.endswith(KEEP_SUFFIXES)]
    others = [n for n in names if n not in kept]
    if run.code == 0:
        assert not kept, f"exit 0 left {kept}"
        if dest is not None:
            assert others == [dest.name], f"exit 0 but files are {names}"
        assert len(others) == 1, f"exit 0 but files are {names}"
        got = sha256_file(work / others[0])
        assert got == blob.sha256, f"exit 0 with wrong bytes ({blob.size} expected)"
        return
    assert 2 <= run.code <= 5, f"exit {run.code}, stderr={run.stderr!r}"
    lines = run.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("blobdl: error:")]
    noise = [ln for ln in lines if not ln.startswith(("blobdl: error:", "blobdl: warning:"))]
    assert len(errors) == 1 and not noise, f"exit {run.code}, stderr not one line:\n{run.stderr}"
    assert not CLASS_NAME.search(errors[0]), f"a class name, not words: {errors[0]}"
    assert not others, f"exit {run.code} but left {others} (kept for resume: {kept})"


class Hang(Exception):
    pass


@contextlib.contextmanager
def hang_guard() -> Iterator[None]:
    """Turn an in-process download that never returns into a failure, not a stuck suite."""

    def hang(signum: int, frame: object) -> None:
        raise Hang(f"no return within {RUN_TIMEOUT}s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, RUN_TIMEOUT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def explored(case: dict, args: list[str], server: ServerHandle) -> Iterator[None]:
    """With ``BLOBDL_HOSTILE_LOG=FILE`` a failure is appended to FILE as one JSON line and
    the search goes on (to survey every class of failure at once); otherwise it fails."""
    try:
        yield
    except AssertionError as exc:
        if not LOG:
            raise
        hits = server.stats()["rule_hits"]
        fired = [r for r, n in zip(case["rules"], hits, strict=True) if n > r["skip"]]
        record = {"symptom": str(exc)[:300], "args": args[:1] + args[-4:], "fired": fired,
                  "rules": case["rules"], "size": case["blob"].size}  # fmt: skip
        with open(LOG, "a") as f:
            f.write(json.dumps(record) + "\n")


def no_secret_at(server: ServerHandle) -> None:
    seen = [h for h in server.stats()["headers"] if SECRET in h.values()]
    assert not seen, f"Authorization sent to another origin: {seen[0]}"


# --- the properties ----------------------------------------------------------------------------


@st.composite
def scenarios(
    draw: st.DrawFn, server: ServerHandle, other: ServerHandle, make: Make, base: Path
) -> dict:
    size = draw(st.sampled_from(SIZES))
    blob = make(size, seed=90)
    sandbox = Path(tempfile.mkdtemp(prefix="case-", dir=base))
    target = Target(blob.name, size, server.port, other.port, str(sandbox))
    digest = draw(st.booleans())
    rules = draw(hostile_rules(target, HOLD, digest, RUN_TIMEOUT + 5))
    entry = draw(
        st.sampled_from(
            [f"/files/{blob.name}", f"/redirect/2/{blob.name}", f"/redirect-abs/1/{blob.name}"]
        )
    )
    named = draw(st.booleans())
    connections = draw(st.integers(1, 3))
    return {
        "blob": blob,
        "sandbox": sandbox,
        "rules": rules,
        "url": server.route(entry),
        "digest": digest,
        "named": named,
        "connections": connections,
    }


def cli_args(case: dict, work: Path) -> list[str]:
    blob: Blob = case["blob"]
    args = [case["url"], "-q", "--connections", str(case["connections"]),
            "--min-part-size", PART, "--max-part-size", PART, "--stall-timeout", str(STALL),
            "--max-backoff", "0.05", "--retries", "2", "--progress-interval", "0.05",
            "--checkpoint-interval", "0.1", "-H", f"Authorization: {SECRET}"]  # fmt: skip
    if case["named"]:
        args += ["-o", str(work / "out.bin")]
    if case["digest"]:
        args += ["--digest", f"sha256:{blob.sha256}"]
    return args


@settings(settings.get_profile("hostile"))
@given(data=st.data())
def test_hostile_server_cli(
    server: ServerHandle, other: ServerHandle, make: Make, tmp_path: Path, data: st.DataObject
) -> None:
    server.reset()
    other.reset()
    case = data.draw(scenarios(server, other, make, tmp_path))
    sandbox: Path = case["sandbox"]
    work = sandbox / "work"
    work.mkdir()
    server.set_faults(*case["rules"])
    args = cli_args(case, work)
    run = run_cli_tagged(args, work)
    try:
        with explored(case, args, server):
            check_invariant(
                run, case["blob"], sandbox, work, work / "out.bin" if case["named"] else None
            )
            no_secret_at(other)
    finally:
        server.reset()


@settings(settings.get_profile("hostile"), max_examples=max(4, EXAMPLES // 2))
@given(data=st.data())
def test_hostile_server_library(
    server: ServerHandle, other: ServerHandle, make: Make, tmp_path: Path, data: st.DataObject
) -> None:
    """``blobdl.download`` in-process: the result's bytes are exact, or it raises a
    ``BlobdlError`` (never anything else) and leaves no destination file."""
    server.reset()
    other.reset()
    case = data.draw(scenarios(server, other, make, tmp_path))
    blob: Blob = case["blob"]
    work = case["sandbox"] / "work"
    work.mkdir()
    dest = work / "out.bin"
    server.set_faults(*case["rules"])
    try:
        with hang_guard():
            blobdl.download(
                case["url"],
                dest,
                digest=f"sha256:{blob.sha256}" if case["digest"] else None,
                connections=case["connections"],
                min_part_size=16_384,
                max_part_size=16_384,
                stall_timeout=STALL,
                max_backoff=0.05,
                retries=2,
                progress_interval=0.05,
                headers=(("Authorization", SECRET),),
            )
    except BlobdlError:
        assert not dest.exists(), "a failed download left the destination"
    else:
        assert sha256_file(dest) == blob.sha256, "returned with wrong bytes"
    finally:
        server.reset()
    no_secret_at(other)
    leftovers = psutil.Process().children(recursive=True)
    assert all("faultserver.server" in " ".join(p.cmdline()) for p in leftovers), leftovers
