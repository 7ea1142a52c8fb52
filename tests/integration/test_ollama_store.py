"""The store ``blobdl pull`` writes is one Ollama keeps: checked with a model of Ollama's own
rules (``tests/ollama_model.py``: its start-up prune, how it reads manifests) played beside
real pulls from a real registry (Debian's docker-registry), and scripted registries where a
fault must be exact."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import resource
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import blobdl
from blobdl.registry._pull import no_prune
from blobdl.registry._store import Location, locate
from faultserver.registry import CONFIG_TYPE, MANIFEST_TYPE, MODEL_TYPES, Model, Registry
from faultserver.serverctl import ServerHandle
from tests.conftest import REPO, Blob, fast_settings, run_cli
from tests.integration.test_pull import CLI_SLOW, redirected_model, ref, spawn_pull
from tests.ollama_model import GRACE, Corrupt, assert_ollama_reads, manifests, prune_layers

KB = 1024
Make = Callable[..., Blob]


def push(registry: Registry, repo: str, tag: str, config: bytes, *layers: bytes) -> Model:
    """A model of exactly these blobs (the config first), pushed under ``repo:tag``."""
    blobs = {registry.push_blob(repo, data): data for data in (config, *layers)}
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": MODEL_TYPES[min(i, 3)], "digest": digest(data),
                    "size": len(data)} for i, data in enumerate(layers)],
    }  # fmt: skip
    raw = json.dumps(manifest).encode()
    registry.push_manifest(repo, tag, raw)
    return Model(repo, tag, raw, blobs)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_file(models: Path, data: bytes) -> Path:
    return models / "blobs" / digest(data).replace(":", "-")


def age(path: Path, seconds: float = 2 * GRACE) -> None:
    """As if ``path`` was last changed ``seconds`` ago (an hour is Ollama's prune grace)."""
    then = os.lstat(path).st_mtime - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@contextlib.contextmanager
def flock(path: Path, kind: int) -> Iterator[None]:
    """Hold a lock at ``path`` as a blobdl pull would (LOCK_EX or LOCK_SH)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, kind)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def running() -> Iterator[list[subprocess.Popen[str]]]:
    """Pulls started in the block; any still running at its end (a failed test) is killed."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def lock_path(models: Path, blob: bytes, suffix: str) -> Path:
    return models / "blobs-partial" / (digest(blob).replace(":", "-") + suffix)


def wait_for(condition: Callable[[], bool], limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.01)


def events_until(proc: subprocess.Popen[str], done: Callable[[dict[str, Any]], bool]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if done(json.loads(line)):
            return
    raise AssertionError(
        f"the pull ended first: {proc.wait()} {proc.stderr and proc.stderr.read()}"
    )


# --- a manifest never names a missing blob, even with Ollama's prune running beside us -------


def test_an_ollama_prune_between_the_layers_of_two_pulls_never_leaves_a_blob_missing(
    registry: Registry, tmp_path: Path
) -> None:
    """Two pulls share a config and a template that an earlier pull left (an hour old, named
    by no manifest) and a layer that a third party is fetching (the test holds its fetch
    lock: the gate). Both pulls fetch their own layer, then wait at the gate; meanwhile
    Ollama's start-up prune runs: once now, then as if an hour had passed."""
    config, template = data(1, 300), data(2, 2 * KB)
    shared, own_a, own_b = data(3, 64 * KB), data(4, 96 * KB), data(5, 80 * KB)
    model_a = push(registry, "library/race-a", "v1", config, own_a, template, shared)
    model_b = push(registry, "library/race-b", "v1", config, own_b, template, shared)
    models = tmp_path / "models"
    (models / "blobs").mkdir(parents=True)
    for left in (config, template):
        blob_file(models, left).write_bytes(left)
        age(blob_file(models, left))

    args = ["--models-dir", str(models), *CLI_SLOW]
    gate = lock_path(models, shared, ".pull-lock")
    with running() as pulls:
        with flock(gate, fcntl.LOCK_EX):
            pulls += [spawn_pull(ref(registry, m), *args) for m in (model_a, model_b)]
            for proc, own in zip(pulls, (own_a, own_b), strict=True):
                events_until(proc, lambda e, own=own: e.get("digest") == digest(own)
                             and e["event"] == "finished")  # fmt: skip
                wait_for(blob_file(models, own).exists)  # placed: next is the gate
            assert prune_layers(models) == []  # found present, so touched: not an hour old
            for path in (models / "blobs").iterdir():
                age(path)
            gone = prune_layers(models)  # an hour later, and nothing names them yet
            assert sorted(gone) == sorted(blob_file(models, b).name
                                          for b in (config, template, own_a, own_b))  # fmt: skip
        for proc in pulls:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
    stored = assert_ollama_reads(models)
    assert {name[2] for name in stored} == {"race-a", "race-b"}
    for model in (model_a, model_b):
        path = models / "manifests" / registry.host / model.repo / model.tag
        assert path.read_bytes() == model.manifest
    assert prune_layers(models, now=os.stat(models).st_mtime + 3 * GRACE) == []


def test_a_blob_deleted_under_every_round_fails_the_pull_and_leaves_no_manifest(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob that vanishes each time the pull checks it (here: deleted whenever it is
    touched) ends the pull with exit 5 after a few rounds, never with exit 0."""
    layer = data(11, 20 * KB)
    model = push(registry, "library/vanishing", "v1", data(10, 200), layer)
    models = tmp_path / "models"
    real_utime = os.utime

    def utime_then_delete(path: Any, *args: Any, **kwargs: Any) -> None:
        real_utime(path, *args, **kwargs)
        if str(path).endswith(digest(layer)[7:]):
            os.unlink(path)

    monkeypatch.setattr(os, "utime", utime_then_delete)
    with pytest.raises(blobdl.LocalFileError, match="was deleted 3 times while the pull ran"):
        blobdl.pull(ref(registry, model), models, settings=fast_settings())
    with contextlib.suppress(Corrupt):
        assert manifests(models) == {}


# --- the manifest's scratch file -------------------------------------------------------------


def depth_four(models: Path) -> list[str]:
    return sorted(str(p.relative_to(models)) for p in (models / "manifests").glob("*/*/*/*"))


def test_the_manifest_scratch_file_is_never_where_ollama_reads_manifests(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = push(registry, "library/scratch", "v1", data(20, 100), data(21, 10 * KB))
    models = tmp_path / "models"
    seen: list[tuple[list[str], str]] = []
    real_replace = os.replace

    def watch(src: Any, dst: Any, **kwargs: Any) -> None:
        if "manifests" in str(dst):
            seen.append((depth_four(models), str(Path(src).parent)))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", watch)
    blobdl.pull(ref(registry, model), models, settings=fast_settings())
    assert seen == [([], str(models / ".blobdl-tmp"))]
    assert depth_four(models) == [f"manifests/{registry.host}/{model.repo}/v1"]


def test_a_manifest_write_that_fails_leaves_no_scratch_and_no_manifest(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = push(registry, "library/nospace", "v1", data(22, 100), data(23, 10 * KB))
    models = tmp_path / "models"
    real_replace = os.replace

    def full(src: Any, dst: Any, **kwargs: Any) -> None:
        if "manifests" in str(dst):
            raise OSError(28, "No space left on device")
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(blobdl.LocalFileError, match="No space left"):
        blobdl.pull(ref(registry, model), models, settings=fast_settings())
    assert os.listdir(models / ".blobdl-tmp") == [] and depth_four(models) == []


def test_a_link_planted_at_the_scratch_folder_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    model = push(registry, "library/plantdir", "v1", data(24, 100), data(25, 10 * KB))
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    elsewhere.mkdir()
    models.mkdir()
    (models / ".blobdl-tmp").symlink_to(elsewhere)
    done = run_cli("pull", ref(registry, model), "--models-dir", str(models))
    assert done.returncode == 5 and ".blobdl-tmp: is not a directory" in done.stderr, done.stderr
    assert "pulling" not in done.stderr  # refused before anything is fetched
    assert os.listdir(elsewhere) == [] and depth_four(models) == []


def test_a_folder_where_the_manifest_goes_is_one_line_exit_5(
    registry: Registry, tmp_path: Path
) -> None:
    model = push(registry, "library/folder", "v1", data(26, 100))
    models = tmp_path / "models"
    (models / "manifests" / registry.host / model.repo / "v1").mkdir(parents=True)
    done = run_cli("pull", ref(registry, model), "--models-dir", str(models))
    assert done.returncode == 5, done.stderr
    where = models / "manifests" / registry.host / model.repo / "v1"
    [line] = done.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"blobdl: error: {where}: "), done.stderr


# --- links planted where the store moves, chmods or locks ------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_link_planted_at_a_staged_blob_is_never_moved_nor_its_target_changed(
    registry: Registry, tmp_path: Path, kind: str
) -> None:
    layer = data(31, 30 * KB)
    model = push(registry, f"library/staged-{kind}", "v1", data(30, 100), layer)
    models, victim = tmp_path / "models", tmp_path / "victim"
    victim.write_bytes(layer)  # the right bytes: the engine would take it as complete
    victim.chmod(0o600)
    staged = models / "blobs-partial" / digest(layer).replace(":", "-")
    staged.parent.mkdir(parents=True)
    if kind == "symlink":
        staged.symlink_to(victim)
    else:
        os.link(victim, staged)
    done = run_cli("pull", ref(registry, model), "--models-dir", str(models))
    assert done.returncode == 5 and str(staged) in done.stderr, done.stderr
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not os.path.lexists(blob_file(models, layer)) and depth_four(models) == []


def test_a_link_planted_at_a_claim_is_refused_not_followed(
    registry: Registry, tmp_path: Path
) -> None:
    layer = data(33, 10 * KB)
    model = push(registry, "library/plantclaim", "v1", data(32, 100), layer)
    models, target = tmp_path / "models", tmp_path / "created"
    claim = lock_path(models, layer, ".claim")
    claim.parent.mkdir(parents=True)
    claim.symlink_to(target)
    done = run_cli("pull", ref(registry, model), "--models-dir", str(models))
    assert done.returncode == 5 and str(claim) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not target.exists()


def test_locks_of_finished_blobs_do_not_accumulate(registry: Registry, tmp_path: Path) -> None:
    model = push(registry, "library/tidy", "v1", data(34, 100), data(35, 50 * KB))
    models = tmp_path / "models"
    for _ in range(2):
        blobdl.pull(ref(registry, model), models, settings=fast_settings())
        assert os.listdir(models / "blobs-partial") == []


# --- a tag that moves frees what it no longer needs ------------------------------------------


def test_a_moved_tag_frees_only_the_blobs_nothing_else_needs(
    registry: Registry, tmp_path: Path
) -> None:
    """The old manifest named c1, l1, kept (claimed by a running pull) and shared (named by
    another model too); the tag moves to c2, l2: c1 and l1 go, the rest stays."""
    c1, l1, kept, shared = data(40, 100), data(41, 40 * KB), data(42, 10 * KB), data(43, 5 * KB)
    models = tmp_path / "models"
    old = push(registry, "library/moving", "v1", c1, l1, kept, shared)
    other = push(registry, "library/neighbour", "v1", data(44, 100), shared)
    for model in (old, other):
        blobdl.pull(ref(registry, model), models, settings=fast_settings())
    c2, l2 = data(45, 100), data(46, 30 * KB)
    new = push(registry, "library/moving", "v1", c2, l2)
    with flock(lock_path(models, kept, ".claim"), fcntl.LOCK_SH):  # a pull that needs it
        done = run_cli("pull", ref(registry, new), "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    assert not any(os.path.lexists(blob_file(models, b)) for b in (c1, l1))
    assert all(blob_file(models, b).is_file() for b in (kept, shared, c2, l2))
    lines = done.stderr.splitlines()
    assert any(line.startswith("freed ") and "2 blobs only the old manifest used" in line
               for line in lines), done.stderr  # fmt: skip
    assert_ollama_reads(models)


def test_a_moved_tag_frees_nothing_with_ollama_noprune_or_an_unreadable_manifest(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c1, l1 = data(50, 100), data(51, 20 * KB)
    models = tmp_path / "models"
    blobdl.pull(ref(registry, push(registry, "library/still", "v1", c1, l1)), models,
                settings=fast_settings())  # fmt: skip
    monkeypatch.setenv("OLLAMA_NOPRUNE", "yes")  # Go's ParseBool refuses it: true
    blobdl.pull(ref(registry, push(registry, "library/still", "v1", data(52, 100), l1)), models,
                settings=fast_settings())  # fmt: skip
    assert blob_file(models, c1).is_file()
    monkeypatch.delenv("OLLAMA_NOPRUNE")
    bad = models / "manifests" / "h" / "ns" / "broken" / "v1"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"layers": 5}')  # Go cannot decode it: what it needs is unknown
    moved = push(registry, "library/still", "v1", data(53, 100), data(54, 10 * KB))
    result = blobdl.pull(ref(registry, moved), models, settings=fast_settings())
    assert result.freed == () and blob_file(models, l1).is_file()
    assert set(result.kept) == {digest(l1), digest(data(52, 100))}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", False), ("0", False), ("false", False), ("F", False), ("'0'", False),
     ("1", True), ("true", True), ("yes", True), (" 1 ", True)],
)  # fmt: skip
def test_ollama_noprune_is_read_as_ollama_reads_it(value: str, expected: bool) -> None:
    assert no_prune({"OLLAMA_NOPRUNE": value}) is expected


# --- the store Ollama reads, and who owns what is written there ------------------------------


def test_the_store_is_the_one_ollama_reads(tmp_path: Path) -> None:
    home, service = tmp_path / "home", tmp_path / "service"
    assert locate("/x", {"OLLAMA_MODELS": "/y"}, home, service) == Location(
        Path("/x"), "--models-dir"
    )
    for value in ('"/srv/models"', "  '/srv/models'  ", "/srv/models\n"):
        assert locate(None, {"OLLAMA_MODELS": value}, home, service).path == Path("/srv/models")
    assert locate(None, {"OLLAMA_MODELS": '"  a b "'}, home, service).path == Path("  a b ")
    own = home / ".ollama" / "models"
    assert locate(None, {"OLLAMA_MODELS": " "}, home, service) == Location(own, "default")
    service.mkdir()
    assert locate(None, {}, home, service) == Location(service, "service")
    own.mkdir(parents=True)
    assert locate(None, {}, home, service) == Location(own, "default")


def test_pull_says_which_store_it_used(registry: Registry, tmp_path: Path) -> None:
    model = push(registry, "library/where", "v1", data(60, 100), data(61, 5 * KB))
    store = tmp_path / "from-env"
    env = {**os.environ, "OLLAMA_MODELS": f'"{store}"', "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "blobdl", "pull", ref(registry, model), "--json"],
                          capture_output=True, text=True, env=env, timeout=60,
                          cwd=Path(__file__).parents[2])  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert records[0]["models_dir"] == str(store) and records[0]["models_dir_from"] == (
        "$OLLAMA_MODELS"
    )
    assert records[-1]["models_dir"] == str(store)
    assert (store / "manifests" / registry.host / model.repo / "v1").is_file()


def test_root_writing_into_another_users_store_leaves_it_that_users(
    registry: Registry, tmp_path: Path
) -> None:
    assert os.geteuid() == 0, "CI runs as root: this test needs it"
    uid, gid = 54321, 54322  # no such user: as Ollama's service user, not root
    models = tmp_path / "models"
    models.mkdir()
    os.chown(models, uid, gid)
    model = push(registry, "library/owned", "v1", data(62, 100), data(63, 40 * KB))
    blobdl.pull(ref(registry, model), models, settings=fast_settings())
    paths = [Path(folder) / name for folder, dirs, files in os.walk(models)
             for name in dirs + files]  # fmt: skip
    assert len(paths) >= 10
    assert [p for p in paths if (p.lstat().st_uid, p.lstat().st_gid) != (uid, gid)] == []


def test_a_root_pull_that_fails_mid_layer_leaves_every_file_the_stores_owners(
    front: ServerHandle, server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    """The partial kept for a resume is the store's user's too: that user (Ollama's service,
    or blobdl run as it) can resume it, not only root."""
    assert os.geteuid() == 0, "CI runs as root: this test needs it"
    reference, layer, rules = redirected_model(front, make, 512 * KB, seed=69)
    front.set_faults(*rules)
    # Every part's connection is cut after 64 KiB of its 256 KiB (the probe is let be), and
    # no retry: the pull fails with bytes written, whatever the order its parts ran in.
    server.set_faults({"path": f"/files/{layer.name}", "skip": 1, "times": None,
                       "action": "reset_after", "bytes": 64 * KB})  # fmt: skip
    models, _ = owned_store(tmp_path)
    parts = ["--min-part-size", "256KiB", "--max-part-size", "256KiB"]
    done = run_cli("pull", reference, "--models-dir", str(models), "--retries", "0", *parts)
    assert done.returncode == 3, done.stderr
    kept = [p for p in (models / "blobs-partial").iterdir() if layer.sha256 in p.name]
    assert any(p.name.endswith(".blobdl-tmp") for p in kept), kept
    paths = [Path(folder) / name for folder, dirs, files in os.walk(models)
             for name in dirs + files]  # fmt: skip
    assert [p for p in paths if p.lstat().st_uid != 54321] == []


def owned_store(tmp_path: Path, uid: int = 54321) -> tuple[Path, Path]:
    """A store another user (not root) owns, and a folder of theirs outside it."""
    models, victim = tmp_path / "models", tmp_path / "victim"
    for folder in (models, victim):
        folder.mkdir()
        os.chown(folder, uid, uid + 1)
    return models, victim


def plant_link(link: Path, target: Path, uid: int) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    for folder in [link.parent, *link.parent.parents]:
        if folder == target.parent:
            break
        os.chown(folder, uid, uid + 1)
    link.symlink_to(target)
    os.lchown(link, uid, uid + 1)


@pytest.mark.parametrize("where", ["blobs", "blobs-partial", "manifests", "manifests/HOST",
                                   "manifests/HOST/library/linked"])  # fmt: skip
def test_root_never_follows_a_link_another_user_planted_in_the_store(
    registry: Registry, tmp_path: Path, where: str
) -> None:
    """A folder of the store that is a link its owner made could send root's writes (and the
    files it gives that user) anywhere: it is refused, and nothing outside is touched."""
    assert os.geteuid() == 0, "CI runs as root: this test needs it"
    models, victim = owned_store(tmp_path)
    model = push(registry, "library/linked", "v1", data(64, 100), data(65, 20 * KB))
    link = models / where.replace("HOST", registry.host)
    plant_link(link, victim, 54321)
    done = run_cli("pull", ref(registry, model), "--models-dir", str(models))
    assert done.returncode == 5, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"blobdl: error: {link}: is a symbolic link made by another user; refusing to follow it"
    )
    assert os.listdir(victim) == []


def test_a_link_root_made_itself_in_the_store_is_followed(
    registry: Registry, tmp_path: Path
) -> None:
    models, elsewhere = owned_store(tmp_path)
    os.chown(elsewhere, 0, 0)
    (models / "blobs").symlink_to(elsewhere)  # root's own link, as an admin sets one up
    model = push(registry, "library/rootlink", "v1", data(66, 100))
    blobdl.pull(ref(registry, model), models, settings=fast_settings())
    assert sorted(os.listdir(elsewhere)) == sorted(d.replace(":", "-") for d in model.blobs)


def test_root_pruning_another_users_store_never_follows_their_links(tmp_path: Path) -> None:
    models, victim = owned_store(tmp_path)
    old = write(victim / f"sha256-{'a' * 64}", b"theirs")
    plant_link(models / "blobs", victim, 54321)
    done = run_cli("prune", "--models-dir", str(models))
    assert done.returncode == 5, done.stderr
    assert f"{models / 'blobs'}: is a symbolic link made by another user" in done.stderr
    assert old.read_bytes() == b"theirs"


# --- what a registry's manifest says about a blob ---------------------------------------------


def scripted(front: ServerHandle, make: Make, manifest_layer: Callable[[Blob], dict[str, Any]],
             seed: int) -> tuple[str, Blob]:  # fmt: skip
    """``front`` serves a one-layer model whose manifest entry for the layer is written by
    ``manifest_layer``; the layer lives on the fault server."""
    reference, layer, rules = redirected_model(front, make, 10 * KB, seed)
    doc = json.loads(rules[0]["body"])  # type: ignore[arg-type]
    doc["layers"] = [manifest_layer(layer)]
    rules[0]["body"] = json.dumps(doc)
    front.set_faults(*rules)
    return reference, layer


def test_a_digest_with_a_trailing_newline_is_refused(
    front: ServerHandle, make: Make, tmp_path: Path
) -> None:
    reference, _ = scripted(front, make, lambda b: {"mediaType": MODEL_TYPES[0],
        "digest": f"sha256:{b.sha256}\n", "size": b.size}, seed=81)  # fmt: skip
    done = run_cli("pull", reference, "--models-dir", str(tmp_path / "m"))
    assert done.returncode == 4, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and ".digest must be" in done.stderr
    assert not any("\n" in name for name in os.listdir(tmp_path / "m" / "blobs"))


@pytest.mark.parametrize("by", [20, -20])
def test_a_layer_size_the_blob_contradicts_fails_once_and_is_never_fetched_again(
    front: ServerHandle, server: ServerHandle, make: Make, tmp_path: Path, by: int
) -> None:
    reference, layer = scripted(front, make, lambda b: {
        "mediaType": MODEL_TYPES[0], "digest": f"sha256:{b.sha256}", "size": b.size + by},
        seed=83 + by)  # fmt: skip
    models = tmp_path / "m"
    said = (f"the manifest gives sha256:{layer.sha256} as {layer.size + by} bytes, "
            f"but its verified bytes are {layer.size}")  # fmt: skip
    for _ in range(2):
        done = run_cli("pull", reference, "--models-dir", str(models))
        assert done.returncode == 4, done.stderr
        assert done.stderr.strip().splitlines()[-1].endswith(f"{said} ({reference[7:]})")
        assert not (models / "manifests").exists()
    gets = server.stats()["per_path"].get(f"/files/{layer.name}", 0)
    assert 1 <= gets <= 3  # the probe and the body, the first time only


def test_a_blob_in_the_store_whose_bytes_are_not_its_name_is_fetched_again(
    registry: Registry, tmp_path: Path
) -> None:
    """A blob's name vouches for its bytes (as for Ollama), but one whose size is not the
    manifest's is hashed first: cut short by someone else, it is removed and fetched."""
    layer = data(67, 30 * KB)
    model = push(registry, "library/cut", "v1", data(68, 100), layer)
    models = tmp_path / "models"
    write(blob_file(models, layer), layer[: 10 * KB], old=False)
    blobdl.pull(ref(registry, model), models, settings=fast_settings())
    assert blob_file(models, layer).read_bytes() == layer
    assert_ollama_reads(models)


# --- blobdl prune -----------------------------------------------------------------------------


def tree(models: Path) -> dict[str, tuple[int, float]]:
    """Every path under ``models`` with its size and mtime."""
    return {str(p.relative_to(models)): (p.lstat().st_size, p.lstat().st_mtime)
            for p in sorted(models.rglob("*"))}  # fmt: skip


def write(path: Path, content: bytes, old: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    if old:
        age(path)
    return path


@pytest.fixture
def littered(tmp_path: Path) -> Path:
    """A store with every kind of leftover beside what must stay."""
    models = tmp_path / "models"
    blobs, partial = models / "blobs", models / "blobs-partial"
    used, unused, young, held = data(70, 300), data(71, 9000), data(72, 500), data(73, 700)
    for blob in (used, unused, held):
        write(blob_file(models, blob), blob)
    write(blob_file(models, young), young, old=False)
    write(blobs / f"sha256-{'e' * 64}-partial", b"ollama's own partial")  # not ours
    manifest = {"config": {"digest": digest(used)}, "layers": []}
    write(models / "manifests/h/ns/m/v1", json.dumps(manifest).encode())
    write(models / "manifests/h/ns/m/.v1.tmp-4242-deadbeef", b'{"half": ')  # an old version's
    write(models / ".blobdl-tmp/manifest-4242-0badf00d", b"{}")
    write(models / ".blobdl-tmp/manifest-4343-1badf00d", b"{}", old=False)  # being written
    for folder in ("h2/ns2/m2", "h2/ns2", "h2"):
        (models / "manifests" / folder).mkdir(parents=True, exist_ok=True)
    for folder in ("h2/ns2/m2", "h2/ns2", "h2"):
        age(models / "manifests" / folder)
    abandoned, busy = "sha256-" + "a" * 64, "sha256-" + "b" * 64
    write(partial / f"{abandoned}.blobdl-tmp", data(74, 100 * KB))
    write(partial / f"{abandoned}.blobdl-state", b"{}")
    write(partial / f"{abandoned}.pull-lock", b"")
    write(partial / f"sha256-{'c' * 64}.claim", b"")
    write(partial / f"{busy}.blobdl-tmp", data(75, 50 * KB))
    write(partial / "notes.txt", b"not ours")
    # What a pull's batch killed whole leaves: its seats' kept lock files (store._lock).
    write(partial / ".blobdl-kept-3.blobdl-lock", b"4242\n")
    write(partial / ".blobdl-kept-5.blobdl-lock", b"4343\n")  # a live batch's: held below
    return models


def test_prune_removes_what_pulls_left_and_never_what_a_running_pull_holds(
    littered: Path,
) -> None:
    models = littered
    partial = models / "blobs-partial"
    busy = partial / f"sha256-{'b' * 64}"
    with (
        flock(Path(f"{busy}.pull-lock"), fcntl.LOCK_EX),
        flock(lock_path(models, data(73, 700), ".claim"), fcntl.LOCK_SH),
        flock(partial / ".blobdl-kept-5.blobdl-lock", fcntl.LOCK_EX),
    ):  # a pull fetching one blob, one needing another, a batch's seat at work
        before = tree(models)
        dry = run_cli("prune", "--models-dir", str(models), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert tree(models) == before  # a dry run touches nothing
        done = run_cli("prune", "--models-dir", str(models))
        assert done.returncode == 0, done.stderr
    assert dry.stdout.replace("would remove", "removed").replace("would free", "freed") == (
        done.stdout
    )
    removed = sorted(line.split("  ")[1] for line in done.stdout.splitlines()
                     if line.startswith("removed"))  # fmt: skip
    expected = [
        partial / ".blobdl-kept-3.blobdl-lock",
        partial / f"sha256-{'a' * 64}.blobdl-state",
        partial / f"sha256-{'a' * 64}.blobdl-tmp",
        partial / f"sha256-{'a' * 64}.pull-lock",
        partial / f"sha256-{'c' * 64}.claim",
        models / ".blobdl-tmp/manifest-4242-0badf00d",
        blob_file(models, data(71, 9000)),
        models / "manifests/h/ns/m/.v1.tmp-4242-deadbeef",
        models / "manifests/h2",
        models / "manifests/h2/ns2",
        models / "manifests/h2/ns2/m2",
    ]
    assert removed == sorted(str(p) for p in expected)
    assert not any(os.path.lexists(p) for p in expected)
    kept = [blob_file(models, data(b, n)) for b, n in ((70, 300), (72, 500), (73, 700))]
    kept += [Path(f"{busy}.blobdl-tmp"), partial / "notes.txt"]
    kept += [partial / ".blobdl-kept-5.blobdl-lock"]
    kept += [models / ".blobdl-tmp/manifest-4343-1badf00d", models / "manifests/h/ns/m/v1"]
    kept += [models / "blobs" / f"sha256-{'e' * 64}-partial"]
    assert all(os.path.lexists(p) for p in kept)
    lines = done.stdout.splitlines()
    assert lines[0] == f"store {models} (--models-dir)"
    assert f"kept  {busy}.blobdl-tmp  (a running pull holds it)" in lines
    assert f"kept  {blob_file(models, data(73, 700))}  (a running pull holds it)" in lines
    freed = sum(int(line.split("  ")[2].split()[0]) for line in lines if line.startswith("removed"))
    assert lines[-1] == f"freed {freed} bytes in {len(expected)} files" and freed >= 100 * KB
    manifests(models)  # what made Ollama skip its own prune is gone


def test_prune_removes_no_unused_blob_while_an_ollama_pull_writes_beside_it(
    littered: Path,
) -> None:
    """An ``ollama pull`` names its blobs only when it ends, and trusts an old blob it finds
    without touching it: while its ``-partial`` file in ``blobs/`` changes, an old unused
    blob may be one it is about to name. Prune keeps them all, saying why, and clears the
    rest as ever."""
    models = littered
    writing = models / "blobs" / f"sha256-{'e' * 64}-partial"
    os.utime(writing)  # Ollama's own partial, written just now
    unused = blob_file(models, data(71, 9000))
    done = run_cli("prune", "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    assert unused.exists()
    why = f"an ollama pull is running: {writing.name} changed within the hour"
    assert f"kept  {unused}  ({why})" in done.stdout.splitlines()
    assert not (models / "manifests/h2").exists()  # what is no blob still goes
    age(writing)  # the pull long gone: the blob is unused, and goes
    again = run_cli("prune", "--models-dir", str(models))
    assert again.returncode == 0, again.stderr
    assert not unused.exists() and writing.exists()


def test_prune_counts_no_bytes_freed_for_a_blob_still_linked_elsewhere(
    littered: Path, tmp_path: Path
) -> None:
    """An unused blob the user hard-linked elsewhere is removed from the store, but its
    bytes stay on disk: "freed" must not count them."""
    models = littered
    blob = blob_file(models, data(71, 9000))
    os.link(blob, tmp_path / "my-copy.gguf")
    done = run_cli("prune", "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    assert not os.path.lexists(blob) and (tmp_path / "my-copy.gguf").stat().st_size == 9000
    lines = done.stdout.splitlines()
    line = next(line for line in lines if line.startswith(f"removed  {blob}  "))
    assert line == f"removed  {blob}  0 bytes  (unused blob)"
    freed = sum(int(line.split("  ")[2].split()[0]) for line in lines if line.startswith("removed"))
    assert lines[-1].startswith(f"freed {freed} bytes in ")


def test_prune_removes_no_blob_while_ollama_cannot_read_a_manifest(littered: Path) -> None:
    models = littered
    bad = write(models / "manifests/h/ns/broken/v1", b"not json")
    done = run_cli("prune", "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    assert blob_file(models, data(71, 9000)).exists()
    assert f"kept every unused blob: Ollama cannot read the manifest {bad} (fix or remove it)" in (
        done.stdout.splitlines()
    )


# Root reads every folder whatever its mode: without these capabilities it does not.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.parametrize("folder", ["h", "h/ns", "h/ns/m"])
def test_prune_removes_no_blob_while_a_manifest_folder_cannot_be_listed(
    folder: str, tmp_path: Path
) -> None:
    """A folder of manifests prune may not list (its mode, an I/O error) may hold a model:
    the blobs it names look unused, and must stay, as while a manifest cannot be read."""
    models = tmp_path / "models"
    used, unused = data(80, 300), data(81, 900)
    for blob in (used, unused):
        write(blob_file(models, blob), blob)
    manifest = {"config": {"digest": digest(used)}, "layers": []}
    write(models / "manifests/h/ns/m/v1", json.dumps(manifest).encode())
    closed = models / "manifests" / folder
    closed.chmod(0)
    try:
        done = subprocess.run(
            [*NO_DAC, sys.executable, "-m", "blobdl", "prune", "--models-dir", str(models)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    finally:
        closed.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert blob_file(models, used).exists() and blob_file(models, unused).exists()
    assert f"kept every unused blob: Ollama cannot list the folder of manifests {closed} (fix " \
        "or remove it)" in done.stdout.splitlines(), done.stdout  # fmt: skip


def test_a_blob_another_user_wrote_is_used_though_it_cannot_be_touched(
    registry: Registry, tmp_path: Path
) -> None:
    """A store whose folders a user may write, holding a blob Ollama's service user (or
    another user's pull) wrote, 0644: the user cannot set its mtime. Ollama's own pull uses
    it as it is; blobdl's pull did too little (exit 5 "Permission denied" at the touch,
    before anything was fetched). The blob is there: the pull uses it, and the check after
    the manifest is written still catches one deleted meanwhile."""
    shared = data(90, 20 * KB)
    models = tmp_path / "models"
    first = push(registry, "library/theirs", "v1", data(91, 300), shared)
    blobdl.pull(ref(registry, first), models, settings=fast_settings())
    os.chown(blob_file(models, shared), 54321, 54321)
    mine = push(registry, "library/mine", "v1", data(92, 300), shared)
    done = subprocess.run(
        [*NO_DAC[:1], f"{NO_DAC[1]},-fowner", sys.executable, "-m", "blobdl", "pull",
         ref(registry, mine), "--models-dir", str(models)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 of 2 blobs to fetch" in done.stderr, done.stderr
    assert {name[2] for name in assert_ollama_reads(models)} == {"theirs", "mine"}


def test_prune_of_a_store_only_ollama_wrote_removes_its_unused_blobs(tmp_path: Path) -> None:
    models = tmp_path / "models"  # no blobs-partial/: blobdl never pulled into it
    kept = write(models / "manifests/h/ns/m/v1", json.dumps({"config": {"digest": digest(b"c")}}
                                                            ).encode())  # fmt: skip
    used, unused = write(blob_file(models, b"c"), b"c"), write(blob_file(models, b"u"), b"u")
    done = run_cli("prune", "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    assert kept.exists() and used.exists() and not unused.exists()
    assert any(line.startswith(f"removed  {unused}  ") and line.endswith("(unused blob)")
               for line in done.stdout.splitlines()), done.stdout  # fmt: skip


def test_prune_removes_an_unused_blob_only_once_it_is_older_than_an_hour(tmp_path: Path) -> None:
    """docs/pull.md: blobs no manifest names go once older than an hour, Ollama's own grace
    (a younger one may belong to an ``ollama pull`` or ``ollama create`` in progress). The
    tests' young blob was brand new: a grace of a minute passed them."""
    models = tmp_path / "models"
    write(models / "manifests/h/ns/m/v1", json.dumps({"config": {"digest": digest(b"c")}}
                                                     ).encode())  # fmt: skip
    younger = write(blob_file(models, b"y"), b"y", old=False)
    older = write(blob_file(models, b"o"), b"o", old=False)
    age(younger, GRACE - 600)
    age(older, GRACE + 600)
    done = run_cli("prune", "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    assert younger.exists() and not older.exists(), done.stdout


def test_prune_removes_no_blob_while_an_ollama_pull_is_running(tmp_path: Path) -> None:
    """An ``ollama pull`` names its blobs only when it ends, and trusts an old one it finds
    (a cache hit, never touched): while its partial files in blobs/ are being written, an
    old unused blob may be one it is about to name."""
    models = tmp_path / "models"
    unused = write(blob_file(models, b"u"), b"u")
    partial = write(models / "blobs" / f"sha256-{'e' * 64}-partial-0", b"{}", old=False)
    done = run_cli("prune", "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    assert unused.exists()
    assert f"kept  {unused}  (an ollama pull is running: {partial.name} changed within the hour)" \
        in done.stdout.splitlines()  # fmt: skip
    age(partial)  # an ollama pull that stopped more than an hour ago
    assert run_cli("prune", "--models-dir", str(models)).returncode == 0
    assert not unused.exists()


def test_prune_of_more_unused_blobs_than_open_files_allow_removes_them_all(
    tmp_path: Path,
) -> None:
    """Each blob is claimed (a lock file held open) while it is removed: not all at once."""
    models = tmp_path / "models"
    unused = [write(blob_file(models, b"%d" % i), b"%d" % i) for i in range(600)]
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", "prune", "--models-dir", str(models)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [p for p in unused if p.exists()] == []


def test_prune_of_a_store_that_does_not_exist_is_one_line_exit_5(tmp_path: Path) -> None:
    done = run_cli("prune", "--models-dir", str(tmp_path / "nowhere"))
    assert done.returncode == 5 and done.stderr.strip() == (
        f"blobdl: error: {tmp_path / 'nowhere'}: no such store"
    )


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ({"mediaType": 5}, "the manifest.layers[0].mediaType must be a string, not a number"),
        # Go decodes "Digest" into the field "digest" names too: a number there fails it.
        ({"Digest": 5}, "the manifest.layers[0].digest must be a string, not a number"),
    ],
    ids=["a wrong type", "a wrong type under a key Go matches ignoring case"],
)
def test_a_manifest_ollama_would_read_otherwise_is_refused(
    front: ServerHandle, make: Make, tmp_path: Path, entry: dict[str, Any], said: str
) -> None:
    reference, _ = scripted(front, make, lambda b: {
        "mediaType": MODEL_TYPES[0], "digest": f"sha256:{b.sha256}", "size": b.size, **entry},
        seed=91 + len(said))  # fmt: skip
    done = run_cli("pull", reference, "--models-dir", str(tmp_path / "m"))
    assert done.returncode == 4, done.stderr
    # The registry's JSON is checked field by field first (registry/_schema.py); what Go would
    # still read otherwise is refused after (registry/_catalog.py): either way, one line.
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"blobdl: error: bad response: {said} (http://"), line
    assert not (tmp_path / "m" / "manifests").exists()


def test_prune_never_follows_a_link_planted_in_its_way(tmp_path: Path) -> None:
    models, victim = tmp_path / "models", tmp_path / "victim"
    (models / "blobs").mkdir(parents=True)
    for name in ("manifest-1-0badf00d", "precious"):
        write(victim / name, b"not the store's")
    (models / ".blobdl-tmp").symlink_to(victim)  # a scratch folder that leads elsewhere
    partial = write(models / "blobs-partial" / f"sha256-{'d' * 64}.blobdl-tmp", b"x")
    lock = models / "blobs-partial" / f"sha256-{'d' * 64}.pull-lock"
    lock.symlink_to(victim / "made-by-the-lock")
    done = run_cli("prune", "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(victim)) == ["manifest-1-0badf00d", "precious"]
    assert partial.exists() and lock.is_symlink()
    assert f"kept  {partial}  (is a symbolic link; refusing to follow it)" in done.stdout


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prune_keeps_every_blob_a_manifest_names_in_any_spelling_ollama_reads(
    tmp_path: Path,
) -> None:
    """Ollama finds a blob by ``blobs/`` + the digest with ':' made '-' (``GetBlobsPath``
    accepts ``sha256[:-]`` and hex of either case): a manifest that names its config as
    ``sha256-<hex>``, or a layer in upper case (the same file where names ignore case), is a
    model Ollama runs, and its blobs must stay."""
    models = tmp_path / "models"
    config, layer, unused = data(60, 300), data(61, 700), data(62, 900)
    for blob in (config, layer, unused):
        write(blob_file(models, blob), blob)
    manifest = {"config": {"digest": digest(config).replace(":", "-")},
                "layers": [{"digest": "sha256:" + digest(layer)[7:].upper()}]}  # fmt: skip
    write(models / "manifests/h/ns/m/v1", json.dumps(manifest).encode())
    before = {b: sha256_of(blob_file(models, b)) for b in (config, layer)}
    done = run_cli("prune", "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    assert {b: sha256_of(blob_file(models, b)) for b in (config, layer)} == before
    assert not os.path.lexists(blob_file(models, unused))  # prune still works


def test_a_moved_tag_never_frees_a_blob_another_manifest_names_with_a_dash(
    registry: Registry, tmp_path: Path
) -> None:
    c1, l1 = data(63, 100), data(64, 10 * KB)
    models = tmp_path / "models"
    blobdl.pull(ref(registry, push(registry, "library/dash", "v1", c1, l1)), models,
                settings=fast_settings())  # fmt: skip
    other = {"config": {"digest": digest(l1).replace(":", "-")}, "layers": []}
    write(models / "manifests/h/ns/other/v1", json.dumps(other).encode(), old=False)
    moved = push(registry, "library/dash", "v1", data(65, 100), data(66, 10 * KB))
    result = blobdl.pull(ref(registry, moved), models, settings=fast_settings())
    assert digest(l1) not in [d for d, _ in result.freed]
    assert sha256_of(blob_file(models, l1)) == digest(l1)[7:]


def test_prunes_racing_each_other_all_succeed_and_keep_what_must_stay(tmp_path: Path) -> None:
    """Two or three ``blobdl prune`` at once (cron and a user, say): whichever removes a
    leftover first, the others find it gone and go on, never an error that stops them
    halfway (before the unused blobs, which come last)."""
    for round_ in range(3):
        models = tmp_path / f"models{round_}"
        used, unused = data(67, 300), data(68, 900)
        for blob in (used, unused):
            write(blob_file(models, blob), blob)
        manifest = {"config": {"digest": digest(used)}, "layers": []}
        write(models / "manifests/h/ns/m/v1", json.dumps(manifest).encode())
        for i in range(200):
            write(models / f".blobdl-tmp/manifest-{i}-0badf00d", b"{}")
        for i in range(60):
            folder = models / "manifests" / f"h{i}" / "ns" / "m"
            folder.mkdir(parents=True)
            for empty in (folder, folder.parent, folder.parent.parent):
                age(empty)
        with running() as procs:
            procs += [subprocess.Popen(
                [sys.executable, "-m", "blobdl", "prune", "--models-dir", str(models)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
            ) for _ in range(3)]  # fmt: skip
            ends = [(proc.wait(timeout=60), proc.communicate()[1]) for proc in procs]
        assert [code for code, _ in ends] == [0, 0, 0], ends
        assert sha256_of(blob_file(models, used)) == digest(used)[7:]
        assert not os.path.lexists(blob_file(models, unused))
        assert os.listdir(models / ".blobdl-tmp") == []
        assert os.listdir(models / "manifests") == ["h"]
