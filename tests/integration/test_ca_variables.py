"""The CA bundles users set for other tools are trusted: ``REQUESTS_CA_BUNDLE`` (requests,
so huggingface-cli) and ``CURL_CA_BUNDLE`` (curl, and requests after the first).

Behind a TLS-inspecting proxy a user names the proxy's CA in one of them; blobdl read neither
and failed as "certificate not trusted". Real TLS servers on loopback with a private CA
(trustme), for every command that connects: a URL, a manifest, ``hf`` and ``pull``.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from blobdl import Downloader
from blobdl.errors import EXIT_NETWORK, EXIT_OK, EXIT_USAGE, TLSError, UsageError
from faultserver.hub import HubHandle, HubRepo, start_hub
from faultserver.proxy import ForwardProxy
from faultserver.registry import Registry, start_registry
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import PART, REPO, Blob, fast_settings, sha256_file
from tests.hf_client import hf_env
from tests.integration.conftest import PKI

BUNDLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
Make = Callable[..., Blob]
FILE, FOLDERS = "SSL_CERT_FILE", "SSL_CERT_DIR"
OURS = (*BUNDLES, FILE, FOLDERS)
FAST = ("--min-part-size", "64KiB", "--max-part-size", "64KiB", "--connections", "4")


@pytest.fixture(autouse=True)
def only_the_ca_variables_a_test_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*OURS, "http_proxy", "https_proxy", "all_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tls_blob(tls_server: ServerHandle) -> Blob:
    size = 3 * PART + 17
    digest = make_blob(tls_server.root, "ca-variables.bin", size, seed=11)
    return Blob("ca-variables.bin", size, digest, tls_server.url("ca-variables.bin"))


@pytest.fixture(scope="module")
def stranger_ca(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bundle of another CA: valid, and trusting nothing the servers here present."""
    path = tmp_path_factory.mktemp("stranger") / "stranger.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def blobdl(
    *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None, **variables: str
) -> Any:
    """``python -m blobdl ARGS`` with the environment of the test and ``variables``, run
    by ``prefix`` if given."""
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "blobdl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**(env if env is not None else os.environ), **variables},
    )


def fetch(url: str, dest: Path, **overrides: Any) -> str:
    Downloader(fast_settings(**overrides)).download(url, dest)
    return sha256_file(dest)


# --- every command trusts them --------------------------------------------------------------


@pytest.mark.parametrize("variable", BUNDLES)
def test_a_url_is_trusted_through_a_ca_bundle_variable(
    variable: str, tls_blob: Blob, pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = blobdl(tls_blob.url, "-o", str(tmp_path / "cli"), *FAST, **{variable: pki.ca_pem})
    assert done.returncode == EXIT_OK, done.stderr
    assert sha256_file(tmp_path / "cli") == tls_blob.sha256
    monkeypatch.setenv(variable, pki.ca_pem)  # the library reads them as the CLI does
    assert fetch(tls_blob.url, tmp_path / "library") == tls_blob.sha256


@pytest.mark.parametrize("variable", BUNDLES)
def test_a_manifests_downloads_are_trusted_through_a_ca_bundle_variable(
    variable: str, tls_blob: Blob, tls_server: ServerHandle, pki: PKI, tmp_path: Path
) -> None:
    """A large item (parts in worker processes) and a small one (fetched whole by a seat)."""
    small = make_blob(tls_server.root, "ca-variables-small.bin", 1000, seed=12)
    manifest = tmp_path / "list"
    manifest.write_text(
        f"{tls_blob.url} {tmp_path / 'large'}\n{tls_server.url('ca-variables-small.bin')} "
        f"{tmp_path / 'small'}\n"
    )
    done = blobdl("-i", str(manifest), *FAST, **{variable: pki.ca_pem})
    assert done.returncode == EXIT_OK, done.stderr
    assert sha256_file(tmp_path / "large") == tls_blob.sha256
    assert sha256_file(tmp_path / "small") == small


@pytest.fixture(scope="module")
def tls_hub(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[HubHandle]:
    repo = HubRepo("acme/trusted")
    repo.commit({"config.json": b'{"model_type": "t"}\n', "weights.bin": os.urandom(200_000)})
    tls = (pki.server_cert, pki.server_key, pki.ca_pem)
    handle = start_hub(tmp_path_factory.mktemp("tls-hub"), [repo], tls=tls)
    yield handle
    handle.stop()


@pytest.mark.parametrize("variable", BUNDLES)
def test_hf_is_trusted_through_a_ca_bundle_variable(
    variable: str, tls_hub: HubHandle, pki: PKI, tmp_path: Path
) -> None:
    """As huggingface-cli (requests) trusts them: the Hub's API and its storage origin."""
    env = {k: v for k, v in hf_env(tls_hub.url, tmp_path / "home").items() if k not in OURS}
    done = blobdl("hf", "acme/trusted", *FAST, env=env, **{variable: pki.ca_pem})
    assert done.returncode == EXIT_OK, done.stderr
    [weights] = (tmp_path / "home").rglob("snapshots/*/weights.bin")
    assert weights.stat().st_size == 200_000
    assert tls_hub.storage.stats()["requests"] > 0  # the large file came from the storage


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[Registry]:
    tls = (pki.server_cert, pki.server_key, pki.ca_pem)
    handle = start_registry(tmp_path_factory.mktemp("tls-registry"), tls=tls)
    yield handle
    handle.stop()


@pytest.mark.parametrize("variable", BUNDLES)
def test_pull_is_trusted_through_a_ca_bundle_variable(
    variable: str, tls_registry: Registry, pki: PKI, tmp_path: Path
) -> None:
    model = tls_registry.push_model("library/trusted", "v1", (30_000, 10))
    reference = f"{tls_registry.host}/{model.repo}:{model.tag}"
    models = tmp_path / "models"
    done = blobdl("pull", reference, "--models-dir", str(models), **{variable: pki.ca_pem})
    assert done.returncode == EXIT_OK, done.stderr
    manifest = models / "manifests" / tls_registry.host / model.repo / model.tag
    assert manifest.read_bytes() == model.manifest


# --- which store wins ------------------------------------------------------------------------


def test_ca_bundle_option_then_requests_then_curl_then_the_default_store(
    tls_blob: Blob, pki: PKI, stranger_ca: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests' order (``REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE``), after the option; each
    replaces the default store, as for requests and curl: a stranger's bundle there is not
    rescued by ``SSL_CERT_FILE`` naming the right CA."""

    tries = iter(range(100))

    def trusted(option: str | None = None, **variables: str) -> bool:
        for name in OURS:
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        settings = {"ca_bundle": option} if option else {}
        try:  # a destination each: an earlier try's file is no question of trust
            fetch(tls_blob.url, tmp_path / f"out-{next(tries)}", **settings)
        except TLSError as refused:
            assert refused.exit_code == EXIT_NETWORK
            return False
        return True

    right, wrong = pki.ca_pem, stranger_ca
    assert trusted(option=right, REQUESTS_CA_BUNDLE=wrong, CURL_CA_BUNDLE=wrong)
    assert not trusted(option=wrong, REQUESTS_CA_BUNDLE=right)
    assert trusted(REQUESTS_CA_BUNDLE=right, CURL_CA_BUNDLE=wrong)
    assert not trusted(REQUESTS_CA_BUNDLE=wrong, CURL_CA_BUNDLE=right)
    assert not trusted(CURL_CA_BUNDLE=wrong, SSL_CERT_FILE=right)
    assert trusted(CURL_CA_BUNDLE=right, SSL_CERT_FILE=wrong)
    # Empty is unset (requests reads them with ``or``): the next in line decides.
    assert trusted(REQUESTS_CA_BUNDLE="", CURL_CA_BUNDLE=right)
    assert trusted(REQUESTS_CA_BUNDLE="", CURL_CA_BUNDLE="", SSL_CERT_FILE=right)


def test_no_verification_reads_no_ca_variable(
    tls_blob: Blob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in BUNDLES:
        monkeypatch.setenv(variable, str(tmp_path / "missing.pem"))
    assert fetch(tls_blob.url, tmp_path / "out", verify_tls=False) == tls_blob.sha256


# --- one naming nothing is said, as SSL_CERT_FILE's is ---------------------------------------


@pytest.mark.parametrize("variable", BUNDLES)
@pytest.mark.parametrize("wrong", ["missing", "no certificate in it"])
def test_a_ca_bundle_variable_naming_no_bundle_is_one_line_naming_both(
    variable: str, wrong: str, tls_blob: Blob, tls_server: ServerHandle, tmp_path: Path
) -> None:
    """Not the "certificate not trusted" of every connection, retried: a usage error before
    any, naming the variable (the user may not remember setting it) and its path."""
    tls_server.reset()
    path = {"missing": tmp_path / "none.pem"}.get(wrong)
    if path is None:
        path = tmp_path / "empty.pem"
        path.write_text("not a certificate\n")
    done = blobdl(tls_blob.url, "-o", str(tmp_path / "out"), **{variable: str(path)})
    assert done.returncode == EXIT_USAGE, done.stderr
    [line] = done.stderr.splitlines()
    assert f"${variable} {str(path)!r}" in line, line
    assert tls_server.stats()["requests"] == 0
    assert not (tmp_path / "out").exists()


def hashed_folder(folder: Path, *pems: str) -> Path:
    """A folder of certificates named by their subject's hash, as ``c_rehash`` makes it."""
    folder.mkdir()
    for pem in pems:
        said = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", pem],
                              capture_output=True, text=True, check=True)  # fmt: skip
        (folder / f"{said.stdout.strip()}.0").write_bytes(Path(pem).read_bytes())
    return folder


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the hashed names")
@pytest.mark.parametrize("variable", BUNDLES)
def test_a_ca_bundle_variable_naming_a_folder_of_certificates_is_trusted_as_requests_does(
    variable: str, tls_blob: Blob, pki: PKI, stranger_ca: str, tmp_path: Path
) -> None:
    """requests loads a bundle variable that names a folder as a CA folder (``c_rehash``'s
    hashed names, ``/etc/ssl/certs``): one set so for requests must not make every https
    download a usage error; a folder without the server's CA still is not trusted."""
    right = hashed_folder(tmp_path / "right", pki.ca_pem)
    done = blobdl(tls_blob.url, "-o", str(tmp_path / "out"), *FAST, **{variable: str(right)})
    assert done.returncode == EXIT_OK, done.stderr
    assert sha256_file(tmp_path / "out") == tls_blob.sha256
    wrong = hashed_folder(tmp_path / "wrong", stranger_ca)
    done = blobdl(tls_blob.url, "-o", str(tmp_path / "no"), *FAST, **{variable: str(wrong)})
    assert done.returncode == EXIT_NETWORK, done.stderr


def test_the_library_names_the_variable_too(
    tls_blob: Blob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "gone.pem"))
    with pytest.raises(UsageError) as caught:
        fetch(tls_blob.url, tmp_path / "out")
    assert f"$CURL_CA_BUNDLE {str(tmp_path / 'gone.pem')!r}: no such file" in str(caught.value)


# --- an empty SSL_CERT_FILE or SSL_CERT_DIR is unset -----------------------------------------


def in_a_default_store_of_our_own(
    tmp_path: Path, trusted_in: str, pki: PKI, stranger_ca: str
) -> list[str]:
    """A command prefix running what follows where OpenSSL's compiled-in default store
    (``ssl.get_default_verify_paths()``'s ``openssl_cafile`` and ``openssl_capath``) is one
    the test built, trusting the test CA through its ``file`` or its ``folder`` alone: a
    private mount namespace (``unshare --user --mount``), the machine's store untouched."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no mount namespace here (unshare --user --mount refused)")
    paths = ssl.get_default_verify_paths()
    file, folder = os.path.realpath(paths.openssl_cafile), os.path.realpath(paths.openssl_capath)
    if not (os.path.isfile(file) and os.path.isdir(folder)):
        pytest.skip(f"no default store at {file} and {folder} to stand in for")
    store, alone = tmp_path / "store", tmp_path / "file.pem"
    store.mkdir()
    ours, theirs = Path(pki.ca_pem).read_bytes(), Path(stranger_ca).read_bytes()
    alone.write_bytes(ours if trusted_in == "file" else theirs)
    if trusted_in == "folder":  # found by its subject's hash, as c_rehash names it
        hashed = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", pki.ca_pem],
                                capture_output=True, text=True, check=True)  # fmt: skip
        (store / f"{hashed.stdout.strip()}.0").write_bytes(ours)
    mounts = f"mount --bind {store} {folder}"
    if os.path.dirname(file) == folder:  # Debian's: the file is in the folder
        (store / os.path.basename(file)).write_bytes(alone.read_bytes())
    else:
        mounts += f" && mount --bind {alone} {file}"
    return ["unshare", "-rm", "sh", "-c", f'{mounts} && exec "$@"', "sh"]


@pytest.mark.parametrize(("variable", "trusted_in"), [(FILE, "file"), (FOLDERS, "folder")])
def test_an_empty_ca_variable_is_the_default_store_not_none(
    variable: str,
    trusted_in: str,
    tls_blob: Blob,
    tls_server: ServerHandle,
    pki: PKI,
    stranger_ca: str,
    tmp_path: Path,
) -> None:
    """``SSL_CERT_FILE=`` (how a shell or a Dockerfile unsets it) made OpenSSL load the file
    named "": none, so every https download failed as not trusted where the system's CAs
    are in that file alone (Fedora's, RHEL's). Empty is unset: the default store. For a
    download, and for a manifest's small item (fetched whole, by a seat's own pool)."""
    prefix = in_a_default_store_of_our_own(tmp_path, trusted_in, pki, stranger_ca)
    small = make_blob(tls_server.root, "ca-default-small.bin", 1000, seed=13)
    manifest = tmp_path / "list"
    manifest.write_text(f"{tls_server.url('ca-default-small.bin')} {tmp_path / 'small'}\n")
    env = {k: v for k, v in os.environ.items() if k not in OURS}
    for name, value in (("unset", None), ("empty", "")):
        here = env if value is None else {**env, variable: value}
        out = tmp_path / f"{name}.bin"
        done = blobdl(tls_blob.url, "-o", str(out), *FAST, env=here, prefix=prefix)
        assert done.returncode == EXIT_OK, (name, done.stderr)
        assert sha256_file(out) == tls_blob.sha256
        (tmp_path / "small").unlink(missing_ok=True)
        done = blobdl("-i", str(manifest), env=here, prefix=prefix)
        assert done.returncode == EXIT_OK, (name, done.stderr)
        assert sha256_file(tmp_path / "small") == small


@pytest.mark.parametrize(("variable", "trusted_in"), [(FILE, "file"), (FOLDERS, "folder")])
def test_an_empty_ca_variable_is_the_default_store_after_a_redirect_to_https(
    variable: str,
    trusted_in: str,
    tls_blob: Blob,
    tls_server: ServerHandle,
    server: ServerHandle,
    pki: PKI,
    stranger_ca: str,
    tmp_path: Path,
) -> None:
    """A plain http URL that redirects to https: no context was built before the probe
    (nothing to trust over http), so the pool's own must be ours too, never urllib3's
    default (which loads what OpenSSL reads ``SSL_CERT_FILE=`` as: nothing). For a
    download's probe, and for a manifest's small item (the seat's kept pool)."""
    prefix = in_a_default_store_of_our_own(tmp_path, trusted_in, pki, stranger_ca)
    small = make_blob(tls_server.root, "ca-redirect-small.bin", 1000, seed=17)
    hops = (
        ("to-https.bin", tls_blob.url),
        ("small-to-https.bin", tls_server.url("ca-redirect-small.bin")),
    )
    server.set_faults(*({"path": f"/files/{name}", "action": "redirect", "location": target,
                         "times": None} for name, target in hops))  # fmt: skip
    hop = server.url("to-https.bin")
    manifest = tmp_path / "list"
    manifest.write_text(f"{server.url('small-to-https.bin')} {tmp_path / 'small'}\n")
    env = {k: v for k, v in os.environ.items() if k not in OURS}
    here = {**env, variable: ""}
    out = tmp_path / "out.bin"
    done = blobdl(hop, "-o", str(out), *FAST, env=here, prefix=prefix)
    assert done.returncode == EXIT_OK, done.stderr
    assert sha256_file(out) == tls_blob.sha256
    done = blobdl("-i", str(manifest), env=here, prefix=prefix)
    assert done.returncode == EXIT_OK, done.stderr
    assert sha256_file(tmp_path / "small") == small


# --- loaded once a run --------------------------------------------------------------------------

# The CLI, with every TLS context blobdl builds noted (the building process's pid, a line
# each, "main" for the run's own process) in the file named first: a bundle loaded costs
# ~20 ms of CPU.
COUNTED = """
import os, sys
from blobdl.http import _pool
built, build, main = sys.argv[1], _pool._build_context, os.getpid()
def noted(*args, **kwargs):
    with open(built, "a") as out:
        out.write(f"{'main' if os.getpid() == main else os.getpid()}\\n")
    return build(*args, **kwargs)
_pool._build_context = noted
sys.argv = ["blobdl", *sys.argv[2:]]
from blobdl.cli import run
run()
"""


def counted_builds(built: Path, args: list[str], bundle: str) -> list[str]:
    """``blobdl ARGS`` with ``REQUESTS_CA_BUNDLE=bundle``, exit 0: the pids of the processes
    that built a TLS context, one per build ("main": the run's own process)."""
    done = subprocess.run(
        [sys.executable, "-c", COUNTED, str(built), *args, "-q", "--connections", "4",
         "--processes", "2"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "REQUESTS_CA_BUNDLE": bundle},
    )  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    return built.read_text().split() if built.exists() else []


def shaped(
    shape: str, host: ServerHandle, tag: str, tmp_path: Path
) -> tuple[list[str], dict[Path, str]]:
    """The arguments of a run of ``shape`` from ``host``: six small items of a manifest, or
    one ranged download; and the files it writes, with their sha256."""
    if shape == "small items":
        names = [f"once-{tag}-{n}.bin" for n in range(6)]
        digests = [make_blob(host.root, name, 1000, seed=7300 + n) for n, name in enumerate(names)]
        manifest = tmp_path / "list"
        manifest.write_text("".join(f"{host.url(name)} {tmp_path / name}\n" for name in names))
        return ["-i", str(manifest), "--per-host", "4"], {
            tmp_path / name: digest for name, digest in zip(names, digests, strict=True)
        }
    name = f"once-{tag}-ranged.bin"
    digest = make_blob(host.root, name, 4 * PART, seed=7310)
    return [host.url(name), "-o", str(tmp_path / name), *FAST[:4]], {tmp_path / name: digest}


@pytest.mark.parametrize("shape", ["a ranged download", "small items"])
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_ca_bundle_variable_is_loaded_once_a_run_before_any_fork_and_only_for_https(
    shape: str, scheme: str, server: ServerHandle, tls_server: ServerHandle, pki: PKI,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A bundle named by a variable replaces the default store, so the context is ours to
    build: for https, once, in the process that forks the rest (they inherit it), never
    once per worker, lane or seat. For plain http, never: a run that meets no https loads
    no CA store (~40 ms of CPU before its first byte)."""
    host = tls_server if scheme == "https" else server
    args, files = shaped(shape, host, f"{scheme}-{shape[0]}", tmp_path)
    pids = counted_builds(tmp_path / "built", args, pki.ca_pem)
    assert all(sha256_file(path) == digest for path, digest in files.items())
    assert len(pids) == (1 if scheme == "https" else 0), f"built {len(pids)} times"


@pytest.mark.parametrize("shape", ["a ranged download", "small items"])
def test_plain_http_redirected_to_https_is_trusted_through_the_variable_built_once_a_process(
    shape: str, server: ServerHandle, tls_server: ServerHandle, pki: PKI, tmp_path: Path
) -> None:
    """No context was built before the fork (the URLs are plain); the redirect to https
    builds it where it is met, from the variable's bundle (the test CA is in no system
    store: trusted only through it), once in each process that meets one: the download's
    own (its workers inherit it), or each of the batch's two pool processes."""
    args, files = shaped(shape, tls_server, f"redirected-{shape[0]}", tmp_path)
    plain = [arg.replace(tls_server.url(""), server.url("to-tls/")) for arg in args]
    if shape == "small items":
        listing = Path(args[1])
        listing.write_text(listing.read_text().replace(tls_server.url(""), server.url("to-tls/")))
    server.set_faults(*({"path": f"/files/to-tls/{path.name}", "action": "redirect",
                         "location": tls_server.url(path.name), "times": None}
                        for path in files))  # fmt: skip
    try:
        pids = counted_builds(tmp_path / "built", plain, pki.ca_pem)
        assert all(server.stats()["rule_hits"]), "every file came through its redirect"
    finally:
        server.reset()
    assert all(sha256_file(path) == digest for path, digest in files.items())
    assert 1 <= len(pids) <= (1 if shape == "a ranged download" else 2), pids
    assert len(set(pids)) == len(pids), f"built twice in one process: {pids}"


@pytest.mark.parametrize("shape", ["a ranged download", "small items"])
def test_plain_http_through_an_https_proxy_builds_the_proxys_context_alone(
    shape: str, server: ServerHandle, pki: PKI, tmp_path: Path
) -> None:
    """Forwarded over an https proxy, a plain URL's requests share one pool to the proxy,
    an https pool: its connections are wrapped with the proxy's context (urllib3's
    ``ProxyConfig``), never the pool's own. Giving that pool the servers' context loaded
    the CA store a second time in each process for a run that meets no https server."""
    args, files = shaped(shape, server, f"forwarded-{shape[0]}", tmp_path)
    with ForwardProxy(tls=(pki.server_cert, pki.server_key)) as proxy:
        via = ["--proxy", proxy.url, "--no-env-proxy"]
        pids = counted_builds(tmp_path / "built", [*args, *via], pki.ca_pem)
    assert proxy.methods() == {"GET"}
    assert all(sha256_file(path) == digest for path, digest in files.items())
    assert len(set(pids)) == len(pids), f"built twice in one process: {pids}"


@pytest.mark.parametrize("shape", ["a ranged download", "small items"])
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_an_https_proxys_context_is_built_once_a_run_before_any_fork(
    shape: str, scheme: str, server: ServerHandle, tls_server: ServerHandle, pki: PKI,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Through an https proxy every connection is wrapped with the proxy's context: built
    in the process that forks the rest, once a run (with the servers' own, for an https
    URL), as the servers' is. Built where it was first needed instead, the CA store was
    loaded again in each worker and each of the batch's pool processes (~40 ms each)."""
    host = tls_server if scheme == "https" else server
    args, files = shaped(shape, host, f"proxied-{scheme}-{shape[0]}", tmp_path)
    with ForwardProxy(tls=(pki.server_cert, pki.server_key)) as proxy:
        via = ["--proxy", proxy.url, "--no-env-proxy"]
        pids = counted_builds(tmp_path / "built", [*args, *via], pki.ca_pem)
        assert proxy.methods() == ({"CONNECT"} if scheme == "https" else {"GET"})
    assert all(sha256_file(path) == digest for path, digest in files.items())
    assert pids == ["main"] * (2 if scheme == "https" else 1), pids


def test_large_items_redirected_to_https_inherit_the_context_from_the_scheduler(
    server: ServerHandle, tls_server: ServerHandle, pki: PKI, tmp_path: Path
) -> None:
    """A large item of plain URL whose probe (a seat's) was redirected to https: its child
    is forked by the scheduler, which builds the context first, so that every such child
    inherits it instead of loading the bundle again (~40 ms of CPU an item). At most: the
    scheduler's, and one in each of the pool's two processes (their seats' probes)."""
    names = [f"large-redirected-{n}.bin" for n in range(5)]
    digests = [make_blob(tls_server.root, name, 8 * PART, seed=7320 + n)
               for n, name in enumerate(names)]  # fmt: skip
    server.set_faults(*({"path": f"/files/to-tls/{name}", "action": "redirect",
                         "location": tls_server.url(name), "times": None}
                        for name in names))  # fmt: skip
    listing = tmp_path / "list"
    listing.write_text("".join(f"{server.url('to-tls/' + n)} {tmp_path / n}\n" for n in names))
    try:
        pids = counted_builds(tmp_path / "built", ["-i", str(listing), *FAST[:4]], pki.ca_pem)
        assert all(server.stats()["rule_hits"]), "every file came through its redirect"
    finally:
        server.reset()
    assert [sha256_file(tmp_path / name) for name in names] == digests
    assert len(set(pids)) == len(pids), f"built twice in one process: {pids}"
    assert len(pids) <= 3, f"built {len(pids)} times for {len(names)} items"
