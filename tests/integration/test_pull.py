"""``blobdl pull`` against a real registry (Debian's docker-registry) on loopback."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import signal
import stat
import struct
import subprocess
import sys
import termios
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import blobdl
from faultserver.registry import (
    CONFIG_TYPE,
    MANIFEST_TYPE,
    MODEL_TYPES,
    Model,
    Registry,
    Relay,
    start_registry,
    start_relay,
    start_s3,
    start_token_server,
)
from faultserver.serverctl import ServerHandle
from tests.conftest import REPO, Blob, fast_settings, mounted_tmpfs, run_cli
from tests.integration.conftest import PKI

KB = 1024
Make = Callable[..., Blob]
INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def ref(registry: Registry, model: Model) -> str:
    return f"http://{registry.host}/{model.repo}:{model.tag}"


def assert_store(models: Path, registry: Registry, model: Model, *, alone: bool = True) -> None:
    """The store holds exactly Ollama's layout: blobs by digest, the exact manifest bytes
    (``alone``: no other blob; else other models' may be there too)."""
    manifest = models / "manifests" / registry.host / model.repo / model.tag
    assert manifest.read_bytes() == model.manifest
    blobs = {p.name: p.read_bytes() for p in (models / "blobs").iterdir()}
    wanted = {d.replace(":", "-"): data for d, data in model.blobs.items()}
    assert blobs == wanted if alone else {n: blobs.get(n) for n in wanted} == wanted
    for path in [manifest, *(models / "blobs").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    for folder in [models / "blobs", *manifest.relative_to(models).parents]:
        if str(folder) != ".":
            assert stat.S_IMODE((models / folder).stat().st_mode) == 0o755


def test_pull_writes_ollamas_store_byte_for_byte(registry: Registry, tmp_path: Path) -> None:
    model = registry.push_model("library/tiny", "1b", (300 * KB, 2 * KB, 100, 50))
    models = tmp_path / "models"
    result = blobdl.pull(ref(registry, model), models, settings=fast_settings())
    assert_store(models, registry, model)
    assert result.manifest_digest == model.digest
    assert result.bytes_fetched >= sum(len(b) for b in model.blobs.values())
    assert result.bytes_received >= result.bytes_fetched


def test_blobs_already_present_cost_only_the_manifest_request(
    registry: Registry, tmp_path: Path
) -> None:
    model = registry.push_model("library/present", "v1", (200 * KB, 10))
    models = tmp_path / "models"
    blobdl.pull(ref(registry, model), models, settings=fast_settings())
    (models / "manifests").rename(tmp_path / "old-manifests")  # as if pulled under another tag
    before = len(registry.requests())
    result = blobdl.pull(ref(registry, model), models, settings=fast_settings())
    assert [r[:2] for r in registry.requests()[before:]] == [
        ("GET", f"/v2/{model.repo}/manifests/{model.tag}")
    ]
    assert all(layer.download is None for layer in result.layers) and result.bytes_fetched == 0
    assert_store(models, registry, model)


def test_unknown_model_or_tag_is_one_line_model_not_found_exit_3(
    registry: Registry, tmp_path: Path
) -> None:
    registry.push_model("library/known", "v1", (10,))
    for missing in ("library/nosuch:v1", "library/known:nosuch"):
        reference = f"http://{registry.host}/{missing}"
        done = run_cli("pull", reference, "--models-dir", str(tmp_path / "m"), "--retries", "0")
        assert done.returncode == 3, done.stderr
        # The registry's own words follow (Ollama prints its answer's body too).
        assert done.stderr.strip().splitlines() == [
            f"blobdl: error: model not found: {registry.host}/{missing} "
            "(the registry says MANIFEST_UNKNOWN: manifest unknown)"
        ]
        assert not (tmp_path / "m" / "manifests").exists()


def test_a_digest_pinned_reference_is_checked_and_stored_under_its_tag(
    registry: Registry, tmp_path: Path
) -> None:
    model = registry.push_model("library/pinned", "v2", (50 * KB,))
    pinned = f"{ref(registry, model)}@{model.digest}"
    blobdl.pull(pinned, tmp_path / "a", settings=fast_settings())
    assert_store(tmp_path / "a", registry, model)
    bare = f"http://{registry.host}/{model.repo}@{model.digest}"
    blobdl.pull(bare, tmp_path / "b", settings=fast_settings())
    stored = (
        tmp_path / "b" / "manifests" / registry.host / model.repo / model.digest.replace(":", "-")
    )
    assert stored.read_bytes() == model.manifest
    other = "sha256:" + "0" * 64
    with pytest.raises(blobdl.ModelNotFound):
        blobdl.pull(f"{ref(registry, model)}@{other}", tmp_path / "c", settings=fast_settings())


def test_an_index_is_an_unsupported_manifest(registry: Registry, tmp_path: Path) -> None:
    model = registry.push_model("library/multi", "one", (10,))
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        {"mediaType": MANIFEST_TYPE, "digest": model.digest, "size": len(model.manifest),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()  # fmt: skip
    registry.push_manifest(model.repo, "index", index, INDEX)
    reference = f"http://{registry.host}/{model.repo}:index"
    done = run_cli("pull", reference, "--models-dir", str(tmp_path / "m"))
    assert done.returncode == 3 and "unsupported manifest" in done.stderr, done.stderr
    assert not (tmp_path / "m" / "manifests").exists()


def test_a_docker_manifest_list_is_pulled_as_ollama_gets_it_its_linux_amd64_manifest(
    registry: Registry, tmp_path: Path
) -> None:
    """``ollama pull`` accepts only Docker's image manifest (``pullModelManifest``), so a
    registry holding a Docker manifest list under the tag answers it with the list's
    linux/amd64 manifest, which Ollama pulls. Asking for lists too got the list, refused."""
    model = registry.push_model("library/listed", "amd64", (20 * KB, 10))
    listed = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {"mediaType": MANIFEST_TYPE, "digest": model.digest, "size": len(model.manifest),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()  # fmt: skip
    registry.push_manifest(model.repo, "latest", listed, DOCKER_LIST)
    url = f"{registry.url}/v2/{model.repo}/manifests/latest"
    as_ollama = urllib.request.Request(url, headers={"Accept": MANIFEST_TYPE})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(as_ollama) as answer:
        assert answer.read() == model.manifest  # what Ollama gets, and writes
    models = tmp_path / "models"
    result = blobdl.pull(f"http://{registry.host}/{model.repo}", models, settings=fast_settings())
    assert result.manifest_digest == model.digest
    assert_store(models, registry, Model(model.repo, "latest", model.manifest, model.blobs))


def test_a_corrupted_blob_in_the_registry_is_refused_and_never_stored(
    registry: Registry, tmp_path: Path
) -> None:
    model = registry.push_model("library/corrupt", "v1", (100 * KB, 20))
    layer = json.loads(model.manifest)["layers"][0]["digest"]
    data = registry.blob_file(layer)
    damaged = bytearray(data.read_bytes())
    damaged[1000] ^= 0xFF  # same size: only the digest can tell
    data.write_bytes(bytes(damaged))
    models = tmp_path / "models"
    done = run_cli("pull", ref(registry, model), "--models-dir", str(models), "--json")
    assert done.returncode == 4 and "digest mismatch" in done.stderr, done.stderr
    # one failure, one `failed` line: the layer's (as a download's, never a second one)
    failed = [e for e in map(json.loads, done.stdout.splitlines()) if e["event"] == "failed"]
    assert [(e["digest"], e["exit_code"]) for e in failed] == [(layer, 4)], done.stdout
    assert f"sha256-{layer[7:]}" not in os.listdir(models / "blobs")
    assert not (models / "manifests").exists()
    assert not [
        p for p in (models / "blobs-partial").iterdir() if not p.name.endswith(".pull-lock")
    ]


# --- token auth -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    tokens = start_token_server(tmp_path_factory.mktemp("tokens"))
    try:
        handle = start_registry(tmp_path_factory.mktemp("token-registry"), tokens=tokens)
    except BaseException:
        tokens.stop()
        raise
    yield handle
    handle.stop()


@pytest.fixture
def no_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "docker-config"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    return folder


def test_pull_with_bearer_tokens(
    token_registry: Registry, tmp_path: Path, no_docker_config: Path
) -> None:
    model = token_registry.push_model("library/secret", "v1", (100 * KB, 30))
    tokens = token_registry.tokens
    assert tokens is not None
    issued = tokens.stats()["issued"]
    blobdl.pull(ref(token_registry, model), tmp_path / "m", settings=fast_settings())
    assert_store(tmp_path / "m", token_registry, model)
    assert tokens.stats()["issued"] == issued + 1  # one token for the scope, then cached


def pull_with_an_expiring_token(registry: Registry, tmp_path: Path, tag: str) -> blobdl.PullResult:
    model = registry.push_model("library/expiring", tag, (1024 * KB, 30))
    tokens = registry.tokens
    assert tokens is not None
    tokens.control(ttls=[1.5])  # the pull's first token lives 1-1.5 s; the layer takes ~4
    issued = tokens.stats()["issued"]
    settings = fast_settings(limit_rate=256 * KB, connections=2, checkpoint_interval=0.1)
    result = blobdl.pull(ref(registry, model), tmp_path / "m", settings=settings)
    assert_store(tmp_path / "m", registry, model)
    assert tokens.stats()["issued"] >= issued + 2
    assert any(status == 401 for _, path, status in registry.requests() if "/blobs/" in path)
    return result


def test_a_token_expiring_mid_pull_is_renewed(
    token_registry: Registry, tmp_path: Path, no_docker_config: Path
) -> None:
    pull_with_an_expiring_token(token_registry, tmp_path, "v1")


def test_a_token_expiring_mid_layer_resumes_the_layer(
    token_registry: Registry, tmp_path: Path, no_docker_config: Path
) -> None:
    result = pull_with_an_expiring_token(token_registry, tmp_path, "v2")
    layer = result.layers[1].download
    assert layer is not None and layer.resumed > 0


def test_a_token_expiring_under_several_layers_is_renewed_once(
    token_registry: Registry, tmp_path: Path, no_docker_config: Path
) -> None:
    """Every layer still running when the token expires is looked up again, all at once:
    one of those lookups fetches the new token, the others wait for it and use it (one per
    lookup would ask the token server for as many tokens as there are layers)."""
    model = token_registry.push_model("library/expiring-many", "v1", (384 * KB,) * 4)
    tokens = token_registry.tokens
    assert tokens is not None
    tokens.control(ttls=[1.5])  # the first token ends while every layer still runs
    issued = tokens.stats()["issued"]
    settings = fast_settings(limit_rate=256 * KB, connections=8, checkpoint_interval=0.1)
    blobdl.pull(ref(token_registry, model), tmp_path / "m", settings=settings)
    assert_store(tmp_path / "m", token_registry, model)
    assert tokens.stats()["issued"] == issued + 2  # the first token, and its one renewal


def test_basic_credentials_come_from_the_docker_config(
    token_registry: Registry, tmp_path: Path, no_docker_config: Path
) -> None:
    model = token_registry.push_model("library/private", "v1", (10 * KB,))
    tokens = token_registry.tokens
    assert tokens is not None
    tokens.control(credentials="alice:s3cret")
    try:
        reference = ref(token_registry, model)
        done = run_cli("pull", reference, "--models-dir", str(tmp_path / "m"))
        assert done.returncode == 3 and "authentication refused" in done.stderr, done.stderr
        auth = base64.b64encode(b"alice:s3cret").decode()
        config = {"auths": {f"http://{token_registry.host}": {"auth": auth}}}
        (no_docker_config / "config.json").write_text(json.dumps(config))
        blobdl.pull(reference, tmp_path / "m", settings=fast_settings())
        assert_store(tmp_path / "m", token_registry, model)
    finally:
        tokens.control(credentials=None)


# --- interruption and concurrency -------------------------------------------------------------

CLI_SLOW = ["--min-part-size", "64KiB", "--max-part-size", "64KiB", "--connections", "2",
            "--progress-interval", "0.1", "--checkpoint-interval", "0.1", "--json"]  # fmt: skip


def spawn_pull(*args: str) -> subprocess.Popen[str]:
    """``blobdl pull`` in its own process group, so a test can SIGKILL all of it at once."""
    return subprocess.Popen(
        [sys.executable, "-m", "blobdl", "pull", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_sigkill_mid_layer_then_a_rerun_resumes_the_layer(
    registry: Registry, tmp_path: Path
) -> None:
    model = registry.push_model("library/killed", "v1", (1024 * KB, 40))
    layer = json.loads(model.manifest)["layers"][0]["digest"]
    models = tmp_path / "models"
    proc = spawn_pull(ref(registry, model), "--models-dir", str(models), "--limit-rate",
                      "256KiB", *CLI_SLOW)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        record = json.loads(line)
        progress = record.get("digest") == layer and record["event"] == "progress"
        if progress and record["done"] >= 300 * KB:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert f"sha256-{layer[7:]}" not in os.listdir(models / "blobs")
    assert not (models / "manifests").exists()

    result = blobdl.pull(ref(registry, model), models, settings=fast_settings())
    assert_store(models, registry, model)
    download = next(r.download for r in result.layers if r.digest == layer)
    assert download is not None and download.resumed >= 200 * KB
    assert download.bytes_fetched <= 1024 * KB - download.resumed + 64 * KB


def test_two_pulls_sharing_a_layer_fetch_it_once(registry: Registry, tmp_path: Path) -> None:
    shared = random.Random(7).randbytes(768 * KB)
    first = registry.push_model("library/family-a", "v1", (20 * KB,), shared=shared)
    second = registry.push_model("library/family-b", "v1", (30 * KB,), shared=shared)
    models = tmp_path / "models"
    slow = ["--models-dir", str(models), "--limit-rate", "512KiB", *CLI_SLOW]
    procs = [spawn_pull(ref(registry, m), *slow) for m in (first, second)]
    summaries = [finish(p)[-1] for p in procs]
    digest = "sha256:" + hashlib.sha256(shared).hexdigest()
    fetched = [layer["fetched"] for s in summaries for layer in s["layers"]
               if layer["digest"] == digest]  # fmt: skip
    assert sorted(fetched) == [False, True]
    for model in (first, second):
        manifest = models / "manifests" / registry.host / model.repo / model.tag
        assert manifest.read_bytes() == model.manifest
    assert (models / "blobs" / f"sha256-{digest[7:]}").read_bytes() == shared


def held_lookups(registry: Registry, tmp_path: Path, repo: str, connections: int) -> int:
    """Pull a five-blob model through a relay that holds each lookup of where a blob is
    (a GET of its first byte) half a second: the most lookups it held at once. The blobs
    are checked in the store."""
    model = registry.push_model(repo, "v1", (10 * KB, 20, 30, 40))
    relay = start_relay(tmp_path / "relay", registry.url)
    try:
        relay.set_faults([{"match": "/blobs/", "range": "bytes=0-0", "hold": 0.5}])
        where = relay.url.removeprefix("http://")
        blobdl.pull(f"http://{where}/{model.repo}:{model.tag}", tmp_path / "m",
                    settings=fast_settings(connections=connections))  # fmt: skip
        peak = relay.held_peak()
    finally:
        relay.stop()
    for digest, data in model.blobs.items():
        assert (tmp_path / "m" / "blobs" / digest.replace(":", "-")).read_bytes() == data
    assert len(model.blobs) == 5
    return peak


def test_the_registry_is_asked_where_each_blob_is_all_at_once(
    registry: Registry, tmp_path: Path
) -> None:
    """Before its blobs are fetched, a pull asks the registry where each one is served (by
    itself, or by a redirect to storage). One lookup after another held every layer's start
    up by all their round trips (a few ms each here, 50 ms and more from a distant
    registry); they go out together."""
    assert held_lookups(registry, tmp_path, "library/lookups", 8) == 5  # all at once


def test_the_lookups_keep_within_the_connection_budget(registry: Registry, tmp_path: Path) -> None:
    """``--connections`` counts every socket, the lookups of where each blob is included:
    with a budget of 2, no more than 2 are in flight at once, however many blobs there are."""
    assert held_lookups(registry, tmp_path, "library/lookups-budget", 2) == 2


# --- S3 storage: blob GETs answer 307 to presigned URLs on another port -----------------------


@pytest.fixture(scope="module")
def s3_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Relay]]:
    """A token-auth registry on S3 storage; S3 is reached through a relay that logs every
    request's Authorization header, the registry's own and the presigned ones alike."""
    folder = tmp_path_factory.mktemp("s3")
    with contextlib.ExitStack() as stack:
        s3 = start_s3(folder / "moto")
        stack.callback(s3.stop)
        s3.create_bucket("registry")
        relay = start_relay(folder / "relay", s3.url)
        stack.callback(relay.stop)
        tokens = start_token_server(folder / "tokens")
        driver = {**s3.driver("registry"), "regionendpoint": relay.url}
        handle = start_registry(folder / "registry", tokens=tokens, s3=driver)
        stack.callback(handle.stop)  # the token server too
        yield handle, relay


def test_pull_through_presigned_redirects_sends_no_credential_to_storage(
    s3_setup: tuple[Registry, Relay], tmp_path: Path, no_docker_config: Path
) -> None:
    registry, relay = s3_setup
    model = registry.push_model("library/ins3", "v1", (600 * KB, 40, 10))
    models = tmp_path / "models"
    blobdl.pull(ref(registry, model), models, settings=fast_settings())
    assert_store(models, registry, model)
    blob_gets = [s for m, p, s in registry.requests() if m == "GET" and "/blobs/" in p]
    assert blob_gets and set(blob_gets) <= {307, 401}  # every blob was redirected to storage
    presigned = [(p, auth) for m, p, auth in relay.seen() if m == "GET" and "X-Amz-Signature" in p]
    assert len(presigned) >= len(model.blobs)
    assert all(auth == "-" for _, auth in presigned), presigned


def test_a_store_that_cannot_be_written_is_one_line_exit_5(
    registry: Registry, tmp_path: Path
) -> None:
    model = registry.push_model("library/nowhere", "v1", (10,))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = run_cli("pull", ref(registry, model), "--models-dir", str(blocker / "models"))
    assert done.returncode == 5, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and str(blocker) in done.stderr


@pytest.mark.parametrize("option", [["--cache-dir", "cache"], ["--verify-cache"]])
def test_a_cache_option_a_pull_has_no_use_for_is_bad_usage(
    option: list[str], registry: Registry, tmp_path: Path
) -> None:
    """The store is the cache (content-addressed already): pull never uses blobdl's own
    (``pull`` drops ``cache_dir``). ``pull --help`` listed both options and a pull took them
    in silence, so a user who gave a shared cache got none; refused, as a batch's option
    given for one URL is, in one line that names it, before any request."""
    model = registry.push_model("library/cached", "v1", (10,))
    before = len(registry.requests())
    models = tmp_path / "models"
    done = run_cli("pull", ref(registry, model), "--models-dir", str(models), *option,
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and option[0] in lines[0], lines
    assert len(registry.requests()) == before and not models.exists()
    assert option[0] not in run_cli("pull", "--help").stdout


def test_a_link_planted_at_a_pull_lock_is_refused_not_followed(
    registry: Registry, tmp_path: Path
) -> None:
    model = registry.push_model("library/planted", "v1", (10 * KB,))
    layer = json.loads(model.manifest)["layers"][0]["digest"]
    models, target = tmp_path / "models", tmp_path / "created"
    lock = models / "blobs-partial" / f"sha256-{layer[7:]}.pull-lock"
    lock.parent.mkdir(parents=True)
    lock.symlink_to(target)
    done = run_cli("pull", ref(registry, model), "--models-dir", str(models))
    assert done.returncode == 5 and str(lock) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not target.exists()
    assert not (models / "manifests").exists()


def blob_gets(registry: Registry, digest: str) -> int:
    return sum(1 for m, p, _ in registry.requests() if m == "GET" and p.endswith(digest))


def test_a_presigned_url_expiring_mid_layer_is_resolved_again_and_the_layer_resumes(
    s3_setup: tuple[Registry, Relay], tmp_path: Path, no_docker_config: Path
) -> None:
    registry, relay = s3_setup
    model = registry.push_model("library/expires", "v1", (1024 * KB, 20))
    layer = json.loads(model.manifest)["layers"][0]["digest"]
    # The probe and five 64 KiB parts go through; the next presigned GET is refused as S3
    # refuses an expired signature. Every later GET (a fresh URL) is served.
    relay.set_faults([{"match": f"{layer[7:]}/data?X-Amz-", "skip": 6, "status": 403}])
    before = blob_gets(registry, layer)
    settings = fast_settings(connections=1, checkpoint_interval=0.05)
    result = blobdl.pull(ref(registry, model), tmp_path / "m", settings=settings)
    assert_store(tmp_path / "m", registry, model)
    assert blob_gets(registry, layer) - before >= 2  # the registry was asked again
    download = next(r.download for r in result.layers if r.digest == layer)
    assert download is not None and download.resumed >= 64 * KB
    assert download.bytes_fetched <= 1024 * KB - download.resumed + 64 * KB


# --- faults on the storage path: a registry route that redirects to the fault server ----------


def redirected_model(
    front: ServerHandle, make: Make, size: int, seed: int, *more: Blob
) -> tuple[str, Blob, list[dict[str, object]]]:
    """A model whose layer (``size`` bytes, then ``more``) lives on the fault server: the
    reference, the layer, and the rules that make ``front`` its registry (for set_faults)."""
    layer, config = make(size, seed=seed), make(100, seed=seed + 1)
    repo, tag = f"library/faulty{seed}", "v1"
    layers = [{"mediaType": MODEL_TYPES[0], "digest": f"sha256:{b.sha256}", "size": b.size}
              for b in (layer, *more)]  # fmt: skip
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "layers": layers,
        "config": {"mediaType": CONFIG_TYPE, "digest": f"sha256:{config.sha256}", "size": 100},
    })  # fmt: skip
    rules: list[dict[str, object]] = [
        {"path": f"/v2/{repo}/manifests/{tag}", "times": None, "action": "status",
         "status": 200, "headers": {"Content-Type": MANIFEST_TYPE}, "body": manifest}
    ]  # fmt: skip
    for blob in (layer, config, *more):
        rules.append({"path": f"/v2/{repo}/blobs/sha256:{blob.sha256}", "times": None,
                      "action": "redirect", "status": 307, "location": blob.url})  # fmt: skip
    return f"http://127.0.0.1:{front.port}/{repo}:{tag}", layer, rules


@pytest.mark.parametrize(
    "fault",
    [
        {"action": "reset_after", "bytes": 20 * KB},
        {"action": "close_after", "bytes": 30 * KB},
        {"action": "stall_after", "bytes": 10 * KB, "hold": 5},
        {"action": "status", "status": 503},
        {"action": "wrong_content_range", "by": 1},
    ],
    ids=lambda fault: str(fault["action"]),
)
def test_transient_storage_faults_behind_a_redirect_end_in_exact_bytes(
    front: ServerHandle, server: ServerHandle, make: Make, tmp_path: Path, fault: dict[str, object]
) -> None:
    reference, layer, rules = redirected_model(front, make, 512 * KB, seed=41)
    front.set_faults(*rules)
    server.set_faults({"path": f"/files/{layer.name}", "skip": 2, "times": 2, **fault})
    result = blobdl.pull(reference, tmp_path / "m", settings=fast_settings(stall_timeout=0.5))
    stored = tmp_path / "m" / "blobs" / f"sha256-{layer.sha256}"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == layer.sha256
    download = result.layers[1].download
    assert download is not None and download.retries + download.steals >= 1  # it was hit


@pytest.mark.parametrize(
    "fault",
    [{"action": "reset_after", "bytes": 0}, {"action": "status", "status": 403}],
    ids=["reset", "403"],
)
def test_a_persistent_storage_fault_is_one_line_and_the_partial_is_kept(
    front: ServerHandle, server: ServerHandle, make: Make, tmp_path: Path, fault: dict[str, object]
) -> None:
    reference, layer, rules = redirected_model(front, make, 512 * KB, seed=43)
    front.set_faults(*rules)
    # The probe and three 64 KiB parts come through; from then on storage fails every GET
    # (a 403 every time, even from a freshly resolved URL: the pull gives up after a few).
    server.set_faults({"path": f"/files/{layer.name}", "skip": 4, "times": None, **fault})
    models = tmp_path / "models"
    done = run_cli("pull", reference, "--models-dir", str(models), "--connections", "1",
                   "--min-part-size", "64KiB", "--max-part-size", "64KiB", "--retries", "2",
                   "--max-backoff", "0.01")  # fmt: skip
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len([line for line in lines if "error" in line]) == 1, done.stderr
    assert lines[-1].startswith("blobdl: error: "), done.stderr
    assert f"sha256-{layer.sha256}" not in os.listdir(models / "blobs")
    assert not (models / "manifests").exists()
    assert any(p.name.startswith(f"sha256-{layer.sha256}") and p.name.endswith("-state")
               for p in (models / "blobs-partial").iterdir())  # fmt: skip

    server.set_faults()
    result = blobdl.pull(reference, models, settings=fast_settings(connections=1))
    download = result.layers[1].download
    assert download is not None and download.resumed >= 3 * 64 * KB
    assert hashlib.sha256((models / "blobs" / f"sha256-{layer.sha256}").read_bytes()).hexdigest() \
        == layer.sha256  # fmt: skip


# --- free space: checked before the first byte, for what is still missing only ----------------


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs) for the store."""
    with mounted_tmpfs(tmp_path / "tmpfs", "1m") as mount:
        yield mount


def test_a_pull_that_cannot_fit_is_refused_before_the_first_byte(
    front: ServerHandle, server: ServerHandle, make: Make, small_store: Path
) -> None:
    reference, _, rules = redirected_model(front, make, 2048 * KB, seed=61)
    front.set_faults(*rules)
    done = run_cli("pull", reference, "--models-dir", str(small_store / "m"))
    assert done.returncode == 5, done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("blobdl: error:")]
    assert len(error) == 1 and f"needs {2048 * KB + 100} bytes but only" in error[0], done.stderr
    assert os.listdir(small_store / "m" / "blobs") == []
    assert not any(p.endswith("-tmp") for p in os.listdir(small_store / "m" / "blobs-partial"))
    assert not server.stats()["ranges"]  # not one byte of storage asked for


def interrupt_on(front: ServerHandle, server: ServerHandle, make: Make, models: Path) -> Blob:
    """Leave a kept partial of a 512 KiB layer in ``models`` (a storage fault after 3 parts)."""
    reference, layer, rules = redirected_model(front, make, 512 * KB, seed=63)
    front.set_faults(*rules)
    server.set_faults({"path": f"/files/{layer.name}", "skip": 4, "times": None,
                       "action": "reset_after", "bytes": 0})  # fmt: skip
    with pytest.raises(blobdl.RetriesExhausted):
        blobdl.pull(reference, models, settings=fast_settings(connections=1, retries=1))
    server.set_faults()
    return layer


def test_a_resumed_pull_needs_space_only_for_what_is_still_missing(
    front: ServerHandle, server: ServerHandle, make: Make, small_store: Path
) -> None:
    models = small_store / "m"
    interrupt_on(front, server, make, models)  # 512 KiB of the 1 MiB now preallocated
    # 300 KiB more: with the kept partial the model fits, as a fresh pull would not.
    reference, _, rules = redirected_model(front, make, 512 * KB, 63, make(300 * KB, 64))
    front.set_faults(*rules)
    result = blobdl.pull(reference, models, settings=fast_settings())
    download = result.layers[1].download
    assert download is not None and download.resumed >= 3 * 64 * KB
    assert sorted(os.listdir(models / "blobs")) == sorted(
        f"sha256-{r.digest[7:]}" for r in result.layers
    )


def test_a_resumed_pull_that_cannot_fit_names_only_what_is_still_missing(
    front: ServerHandle, server: ServerHandle, make: Make, small_store: Path
) -> None:
    models = small_store / "m"
    interrupt_on(front, server, make, models)
    extra = make(600 * KB, 65)  # more than is left beside the partial
    reference, _, rules = redirected_model(front, make, 512 * KB, 63, extra)
    front.set_faults(*rules)
    done = run_cli("pull", reference, "--models-dir", str(models))
    assert done.returncode == 5, done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("blobdl: error:")]
    assert len(error) == 1 and f"needs {600 * KB} bytes but only" in error[0], done.stderr
    assert f"sha256-{extra.sha256}" not in os.listdir(models / "blobs")
    assert not (models / "manifests").exists()


# --- what the user sees -----------------------------------------------------------------------


def two_models(front: ServerHandle, make: Make, models: Path) -> tuple[str, list[Blob]]:
    """Pull one model, then give ``front`` another that shares its layer and config and adds
    a 256 KiB layer: the second pull has one blob to fetch. Returns its reference and layers."""
    reference, layer, rules = redirected_model(front, make, 512 * KB, seed=71)
    front.set_faults(*rules)
    blobdl.pull(reference, models, settings=fast_settings())
    new = make(256 * KB, seed=73)
    reference, _, rules = redirected_model(front, make, 512 * KB, 71, new)
    front.set_faults(*rules)
    return reference, [layer, new]


def test_plain_output_is_a_start_line_a_line_per_layer_and_a_summary(
    front: ServerHandle, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    models = tmp_path / "m"
    reference, (layer, new) = two_models(front, make, models)
    done = run_cli("pull", reference, "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    resolved = reference.removeprefix("http://")
    config = make(100, seed=72)
    store, *lines = done.stderr.splitlines()
    assert store == f"store {models} (--models-dir)"
    assert lines[0] == f"pulling {resolved}: 1 of 3 blobs to fetch, {256 * KB} bytes"
    assert lines[1] == f"sha256:{config.sha256}  100 bytes  present"
    assert lines[2] == f"sha256:{layer.sha256}  {512 * KB} bytes  present"
    assert re.fullmatch(rf"sha256:{new.sha256}  {256 * KB} bytes  fetched in \d+\.\d s", lines[3])
    manifest = models / "manifests" / resolved.replace(":v1", "/v1")
    assert re.fullmatch(rf"pulled {re.escape(resolved)}: 3 blobs, {256 * KB} bytes fetched "
                        rf"in \d+\.\d s -> {re.escape(str(manifest))}", lines[4])  # fmt: skip
    assert len(lines) == 5 and done.stdout == ""


def test_a_terminal_gets_one_bar_for_the_bytes_still_missing(
    front: ServerHandle, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    models = tmp_path / "m"
    reference, _ = two_models(front, make, models)
    primary, secondary = os.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "blobdl", "pull", reference, "--models-dir", str(models)],
        stdin=subprocess.DEVNULL, stdout=secondary, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    os.close(secondary)
    screen = b""
    with contextlib.suppress(OSError):  # EIO: the child closed the terminal
        while chunk := os.read(primary, 4096):
            screen += chunk
    os.close(primary)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    text = screen.decode()
    bars = [line for line in text.replace("\r\n", "\n").split("\n") if "%|" in line]
    assert len(bars) == 1, text  # redrawn in place with \r, never a second bar
    assert "256k/256k" in bars[0].split("\r")[-1], text  # the total: the one missing layer


# --- --insecure is plain HTTP, as for `ollama pull`; --no-verify-tls skips TLS checks ---------


def bare_ref(registry: Registry, model: Model) -> str:
    """The reference without a scheme, as Ollama users write it."""
    return f"{registry.host}/{model.repo}:{model.tag}"


def test_insecure_pulls_from_a_plain_http_registry_by_a_reference_without_scheme(
    registry: Registry, tmp_path: Path
) -> None:
    model = registry.push_model("library/plain", "v1", (20 * KB, 10))
    models = tmp_path / "models"
    refused = run_cli("pull", bare_ref(registry, model), "--models-dir", str(models),
                      "--retries", "0")  # fmt: skip
    assert refused.returncode == 3, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blobdl: error: "), refused.stderr
    assert f"https://{registry.host}/" in lines[0]  # https unless --insecure: says where
    done = run_cli("pull", bare_ref(registry, model), "--insecure", "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    assert_store(models, registry, model)


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[Registry]:
    """Debian's docker-registry over HTTPS, with a certificate of the test CA (which no
    system trusts: as good as self-signed)."""
    tls = (pki.server_cert, pki.server_key, pki.ca_pem)
    handle = start_registry(tmp_path_factory.mktemp("tls-registry"), tls=tls)
    yield handle
    handle.stop()


def test_no_verify_tls_pulls_from_a_registry_whose_certificate_is_not_trusted(
    tls_registry: Registry, pki: PKI, tmp_path: Path
) -> None:
    model = tls_registry.push_model("library/tls", "v1", (30 * KB, 10))
    reference = bare_ref(tls_registry, model)
    for flags in ([], ["--insecure"]):  # --insecure is plain HTTP: it never skips TLS checks
        refused = run_cli("pull", reference, *flags, "--models-dir", str(tmp_path / "no"),
                          "--retries", "0")  # fmt: skip
        assert refused.returncode == 3, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "TLS" in run_cli("pull", reference, "--models-dir", str(tmp_path / "no")).stderr
    assert not (tmp_path / "no" / "manifests").exists()
    for flags in (["--no-verify-tls"], ["--ca-bundle", pki.ca_pem]):
        models = tmp_path / flags[0].strip("-")
        done = run_cli("pull", reference, *flags, "--models-dir", str(models))
        assert done.returncode == 0, done.stderr
        assert_store(models, tls_registry, model)


def test_pull_help_says_what_insecure_and_no_verify_tls_mean() -> None:
    text = " ".join(run_cli("pull", "--help").stdout.split())
    assert "--insecure reach the registry over plain HTTP, as 'ollama pull --insecure'" in text
    assert "--no-verify-tls do not verify TLS certificates" in text
    text = " ".join(run_cli("--help").stdout.split())
    assert "--insecure deprecated: the old name of --no-verify-tls here" in text
