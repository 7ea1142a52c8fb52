"""Run the sweep: serve a blob per scenario, run every tool × part count × repeat, record runs."""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faultserver.serverctl import ServerHandle, make_blob, start_server

from .measure import run_measured
from .pacing import PacingCheck, check_pacing, srv_cpu
from .scenarios import Scenario, rules
from .tools import BASELINES, BLOBDL, Job, Tool, blobdl_result

BLOB = "blob.bin"
SHM = Path("/dev/shm")


@dataclass(frozen=True)
class Plan:
    size: int
    parts: list[int]
    scenarios: list[Scenario]
    repeat: int
    connections: int
    stall_timeout: float
    timeout: float
    baselines: bool = False
    url: str | None = None
    workdir: Path | None = None
    verify: bool = True
    extra: tuple[str, ...] = ()


@dataclass
class Run:
    """One download, as measured."""

    scenario: str
    tool: str
    parts: int
    connections: int
    repeat: int
    size: int | None  # expected bytes (None: a URL that did not say)
    ok: bool
    exit_code: int | None
    error: str
    bytes_on_disk: int
    verified: bool | None  # sha256 checked against the served blob (None: not checked)
    wall_s: float
    cpu_s: float
    peak_uss: int
    tool_elapsed_s: float | None = None
    retries: int | None = None
    steals: int | None = None  # ranges blobdl took over from slow lanes or split off
    bytes_fetched: int | None = None  # as blobdl counted them (refetched bytes included)
    requests: int | None = None  # as the server counted them (probe and retries included)
    bytes_sent: int | None = None
    server_cpu_s: float | None = None


@dataclass
class Outcome:
    runs: list[Run] = field(default_factory=list)
    pacing: PacingCheck | None = None
    workdir: str = ""
    baselines: dict[str, bool] = field(default_factory=dict)  # name -> installed


def run_plan(plan: Plan) -> Outcome:
    outcome = Outcome(baselines={t.name: t.available() for t in BASELINES})
    tools = [BLOBDL] + [t for t in BASELINES if plan.baselines and t.available()]
    with _workdir(plan) as work:
        outcome.workdir = str(work)
        if plan.url is not None:
            size = _remote_size(plan.url)
            for scenario in plan.scenarios:
                _sweep(plan, scenario, tools, work, outcome, None, plan.url, size, None)
            return outcome
        _say(f"generating a {plan.size / 2**20:.0f} MiB blob in {work} ...")
        (work / "served").mkdir()
        digest = make_blob(work / "served", BLOB, plan.size, seed=1)
        for scenario in plan.scenarios:
            with start_server(work / "served", link_bps=scenario.link_bps) as srv:
                if scenario.conn_bps and outcome.pacing is None and not scenario.lanes:
                    outcome.pacing = _pacing(plan, scenario, srv)
                url = srv.url(BLOB)
                _sweep(plan, scenario, tools, work, outcome, srv, url, plan.size, digest)
    return outcome


def _pacing(plan: Plan, scenario: Scenario, srv: ServerHandle) -> PacingCheck:
    assert scenario.conn_bps is not None
    check = check_pacing(srv, f"/files/{BLOB}", plan.size, plan.connections, scenario.conn_bps)
    _say(
        f"server pacing check: {check.connections} × {check.bps_each / 2**20:.0f} MiB/s -> "
        f"{check.achieved_bps / 2**20:.1f} MiB/s ({check.ratio:.1%} of ideal, slowest "
        f"connection {check.slowest_bps / 2**20:.1f} MiB/s, server CPU {check.server_cpu_s:.2f} s)"
    )
    return check


def _sweep(
    plan: Plan,
    scenario: Scenario,
    tools: list[Tool],
    work: Path,
    outcome: Outcome,
    srv: ServerHandle | None,
    url: str,
    size: int | None,
    digest: str | None,
) -> None:
    configs = [(BLOBDL, p) for p in scenario.part_counts(plan.parts, plan.connections)]
    for tool in tools[1:]:
        if tool.multi or not scenario.conn_bps:  # one capped stream would just show the cap
            configs.append((tool, tool.parts_for(size or 0, plan.connections)))
    # Repeats go round the configurations so that slow drifts of the machine spread evenly.
    for repeat in range(plan.repeat):
        for tool, parts in configs:
            run = _run_one(plan, scenario, tool, parts, repeat, work, srv, url, size, digest)
            outcome.runs.append(run)
            _say(_line(run))


def _run_one(
    plan: Plan,
    scenario: Scenario,
    tool: Tool,
    parts: int,
    repeat: int,
    work: Path,
    srv: ServerHandle | None,
    url: str,
    size: int | None,
    digest: str | None,
) -> Run:
    out_dir = work / "out"
    out_dir.mkdir()  # fresh each run: no partial file or resume state from a previous run
    job = Job(url, out_dir / BLOB, parts, plan.connections, plan.stall_timeout, plan.extra)
    server_cpu = 0.0
    if srv is not None:
        srv.reset()
        part_size = (size or 0) // parts
        srv.set_faults(*rules(scenario, f"/files/{BLOB}", part_size, parts, probe=tool.probes))
        server_cpu = srv_cpu(srv)
    try:
        measured = run_measured(tool.command(job), timeout=plan.timeout, cwd=str(work))
        on_disk = job.out.stat().st_size if job.out.is_file() else 0
        verified = _verify(job.out, digest) if plan.verify and digest and on_disk else None
    finally:
        shutil.rmtree(out_dir)  # 2 GiB per run: never keep them
    result = blobdl_result(measured.stdout) if tool is BLOBDL else None
    ok = measured.exit_code == 0 and (size is None or on_disk == size) and verified is not False
    run = Run(
        scenario=scenario.name,
        tool=tool.name,
        parts=parts,
        connections=tool.connections_for(plan.connections),
        repeat=repeat,
        size=size,
        ok=ok,
        exit_code=measured.exit_code,
        error="" if ok else _error(measured.stderr, result, measured.exit_code),
        bytes_on_disk=on_disk,
        verified=verified,
        wall_s=measured.wall_s,
        cpu_s=measured.cpu_s,
        peak_uss=measured.peak_uss,
    )
    if result is not None:
        run.tool_elapsed_s = result.get("elapsed")
        run.retries = result.get("retries")
        run.steals = result.get("steals")
        run.bytes_fetched = result.get("bytes_fetched")
    if srv is not None:
        stats = srv.stats()
        run.requests, run.bytes_sent = stats["requests"], stats["bytes_sent"]
        run.server_cpu_s = srv_cpu(srv) - server_cpu
    return run


def _error(stderr: str, result: dict[str, Any] | None, code: int | None) -> str:
    if code is None:
        return "timed out"
    if result is not None and result.get("event") == "failed":
        return f"{result.get('type')}: {result.get('error')}"
    tail = stderr.strip().splitlines()[-1:] or [f"exit code {code}"]
    return tail[0][:300]


def _verify(path: Path, digest: str) -> bool:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            sha.update(chunk)
    return sha.hexdigest() == digest


def _remote_size(url: str) -> int | None:
    """Total size from a one-byte range request, or None if the server does not say."""
    req = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            total = (resp.headers.get("Content-Range") or "").rpartition("/")[2]
    except OSError as exc:
        _say(f"could not probe {url}: {exc}")
        return None
    return int(total) if total.isdigit() else None


@contextmanager
def _workdir(plan: Plan) -> Iterator[Path]:
    """A private directory for the served blob and the downloads; removed afterwards.

    By default tmpfs (/dev/shm) when it has room, so disk speed and fsync do not blur the
    network figures; every tool writes to the same place, so comparisons stay fair.
    """
    base = plan.workdir
    if base is None:
        room = shutil.disk_usage(SHM).free if SHM.is_dir() else 0
        # A URL's size is unknown up front: its downloads go to the ordinary temp directory.
        fits = plan.url is None and room > 2 * plan.size + (256 << 20)
        base = SHM if fits else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="blobdl-bench-", dir=base))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _line(run: Run) -> str:
    rate = (run.size or run.bytes_on_disk) / run.wall_s / 2**20 if run.wall_s else 0.0
    status = "ok" if run.ok else f"FAILED ({run.error})"
    return (
        f"  {run.scenario:<14} {run.tool:<11} parts={run.parts:<3} #{run.repeat + 1}: "
        f"{run.wall_s:7.2f} s {rate:8.1f} MiB/s cpu {run.cpu_s:5.2f} s "
        f"uss {run.peak_uss / 1e6:5.1f} MB retries {run.retries} steals {run.steals} {status}"
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
