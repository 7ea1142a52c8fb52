"""Run the sweep: serve each blob (nginx or the fault server), run every tool × config × repeat."""

from __future__ import annotations

import itertools
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faultserver.serverctl import ServerHandle, make_blob, start_server

from . import nginx
from .dest import Places, places
from .measure import run_measured
from .pacing import PacingCheck, check_pacing, srv_cpu
from .remote import Reference, remote_size, sha256_of
from .remote import say as _say
from .scenarios import Scenario, rules
from .tools import BASELINES, BLOBDL, Job, Tool, blobdl_result

BLOB = "blob.bin"
SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class Plan:
    size: int
    parts: list[int]
    scenarios: list[Scenario]
    repeat: int
    connections: list[int]  # swept; the widest is the focus the goals are judged at
    stall_timeout: float | None  # None: blobdl's default
    timeout: float
    baselines: bool = False
    url: str | None = None
    workdir: Path | None = None
    verify: bool = True
    extra: tuple[str, ...] = ()
    dest: str = "disk"  # "disk" or "tmpfs"
    sha256: str | None = None  # --url: what the blob must hash to (None: the first run's)
    ca_bundle: str | None = None  # --url: a PEM bundle every tool is given to trust

    @property
    def focus(self) -> int:
        return max(self.connections)

    def size_of(self, scenario: Scenario) -> int:
        return scenario.size or self.size


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
    verified: bool | None  # sha256 checked against the reference (None: not checked)
    wall_s: float
    cpu_s: float
    peak_uss: int | None  # None: the tool ended before the first sample
    tool_elapsed_s: float | None = None
    retries: int | None = None
    steals: int | None = None  # ranges blobdl took over from slow lanes or split off
    bytes_fetched: int | None = None  # as blobdl counted them (refetched bytes included)
    requests: int | None = None  # as the server counted them (probe and retries included)
    #: Bytes the server wrote to sockets for this run (issue #14's wire bytes): the fault
    #: server's body bytes, or the sum of nginx's $bytes_sent (headers included).
    bytes_sent: int | None = None
    server_cpu_s: float | None = None
    proto: str = "http"
    server: str = "fault"
    #: Seconds an os.sync() took right after the tool exited (its dirty pages reaching disk;
    #: blobdl fsyncs before it exits, the baselines do not).
    sync_s: float | None = None
    sha256: str | None = None  # of the bytes the tool left, when it succeeded and was checked


@dataclass
class Outcome:
    runs: list[Run] = field(default_factory=list)
    pacing: PacingCheck | None = None  # the fault server's, at its first capped scenario
    nginx_pacing: PacingCheck | None = None  # nginx's, at its first capped scenario
    workdir: str = ""
    baselines: dict[str, bool] = field(default_factory=dict)  # name -> installed
    dest: str = ""  # what the destination really was, e.g. "disk (ext4 at /var/tmp/...)"
    skipped: dict[str, str] = field(default_factory=dict)  # scenario -> why it did not run
    #: --url: what the runs' bytes were checked against (sha256 and where it came from).
    reference: dict[str, str | None] | None = None


@dataclass(frozen=True)
class _Served:
    """What a run needs from the server side."""

    url: str
    srv: ServerHandle | None = None
    ngx: nginx.Nginx | None = None
    marker: str = ""
    ca_bundle: str | None = None
    insecure: bool = False  # the harness's own certificate: tools that cannot check it skip it


def run_plan(plan: Plan) -> Outcome:
    outcome = Outcome(baselines={t.name: t.available() for t in BASELINES})
    tools = [t for t in BASELINES if plan.baselines and t.available()]
    sizes = sorted({plan.size_of(s) for s in plan.scenarios}) if plan.url is None else []
    with places(plan.dest, plan.workdir, sum(sizes)) as where:
        outcome.workdir, outcome.dest = str(where.dest), where.describe()
        if plan.url is not None:
            _say(f"destination: {outcome.dest}")
            size = remote_size(plan.url, plan.ca_bundle, plan.timeout)
            reference = Reference.given(plan.sha256)
            for scenario in plan.scenarios:
                _sweep(plan, scenario, tools, where, outcome, plan.url, size, reference)
            outcome.reference = reference.as_dict()
            return outcome
        _say(f"destination: {outcome.dest}; served from {where.served}")
        digests = {}
        for size in sizes:
            _say(f"generating a {size / 2**20:.0f} MiB blob in {where.served} ...")
            digest = make_blob(where.served, _blob(size), size, seed=1)
            digests[size] = Reference(digest, "the served blob")
        with ExitStack() as stack:
            ngx = _nginx(plan, where, stack, outcome)
            for scenario in plan.scenarios:
                size = plan.size_of(scenario)
                if scenario.server == "nginx":
                    if ngx is None:
                        outcome.skipped[scenario.name] = "nginx not installed"
                        continue
                    if scenario.conn_bps and outcome.nginx_pacing is None:
                        outcome.nginx_pacing = _nginx_pacing(plan, scenario, ngx, size)
                    _sweep(plan, scenario, tools, where, outcome, ngx, size, digests[size])
                    continue
                with start_server(where.served, link_bps=scenario.link_bps) as srv:
                    if scenario.conn_bps and outcome.pacing is None and not scenario.lanes:
                        outcome.pacing = _pacing(plan, scenario, srv, size)
                    _sweep(plan, scenario, tools, where, outcome, srv, size, digests[size])
    return outcome


def _blob(size: int) -> str:
    return f"blob-{size}.bin"


def _nginx(plan: Plan, where: Places, stack: ExitStack, outcome: Outcome) -> nginx.Nginx | None:
    wanted = [s for s in plan.scenarios if s.server == "nginx"]
    if not wanted:
        return None
    if not nginx.available():
        _say("skipped: nginx not installed (make bench installs it): " + _names(wanted))
        return None
    rates = {s.conn_bps for s in wanted}
    return stack.enter_context(nginx.start_nginx(where.served, rates))


def _names(scenarios: list[Scenario]) -> str:
    return ", ".join(s.name for s in scenarios)


def _pacing(plan: Plan, scenario: Scenario, srv: ServerHandle, size: int) -> PacingCheck:
    assert scenario.conn_bps is not None
    check = check_pacing(srv, f"/files/{_blob(size)}", size, plan.focus, scenario.conn_bps)
    _say(
        f"server pacing check: {check.connections} × {check.bps_each / 2**20:.0f} MiB/s -> "
        f"{check.achieved_bps / 2**20:.1f} MiB/s ({check.ratio:.1%} of ideal, slowest "
        f"connection {check.slowest_bps / 2**20:.1f} MiB/s, server CPU {check.server_cpu_s:.2f} s)"
    )
    return check


def _nginx_pacing(
    plan: Plan, scenario: Scenario, ngx: nginx.Nginx, size: int
) -> PacingCheck | None:
    assert scenario.conn_bps is not None
    check = nginx.pace(ngx, _blob(size), size, plan.focus, scenario.conn_bps, https=scenario.https)
    if check is None:
        _say("nginx pacing check: skipped (curl not installed)")
        return None
    _say(
        f"nginx pacing check ({scenario.proto}, {check.connections} curl readers to /dev/null): "
        f"{check.connections} × {check.bps_each / 2**20:.0f} MiB/s -> "
        f"{check.achieved_bps / 2**20:.1f} MiB/s ({check.ratio:.1%} of ideal, "
        f"nginx CPU {check.server_cpu_s:.2f} s)"
    )
    return check


_MARKERS = itertools.count(1)


def _sweep(
    plan: Plan,
    scenario: Scenario,
    tools: list[Tool],
    where: Places,
    outcome: Outcome,
    server: ServerHandle | nginx.Nginx | str,
    size: int | None,
    reference: Reference,
) -> None:
    configs = [(BLOBDL, p, c) for p, c in scenario.configs(plan.parts, plan.connections)]
    for tool in tools if scenario.baselines else []:
        if tool.multi or not scenario.conn_bps:  # one capped stream would just show the cap
            c = tool.connections_for(plan.focus)
            configs.append((tool, tool.parts_for(size or 0, c), c))
    # Repeats go round the configurations so that slow drifts of the machine spread evenly.
    for repeat in range(plan.repeat):
        for tool, parts, conns in configs:
            served = _serve(plan, scenario, tool, server, size)
            run = _run_one(
                plan, scenario, tool, parts, conns, repeat, where, served, size, reference
            )
            outcome.runs.append(run)
            _say(_line(run))


def _serve(
    plan: Plan,
    scenario: Scenario,
    tool: Tool,
    server: ServerHandle | nginx.Nginx | str,
    size: int | None,
) -> _Served:
    if isinstance(server, str):  # --url: the tools trust what the user gave, or the system
        return _Served(server, ca_bundle=plan.ca_bundle)
    name = _blob(size or 0)
    if isinstance(server, nginx.Nginx):
        marker = f"r{next(_MARKERS)}"
        url = server.url(name, https=scenario.https, bps=scenario.conn_bps, run=marker)
        bundle = _ca_bundle(server) if scenario.https else None
        # axel cannot check the IP-address name of the harness's own certificate
        return _Served(url, ngx=server, marker=marker, ca_bundle=bundle, insecure=True)
    return _Served(server.url(name), srv=server)


def _ca_bundle(ngx: nginx.Nginx) -> str:
    """The system's CAs plus the run's own: every tool loads a store of the usual size."""
    path = ngx.tmp / "bundle.pem"
    if not path.exists():
        system = SYSTEM_CAS.read_bytes() if SYSTEM_CAS.exists() else b""
        path.write_bytes(system + b"\n" + ngx.ca_file.read_bytes())
    return str(path)


def _run_one(
    plan: Plan,
    scenario: Scenario,
    tool: Tool,
    parts: int,
    conns: int,
    repeat: int,
    where: Places,
    served: _Served,
    size: int | None,
    reference: Reference,
) -> Run:
    out_dir = where.dest / "out"
    out_dir.mkdir()  # fresh each run: no partial file or resume state from a previous run
    job = Job(
        served.url,
        out_dir / BLOB,
        parts,
        conns,
        plan.stall_timeout,
        plan.extra,
        ca_bundle=served.ca_bundle,
        insecure=served.insecure,
    )
    env = os.environ | ({"SSL_CERT_FILE": served.ca_bundle} if served.ca_bundle else {})
    server_cpu = 0.0
    if served.srv is not None:
        srv = served.srv
        srv.reset()
        part_size = (size or 0) // parts
        path = f"/files/{_blob(size or 0)}"
        srv.set_faults(*rules(scenario, path, part_size, parts, probe=tool.probes))
        server_cpu = srv_cpu(srv)
    elif served.ngx is not None:
        server_cpu = served.ngx.cpu_s()
    os.sync()  # the previous run's dirty pages must not be written back during this one
    try:
        measured = run_measured(
            tool.command(job), timeout=plan.timeout, cwd=str(where.dest), env=env
        )
        synced = time.perf_counter()
        os.sync()
        sync_s = time.perf_counter() - synced
        on_disk = job.out.stat().st_size if job.out.is_file() else 0
        whole = measured.exit_code == 0 and on_disk and (size is None or on_disk == size)
        # Only a run whose tool succeeded is hashed: a partial file could set --url's reference.
        digest = sha256_of(job.out) if plan.verify and whole else None
    finally:
        shutil.rmtree(out_dir)  # 2 GiB per run: never keep them
    who = f"{tool.name}, {parts} parts × {conns} connections, #{repeat + 1}"
    verified = None if digest is None else reference.check(digest, who)
    result = blobdl_result(measured.stdout) if tool is BLOBDL else None
    ok = bool(whole) and verified is not False
    error = ""
    if not ok:
        error = _error(measured.stderr, result, measured.exit_code, on_disk, size)
        if verified is False:
            error = f"sha256 {digest} is not that of {reference.source}"
    run = Run(
        scenario=scenario.name,
        tool=tool.name,
        parts=parts,
        connections=conns,
        repeat=repeat,
        size=size,
        ok=ok,
        exit_code=measured.exit_code,
        error=error,
        bytes_on_disk=on_disk,
        verified=verified,
        wall_s=measured.wall_s,
        cpu_s=measured.cpu_s,
        peak_uss=measured.peak_uss,
        proto=scenario.proto if plan.url is None else plan.url.partition(":")[0],
        server=scenario.server if plan.url is None else "url",
        sync_s=sync_s,
        sha256=digest,
    )
    if result is not None:
        run.tool_elapsed_s = result.get("elapsed")
        run.retries = result.get("retries")
        run.steals = result.get("steals")
        run.bytes_fetched = result.get("bytes_fetched")
    if served.srv is not None:
        stats = served.srv.stats()
        run.requests, run.bytes_sent = stats["requests"], stats["bytes_sent"]
        run.server_cpu_s = srv_cpu(served.srv) - server_cpu
    elif served.ngx is not None:
        run.bytes_sent, run.requests = served.ngx.wire(served.marker)
        run.server_cpu_s = served.ngx.cpu_s() - server_cpu
    return run


def _error(
    stderr: str, result: dict[str, Any] | None, code: int | None, on_disk: int, size: int | None
) -> str:
    """Why a run failed, led by the tool's exit code (blobdl's own words when it gave them)."""
    if code is None:
        return "timed out (--timeout)"
    if code == 0:
        return f"exit 0 but {on_disk} bytes on disk, not {size}"
    if result is not None and result.get("event") == "failed":
        return f"exit {result.get('exit_code', code)}: {result.get('error')}"
    tail = stderr.strip().splitlines()[-1:]
    return f"exit {code}: {tail[0][:300]}" if tail else f"exit {code}"


def _line(run: Run) -> str:
    """One run as it ends: its figures only if it succeeded, else why it failed."""
    head = f"  {run.scenario:<14} {run.tool:<11} p={run.parts:<3} c={run.connections:<3} "
    head += f"#{run.repeat + 1}: "
    if not run.ok:
        return f"{head}FAILED after {run.wall_s:.2f} s ({run.error})"
    rate = (run.size or run.bytes_on_disk) / run.wall_s / 2**20 if run.wall_s else 0.0
    return (
        f"{head}{run.wall_s:7.2f} s {rate:8.1f} MiB/s cpu {run.cpu_s:5.2f} s "
        f"uss {_megabytes(run.peak_uss):>5} MB retries {_count(run.retries)} "
        f"steals {_count(run.steals)} wire {_wire(run)} req {_count(run.requests)} ok"
    )


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _wire(run: Run) -> str:
    return f"{run.bytes_sent / run.size:.3f}" if run.bytes_sent is not None and run.size else "-"


def _megabytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"
