"""The benchmark harness end to end on tiny blobs (a few seconds each).

Only the shape of the results is checked: timing is the harness's output, never an assertion.
The nginx cases need nginx, which `make test` (`make system`) and `make bench` install:
without it those tests fail, saying so, as a broken set-up must.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO

SIZE = 2 << 20
FAULT_SCENARIOS = ["cdn", "cdn-slow-lane", "cdn-stall", "cdn-resets", "cdn-link", "loopback"]


def _run(tmp_path: Path, *argv: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    out = tmp_path / "results"
    common = ["--size", str(SIZE), "--repeat", "1", "--stall-timeout", "0.5", "--baselines"]
    # Its own process, as `make bench` runs it: drawing the chart loads numpy, whose native
    # threads would stay in this one and make every later test a threaded caller.
    command = [sys.executable, "-m", "benchmarks", *common, *argv, "--out", str(out)]
    run = subprocess.run(
        [*command, "--workdir", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["configs"]) == len(rows)
    assert all(run["verified"] and run["bytes_on_disk"] == SIZE for run in doc["runs"])
    statuses = {"met", "NOT met", "info", "not measured"}
    assert {g["status"] for g in doc["goals"]} <= statuses
    assert doc["destination"].startswith(("disk", "tmpfs")), doc["destination"]
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
    for row in rows:
        assert row["runs"] == row["ok_runs"] == "1", row
        assert int(row["size_bytes"]) == SIZE and row["bytes_ok"] == "True", row
        assert float(row["throughput_mib_s"]) > 0 and float(row["cpu_s"]) > 0, row
        # A baseline may end before the sampler's first look (no peak: ""); blobdl never does.
        if row["tool"] == "blobdl" or row["peak_uss_mb"]:
            assert float(row["peak_uss_mb"]) > 0, row
        # issue #14: what the server wrote, measured at the server, for every tool
        assert float(row["wire_ratio"]) >= 1.0 and float(row["requests"]) >= 1, row
    return rows, doc


def test_fault_server_sweep_writes_sane_results(tmp_path: Path) -> None:
    argv = ["--scenarios", ",".join(FAULT_SCENARIOS), "--parts", "1,2,4", "--connections", "2,4"]
    rows, doc = _run(tmp_path, *argv)
    ours = [r for r in rows if r["tool"] == "blobdl"]
    got = {(r["scenario"], int(r["parts"]), int(r["connections"])) for r in ours}
    # parts swept at the widest connection count; loopback also sweeps connections (one
    # part each); the heterogeneous cases run at the focus (4 parts × 4 connections) only.
    expected = {("cdn", p, 4) for p in (1, 2, 4)} | {("loopback", p, 4) for p in (1, 2, 4)}
    expected |= {("loopback", 2, 2)}
    expected |= {(name, 4, 4) for name in ("cdn-slow-lane", "cdn-stall", "cdn-resets", "cdn-link")}
    assert got == expected
    assert {r["proto"] for r in rows} == {"http"}
    for row in ours:
        assert row["retries"] != "", row
    ratios = {r["scenario"]: r["wall_ratio_vs_ref"] for r in ours if r["scenario"] != "cdn"}
    assert all(ratios[name] for name in ("cdn-slow-lane", "cdn-stall", "cdn-resets"))
    assert doc["plan"]["scenarios"] == FAULT_SCENARIOS
    assert doc["pacing_check"]["achieved_bps"] > 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "results" / "throughput.png").stat().st_size > 0


def test_nginx_cases_write_sane_results(tmp_path: Path) -> None:
    # `make test` installs nginx: its absence is a broken set-up, not a reason to skip.
    assert shutil.which("nginx") is not None, "nginx is not installed (make system does it)"
    argv = ["--scenarios", "https-open,https-capped,http-open", "--parts", "2"]
    rows, doc = _run(tmp_path, *argv, "--connections", "1,2")
    assert doc["skipped"] == {}
    ours = {(r["scenario"], r["proto"], int(r["parts"]), int(r["connections"])) for r in rows}
    assert {("https-open", "https", 2, 2), ("https-capped", "https", 2, 2)} <= ours
    assert {("http-open", "http", 1, 1), ("http-open", "http", 2, 2)} <= ours
    wire = {g["name"]: g for g in doc["goals"]}
    assert any(name.startswith("wire bytes / size, no faults") for name in wire)


def test_nginx_wire_bytes_count_a_response_the_client_hung_up_on(tmp_path: Path) -> None:
    """Issue #14's waste is what the server pushed before the client hung up: nginx's log
    must count it for the run, not the range asked for nor only what was read."""
    # `make test` installs nginx: its absence is a broken set-up, not a reason to skip.
    assert shutil.which("nginx") is not None, "nginx is not installed (make system does it)"
    from benchmarks.nginx import start_nginx

    (tmp_path / "b.bin").write_bytes(bytes(64 << 20))
    with start_nginx(tmp_path, {None}) as ngx:
        url = ngx.url("b.bin", https=False, bps=None, run="cut")
        path = url.partition(str(ngx.http_port))[2]
        with socket.create_connection(("127.0.0.1", ngx.http_port)) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            got = 0
            while got < 1 << 20:
                got += len(sock.recv(1 << 16))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sent, requests = ngx.wire("cut")
        assert requests == 1
        assert got <= sent < 64 << 20  # what was pushed, not what was asked for
        assert ngx.wire("other") == (0, 0)
