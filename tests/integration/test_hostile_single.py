"""A hostile user's pass on one download: what the user asks is what blobdl does, or a
one-line usage error; never a quiet substitute (another port, another file) nor a failure
blamed on a server that did nothing wrong."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl._redact import redact_url
from blobdl.cli import EXIT_OK, EXIT_USAGE
from faultserver.serverctl import ServerHandle
from tests.conftest import Blob, run_cli, sha256_file

Make = Callable[..., Blob]


def _usage_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == EXIT_USAGE, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


# --- ports ---------------------------------------------------------------------------------


def test_port_0_is_a_usage_error_not_the_default_port(tmp_path: Path) -> None:
    """urllib3 reads port 0 as "no port": the download went to port 80 (or 443)."""
    done = run_cli("http://127.0.0.1:0/x", "-o", str(tmp_path / "out"), cwd=tmp_path)
    _usage_error(done, "port 0")
    assert not list(tmp_path.iterdir())


def test_a_redirect_to_port_0_is_refused_not_followed_to_the_default_port(
    server: ServerHandle, tmp_path: Path
) -> None:
    server.set_faults({"path": "/files/start", "action": "status", "status": 302,
                       "headers": {"Location": "http://127.0.0.1:0/files/x"}})  # fmt: skip
    done = run_cli(server.url("start"), "-o", str(tmp_path / "out"), "--retries", "0")
    assert done.returncode == 4 and "port 0" in done.stderr, done.stderr
    assert "port 80" not in done.stderr


@pytest.mark.parametrize("host", ["[fe80::1%25eth0]", "[fe80::1%eth0]", "[::1%251]"])
def test_an_ipv6_zone_id_is_refused_saying_so(tmp_path: Path, host: str) -> None:
    """A link-local address with its interface (RFC 6874's ``%25``): urllib.parse and urllib3
    read the zone differently, and the refusal said "two parsers, two hosts"."""
    done = run_cli(f"http://{host}:8080/x", "-o", str(tmp_path / "out"), cwd=tmp_path)
    _usage_error(done, "zone id")
    assert "two parsers" not in done.stderr, done.stderr


# --- outputs -------------------------------------------------------------------------------


def test_output_dash_is_a_usage_error_not_a_file_named_dash(tmp_path: Path) -> None:
    """``-o -`` is standard output to curl and wget users: blobdl wrote a file named ``-``
    in the current directory and exited 0. Parts land out of order in a file, so it cannot
    stream to standard output: a usage error, before any request, naming ``./-`` for a
    file of that name."""
    done = run_cli("http://127.0.0.1:9/x", "-o", "-", cwd=tmp_path)
    _usage_error(done, "standard output", "./-")
    assert not list(tmp_path.iterdir())


# --- --limit-rate --------------------------------------------------------------------------


def test_a_slow_limit_rate_is_no_stall(make: Make, tmp_path: Path) -> None:
    """The user's own rate limit keeps the lane moving: it is never taken for a stalled
    server. A lane read 1 KiB, then slept for 1 KiB's worth of the cap (1,024 s at 1 B/s,
    1.4 s here), past the stall timeout, and failed with "no progress"."""
    blob = make(1500, seed=81)
    dest = tmp_path / "out"
    done = run_cli(blob.url, "-o", str(dest), "--limit-rate", "750", "--stall-timeout", "1",
                   "--retries", "0", "--connections", "1", "--json")  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    assert "part_stalled" not in done.stdout
    assert sha256_file(dest) == blob.sha256


# --- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize("mark", ["/", "?", "#"])
def test_a_password_with_an_unescaped_delimiter_is_never_shown(tmp_path: Path, mark: str) -> None:
    """A password pasted as it is, ``/``, ``?`` or ``#`` unescaped, ends the host early
    (``http://alice:pa/ss@host/`` is host alice, port "pa"): the URL is refused, and its
    message and event showed the password whole."""
    url = f"http://alice:hunter2{mark}xyzzy@127.0.0.1:9/blob.bin"
    done = run_cli(url, "-o", str(tmp_path / "out"), "--json", cwd=tmp_path)
    _usage_error(done, "127.0.0.1:9/blob.bin")
    assert "hunter2" not in done.stdout + done.stderr and "xyzzy" not in done.stderr


@pytest.mark.parametrize(
    "url", ["https://h/a@b", "http://[::1]:80/@scope/pkg", "https://h/x?by=a@b.c"]
)
def test_an_at_sign_past_a_well_formed_host_is_shown_as_it_is(url: str) -> None:
    assert redact_url(url) == url


def test_an_at_sign_past_a_host_and_port_masks_what_may_be_a_password() -> None:
    """``https://h:8080/a@b`` and ``https://alice:8080/pw@b`` (a password ``8080/pw``
    pasted unescaped) are one shape: what may be a password is masked, the path with it."""
    assert redact_url("https://h:8080/a@b") == "https://***@b"
    assert redact_url("https://alice:8080/pw@b/x?q=1") == "https://***@b/x?q=1"
