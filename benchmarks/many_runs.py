"""The runs of the ``many`` preset (see ``benchmarks/many.py``): the cases, each tool's
command, one measured run, and the checks of what it wrote."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from faultserver.serverctl import make_blob

from . import nginx
from .dest import MEMORY_FS, SHM, fstype
from .measure import Measured, run_measured

KiB, MiB = 1 << 10, 1 << 20
MB = 1000 * 1000
LIMIT = 100 * MB  # --limit-rate 100MB, as in the issue
TINY = 1000  # bytes of a config or template layer
# The paired cases (beside, pull) time two blobdl runs of a 512 MiB blob, under a second each,
# whose single runs vary up to 2x on this kind of machine (the disk's writeback, the registry's
# own CPU on 2 cores; the first run after the blob is made is the slowest): more pairs than
# the other cases, after one warm-up pair that is run, checked and not counted.
PAIRS = 9
WARM_UP = -1  # the run number of the warm-up pair
T = TypeVar("T")


@dataclass(frozen=True)
class Case:
    """How many files of which size one manifest holds."""

    name: str
    count: int
    size: int


FILES = Case("files", 400, MiB)
TINY_FILES = Case("tiny", 10_000, 64 * KiB)


@dataclass
class Sample:
    """One run of one tool on one case."""

    case: str
    tool: str
    repeat: int
    ok: bool
    wall_s: float
    cpu_s: float | None  # None: not measured (the limit case times spans only)
    peak_uss_mb: float | None  # None: the tool ended before the first sample
    files: int
    error: str = ""
    sync_s: float | None = None
    fd_growth: int | None = None  # most descriptors open in the last third, less the middle's
    proc_growth: int | None = None  # the same for live processes
    peak_fds: int | None = None
    peak_procs: int | None = None
    span_s: float | None = None  # first `started` to last `finished` event (stamped here)
    bytes: int | None = None
    wire: float | None = None  # bytes nginx sent / bytes of the blobs (headers included)


@dataclass
class Outcome:
    samples: list[Sample] = field(default_factory=list)
    dest: str = ""
    skipped: dict[str, str] = field(default_factory=dict)
    pull: dict[str, Any] = field(default_factory=dict)


# --- running -------------------------------------------------------------------------------


def run(cases: set[str], repeat: int, workdir: Path, timeout: float, pairs: int = PAIRS) -> Outcome:
    """``repeat`` runs of each tool of the files cases, ``pairs`` of the paired ones."""
    outcome = Outcome()
    with ExitStack() as stack:
        served = stack.enter_context(_tempdir(SHM if SHM.is_dir() else workdir))
        dest_base = stack.enter_context(_tempdir(workdir))
        fs = fstype(dest_base)
        kind = "tmpfs" if fs in MEMORY_FS else "disk"
        outcome.dest = f"{kind} ({fs} at {dest_base})"
        _say(f"destination: {outcome.dest}; served from {served}")
        if not nginx.available():
            outcome.skipped["nginx cases"] = "nginx not installed (make bench installs it)"
        else:
            ngx = stack.enter_context(nginx.start_nginx(served, {None, LIMIT}))
            for case in (FILES, TINY_FILES):
                if case.name in cases:
                    _files_case(case, repeat, served, dest_base, ngx, outcome, timeout)
            if "beside" in cases:
                _beside_case(pairs, served, dest_base, ngx, outcome, timeout)
            if "limit" in cases:
                _limit_case(repeat, served, dest_base, ngx, outcome, timeout)
        if "pull" in cases:
            _pull_case(pairs, repeat, dest_base, outcome)
    return outcome


def _files_case(
    case: Case,
    repeat: int,
    served: Path,
    dest_base: Path,
    ngx: nginx.Nginx,
    outcome: Outcome,
    timeout: float,
) -> None:
    _say(f"{case.name}: generating {case.count} × {case.size // KiB} KiB ...")
    folder = served / case.name
    folder.mkdir()
    names = [f"f{n:05d}.bin" for n in range(case.count)]
    digests = {name: make_blob(folder, name, case.size, seed=n) for n, name in enumerate(names)}
    urls = [_url(ngx, f"{case.name}/{name}") for name in names]
    tools = _file_tools(case, names, urls)
    for run_number in range(repeat):
        for tool, command in _rotated(tools, run_number):
            if command is None:
                continue
            dst = dest_base / "out"
            dst.mkdir()
            try:
                measured, sync_s = _measured(command(dst), dst, timeout)
                ok, error = _check_files(dst, names, digests, case.size, measured)
            finally:
                shutil.rmtree(dst)
            sample = _sample(case.name, tool, run_number, measured, ok, error, case.count)
            sample.sync_s = sync_s
            outcome.samples.append(sample)
            _say(_line(sample))
    shutil.rmtree(folder)


def _rotated(tools: dict[str, T], run_number: int) -> list[tuple[str, T]]:
    """The tools in turn, each run starting one further, so that no tool is always measured
    right after the same other one, in whatever state that one leaves the machine (page
    cache, freed inodes, CPU caches)."""
    order = list(tools.items())
    shift = run_number % len(order) if order else 0
    return order[shift:] + order[:shift]


def _file_tools(
    case: Case, names: list[str], urls: list[str]
) -> dict[str, Callable[[Path], list[str]] | None]:
    def blobdl(dst: Path) -> list[str]:
        manifest = dst.parent / "manifest.txt"
        manifest.write_text("".join(f"{u} {dst / n}\n" for u, n in zip(urls, names, strict=True)))
        return [sys.executable, "-m", "blobdl", "-q", "-i", str(manifest)]

    def aria2c(dst: Path) -> list[str]:
        listing = dst.parent / "aria2.txt"
        listing.write_text("".join(f"{u}\n  out={n}\n" for u, n in zip(urls, names, strict=True)))
        return ["aria2c", "-q", "-i", str(listing), "-j16", "-d", str(dst), "--no-conf",
                "--all-proxy=", "--allow-overwrite=true", "--auto-file-renaming=false",
                "--file-allocation=none"]  # fmt: skip

    def curl(per_process: int) -> Callable[[Path], list[str]]:
        def command(dst: Path) -> list[str]:
            listing = dst.parent / "urls.txt"
            listing.write_text("".join(f"{u}\n" for u in urls))
            xargs = f"xargs -P16 -n{per_process} curl -sS --fail --noproxy '*' --remote-name-all"
            return ["sh", "-c", f"cd {dst} && {xargs} < {listing}"]

        return command

    have_curl = shutil.which("curl") is not None
    return {
        "blobdl": blobdl,
        "aria2c": aria2c if shutil.which("aria2c") else None,
        "curl": curl(25) if have_curl else None,
        # one process per file: information only (and too slow for 10,000 files)
        "curl-1": curl(1) if have_curl and case.count <= 1000 else None,
    }


def paired_runs(pairs: int) -> list[int]:
    """The run numbers of a paired case: the warm-up (``WARM_UP``), then ``pairs`` counted."""
    return [WARM_UP, *range(pairs)]


def _beside_case(
    pairs: int, served: Path, dest_base: Path, ngx: nginx.Nginx, outcome: Outcome, timeout: float
) -> None:
    _say("beside: generating 512 MiB and 4 × 1000 B ...")
    big = make_blob(served, "big512.bin", 512 * MiB, seed=7)
    tiny = {f"tiny{n}.bin": make_blob(served, f"tiny{n}.bin", TINY, seed=20 + n) for n in range(4)}
    for run_number in paired_runs(pairs):
        order = ["manifest", "plain"] if run_number % 2 == 0 else ["plain", "manifest"]
        for tool in order:
            dst = dest_base / "out"
            dst.mkdir()
            run = f"beside-{tool}-{run_number}"
            try:
                if tool == "plain":
                    command = [sys.executable, "-m", "blobdl", "-q",
                               _url(ngx, "big512.bin", run), "-o", str(dst / "big512.bin"),
                               "--digest", big]  # fmt: skip
                    want = {"big512.bin": big}
                else:
                    manifest = dst.parent / "beside.txt"
                    want = {"big512.bin": big, **tiny}
                    manifest.write_text("".join(
                        f"{_url(ngx, name, run)} {dst / name} sha256:{digest}\n"
                        for name, digest in want.items()))  # fmt: skip
                    # pull's budget: every layer may use every connection of it
                    command = [sys.executable, "-m", "blobdl", "-q", "-i", str(manifest),
                               "--per-host", "16"]  # fmt: skip
                measured, sync_s = _measured(command, dst, timeout)
                ok, error = _check_named(dst, want, measured)
            finally:
                shutil.rmtree(dst)
            sample = _sample("beside", tool, run_number, measured, ok, error, len(want))
            sample.sync_s = sync_s
            sent = ngx.wire(run)[0]  # what nginx sent, headers included
            sample.wire = sent / (512 * MiB + 4 * TINY if tool == "manifest" else 512 * MiB)
            if run_number == WARM_UP and sample.ok:  # a failed warm-up counts: it failed
                _say(f"{_line(sample)} (warm-up, not counted)")
                continue
            outcome.samples.append(sample)
            _say(_line(sample))


def _limit_case(
    repeat: int, served: Path, dest_base: Path, ngx: nginx.Nginx, outcome: Outcome, timeout: float
) -> None:
    _say("limit: generating 256 MiB and 3 × 1000 B ...")
    big = make_blob(served, "big256.bin", 256 * MiB, seed=8)
    want = {"big256.bin": big}
    want |= {f"small{n}.bin": make_blob(served, f"small{n}.bin", TINY, seed=30 + n)
             for n in range(3)}  # fmt: skip
    total = 256 * MiB + 3 * TINY
    for run_number in range(repeat):
        for tool in ("manifest", "single"):
            dst = dest_base / "out"
            dst.mkdir()
            try:
                if tool == "single":
                    command = [sys.executable, "-m", "blobdl", "--json",
                               _url(ngx, "big256.bin"), "-o", str(dst / "big256.bin"),
                               "--limit-rate", str(LIMIT)]  # fmt: skip
                    names, size = {"big256.bin": big}, 256 * MiB
                else:
                    manifest = dst.parent / "limit.txt"
                    manifest.write_text("".join(f"{_url(ngx, n)} {dst / n}\n" for n in want))
                    command = [sys.executable, "-m", "blobdl", "--json", "-i", str(manifest),
                               "--limit-rate", str(LIMIT)]  # fmt: skip
                    names, size = want, total
                stamped = _stamped(command, timeout)
                ok, error = _check_named(dst, names, None)
                ok = ok and stamped.exit_code == 0
            finally:
                shutil.rmtree(dst)
            # Spans only: this case measures no CPU or memory (None, shown "-", never 0).
            sample = Sample("limit", tool, run_number, ok, stamped.wall_s, None, None, len(names),
                            error or ("" if stamped.exit_code == 0 else stamped.tail),
                            span_s=stamped.span_s, bytes=size)  # fmt: skip
            outcome.samples.append(sample)
            _say(_line(sample))


def _pull_case(pairs: int, repeat: int, dest_base: Path, outcome: Outcome) -> None:
    from . import pull

    if shutil.which("docker-registry") is None:
        outcome.skipped["pull"] = "docker-registry not installed (make test installs it)"
        return
    size = 512 * MiB
    work = dest_base / "pull"
    work.mkdir()
    try:
        plain, pulled = pull.measure(size, pairs, work, warm_up=True)
        limited = pull.limited(size, repeat, work, LIMIT)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    outcome.pull = {"size": size, "plain_s": plain, "pull_s": pulled, "limit": LIMIT,
                    "limited_spans_s": limited}  # fmt: skip


# --- one run -------------------------------------------------------------------------------


def _measured(command: list[str], dst: Path, timeout: float) -> tuple[Measured, float]:
    os.sync()  # the previous run's dirty pages are not written back during this one
    measured = run_measured(command, timeout=timeout, cwd=str(dst))
    started = time.perf_counter()
    os.sync()  # blobdl fsyncs every file before it renames it; the baselines do not
    return measured, time.perf_counter() - started


@dataclass(frozen=True)
class Stamped:
    exit_code: int | None
    wall_s: float
    span_s: float | None  # first `started` event to last `finished` event
    tail: str


def _stamped(command: list[str], timeout: float) -> Stamped:
    """Run a ``--json`` blobdl, stamping each event line as it arrives."""
    os.sync()
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = last = None
    assert proc.stdout is not None
    deadline = started + timeout
    for line in proc.stdout:
        now = time.perf_counter()
        event = _event(line)
        if event == "started" and first is None:
            first = now
        elif event == "finished":
            last = now
        if now > deadline:
            proc.kill()
            break
    code = proc.wait()
    wall = time.perf_counter() - started
    stderr = proc.stderr.read() if proc.stderr else ""
    span = last - first if first is not None and last is not None else None
    return Stamped(code, wall, span, stderr.strip()[-300:])


def _event(line: str) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("event") if isinstance(record, dict) else None


def _check_files(
    dst: Path, names: list[str], digests: dict[str, str], size: int, measured: Measured
) -> tuple[bool, str]:
    if measured.exit_code != 0:
        return False, _tail(measured)
    missing = [n for n in names if not (dst / n).is_file() or (dst / n).stat().st_size != size]
    if missing:
        return False, f"{len(missing)} files missing or of the wrong size (first {missing[0]})"
    bad = [n for n in names if _sha256(dst / n) != digests[n]]
    return (not bad), (f"{len(bad)} files with the wrong bytes" if bad else "")


def _check_named(dst: Path, want: dict[str, str], measured: Measured | None) -> tuple[bool, str]:
    if measured is not None and measured.exit_code != 0:
        return False, _tail(measured)
    bad = [n for n, digest in want.items() if not (dst / n).is_file() or _sha256(dst / n) != digest]
    return (not bad), (f"wrong or missing: {', '.join(bad)}" if bad else "")


def _tail(measured: Measured) -> str:
    if measured.exit_code is None:
        return "timed out"
    lines = measured.stderr.strip().splitlines()
    return (lines[-1] if lines else f"exit code {measured.exit_code}")[:300]


def _sample(
    case: str, tool: str, repeat: int, measured: Measured, ok: bool, error: str, files: int
) -> Sample:
    sample = Sample(case, tool, repeat, ok, measured.wall_s, measured.cpu_s,
                    None if measured.peak_uss is None else measured.peak_uss / 1e6, files,
                    error)  # fmt: skip
    if measured.samples:
        sample.peak_fds = max(s[2] for s in measured.samples)
        sample.peak_procs = max(s[3] for s in measured.samples)
        sample.fd_growth, sample.proc_growth = _growth(measured.samples)
    return sample


def _growth(samples: tuple[tuple[float, int, int, int], ...]) -> tuple[int | None, int | None]:
    """The most descriptors and processes open in the run's last third, less the most in its
    middle third (the first holds the start-up): a leak of one per item shows as thousands,
    churn within a budget as about 0."""
    third = len(samples) // 3
    if third < 2:
        return None, None
    head, tail = samples[third : 2 * third], samples[-third:]
    fds = max(s[2] for s in tail) - max(s[2] for s in head)
    procs = max(s[3] for s in tail) - max(s[3] for s in head)
    return fds, procs


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _url(ngx: nginx.Nginx, name: str, run: str = "") -> str:
    """``name`` on nginx, uncapped; ``run`` marks its requests in nginx's log (wire bytes)."""
    return f"http://127.0.0.1:{ngx.http_port}/r/0/{name}" + (f"?run={run}" if run else "")


def _line(x: Sample) -> str:
    status = "ok" if x.ok else f"FAILED ({x.error})"
    extra = f" span {x.span_s:.2f} s" if x.span_s else ""
    extra += f" wire {x.wire:.4f}" if x.wire else ""
    if x.fd_growth is not None:
        extra += f" fds {x.peak_fds} (+{x.fd_growth}) procs {x.peak_procs} (+{x.proc_growth})"
    uss = "-" if x.peak_uss_mb is None else f"{x.peak_uss_mb:.1f}"
    cpu = "-" if x.cpu_s is None else f"{x.cpu_s:.2f}"
    return (f"  {x.case:<7} {x.tool:<9} #{x.repeat + 1}: {x.wall_s:7.2f} s cpu {cpu:>6} s "
            f"uss {uss:>6} MB{extra} {status}")  # fmt: skip


@contextmanager
def _tempdir(base: Path) -> Iterator[Path]:
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="blobdl-many-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
