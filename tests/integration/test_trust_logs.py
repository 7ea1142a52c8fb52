"""A job that turns on DEBUG logging sees what urllib3 says of blobdl's requests, never
their credentials.

``logging.basicConfig(level=logging.DEBUG)`` is common in batch jobs, and urllib3's own
loggers then name every request's target (``"GET /blob?X-Amz-Signature=... HTTP/1.1" 206``),
the whole URL when it goes through a proxy. The download runs in a fresh interpreter with
DEBUG logging on, every line it writes captured.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from faultserver.proxy import ForwardProxy
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import PART, REPO, sha256_file

SECRETS = ("TOKSECRET", "SIGSECRET", "CREDSECRET")
SIGNED = "X-Amz-Credential=CREDSECRET&X-Amz-Signature=SIGSECRET&part=7"

# The caller's process: DEBUG on for every logger, the download with short timeouts.
CALLER = """
import logging, sys
import blobdl
from tests.conftest import fast_settings
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s")
url, dest, proxy = sys.argv[1:4]
settings = fast_settings(retries=3, proxy=proxy or None, trust_env=False)
blobdl.Downloader(settings).download(url, dest)
"""


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as running:
        yield running


def _logged_download(url: str, dest: Path, proxy: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-c", CALLER, url, str(dest), proxy],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def _presigned_blob(server: ServerHandle) -> tuple[str, str]:
    """A URL with a token that redirects to a presigned one, whose second part's first
    answer is cut short (a retry, and its lines, follow); and the blob's sha256."""
    digest = make_blob(server.root, "signed.bin", 3 * PART, seed=31)
    location = f"{server.url('signed.bin')}?{SIGNED}"
    server.set_faults(
        {"path": "/files/start.bin", "action": "status", "status": 302,
         "headers": {"Location": location}, "times": None},
        {"path": "/files/signed.bin", "action": "reset_after", "bytes": 1000, "skip": 2},
    )  # fmt: skip
    return server.url("start.bin") + "?access_token=TOKSECRET&name=a.bin", digest


@pytest.mark.parametrize("via_proxy", [False, True], ids=["direct", "through a proxy"])
def test_urllib3s_debug_lines_about_our_requests_show_no_credential(
    server: ServerHandle, proxy: ForwardProxy, tmp_path: Path, via_proxy: bool
) -> None:
    url, digest = _presigned_blob(server)
    dest = tmp_path / "out.bin"
    logged = _logged_download(url, dest, proxy.url if via_proxy else "")
    assert sha256_file(dest) == digest
    for secret in SECRETS:
        assert secret not in logged, logged
    # The lines still say what happened: the host, the method, the target and the status.
    target = f"http://127.0.0.1:{server.port}" if via_proxy else ""
    assert f'"GET {target}/files/signed.bin?X-Amz-Credential=***&X-Amz-Signature=***&part=7 ' \
           'HTTP/1.1" 206' in logged, logged  # fmt: skip
    assert f'"GET {target}/files/start.bin?access_token=***&name=a.bin HTTP/1.1" 302' in logged
    assert via_proxy == (proxy.forwarded > 0)


# urllib3 following redirects and retrying itself (blobdl asks it to do neither, so that
# its lines "Redirecting", "Incremented Retry", "Retry:" and "Retrying ... after connection
# broken" can only be shown this way), in blobdl's requests and then in the caller's own.
URLLIB3_ITSELF = """
import logging, sys
import urllib3
from blobdl.http._logged import ours
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s")
pool = urllib3.PoolManager(retries=urllib3.Retry(total=4, status_forcelist=[503]))
with ours():
    pool.request("GET", sys.argv[1]).data
print("---- the caller's own ----", file=sys.stderr, flush=True)
pool.request("GET", sys.argv[1]).data
"""


def test_every_urllib3_line_that_names_a_url_is_redacted_for_ours_alone(
    server: ServerHandle,
) -> None:
    """What blobdl does with urllib3's lines is for its own requests: a caller's own
    requests through urllib3, in the same process, are logged as urllib3 writes them."""
    make_blob(server.root, "signed.bin", PART, seed=32)
    signed = f"{server.url('signed.bin')}?{SIGNED}"
    server.set_faults(
        {"path": "/files/start.bin", "action": "status", "status": 302,
         "headers": {"Location": signed}, "times": None},
        {"path": "/files/signed.bin", "action": "status", "status": 503},
        {"path": "/files/signed.bin", "action": "no_response", "hold": 0},
    )  # fmt: skip
    url = server.url("start.bin") + "?access_token=TOKSECRET"
    done = subprocess.run([sys.executable, "-c", URLLIB3_ITSELF, url], capture_output=True,
                          text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr
    theirs, _, caller = done.stderr.partition("---- the caller's own ----")
    for said in ("Redirecting ", "Incremented Retry for (url=", "Retry: ", "Retrying ("):
        assert said in theirs, done.stderr
    for secret in SECRETS:
        assert secret not in theirs, theirs
    assert "X-Amz-Signature=***&part=7" in theirs and "access_token=***" in theirs
    assert "SIGSECRET" in caller and "TOKSECRET" in caller  # the caller's lines untouched


def test_urllib3s_warning_of_an_answer_with_a_broken_header_shows_no_credential(
    server: ServerHandle, tmp_path: Path
) -> None:
    """An answer with a header line that is no header makes urllib3 warn from a logger of
    its own ("Failed to parse headers (url=...)", urllib3.connection), naming the whole
    URL: the download retries that answer and succeeds, and the warning keeps no secret."""
    digest = make_blob(server.root, "signed.bin", PART, seed=33)
    broken = "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nRetry-After: 0\r\nno header here\r\n\r\n"
    server.set_faults({"path": "/files/signed.bin", "action": "raw", "send": broken, "close": True})
    dest = tmp_path / "out.bin"
    logged = _logged_download(f"{server.url('signed.bin')}?{SIGNED}", dest)
    assert sha256_file(dest) == digest
    assert "urllib3.connection WARNING Failed to parse headers (url=" in logged, logged
    for secret in SECRETS:
        assert secret not in logged, logged
    assert "X-Amz-Signature=***&part=7" in logged
