"""Second hostile pass at Ollama's store: pulls killed, raced and interleaved as a user
would meet them (another model sharing a layer, two tags, a prune beside them)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
from pathlib import Path

import blobdl
from faultserver.registry import Model, Registry
from tests.conftest import fast_settings
from tests.integration.test_pull import CLI_SLOW, assert_store, ref, spawn_pull
from tests.ollama_model import assert_ollama_reads

KB = 1024


def kill_mid(proc_args: list[str], layer: str, done: int) -> None:
    proc = spawn_pull(*proc_args)
    assert proc.stdout is not None
    for line in proc.stdout:
        record = json.loads(line)
        progress = record.get("digest") == layer and record["event"] == "progress"
        if progress and record["done"] >= done:
            break
    else:
        raise AssertionError(f"the pull ended first: {proc.wait()}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def test_a_pull_killed_mid_shared_layer_is_resumed_by_a_pull_of_another_model(
    registry: Registry, tmp_path: Path
) -> None:
    shared = random.Random(11).randbytes(1024 * KB)
    digest = "sha256:" + hashlib.sha256(shared).hexdigest()
    first = registry.push_model("library/kin-a", "v1", (10 * KB,), shared=shared)
    second = registry.push_model("library/kin-b", "v1", (20 * KB,), shared=shared)
    models = tmp_path / "models"
    kill_mid([ref(registry, first), "--models-dir", str(models), "--limit-rate", "256KiB",
              *CLI_SLOW], digest, 300 * KB)  # fmt: skip
    assert not (models / "blobs" / f"sha256-{digest[7:]}").exists()

    result = blobdl.pull(ref(registry, second), models, settings=fast_settings())
    download = next(r.download for r in result.layers if r.digest == digest)
    assert download is not None and download.resumed >= 200 * KB
    assert_ollama_reads(models)
    left = [n for n in os.listdir(models / "blobs-partial") if digest[7:] in n]
    assert left == []
    blobdl.pull(ref(registry, first), models, settings=fast_settings())
    assert_store(models, registry, first, alone=False)
    assert_store(models, registry, second, alone=False)


def test_a_pull_waiting_on_a_shared_blob_another_pull_finished_does_not_wait_for_its_others(
    registry: Registry, tmp_path: Path
) -> None:
    """Pull A fetches a big layer of its own and a small one model B shares; B needs only
    that one (its config is already there). A finishes the small blob at once, but
    kept it staged, its fetch lock held, until its whole round (the big layer) ended: B
    waited out A's whole download for a blob that was in hand. B now ends while A runs."""
    shared = random.Random(21).randbytes(8 * KB)
    big = random.Random(22).randbytes(1536 * KB)
    a = push_exact(registry, "library/wait-a", b'{"a":1}', big, shared)
    b_config = b'{"b":1}'
    b = push_exact(registry, "library/wait-b", b_config, shared)
    models = tmp_path / "models"
    (models / "blobs").mkdir(parents=True)
    config_digest = "sha256:" + hashlib.sha256(b_config).hexdigest()
    (models / "blobs" / f"sha256-{config_digest[7:]}").write_bytes(b_config)
    shared_digest = "sha256:" + hashlib.sha256(shared).hexdigest()
    proc = spawn_pull(ref(registry, a), "--models-dir", str(models), "--limit-rate", "256KiB",
                      *CLI_SLOW)  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            record = json.loads(line)
            if record.get("digest") == shared_digest and record["event"] == "finished":
                break
        else:
            raise AssertionError(f"pull A ended first: {proc.wait()}")
        drain = threading.Thread(target=proc.stdout.read, daemon=True)  # A never blocks
        drain.start()
        blobdl.pull(ref(registry, b), models, settings=fast_settings())
        assert proc.poll() is None, "B waited out A's whole round"
        assert_store(models, registry, b, alone=False)
        assert proc.wait(timeout=60) == 0
        drain.join()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert_store(models, registry, a, alone=False)
    assert_ollama_reads(models)


def push_exact(registry: Registry, repo: str, config: bytes, *layers: bytes) -> Model:
    from tests.integration.test_ollama_store import push

    return push(registry, repo, "v1", config, *layers)
