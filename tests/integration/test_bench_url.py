"""The benchmark harness pointed at a user's own server (``python -m benchmarks --url``), as a
hostile user runs it: a server that refuses, changes its blob between runs, or shows a
certificate the tools do not trust. Every figure printed must come from a run that succeeded
and whose bytes were checked; a failure must show in the exit status. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import REPO
from tests.integration.conftest import PKI

SIZE = 64 << 10
PRESET_GOALS = ("HTTPS open loopback", "silent lane", "capped", "CDN", "wire bytes")


def bench(
    tmp_path: Path, url: str, *argv: str, env: dict[str, str] | None = None
) -> tuple[int, str, dict[str, Any]]:
    """The harness in its own process, as a user runs it (in ``env``: the environment, if
    given): (exit status, output, results.json)."""
    out = tmp_path / "results"
    # The test's own options last: argparse keeps an option's last value (a test's
    # --timeout 1 placed before the default 30 waited 30 s twice).
    command = [sys.executable, "-m", "benchmarks", "--url", url, "--repeat", "1", "--timeout",
               "30", "--out", str(out), "--workdir", str(tmp_path / "work"), *argv]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    text = run.stdout + run.stderr
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
    return run.returncode, text, json.loads((out / "results.json").read_text())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def goal_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[")]


def test_a_url_that_refuses_every_run_says_why_and_exits_non_zero(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/x"
    code, text, doc = bench(tmp_path, url, "--parts", "2", "--connections", "2", "--no-baselines")
    assert code != 0, text
    assert "None" not in text, text  # an exit code or a reason, never a missing field
    assert "exit 3" in text, text  # blobdl's exit code for a network failure
    assert "served from" not in text, text  # nothing is served in --url mode
    goals = goal_lines(text)
    assert not any(name in line for line in goals for name in PRESET_GOALS), goals
    # no goal is met on a failed run (its memory figure included)
    assert not any(line.startswith("[    met") for line in goals), goals
    assert all(g["status"] != "met" for g in doc["goals"]), doc["goals"]


def test_every_run_is_checked_against_the_first_runs_bytes(
    tmp_path: Path, server: ServerHandle
) -> None:
    digest = make_blob(server.root, "url-first.bin", SIZE, seed=7)
    argv = ("--parts", "1,2", "--connections", "2", "--no-baselines")
    code, text, doc = bench(tmp_path, server.url("url-first.bin"), *argv)
    assert code == 0, text
    assert digest in text and "first" in text, text  # which reference, and its digest
    assert doc["reference"]["sha256"] == digest, doc["reference"]
    assert [r["verified"] for r in doc["runs"]] == [True, True], doc["runs"]
    assert all(r["sha256"] == digest for r in doc["runs"]), doc["runs"]


def test_a_digest_the_user_gives_is_what_every_run_is_checked_against(
    tmp_path: Path, server: ServerHandle
) -> None:
    digest = make_blob(server.root, "url-given.bin", SIZE, seed=8)
    url = server.url("url-given.bin")
    argv = ("--parts", "2", "--connections", "2", "--no-baselines")
    code, text, doc = bench(tmp_path / "right", url, *argv, "--sha256", digest)
    assert code == 0 and "--sha256" in text and digest in text, text
    assert doc["runs"][0]["verified"] is True
    code, text, doc = bench(tmp_path / "wrong", url, *argv, "--sha256", "0" * 64)
    assert code != 0, text
    assert doc["runs"][0]["verified"] is False and not doc["runs"][0]["ok"], doc["runs"]
    assert "sha256" in doc["runs"][0]["error"], doc["runs"][0]
    assert doc["configs"][0]["ok_runs"] == 0 and doc["configs"][0]["wall_s"] is None


def test_a_server_that_changes_the_blob_between_runs_fails_the_later_runs(
    tmp_path: Path, server: ServerHandle
) -> None:
    make_blob(server.root, "url-changes.bin", SIZE, seed=9)
    url = server.url("url-changes.bin")
    argv = ("--parts", "1", "--connections", "1", "--no-baselines")
    code, text, _ = bench(tmp_path / "once", url, *argv)
    assert code == 0, text
    first_run = server.stats()["requests"]  # the harness's probe and blobdl's requests
    server.reset()
    # Then the same size, other bytes: only a checked digest tells the runs apart.
    other = {"path": "/files/url-changes.bin", "action": "status", "status": 200}
    server.set_faults(other | {"body": "x" * SIZE, "skip": first_run, "times": None})
    code, text, doc = bench(tmp_path / "twice", url, *argv, "--repeat", "2")
    assert code != 0, text
    assert [r["ok"] for r in doc["runs"]] == [True, False], doc["runs"]
    assert "sha256" in doc["runs"][1]["error"], doc["runs"][1]


def test_a_tool_that_fails_with_a_whole_file_never_sets_the_reference(
    tmp_path: Path, server: ServerHandle
) -> None:
    """A tool that writes a file of the full size and then exits non-zero (an error after
    the last byte, or bytes of its own) failed: its file is not hashed, so it never becomes
    the reference the later runs are checked against. Here blobdl's first run is refused
    (404), then a curl of the test's own writes 64 KiB of zeros and exits 22; blobdl's
    second run must set the reference and match it. The curl's hash as the reference: every
    later run "failed" its check, and the figures of good runs were thrown away."""
    digest = make_blob(server.root, "url-failed-whole.bin", SIZE, seed=13)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "curl").write_text(
        '#!/bin/sh\nwhile [ "$1" != -o ]; do shift; done\n'
        f'head -c {SIZE} /dev/zero > "$2"\nexit 22\n'
    )
    (fake / "curl").chmod(0o755)
    # Skipped: the harness's own probe of the size; then blobdl's first request.
    server.set_faults(
        {"path": "/files/url-failed-whole.bin", "skip": 1, "action": "status", "status": 404}
    )
    argv = ("--parts", "1", "--connections", "1", "--baselines", "--repeat", "2")
    env = os.environ | {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    code, text, doc = bench(tmp_path, server.url("url-failed-whole.bin"), *argv, env=env)
    assert doc["reference"]["sha256"] == digest, text
    curl = [r for r in doc["runs"] if r["tool"] == "curl"]
    assert curl and all(r["exit_code"] == 22 and r["sha256"] is None for r in curl), curl
    blobdl = [r for r in doc["runs"] if r["tool"] == "blobdl"]
    assert [r["ok"] for r in blobdl] == [False, True], blobdl
    assert code != 0, text  # the failed runs show in the exit status


def test_a_certificate_no_tool_trusts_fails_every_tool_alike(
    tmp_path: Path, tls_server: ServerHandle, pki: PKI
) -> None:
    """No tool gets -k behind the user's back (axel's --insecure is for the harness's own
    nginx only): an untrusted certificate fails all of them; --ca-bundle trusts it for all."""
    make_blob(tls_server.root, "url-tls.bin", SIZE, seed=10)
    url = tls_server.url("url-tls.bin")
    argv = ("--parts", "2", "--connections", "2", "--baselines")
    code, text, doc = bench(tmp_path / "untrusted", url, *argv)
    assert code != 0, text
    assert doc["runs"] and not any(r["ok"] for r in doc["runs"]), doc["runs"]
    code, text, doc = bench(tmp_path / "trusted", url, *argv, "--ca-bundle", pki.ca_pem)
    # axel reads the CA from SSL_CERT_FILE but its own host-name check refuses this
    # certificate's names: it fails, honestly, where it would have needed -k.
    # Whichever baselines this machine has (make test installs none of them).
    ran = {r["tool"] for r in doc["runs"]}
    ok = {r["tool"] for r in doc["runs"] if r["ok"] and r["verified"]}
    assert "blobdl" in ok and ok == ran - {"axel"}, text
    if "axel" in ran:
        (axel,) = [r for r in doc["runs"] if r["tool"] == "axel"]
        assert "Hostname verification failed" in axel["error"], axel
        assert code != 0 and "FAILED: url axel" in text, text
    else:
        assert code == 0, text


def test_a_server_that_ignores_range_is_named_and_its_runs_still_checked(
    tmp_path: Path, server: ServerHandle
) -> None:
    """Against a 200 to every Range request no part count is what it says: the user is told."""
    digest = make_blob(server.root, "url-norange.bin", SIZE, seed=11)
    server.set_faults({"path": "/files/url-norange.bin", "action": "ignore_range", "times": None})
    argv = ("--parts", "2", "--connections", "2", "--no-baselines")
    code, text, doc = bench(tmp_path, server.url("url-norange.bin"), *argv)
    assert code == 0 and "ignores Range" in text, text
    assert doc["runs"][0]["sha256"] == digest


def test_a_404_and_a_server_slower_than_timeout_fail_once_each_and_exit_non_zero(
    tmp_path: Path, server: ServerHandle
) -> None:
    make_blob(server.root, "url-slow.bin", SIZE, seed=12)
    argv = ("--parts", "2", "--connections", "2", "--no-baselines")
    code, text, _ = bench(tmp_path / "404", server.url("url-missing.bin"), *argv)
    assert code != 0 and "HTTP 404" in text, text
    assert text.count("FAILED: ") == 1 and "nothing to check" in text, text
    server.set_faults({"path": "/files/url-slow.bin", "action": "ttfb", "delay": 30, "times": None})
    code, text, _ = bench(tmp_path / "slow", server.url("url-slow.bin"), *argv, "--timeout", "1")
    assert code != 0 and text.count("FAILED: ") == 1 and "timed out" in text, text


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def test_a_proxy_in_the_environment_puts_no_tool_behind_it(
    tmp_path: Path, server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """curl and aria2c are told to go direct; blobdl, axel and hf_transfer read the proxy
    variables. A host's proxy (set for other work) must not put one tool behind a proxy and
    not another: every tool the harness runs goes straight to the server."""
    digest = make_blob(server.root, "url-proxied.bin", SIZE, seed=12)
    dead = f"http://127.0.0.1:{closed_port()}"
    for name in PROXY_VARIABLES:
        for spelled in (name, name.lower()):
            monkeypatch.setenv(spelled, "" if name == "NO_PROXY" else dead)
    argv = ("--parts", "2", "--connections", "2", "--baselines", "--sha256", digest)
    code, text, doc = bench(tmp_path, server.url("url-proxied.bin"), *argv)
    assert code == 0, text
    assert doc["runs"] and all(r["ok"] and r["verified"] for r in doc["runs"]), text
