"""The benchmark harness end to end, in --quick mode on a tiny blob (a few seconds).

Only the shape of the results is checked: timing is the harness's output, never an assertion.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

from benchmarks.__main__ import main
from benchmarks.scenarios import DEFAULT_SCENARIOS

SIZE = 2 << 20


def test_quick_sweep_writes_sane_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = ["--quick", "--size", str(SIZE), "--stall-timeout", "0.5", "--baselines"]
    assert main([*argv, "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0

    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    ours = [r for r in rows if r["tool"] == "blobdl"]
    # parts 1,2,4 for the swept scenarios; the heterogeneous ones run at the widest (4) only.
    expected = {("cdn", p) for p in (1, 2, 4)} | {("loopback", p) for p in (1, 2, 4)}
    expected |= {(name, 4) for name in ("cdn-slow-lane", "cdn-stall", "cdn-resets", "cdn-link")}
    assert {(r["scenario"], int(r["parts"])) for r in ours} == expected
    for row in rows:
        assert row["runs"] == row["ok_runs"] == "1", row
        assert int(row["size_bytes"]) == SIZE and row["bytes_ok"] == "True", row
        assert float(row["throughput_mib_s"]) > 0 and float(row["cpu_s"]) > 0, row
        assert float(row["peak_uss_mb"]) > 0, row
    for row in ours:
        assert row["retries"] != "", row
    ratios = {r["scenario"]: r["wall_ratio_vs_ref"] for r in ours if r["scenario"] != "cdn"}
    assert all(ratios[name] for name in ("cdn-slow-lane", "cdn-stall", "cdn-resets"))

    doc = json.loads((out / "results.json").read_text())
    assert len(doc["configs"]) == len(rows)
    assert doc["plan"]["scenarios"] == DEFAULT_SCENARIOS
    assert all(run["verified"] and run["bytes_on_disk"] == SIZE for run in doc["runs"])
    assert doc["pacing_check"]["achieved_bps"] > 0
    assert {g["status"] for g in doc["goals"]} <= {"met", "NOT met", "info", "n/a"}
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "throughput.png").stat().st_size > 0
