"""The ``many`` preset (issue #23): many files, where a small item should cost what a request
costs, not what a download costs.

    python -m benchmarks --many [--repeat 3] [--workdir DIR]      (or python -m benchmarks.many)

A real nginx (plain HTTP, sendfile, keep-alive) serves generated files from tmpfs; every tool
writes onto a real disk under /var/tmp (checked: never tmpfs, else the goals say so). The
cases, each run ``--repeat`` times round-robin, medians reported:

- ``files``: 400 × 1 MiB as one manifest: ``blobdl -i`` against ``aria2c -i -j16`` and
  ``xargs -P16 curl`` (25 URLs per curl, so it keeps its connection alive: the fastest way
  curl has; and one curl per file, for information).
- ``tiny``: 10,000 × 64 KiB: blobdl and aria2c; the tree's memory, open descriptors and
  processes are sampled every 0.1 s.
- ``beside``: a 512 MiB blob and four 1000-byte ones, each with a digest, as one manifest
  with ``--per-host 16`` (what ``pull`` does with a model's layers: every layer may use the
  whole budget), against a plain ``blobdl URL --digest`` of the 512 MiB one; taking turns
  at going first. nginx's log gives the bytes it sent (wire / size).
- ``limit``: ``--limit-rate 100MB`` over a manifest of 256 MiB and three 1000-byte blobs;
  the aggregate rate is the bytes over the span from the first ``started`` to the last
  ``finished`` event, stamped by the harness as the lines arrive.
- ``pull`` (when Debian's ``docker-registry`` is installed): ``blobdl pull`` of a model whose
  layer is 512 MiB against a plain download of that layer (``benchmarks.pull``), and the same
  pull at ``--limit-rate 100MB``.

The goals are ratios of measurements of the same run (``goals``); none is ever asserted in a
test. Results go to ``benchmarks/results/many/results.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from faultserver.serverctl import make_blob

from . import nginx
from .dest import DISK, MEMORY_FS, SHM, fstype
from .measure import Measured, run_measured
from .report import Goal

RESULTS = Path(__file__).resolve().parent / "results" / "many"
KiB, MiB = 1 << 10, 1 << 20
MB = 1000 * 1000
LIMIT = 100 * MB  # --limit-rate 100MB, as in the issue
TINY = 1000  # bytes of a config or template layer


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
    cpu_s: float
    peak_uss_mb: float
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.many", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each tool (default 3)")
    parser.add_argument("--workdir", type=Path, help=f"where downloads go (default {DISK})")
    parser.add_argument(
        "--cases", default="files,tiny,beside,limit,pull", help="which cases to run"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run at most")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    started = time.monotonic()
    outcome = run(cases, max(1, args.repeat), args.workdir or DISK, args.timeout)
    found = goals(outcome)
    args.out.mkdir(parents=True, exist_ok=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    doc = {
        "meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load": load,
                 "cpus": os.cpu_count(), "seconds": round(time.monotonic() - started, 1)},
        "destination": outcome.dest,
        "skipped": outcome.skipped,
        "samples": [asdict(s) for s in outcome.samples],
        "pull": outcome.pull,
        "goals": [asdict(g) for g in found],
    }  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(doc, indent=2))
    print(f"destination: {outcome.dest}; machine: {os.cpu_count()} CPUs, load {load}")
    for name, why in outcome.skipped.items():
        print(f"skipped: {name} ({why})")
    print(table(outcome.samples))
    print()
    print("\n".join(f"[{g.status:^12}] {g.name}: {g.measured}  (goal {g.target})" for g in found))
    print(f"results: {args.out / 'results.json'}; took {doc['meta']['seconds']} s")
    return 0 if all(s.ok for s in outcome.samples) else 1


# --- running -------------------------------------------------------------------------------


def run(cases: set[str], repeat: int, workdir: Path, timeout: float) -> Outcome:
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
                _beside_case(repeat, served, dest_base, ngx, outcome, timeout)
            if "limit" in cases:
                _limit_case(repeat, served, dest_base, ngx, outcome, timeout)
        if "pull" in cases:
            _pull_case(repeat, dest_base, outcome)
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
        for tool, command in tools.items():
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


def _beside_case(
    repeat: int, served: Path, dest_base: Path, ngx: nginx.Nginx, outcome: Outcome, timeout: float
) -> None:
    _say("beside: generating 512 MiB and 4 × 1000 B ...")
    big = make_blob(served, "big512.bin", 512 * MiB, seed=7)
    tiny = {f"tiny{n}.bin": make_blob(served, f"tiny{n}.bin", TINY, seed=20 + n) for n in range(4)}
    for run_number in range(repeat):
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
            sample = Sample("limit", tool, run_number, ok, stamped.wall_s, 0.0, 0.0, len(names),
                            error or ("" if stamped.exit_code == 0 else stamped.tail),
                            span_s=stamped.span_s, bytes=size)  # fmt: skip
            outcome.samples.append(sample)
            _say(_line(sample))


def _pull_case(repeat: int, dest_base: Path, outcome: Outcome) -> None:
    from . import pull

    if shutil.which("docker-registry") is None:
        outcome.skipped["pull"] = "docker-registry not installed (make test installs it)"
        return
    size = 512 * MiB
    work = dest_base / "pull"
    work.mkdir()
    try:
        plain, pulled = pull.measure(size, repeat, work)
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
                    measured.peak_uss / 1e6, files, error)  # fmt: skip
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
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _url(ngx: nginx.Nginx, name: str, run: str = "") -> str:
    """``name`` on nginx, uncapped; ``run`` marks its requests in nginx's log (wire bytes)."""
    return f"http://127.0.0.1:{ngx.http_port}/r/0/{name}" + (f"?run={run}" if run else "")


# --- the goals -----------------------------------------------------------------------------


def _median(samples: list[Sample], case: str, tool: str, attr: str) -> float | None:
    values = [getattr(s, attr) for s in samples if (s.case, s.tool) == (case, tool) and s.ok]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def goals(outcome: Outcome) -> list[Goal]:
    s, found = outcome.samples, []
    on_disk = outcome.dest.startswith("disk")

    def judged(name: str, measured: str, target: str, met: bool, disk: bool = True) -> Goal:
        if disk and not on_disk:
            return Goal(name, f"{measured}; destination was {outcome.dest}", target, "not measured")
        return Goal(name, measured, target, "met" if met else "NOT met")

    def missing(name: str, target: str, what: str) -> Goal:
        return Goal(name, f"{what} not run", target, "not measured")

    name = "400 × 1 MiB: wall, blobdl -i / xargs -P16 curl (keep-alive)"
    ours, curl = _median(s, "files", "blobdl", "wall_s"), _median(s, "files", "curl", "wall_s")
    if ours and curl:
        one = _median(s, "files", "curl-1", "wall_s")
        extra = f"; one curl per file {one:.2f} s" if one else ""
        found.append(judged(name, f"{ours / curl:.2f}× ({ours:.2f} vs {curl:.2f} s{extra})",
                            "≤ 1×", ours <= curl))  # fmt: skip
    else:
        found.append(missing(name, "≤ 1×", "files/blobdl or files/curl"))
    name = "400 × 1 MiB: CPU per file, blobdl / aria2c"
    ours, aria = _median(s, "files", "blobdl", "cpu_s"), _median(s, "files", "aria2c", "cpu_s")
    if ours and aria:
        per = f"{ours / FILES.count * 1e3:.2f} vs {aria / FILES.count * 1e3:.2f} ms"
        found.append(judged(name, f"{ours / aria:.2f}× ({per})", "≤ 1×", ours <= aria))
    else:
        found.append(missing(name, "≤ 1×", "files/blobdl or files/aria2c"))
    found += _tiny_goals(s, judged, missing)
    name = "512 MiB beside 4 small blobs (manifest, digests) / plain download"
    ours = _median(s, "beside", "manifest", "wall_s")
    plain = _median(s, "beside", "plain", "wall_s")
    if ours and plain:
        wire = _median(s, "beside", "manifest", "wire")
        extra = f"; wire / size {wire:.4f}" if wire else ""
        found.append(judged(name, f"{ours / plain:.3f}× ({ours:.2f} vs {plain:.2f} s{extra})",
                            "≤ 1.05×", ours <= 1.05 * plain))  # fmt: skip
    else:
        found.append(missing(name, "≤ 1.05×", "beside"))
    found += _limit_goals(s, outcome.pull, judged, missing)
    found.append(_pull_goal(outcome, judged))
    return found


def _tiny_goals(
    s: list[Sample], judged: Callable[..., Goal], missing: Callable[..., Goal]
) -> list[Goal]:
    out = []
    name = "10,000 × 64 KiB: files per second, blobdl / aria2c"
    ours, aria = _median(s, "tiny", "blobdl", "wall_s"), _median(s, "tiny", "aria2c", "wall_s")
    if ours and aria:
        rate, theirs = TINY_FILES.count / ours, TINY_FILES.count / aria
        out.append(judged(name, f"{rate / theirs:.2f}× ({rate:.0f} vs {theirs:.0f} files/s)",
                          "≥ 1×", rate >= theirs))  # fmt: skip
    else:
        out.append(missing(name, "≥ 1×", "tiny/blobdl or tiny/aria2c"))
    runs = [x for x in s if (x.case, x.tool) == ("tiny", "blobdl") and x.ok]
    name = "10,000 × 64 KiB: peak USS of blobdl's process tree (worst run)"
    if runs:
        peak = max(x.peak_uss_mb for x in runs)
        out.append(judged(name, f"{peak:.1f} MB", "≤ 100 MB", peak <= 100, disk=False))
        name = "10,000 × 64 KiB: descriptor and process growth, last third over middle third"
        fds = [x.fd_growth for x in runs if x.fd_growth is not None]
        procs = [x.proc_growth for x in runs if x.proc_growth is not None]
        if fds and procs:
            worst = (max(fds), max(procs))
            peaks = f"peak {max(x.peak_fds or 0 for x in runs)} fds, "
            peaks += f"{max(x.peak_procs or 0 for x in runs)} processes"
            measured = f"+{worst[0]} descriptors, +{worst[1]} processes (worst run; {peaks})"
            # Descriptors of the items in flight come and go; a leak grows by thousands.
            out.append(judged(name, measured, "≤ +16 fds, ≤ +0 processes",
                              worst[0] <= 16 and worst[1] <= 0, disk=False))  # fmt: skip
        else:
            out.append(missing(name, "none", "a long enough tiny/blobdl run"))
    else:
        out.append(missing(name, "≤ 100 MB", "tiny/blobdl"))
    return out


def _limit_goals(
    s: list[Sample], pull: dict[str, Any], judged: Callable[..., Goal], missing: Callable[..., Goal]
) -> list[Goal]:
    out = []
    for tool, label in (("manifest", "manifest 256 MiB + 3 × 1000 B"),):
        name = f"--limit-rate 100MB, {label}: bytes / span of the items, / limit"
        runs = [x for x in s if (x.case, x.tool) == ("limit", tool) and x.ok and x.span_s]
        single = _median(s, "limit", "single", "span_s")
        if not runs:
            out.append(missing(name, "≥ 0.9", "limit"))
            continue
        rate = statistics.median((x.bytes or 0) / (x.span_s or 1) for x in runs) / LIMIT
        extra = f"; one download alone {256 * MiB / single / LIMIT:.3f}" if single else ""
        out.append(judged(name, f"{rate:.3f}{extra}", "≥ 0.9", rate >= 0.9, disk=False))
    name = "--limit-rate 100MB, blobdl pull of 512 MiB: bytes / span of the layers, / limit"
    spans = pull.get("limited_spans_s") or []
    if spans:
        rate = pull["size"] / statistics.median(spans) / LIMIT
        out.append(judged(name, f"{rate:.3f}", "≥ 0.9", rate >= 0.9, disk=False))
    else:
        out.append(missing(name, "≥ 0.9", "pull"))
    return out


def _pull_goal(outcome: Outcome, judged: Callable[..., Goal]) -> Goal:
    name = "blobdl pull of a 512 MiB layer (beside config and template) / plain download"
    pull = outcome.pull
    if not pull.get("pull_s"):
        why = outcome.skipped.get("pull", "pull not run")
        return Goal(name, why, "≤ 1.05×", "not measured")
    ours, plain = statistics.median(pull["pull_s"]), statistics.median(pull["plain_s"])
    measured = f"{ours / plain:.3f}× ({ours:.2f} vs {plain:.2f} s, medians)"
    return judged(name, measured, "≤ 1.05×", ours <= 1.05 * plain)


# --- output --------------------------------------------------------------------------------


def table(samples: list[Sample]) -> str:
    keys = sorted({(x.case, x.tool) for x in samples}, key=lambda k: (k[0], k[1]))
    lines = [f"{'case':<8} {'tool':<9} {'ok':>5} {'wall s':>8} {'CPU s':>7} {'ms/file':>8} "
             f"{'files/s':>8} {'USS MB':>7} {'sync s':>7} {'span s':>7}"]  # fmt: skip
    for case, tool in keys:
        runs = [x for x in samples if (x.case, x.tool) == (case, tool)]
        good = [x for x in runs if x.ok]
        wall = _median(samples, case, tool, "wall_s")
        cpu = _median(samples, case, tool, "cpu_s")
        files = runs[0].files
        lines.append(
            f"{case:<8} {tool:<9} {len(good):>2}/{len(runs):<2} {_f(wall):>8} {_f(cpu):>7} "
            f"{_f(cpu and cpu / files * 1e3):>8} {_f(wall and files / wall, 0):>8} "
            f"{_f(_median(samples, case, tool, 'peak_uss_mb'), 1):>7} "
            f"{_f(_median(samples, case, tool, 'sync_s')):>7} "
            f"{_f(_median(samples, case, tool, 'span_s')):>7}"
        )
    return "\n".join(lines)


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _line(x: Sample) -> str:
    status = "ok" if x.ok else f"FAILED ({x.error})"
    extra = f" span {x.span_s:.2f} s" if x.span_s else ""
    extra += f" wire {x.wire:.4f}" if x.wire else ""
    if x.fd_growth is not None:
        extra += f" fds {x.peak_fds} (+{x.fd_growth}) procs {x.peak_procs} (+{x.proc_growth})"
    return (f"  {x.case:<7} {x.tool:<9} #{x.repeat + 1}: {x.wall_s:7.2f} s cpu {x.cpu_s:6.2f} s "
            f"uss {x.peak_uss_mb:6.1f} MB{extra} {status}")  # fmt: skip


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


if __name__ == "__main__":
    sys.exit(main())
