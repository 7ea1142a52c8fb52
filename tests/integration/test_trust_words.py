"""Every error line names what the user can act on, in words (trust issue #20, item 19).

A host and port, a proxy, a file or a directory: never a class name of ours or of a
library's (``NewConnectionError: _NotedHTTPConnection(host=...)``). The lines are curl's
where curl has one: "Failed to connect to 127.0.0.1 port 9: Connection refused", "Could not
resolve host: nonexistent.invalid".
"""

from __future__ import annotations

import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from blobdl.errors import EXIT_LOCAL, EXIT_NETWORK
from faultserver.serverctl import ServerHandle
from tests.conftest import REPO, Blob

Make = Callable[..., Blob]
# A class name in an error line: CamelCase ending in Error/Exception, or one of urllib3's
# connection reprs (HTTPConnection(host=...)).
CLASS_NAME = re.compile(r"\b[A-Z][a-z]+[A-Za-z]*(Error|Exception)\b|Connection\(host=")


def closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: connecting is refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def error_line(*args: str) -> tuple[int, str]:
    """Run the CLI (no proxy from the environment); its exit code and its one error line."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    command = [sys.executable, "-m", "blobdl", *args, "--retries", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("blobdl: error: ")]
    assert len(errors) == 1, done.stderr
    assert not CLASS_NAME.search(errors[0]), errors[0]
    return done.returncode, errors[0].removeprefix("blobdl: error: ")


def test_a_refused_connection_names_host_and_port(tmp_path: Path) -> None:
    port = closed_port()
    code, line = error_line(f"http://127.0.0.1:{port}/x", "-o", str(tmp_path / "out"))
    assert code == EXIT_NETWORK
    assert line.startswith(f"Failed to connect to 127.0.0.1 port {port}: Connection refused")


def test_a_name_that_does_not_resolve_is_named(tmp_path: Path) -> None:
    code, line = error_line("http://nonexistent.invalid/x", "-o", str(tmp_path / "out"))
    assert code == EXIT_NETWORK
    assert line.startswith("Could not resolve host: nonexistent.invalid"), line


def test_a_proxy_that_refuses_is_named_as_the_proxy(
    make: Make, tmp_path: Path, server: ServerHandle
) -> None:
    blob = make(1000, seed=2101)
    port = closed_port()
    proxy = f"http://user:pw@127.0.0.1:{port}"
    for url in (blob.url, blob.url.replace("http://", "https://")):  # forwarded, and CONNECT
        code, line = error_line(url, "-o", str(tmp_path / "out"), "--proxy", proxy)
        assert code == EXIT_NETWORK
        assert line.startswith(f"Failed to connect to proxy 127.0.0.1 port {port}:"), line
        assert "Connection refused" in line and "pw" not in line


class _AsksForCredentials(socketserver.StreamRequestHandler):
    """A proxy that answers every request, forwarded or CONNECT, with 407."""

    def handle(self) -> None:
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        self.wfile.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Proxy-Authenticate: Basic realm=p\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")  # fmt: skip


def test_a_proxy_asking_for_credentials_is_named_as_the_proxy(
    make: Make, tmp_path: Path, server: ServerHandle
) -> None:
    """The 407 is the proxy's answer, not the server's: forwarded or tunnelled alike."""
    blob = make(1000, seed=2102)
    proxy = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _AsksForCredentials)
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        port = proxy.server_address[1]
        via = f"http://user:pw@127.0.0.1:{port}"
        for url in (blob.url, blob.url.replace("http://", "https://")):  # forwarded, CONNECT
            code, line = error_line(url, "-o", str(tmp_path / "out"), "--proxy", via)
            assert code == EXIT_NETWORK
            assert line.startswith(f"proxy 127.0.0.1 port {port} failed: "), line
            assert "407 Proxy Authentication Required" in line and "pw" not in line
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join()
    assert server.stats()["requests"] == 0


def test_a_proxy_name_that_does_not_resolve_is_named(make: Make, tmp_path: Path) -> None:
    blob = make(1000, seed=2101)
    code, line = error_line(blob.url, "-o", str(tmp_path / "out"), "--proxy",
                            "http://nonexistent.invalid:3128")  # fmt: skip
    assert code == EXIT_NETWORK
    assert line.startswith("Could not resolve proxy: nonexistent.invalid"), line


def test_an_untrusted_certificate_names_the_host(tls_server: ServerHandle, tmp_path: Path) -> None:
    code, line = error_line(tls_server.url("absent"), "-o", str(tmp_path / "out"))
    assert code == EXIT_NETWORK
    assert line.startswith("TLS certificate of 127.0.0.1 not trusted: "), line
    assert "certificate" in line.partition(": ")[2]  # OpenSSL's own words follow


def test_tls_spoken_to_a_plain_server_is_a_tls_error_with_the_host(
    make: Make, tmp_path: Path
) -> None:
    blob = make(1000, seed=2101)
    url = blob.url.replace("http://", "https://")
    code, line = error_line(url, "-o", str(tmp_path / "out"))
    port = url.split(":")[2].split("/")[0]
    assert code == EXIT_NETWORK
    assert line.startswith(f"TLS error with 127.0.0.1 port {port}: "), line


@pytest.mark.parametrize("fault", ["close_after", "reset_after"])
def test_a_connection_cut_mid_body_names_the_host(
    make: Make, server: ServerHandle, tmp_path: Path, fault: str
) -> None:
    blob = make(200_000, seed=2102)
    server.set_faults({"path": "/files/*", "skip": 1, "times": None, "action": fault,
                       "bytes": 100})  # fmt: skip
    code, line = error_line(blob.url, "-o", str(tmp_path / "out"))
    assert code == EXIT_NETWORK
    peer = f"connection to 127.0.0.1 port {server.port}"
    expected = "closed early" if fault == "close_after" else "Connection reset by peer"
    assert peer in line and expected in line, line


def test_a_server_that_never_answers_names_the_host(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(1000, seed=2101)
    server.set_faults({"path": "/files/*", "action": "no_response", "hold": 0.1})
    code, line = error_line(blob.url, "-o", str(tmp_path / "out"))
    assert code == EXIT_NETWORK
    assert line.startswith(f"connection to 127.0.0.1 port {server.port} closed early"), line


def test_a_destination_under_a_missing_directory_names_the_directory(
    make: Make, tmp_path: Path
) -> None:
    blob = make(1000, seed=2101)
    missing = tmp_path / "gone" / "deeper"
    code, line = error_line(blob.url, "-o", str(missing / "out"))
    assert code == EXIT_LOCAL
    assert line == f"{missing}: directory does not exist", line
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    for under in (not_a_dir, not_a_dir / "deeper" / "still"):  # a file anywhere on the way
        code, line = error_line(blob.url, "-o", str(under / "out"))
        assert code == EXIT_LOCAL and line == f"{not_a_dir}: is a file, not a directory", line


def in_a_deleted_directory(
    tmp_path: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a current directory removed before it starts (a shell left in a folder
    another one removed): still there to stat, empty, its links gone, it takes no file."""
    gone = tmp_path / "gone"
    gone.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = str(REPO)  # blobdl is found from nowhere: the current directory is gone
    blobdl = [sys.executable, "-m", "blobdl", *args, "--retries", "0"]
    command = ["sh", "-c", 'cd "$1" && rmdir "$1" && shift && exec "$@"', "sh", str(gone)]
    done = subprocess.run([*command, *blobdl], input=stdin, capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip
    assert not gone.exists()
    return done


DELETED = "blobdl: error: .: the current directory was deleted\n"


@pytest.mark.parametrize("where", [["-o", "out"], []], ids=["-o out", "the server's name"])
def test_a_current_directory_deleted_before_the_start_is_named(
    where: list[str], make: Make, tmp_path: Path
) -> None:
    """A relative destination's directory is the current one: the error said our side file
    in it, "out.blobdl-lock: No such file or directory"."""
    done = in_a_deleted_directory(tmp_path, make(1000, seed=2102).url, *where)
    assert (done.returncode, done.stderr) == (EXIT_LOCAL, DELETED), done.stderr


@pytest.mark.parametrize(
    ("path", "options"),
    [(" out", []), ("", []), (" out", ["--base-dir", "base"])],
    ids=["a relative path", "the server's name", "a relative base directory"],
)
def test_a_manifest_run_in_a_deleted_current_directory_is_named_not_a_traceback(
    path: str, options: list[str], make: Make, tmp_path: Path
) -> None:
    """The batch made its paths absolute with the current directory, which raised
    FileNotFoundError from getcwd() out of blobdl: a traceback, exit 1."""
    url = make(1000, seed=2103).url
    done = in_a_deleted_directory(tmp_path, "-i", "-", *options, stdin=url + path)
    assert (done.returncode, done.stderr) == (EXIT_LOCAL, DELETED), done.stderr


def test_our_side_files_in_a_missing_directory_name_the_directory(tmp_path: Path) -> None:
    """Wherever a side file is opened (the lock first), a directory that went missing after
    the destination was checked is what the error names."""
    from blobdl.errors import LocalFileError
    from blobdl.store._lock import DestinationLock

    missing = tmp_path / "gone"
    with pytest.raises(LocalFileError) as caught, DestinationLock(missing / "out", 0):
        pass
    assert str(caught.value) == f"{missing}: directory does not exist"


@pytest.mark.parametrize("link", [False, True], ids=["a file", "a link to a file"])
def test_a_cache_dir_that_is_a_file_is_named_as_one_not_as_file_exists(
    make: Make, tmp_path: Path, link: bool
) -> None:
    """``--cache-dir`` at a file said mkdir's "File exists": a local problem (exit 5, as a
    destination whose folder is a file), worded as blobdl words that one."""
    blob = make(1000, seed=2104)
    afile = tmp_path / "file"
    afile.write_bytes(b"")
    cache = tmp_path / "link" if link else afile
    if link:
        cache.symlink_to(afile)
    for named in (cache, cache / "deeper"):  # the file is the cache, or a folder on its way
        out = tmp_path / "out"
        code, line = error_line(blob.url, "-o", str(out), "--digest", f"sha256:{blob.sha256}",
                                "--cache-dir", str(named))  # fmt: skip
        assert (code, line) == (EXIT_LOCAL, f"{cache}: is a file, not a directory"), line
        assert not out.exists()


def test_a_batch_whose_cache_dir_is_a_file_names_it_for_each_item(
    make: Make, tmp_path: Path
) -> None:
    blob = make(1000, seed=2105)
    cache = tmp_path / "file"
    cache.write_bytes(b"")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{blob.url} {tmp_path / 'out'} sha256:{blob.sha256}\n")
    done = subprocess.run([sys.executable, "-m", "blobdl", "-i", str(listed), "--cache-dir",
                           str(cache), "-q"], capture_output=True, text=True, timeout=60,
                          cwd=REPO)  # fmt: skip
    assert done.returncode == EXIT_LOCAL, done.stderr
    said = done.stdout + done.stderr  # -q: the FAILED line only
    assert f"{cache}: is a file, not a directory" in said and "File exists" not in said, said


def test_a_seal_directory_that_is_a_file_is_named_as_one_in_the_warning(
    make: Make, tmp_path: Path
) -> None:
    """The cache still works (every hit is hashed): a warning, worded as errors are."""
    blob = make(1000, seed=2106)
    seals = tmp_path / "seals"
    seals.write_bytes(b"")
    env = {**os.environ, "BLOBDL_SEAL_DIR": str(seals)}
    digest, cache = f"sha256:{blob.sha256}", str(tmp_path / "cache")
    command = [sys.executable, "-m", "blobdl", blob.url, "-o", str(tmp_path / "out"),
               "--digest", digest, "--cache-dir", cache]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    said = f"no seal directory {seals} (is a file, not a directory); hashing every cache hit"
    assert f"blobdl: warning: {said}" in done.stderr, done.stderr
