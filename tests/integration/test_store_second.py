"""Second hostile pass at Ollama's store: pulls killed, raced and interleaved as a user
would meet them (another model sharing a layer, two tags, a prune beside them)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
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


def test_prunes_in_a_loop_beside_pulls_sharing_old_unused_blobs_never_break_either(
    registry: Registry, tmp_path: Path
) -> None:
    """Blobs an earlier pull left (an hour old, named by no manifest) that two pulls about to
    start need: ``blobdl prune`` runs again and again while they pull. Every prune and every
    pull succeeds, and Ollama reads both models whole."""
    from tests.integration.test_ollama_store import age, blob_file, running

    shared, template = random.Random(31).randbytes(64 * KB), random.Random(32).randbytes(2 * KB)
    own = [random.Random(33 + i).randbytes(256 * KB) for i in range(2)]
    pulled = [push_exact(registry, f"library/loop-{i}", f'{{"l":{i}}}'.encode(), own[i],
                         template, shared) for i in range(2)]  # fmt: skip
    models = tmp_path / "models"
    (models / "blobs").mkdir(parents=True)
    for left in (shared, template):
        blob_file(models, left).write_bytes(left)
        age(blob_file(models, left))
    prunes = []
    with running() as pulls:
        pulls += [spawn_pull(ref(registry, m), "--models-dir", str(models), "--limit-rate",
                             "512KiB", *CLI_SLOW) for m in pulled]  # fmt: skip
        while any(p.poll() is None for p in pulls) or not prunes:
            done = subprocess.run(
                [sys.executable, "-m", "blobdl", "prune", "--models-dir", str(models)],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            prunes.append((done.returncode, done.stderr))
        for proc in pulls:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
    assert [p for p in prunes if p[0] != 0] == []
    assert {name[2] for name in assert_ollama_reads(models)} == {"loop-0", "loop-1"}


def test_a_pull_waiting_on_a_layer_whose_fetcher_is_killed_resumes_it_under_its_own_tag(
    registry: Registry, tmp_path: Path
) -> None:
    """One model under two tags, pulled at once: the first fetches the big layer, the second
    waits for it. The first is SIGKILLed mid-layer: the second takes the layer over from
    the partial (only the missing bytes) and both tags end up whole once the first is run
    again."""
    big = random.Random(41).randbytes(1536 * KB)
    layer = "sha256:" + hashlib.sha256(big).hexdigest()
    one = push_exact(registry, "library/twotags", b'{"t":1}', big)
    two = Model(one.repo, "v2", one.manifest, one.blobs)
    registry.push_manifest(two.repo, two.tag, two.manifest)
    models = tmp_path / "models"
    slow = ["--models-dir", str(models), "--limit-rate", "256KiB", *CLI_SLOW]
    first = spawn_pull(ref(registry, one), *slow)
    second = None
    try:
        assert first.stdout is not None
        for line in first.stdout:
            record = json.loads(line)
            progress = record.get("digest") == layer and record["event"] == "progress"
            if progress and second is None:  # the first holds the layer: the second waits
                second = spawn_pull(ref(registry, two), "--models-dir", str(models), "--json")
            if progress and record["done"] >= 500 * KB:
                break
        assert second is not None and second.poll() is None
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    summary = json.loads(out.splitlines()[-1])
    assert 0 < summary["bytes_fetched"] <= len(big) - 300 * KB, summary  # resumed
    blobdl.pull(ref(registry, one), models, settings=fast_settings())
    assert {name[3] for name in assert_ollama_reads(models)} == {"v1", "v2"}
    assert [n for n in os.listdir(models / "blobs-partial") if layer[7:] in n] == []
