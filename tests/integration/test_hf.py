"""``blobdl hf`` against a stand-in Hub (``faultserver/hub.py``) on loopback, with the real
huggingface_hub as the judge: it must download from the stand-in itself, find what blobdl
wrote (offline, at the right revision, with the right bytes), and write the same tree."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import blobdl
from faultserver.hub import HubHandle, HubRepo, start_hub
from tests.conftest import REPO
from tests.hf_client import call, hf_env

TOKEN = "hf_good"
FAST = (
    "--min-part-size",
    "65536",
    "--max-part-size",
    "65536",
    "--connections",
    "4",
    "--stall-timeout",
    "5",
    "--progress-interval",
    "0.1",
    "--max-backoff",
    "0.05",
    "--retries",
    "1",
)
BIG = 3 << 20  # the resume and sharing repository's one LFS file
# Parts of 1 MiB for the tests that must catch a download mid-way: the storage's "rate"
# paces a request chunk by chunk (64 KiB) from its second chunk on, so a request of one
# 64 KiB part is never slowed, and BIG came down before a signal (or a second run) arrived.
PACED = ("--min-part-size", "1MiB", "--max-part-size", "1MiB")


def _bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _tiny() -> HubRepo:
    repo = HubRepo("acme/tiny")
    config = b'{"model_type": "tiny", "hidden": 8}\n'
    first = {
        "config.json": config,
        "copy/config.json": config,  # the same bytes: one blob, two links
        "model.safetensors": _bytes(1, 300_000),
        "model-xet.safetensors": _bytes(2, 200_000),
        "sub/dir/notes.txt": b"notes\n",
        "empty.txt": b"",
        "tokenizer.json": b'{"vocab": {}}',
    }
    c1 = repo.commit(first, xet=("*-xet.safetensors",))
    repo.refs["v1.0"] = c1
    second = {**first, "config.json": b'{"model_type": "tiny", "hidden": 16}\n'}
    c2 = repo.commit(second, branch="dev", xet=("*-xet.safetensors",))
    repo.refs["refs/pr/1"] = c2
    return repo


@pytest.fixture(scope="module")
def repos() -> dict[str, HubRepo]:
    private = HubRepo("acme/private", private=True)
    private.commit(  # an LFS file fetched in parts, one fetched whole by the batch's seats
        {"weights.bin": _bytes(3, 100_000), "vocab.bin": _bytes(8, 1000), "README.md": b"# p\n"}
    )
    gated = HubRepo("acme/gated", gated=True)
    gated.commit({"weights.bin": _bytes(4, 50_000)})
    data = HubRepo("acme/data", type="dataset")
    data.commit(
        {"train/part-0.parquet": _bytes(5, 5000), "README.md": b"# data\n"}, lfs=("*.parquet",)
    )
    big = HubRepo("acme/big")
    big.commit({"model.safetensors": _bytes(6, BIG), "config.json": b"{}"})
    two = HubRepo("acme/two")  # a branch to keep, and main: a small file and a big one
    two.commit({"README.md": b"# two\n"}, branch="dev")
    two.commit({"config.json": b'{"two": 2}', "model.safetensors": _bytes(7, BIG)})
    return {r.id: r for r in (_tiny(), private, gated, data, big, two)}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, repos: dict[str, HubRepo]) -> Iterator[HubHandle]:
    handle = start_hub(
        tmp_path_factory.mktemp("hub"), list(repos.values()), tokens=(TOKEN,), page_size=3
    )
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _fresh(hub: HubHandle) -> None:
    hub.reset()


def blobdl_hf(
    hub: HubHandle,
    home: Path,
    *args: str,
    token: str | None = None,
    then: tuple[str, ...] = (),
    offline: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m blobdl hf ARGS`` with this Hub, a home of its own, ``$HF_TOKEN`` and
    ``$HF_HUB_OFFLINE`` (the options ``then`` after ``FAST``, to override them)."""
    env = hf_env(hub.url, home)
    if token is not None:
        env["HF_TOKEN"] = token
    if offline is not None:
        env["HF_HUB_OFFLINE"] = offline
    return subprocess.run(
        [sys.executable, "-m", "blobdl", "hf", *args, *FAST, *then],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under ``root``: a link's target, a file's sha256, or a folder."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[name] = ("link", os.readlink(path))
        elif path.is_file():
            found[name] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            found[name] = ("dir", "")
    return found


def contents(root: Path) -> dict[str, bytes]:
    """The files a snapshot or local dir shows (links followed), by repository path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


def resolves(hub: HubHandle, since: int = 0) -> list[str]:
    return [e["path"] for e in hub.log()[since:] if "/resolve/" in e["path"]]


# --- huggingface_hub is the judge -------------------------------------------------------------


def test_huggingface_hub_itself_downloads_from_the_stand_in_hub(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """If the real client could not use the stand-in, no test here would mean anything."""
    tiny, private = repos["acme/tiny"], repos["acme/private"]
    env = hf_env(hub.url, tmp_path / "home")
    got = call(env, "snapshot_download", repo_id="acme/tiny", cache_dir=str(tmp_path / "c"))
    assert contents(Path(got["path"])) == tiny.contents[tiny.refs["main"]]
    names = ["config.json", "sub/dir/notes.txt", "model.safetensors"]
    got = call(
        env,
        "hf_hub_download",
        repo_id="acme/tiny",
        filenames=names,
        revision="dev",
        cache_dir=str(tmp_path / "d"),
    )
    assert [Path(p).read_bytes() for p in got["paths"]] == [
        tiny.contents[tiny.refs["dev"]][n] for n in names
    ]
    hub.reset()
    got = call(
        env, "snapshot_download", repo_id="acme/private", token=TOKEN, cache_dir=str(tmp_path / "p")
    )
    assert contents(Path(got["path"])) == private.contents[private.refs["main"]]
    assert all("Authorization" not in h for h in hub.storage.stats()["headers"])


def test_huggingface_hub_offline_finds_every_file_blobdl_wrote(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    tiny, data = repos["acme/tiny"], repos["acme/data"]
    cache = tmp_path / "cache"
    for revision in ("main", "v1.0", "refs/pr/1", tiny.refs["dev"]):
        done = blobdl_hf(
            hub, tmp_path, "acme/tiny", "--revision", revision, "--cache-dir", str(cache)
        )
        assert done.returncode == 0, done.stderr
    done = blobdl_hf(
        hub, tmp_path, "acme/data", "--repo-type", "dataset", "--cache-dir", str(cache)
    )
    assert done.returncode == 0, done.stderr
    offline = hf_env(hub.url, tmp_path / "home", offline=True)
    cases = [
        ("acme/tiny", "model", rev, tiny.refs[ref])
        for rev, ref in (
            ("main", "main"),
            ("v1.0", "main"),
            ("refs/pr/1", "dev"),
            (tiny.refs["dev"], "dev"),
        )
    ]
    cases.append(("acme/data", "dataset", "main", data.refs["main"]))
    before = len(hub.log())
    for repo_id, kind, revision, commit in cases:
        repo = repos[repo_id]
        got = call(
            offline,
            "snapshot_download",
            repo_id=repo_id,
            repo_type=kind,
            revision=revision,
            cache_dir=str(cache),
            local_files_only=True,
        )
        assert Path(got["path"]).name == commit, got
        assert contents(Path(got["path"])) == repo.contents[commit]
        names = sorted(repo.contents[commit])
        got = call(
            offline,
            "hf_hub_download",
            repo_id=repo_id,
            repo_type=kind,
            filenames=names,
            revision=revision,
            cache_dir=str(cache),
            local_files_only=True,
        )
        assert [Path(p).read_bytes() for p in got["paths"]] == [
            repo.contents[commit][n] for n in names
        ]
    assert len(hub.log()) == before  # offline: not one request
    assert (cache / "models--acme--tiny" / "refs" / "refs" / "pr" / "1").read_text() == tiny.refs[
        "dev"
    ]
    assert not (cache / "models--acme--tiny" / "refs" / tiny.refs["dev"]).exists()


def test_a_kernel_repository_lands_where_huggingface_hub_looks_for_it(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """huggingface_hub downloads four repository types (``kernels--ORG--NAME``, at
    ``/kernels/`` on the Hub), as the ``kernels`` library asks it to."""
    kernel = HubRepo("acme/relu", type="kernel")
    kernel.commit({"build/torch-cuda/relu.so": _bytes(10, 20_000), "README.md": b"# relu\n"},
                  lfs=("*.so",))  # fmt: skip
    hub.publish([*repos.values(), kernel])
    cache = tmp_path / "cache"
    done = blobdl_hf(hub, tmp_path, kernel.id, "--repo-type", "kernel", "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr
    commit = kernel.refs["main"]
    assert Path(done.stdout.strip()) == cache / "kernels--acme--relu" / "snapshots" / commit
    offline = hf_env(hub.url, tmp_path / "home", offline=True)
    got = call(offline, "snapshot_download", repo_id=kernel.id, repo_type="kernel",
               cache_dir=str(cache), local_files_only=True)  # fmt: skip
    assert contents(Path(got["path"])) == kernel.contents[commit], got


@pytest.mark.parametrize(
    ("patterns", "args"),
    [
        ({}, ()),
        (
            {"allow_patterns": ["*.json"], "ignore_patterns": ["copy/"]},
            ("--include", "*.json", "--exclude", "copy/"),
        ),
    ],
    ids=["all", "patterns"],
)
def test_blobdl_writes_the_tree_huggingface_hub_writes(
    hub: HubHandle, tmp_path: Path, patterns: dict[str, Any], args: tuple[str, ...]
) -> None:
    """Path for path and link for link, .locks and CACHEDIR.TAG included."""
    env = hf_env(hub.url, tmp_path / "home")
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    got = call(env, "snapshot_download", repo_id="acme/tiny", cache_dir=str(theirs), **patterns)
    assert "error" not in got, got
    done = blobdl_hf(hub, tmp_path, "acme/tiny", *args, "--cache-dir", str(ours))
    assert done.returncode == 0, done.stderr
    assert tree(ours) == tree(theirs)
    assert done.stdout.strip() == got["path"].replace(str(theirs), str(ours))


def test_local_dir_is_what_huggingface_hub_writes_and_it_then_fetches_nothing(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    tiny = repos["acme/tiny"]
    commit = tiny.refs["main"]
    env = hf_env(hub.url, tmp_path / "home")
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    call(env, "snapshot_download", repo_id="acme/tiny", local_dir=str(theirs))
    done = blobdl_hf(hub, tmp_path, "acme/tiny", "--local-dir", str(ours))
    assert done.returncode == 0, done.stderr
    mine, hers = tree(ours), tree(theirs)
    metadata = [n for n in mine if n.endswith(".metadata")]
    for name in metadata:  # commit and etag equal; the timestamps are each run's own
        lines, their_lines = (
            (ours / name).read_text().split("\n"),
            (theirs / name).read_text().split("\n"),
        )
        assert lines[:2] == their_lines[:2] and lines[3:] == their_lines[3:] == [""]
        file = ours / name.removeprefix(".cache/huggingface/download/").removesuffix(".metadata")
        assert file.stat().st_mtime - 1 <= float(lines[2])  # what huggingface_hub requires
    assert {n: v for n, v in mine.items() if n not in metadata} == {
        n: v for n, v in hers.items() if n not in metadata
    }
    assert set(metadata) == {n for n in hers if n.endswith(".metadata")}
    assert contents(ours) == tiny.contents[commit]
    before = len(hub.log())
    hub.reset()
    got = call(env, "snapshot_download", repo_id="acme/tiny", local_dir=str(ours))
    assert "error" not in got, got
    assert resolves(hub, before) == [] and hub.storage.stats()["requests"] == 0


# --- what a run costs, and how runs share -----------------------------------------------------


def test_files_already_in_the_cache_cost_no_transfer(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    cache = str(tmp_path / "cache")
    assert blobdl_hf(hub, tmp_path, "acme/tiny", "--cache-dir", cache).returncode == 0
    before, fetched = len(hub.log()), hub.storage.stats()["bytes_sent"]
    assert fetched > 0
    again = blobdl_hf(hub, tmp_path, "acme/tiny", "--cache-dir", cache, "--json")
    assert again.returncode == 0, again.stderr
    assert resolves(hub, before) == [] and hub.storage.stats()["bytes_sent"] == fetched
    summary = json.loads(again.stdout.splitlines()[-1])
    assert summary["bytes_fetched"] == 0 and not any(f["fetched"] for f in summary["files"])
    # Another revision: only the file that changed comes down; the shared blobs are linked.
    before = len(hub.log())
    dev = blobdl_hf(hub, tmp_path, "acme/tiny", "--revision", "dev", "--cache-dir", cache)
    assert dev.returncode == 0, dev.stderr
    assert {p.rsplit("/", 1)[1] for p in resolves(hub, before)} == {"config.json"}
    assert hub.storage.stats()["bytes_sent"] == fetched


def interrupted_a_quarter_in(hub: HubHandle, home: Path, *where: str) -> None:
    """``blobdl hf acme/big WHERE`` paced, Ctrl-C'd once a quarter of its big file is in
    (and its small file, ``config.json``, has come down): it exits 130. The pacing is lifted
    for what comes next."""
    hub.storage.set_faults({"path": "/files/*", "action": "rate", "bps": 1 << 20, "times": None})
    env = {**hf_env(hub.url, home), "PYTHONUNBUFFERED": "1"}
    args = ["hf", "acme/big", *where, "--json", *FAST, *PACED]
    proc = subprocess.Popen([sys.executable, "-m", "blobdl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)  # fmt: skip
    assert proc.stdout is not None
    small = quarter = False
    for line in proc.stdout:
        event = json.loads(line)
        kind = event.get("event")
        small = small or (kind == "finished" and event["url"].endswith("/config.json"))
        quarter = quarter or (kind == "progress" and event["done"] >= BIG // 4)
        if small and quarter:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    hub.storage.set_faults()


def _big_interrupted_in(
    cache: Path, hub: HubHandle, repos: dict[str, HubRepo], home: Path
) -> tuple[str, Path]:
    """``acme/big`` into ``cache``, Ctrl-C'd a quarter into its big file: that blob's sha256
    and the partial the run kept of it."""
    big = repos["acme/big"]
    blob = hashlib.sha256(big.contents[big.refs["main"]]["model.safetensors"]).hexdigest()
    interrupted_a_quarter_in(hub, home, "--cache-dir", str(cache))
    return blob, cache / "models--acme--big" / "blobs" / f"{blob}.blobdl-part.blobdl-tmp.incomplete"


def test_an_interrupted_hf_run_resumes_where_it_stopped(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    blob, partial = _big_interrupted_in(cache, hub, repos, tmp_path)
    blobs = partial.parent
    assert not (blobs / blob).exists() and partial.exists()
    # Its partial kept, and the file it got whole (config.json) in place: `hf cache ls`
    # shows that, a revision no ref names (it is not complete), and calls nothing corrupt.
    scan = call(hf_env(hub.url, tmp_path, offline=True), "scan_cache_dir", cache_dir=str(cache))
    commit = repos["acme/big"].refs["main"]
    revision = {commit: {"refs": [], "files": ["config.json"]}}
    assert scan == {"repos": {"model acme/big": revision}, "warnings": []}, scan
    done = blobdl_hf(hub, tmp_path, "acme/big", "--cache-dir", str(cache), "--json")
    assert done.returncode == 0, done.stderr
    finished = [json.loads(x) for x in done.stdout.splitlines() if '"finished"' in x]
    assert finished and finished[0]["resumed"] >= BIG // 4
    assert hub.storage.stats()["bytes_sent"] < 2 * BIG
    assert sorted(p.name for p in blobs.iterdir()) == sorted(
        [blob, hashlib.sha1(b"blob 2\0{}").hexdigest()]
    )


def test_a_partial_an_older_blobdl_named_is_resumed_not_fetched_again_beside_it(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """A blobdl before partials ended in ``.incomplete`` left ``<etag>.blobdl-part.blobdl-
    tmp`` and its record (a quarter of a shard in, reserved whole). The run after an
    upgrade resumes it: fetched again from the start beside it, the shard would be sent
    twice and held twice on disk until it is done (a tight disk refuses it)."""
    cache = tmp_path / "cache"
    blob, partial = _big_interrupted_in(cache, hub, repos, tmp_path)
    blobs = partial.parent
    partial.rename(blobs / f"{blob}.blobdl-part.blobdl-tmp")  # as an older blobdl named it
    sent = hub.storage.stats()["bytes_sent"]
    done = blobdl_hf(hub, tmp_path, "acme/big", "--cache-dir", str(cache), "--json")
    assert done.returncode == 0, done.stderr
    finished = [json.loads(x) for x in done.stdout.splitlines() if '"finished"' in x]
    assert finished and finished[0]["resumed"] >= BIG // 4, finished
    assert hub.storage.stats()["bytes_sent"] - sent < BIG  # not the whole shard again
    assert sorted(p.name for p in blobs.iterdir()) == sorted(
        [blob, hashlib.sha1(b"blob 2\0{}").hexdigest()]
    )


def test_a_partial_an_older_blobdl_named_never_replaces_one_of_the_new_name(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """Both names hold a partial (an older blobdl's left beside the one a run since kept):
    the record is the new one's, so that one is resumed, never replaced by the older one's
    bytes; the older one goes once the blob is in."""
    cache = tmp_path / "cache"
    blob, partial = _big_interrupted_in(cache, hub, repos, tmp_path)
    blobs = partial.parent
    older = blobs / f"{blob}.blobdl-part.blobdl-tmp"
    older.write_bytes(os.urandom(partial.stat().st_size))  # not the bytes the record claims
    done = blobdl_hf(hub, tmp_path, "acme/big", "--cache-dir", str(cache), "--json")
    assert done.returncode == 0, done.stderr
    finished = [json.loads(x) for x in done.stdout.splitlines() if '"finished"' in x]
    assert finished and finished[0]["resumed"] >= BIG // 4, finished
    assert sorted(p.name for p in blobs.iterdir()) == sorted(
        [blob, hashlib.sha1(b"blob 2\0{}").hexdigest()]
    )


def test_an_interrupted_runs_partial_is_seen_and_reclaimed_by_huggingface_hubs_cache_tools(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """A stopped run keeps its partial for the next run, reserved at its full size (3 MiB
    here with a quarter in; a whole shard on a real repository). huggingface_hub's cache
    tools know a partial only as ``*/blobs/*.incomplete``: named so, the real ``hf cache
    prune`` counts it and reclaims its bytes, as it does its own, for a user who gives up
    on blobdl; a later run then starts that blob over and ends exact."""
    cache = tmp_path / "cache"
    interrupted_a_quarter_in(hub, tmp_path, "--cache-dir", str(cache))
    folder = cache / "models--acme--big"
    assert _held(folder) >= BIG
    hf = [str(Path(sys.executable).parent / "hf"), "cache"]
    env = hf_env(hub.url, tmp_path, offline=True)
    pruned = subprocess.run([*hf, "prune", "--yes", "--cache-dir", str(cache)],
                            capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert pruned.returncode == 0, pruned.stderr
    assert "1 incomplete download" in pruned.stdout, pruned.stdout
    assert _held(folder) < BIG // 4  # its bytes are freed, not only counted
    done = blobdl_hf(hub, tmp_path, "acme/big", "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr
    snapshot = Path(done.stdout.strip())
    assert contents(snapshot) == repos["acme/big"].contents[repos["acme/big"].refs["main"]]


def test_what_a_stopped_run_got_whole_is_in_place_for_huggingface_hub_and_its_cache_tools(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """A file that came down whole before the stop is placed and linked, as a failed run's
    files are: huggingface_hub reads it offline at the commit (the snapshot it is in is
    incomplete by the tree record, and no ref names it), and ``hf cache prune`` sees all
    the run left, that file as its detached revision's, and frees it all. Left staged
    (``<etag>.blobdl-part``, a name the cache tools know nothing of) it was a whole shard
    on a real repository that no tool showed or reclaimed."""
    cache = tmp_path / "cache"
    interrupted_a_quarter_in(hub, tmp_path, "--cache-dir", str(cache))
    big = repos["acme/big"]
    commit = big.refs["main"]
    offline = hf_env(hub.url, tmp_path, offline=True)
    got = call(offline, "hf_hub_download", repo_id="acme/big", filenames=["config.json"],
               revision=commit, cache_dir=str(cache))  # fmt: skip
    assert "error" not in got, got
    assert Path(got["paths"][0]).read_bytes() == big.contents[commit]["config.json"]
    for revision in ("main", commit):  # never taken for complete
        whole = call(offline, "snapshot_download", repo_id="acme/big", revision=revision,
                     cache_dir=str(cache))  # fmt: skip
        assert "error" in whole, whole
    hf = [str(Path(sys.executable).parent / "hf"), "cache"]
    pruned = subprocess.run([*hf, "prune", "--yes", "--cache-dir", str(cache)],
                            capture_output=True, text=True, env=offline, timeout=120)  # fmt: skip
    assert pruned.returncode == 0, pruned.stderr
    blobs = cache / "models--acme--big" / "blobs"
    left = [p.name for p in blobs.iterdir()] if blobs.exists() else []
    assert [n for n in left if not n.endswith((".blobdl-state", ".blobdl-lock"))] == [], left
    done = blobdl_hf(hub, tmp_path, "acme/big", "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr
    assert contents(Path(done.stdout.strip())) == big.contents[commit]


def test_a_blob_removed_by_hf_cache_rm_during_a_run_is_never_linked(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """``hf cache rm <commit>`` while blobdl downloads that commit's big file: the revision
    (a file huggingface_hub put there, no ref naming it yet) goes with its blob, the
    partial stays and the download ends. The file found there at the start is not there at
    the end: the run fails, one line, and names no snapshot with a link to a missing blob
    (no ref); the next run completes it."""
    two = repos["acme/two"]
    commit, cache = two.refs["main"], tmp_path / "cache"
    env = hf_env(hub.url, tmp_path)
    assert blobdl_hf(hub, tmp_path, "acme/two", "--revision", "dev", "--cache-dir",
                     str(cache)).returncode == 0  # fmt: skip
    got = call(env, "hf_hub_download", repo_id="acme/two", filenames=["config.json"],
               revision=commit, cache_dir=str(cache))  # fmt: skip
    assert "error" not in got, got
    # Paced so that `hf cache rm` (a second or more to start on a loaded machine) comes while
    # the run goes on: 128 KiB/s a connection, ~6 s left after the first quarter (at 1 MiB/s,
    # under 1 s: CI's run once ended before it, exit 0, nothing to see).
    hub.storage.set_faults({"path": "/files/*", "action": "rate", "bps": 128 << 10, "times": None})
    args = ["hf", "acme/two", "--cache-dir", str(cache), "--json", *FAST, *PACED]
    proc = subprocess.Popen([sys.executable, "-m", "blobdl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**env, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "progress" and event["done"] >= BIG // 4:
            break
    hf = [str(Path(sys.executable).parent / "hf"), "cache"]
    removed = subprocess.run([*hf, "rm", commit, "--yes", "--cache-dir", str(cache)],
                             capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert removed.returncode == 0, removed.stderr
    _, err = proc.communicate(timeout=60)
    hub.storage.set_faults()
    snapshot = cache / "models--acme--two" / "snapshots" / commit
    dangling = [p.name for p in snapshot.rglob("*") if p.is_symlink() and not p.exists()]
    ref = cache / "models--acme--two" / "refs" / "main"
    assert proc.returncode != 0 or not dangling, (proc.returncode, dangling, err)
    assert not (ref.exists() and ref.read_text() == commit and dangling), dangling
    assert proc.returncode == 5 and len(err.strip().splitlines()) == 1, err
    done = blobdl_hf(hub, tmp_path, "acme/two", "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr
    assert contents(Path(done.stdout.strip())) == two.contents[commit]


def _held(folder: Path) -> int:
    """The bytes the files under ``folder`` hold on disk (a reserved partial's whole size)."""
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def test_an_interrupted_local_dir_run_resumes_and_huggingface_hub_then_fetches_nothing(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """``--local-dir`` keeps its partial where huggingface_hub keeps its own bookkeeping
    (``.cache/huggingface/download``): Ctrl-C keeps it, the rerun resumes it, and the local
    dir is then one huggingface_hub takes as complete."""
    big = repos["acme/big"]
    ld = tmp_path / "ld"
    interrupted_a_quarter_in(hub, tmp_path, "--local-dir", str(ld))
    assert not (ld / "model.safetensors").exists()
    download = ld / ".cache" / "huggingface" / "download"
    assert [p.name for p in download.rglob("model.safetensors*.blobdl-tmp.incomplete")], tree(ld)
    done = blobdl_hf(hub, tmp_path, "acme/big", "--local-dir", str(ld), "--json")
    assert done.returncode == 0, done.stderr
    finished = [json.loads(x) for x in done.stdout.splitlines() if '"finished"' in x]
    assert finished and finished[0]["resumed"] >= BIG // 4
    assert hub.storage.stats()["bytes_sent"] < 2 * BIG
    assert contents(ld) == big.contents[big.refs["main"]]
    assert not [p for p in ld.rglob("*") if ".blobdl-" in p.name]  # nothing of ours is left
    before = len(hub.log())
    hub.reset()
    got = call(hf_env(hub.url, tmp_path / "home"), "snapshot_download", repo_id="acme/big",
               local_dir=str(ld))  # fmt: skip
    assert "error" not in got, got
    assert resolves(hub, before) == [] and hub.storage.stats()["requests"] == 0


def test_two_runs_sharing_a_cache_fetch_each_blob_once(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    hub.storage.set_faults({"path": "/files/*", "action": "rate", "bps": 4 << 20, "times": None})
    cache = str(tmp_path / "cache")
    env = hf_env(hub.url, tmp_path)
    command = [sys.executable, "-m", "blobdl", "hf", "acme/big", "--cache-dir", cache, "-q"]
    runs = [
        subprocess.Popen(
            [*command, *FAST, *PACED],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for _ in range(2)
    ]
    outcomes = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outcomes
    assert BIG <= hub.storage.stats()["bytes_sent"] < BIG * 1.05
    snapshot = Path(outcomes[0][0].strip())
    assert contents(snapshot) == repos["acme/big"].contents[repos["acme/big"].refs["main"]]


# --- HF_HUB_OFFLINE: the cache alone ----------------------------------------------------------


def quiet_hub(hub: HubHandle, since: int) -> bool:
    """Not one request reached the Hub since ``since``, nor its storage since the reset."""
    return len(hub.log()) == since and hub.storage.stats()["requests"] == 0


def test_verify_cache_which_hf_has_no_use_for_is_bad_usage(hub: HubHandle, tmp_path: Path) -> None:
    """blobdl's content-addressed cache is not used by hf (its --cache-dir is
    huggingface_hub's), so --verify-cache would change nothing: it was taken in silence
    (hidden from the help); refused, naming it, before any request."""
    before = len(hub.log())
    done = blobdl_hf(hub, tmp_path, "acme/tiny", "--cache-dir", str(tmp_path / "c"),
                     "--verify-cache")  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--verify-cache" in lines[0], lines
    assert quiet_hub(hub, before) and not (tmp_path / "c").exists()
    told = blobdl_hf(hub, tmp_path, "acme/tiny", "--verify-cache", "--json")
    assert told.returncode == 2 and json.loads(told.stdout)["exit_code"] == 2, told.stdout


def test_offline_a_complete_snapshot_is_served_from_the_cache_without_one_request(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """``HF_HUB_OFFLINE=1`` as huggingface_hub reads it: a branch, tag or PR ref through
    ``refs/``, a commit as itself; the run prints what a finished run prints."""
    tiny = repos["acme/tiny"]
    cache = str(tmp_path / "cache")
    online = {}
    for revision in ("main", "v1.0", "refs/pr/1", tiny.refs["dev"]):
        done = blobdl_hf(hub, tmp_path, "acme/tiny", "--revision", revision, "--cache-dir", cache)
        assert done.returncode == 0, done.stderr
        online[revision] = done.stdout
    hub.reset()
    before = len(hub.log())
    for revision, printed in online.items():
        done = blobdl_hf(hub, tmp_path, "acme/tiny", "--revision", revision, "--cache-dir",
                         cache, offline="1")  # fmt: skip
        assert (done.returncode, done.stdout) == (0, printed), done.stderr
    done = blobdl_hf(hub, tmp_path, "acme/tiny", "--cache-dir", cache, "--json", offline="YES")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["event"] == "hf_finished" and summary["commit"] == tiny.refs["main"]
    assert summary["bytes_fetched"] == 0 and not any(f["fetched"] for f in summary["files"])
    assert len(summary["files"]) == len(tiny.contents[tiny.refs["main"]])
    assert quiet_hub(hub, before)


def test_offline_the_files_asked_for_are_enough(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """A PATH or patterns ask for some files: those being there is complete, as
    ``snapshot_download(allow_patterns=...)`` offline; asking for more names what lacks."""
    cache = str(tmp_path / "cache")
    some = ("--include", "*.json", "--exclude", "copy/")
    done = blobdl_hf(hub, tmp_path, "acme/tiny", *some, "--cache-dir", cache)
    assert done.returncode == 0, done.stderr
    hub.reset()
    before = len(hub.log())
    again = blobdl_hf(hub, tmp_path, "acme/tiny", *some, "--cache-dir", cache, offline="1")
    assert (again.returncode, again.stdout) == (0, done.stdout), again.stderr
    one = blobdl_hf(hub, tmp_path, "acme/tiny", "config.json", "--cache-dir", cache, offline="1")
    assert (one.returncode, one.stdout) == (0, done.stdout), one.stderr
    every = blobdl_hf(hub, tmp_path, "acme/tiny", "--cache-dir", cache, offline="1")
    assert every.returncode == 2, every.stderr
    lines = every.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE" in lines[0], lines
    assert "missing from the cache, 5 of the 7 files asked for:" in lines[0], lines
    assert "'copy/config.json'" in lines[0], lines
    nope = blobdl_hf(hub, tmp_path, "acme/tiny", "nope.bin", "--cache-dir", cache, offline="1")
    assert nope.returncode == 3 and "file not found: acme/tiny has no 'nope.bin'" in nope.stderr
    assert quiet_hub(hub, before)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("nothing", "no ref for revision 'main' in the cache"),
        ("link", "missing from the cache, 1 of the 7 files asked for: 'sub/dir/notes.txt'"),
        ("blob", "missing from the cache, 1 of the 7 files asked for: 'model.safetensors'"),
        ("tree", "no record of the files of commit"),
        ("ref", "no ref for revision 'main' in the cache"),
    ],
)
def test_offline_a_snapshot_not_complete_is_one_usage_line_naming_what_lacks(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, damage: str, words: str
) -> None:
    """Never a partial snapshot handed over as complete, never a request to fill it in:
    exit 2 (the environment forbids what the run needs), one line, naming
    ``HF_HUB_OFFLINE`` and what is missing."""
    tiny = repos["acme/tiny"]
    cache = tmp_path / "cache"
    repo = cache / "models--acme--tiny"
    commit = tiny.refs["main"]
    if damage != "nothing":
        done = blobdl_hf(hub, tmp_path, "acme/tiny", "--cache-dir", str(cache))
        assert done.returncode == 0, done.stderr
    if damage == "link":
        (repo / "snapshots" / commit / "sub" / "dir" / "notes.txt").unlink()
    elif damage == "blob":
        blob = os.readlink(repo / "snapshots" / commit / "model.safetensors")
        (repo / "snapshots" / commit / blob).resolve().unlink()
    elif damage == "tree":
        (repo / "trees" / f"{commit}.json").unlink()
    elif damage == "ref":
        (repo / "refs" / "main").unlink()
    hub.reset()
    before = len(hub.log())
    done = blobdl_hf(hub, tmp_path, "acme/tiny", "--cache-dir", str(cache), offline="1")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blobdl: error: HF_HUB_OFFLINE"), lines
    assert words in lines[0], lines
    assert done.stdout == ""
    assert quiet_hub(hub, before)


def test_offline_a_local_dir_is_served_as_it_is_without_one_request(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """A local dir records no branch: it holds the commit its ``trees/`` names (one), checked
    file by file against that commit's listing; a commit asked must be that one."""
    tiny = repos["acme/tiny"]
    local = tmp_path / "local"
    done = blobdl_hf(hub, tmp_path, "acme/tiny", "--local-dir", str(local))
    assert done.returncode == 0, done.stderr
    hub.reset()
    before = len(hub.log())
    for revision in ("main", tiny.refs["main"]):
        again = blobdl_hf(hub, tmp_path, "acme/tiny", "--revision", revision, "--local-dir",
                          str(local), offline="1")  # fmt: skip
        assert (again.returncode, again.stdout) == (0, done.stdout), again.stderr
    other = blobdl_hf(hub, tmp_path, "acme/tiny", "--revision", tiny.refs["dev"],
                      "--local-dir", str(local), offline="1")  # fmt: skip
    assert other.returncode == 2 and "HF_HUB_OFFLINE" in other.stderr, other.stderr
    assert "no record of the files of commit" in other.stderr, other.stderr
    (local / "tokenizer.json").unlink()
    gone = blobdl_hf(hub, tmp_path, "acme/tiny", "--local-dir", str(local), offline="1")
    assert gone.returncode == 2, gone.stderr
    assert "missing from the local dir, 1 of the 7 files asked for: 'tokenizer.json'" in gone.stderr
    nothing = blobdl_hf(hub, tmp_path, "acme/tiny", "--local-dir", str(tmp_path / "none"),
                        offline="1")  # fmt: skip
    assert nothing.returncode == 2 and "HF_HUB_OFFLINE" in nothing.stderr, nothing.stderr
    assert not (tmp_path / "none").exists()
    assert quiet_hub(hub, before)


def test_offline_a_local_dir_holding_several_commits_is_served_only_by_its_commit(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """A local dir that two revisions were downloaded into keeps a record of each: a branch
    cannot say which it is (it records no branch), so it is one line asking for the commit;
    a commit given is served by its own record."""
    tiny = repos["acme/tiny"]
    local = str(tmp_path / "local")
    for revision in ("main", "dev"):
        done = blobdl_hf(hub, tmp_path, "acme/tiny", "--revision", revision, "--local-dir", local)
        assert done.returncode == 0, done.stderr
    hub.reset()
    before = len(hub.log())
    branch = blobdl_hf(hub, tmp_path, "acme/tiny", "--local-dir", local, offline="1")
    assert branch.returncode == 2, branch.stderr
    assert "holds the files of 2 commits" in branch.stderr, branch.stderr
    assert "give one as the revision" in branch.stderr, branch.stderr
    commit = blobdl_hf(hub, tmp_path, "acme/tiny", "--revision", tiny.refs["dev"],
                       "--local-dir", local, "--json", offline="1")  # fmt: skip
    assert commit.returncode == 0, commit.stderr
    assert json.loads(commit.stdout.splitlines()[-1])["commit"] == tiny.refs["dev"]
    assert quiet_hub(hub, before)


def test_offline_a_cache_huggingface_hub_filled_is_served_too(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """Its ``refs/`` and ``trees/<commit>.json`` are read as blobdl's own, and so are the
    copies it leaves where it does not link (``HF_HUB_DISABLE_SYMLINKS``)."""
    cache = tmp_path / "cache"
    env = hf_env(hub.url, tmp_path / "home")
    got = call(env, "snapshot_download", repo_id="acme/tiny", revision="v1.0", cache_dir=str(cache))
    assert "error" not in got, got
    snapshot = Path(got["path"])
    copied = snapshot / "model.safetensors"
    data = copied.read_bytes()
    copied.unlink()
    copied.write_bytes(data)
    hub.reset()
    before = len(hub.log())
    done = blobdl_hf(hub, tmp_path, "acme/tiny", "--revision", "v1.0", "--cache-dir",
                     str(cache), offline="1")  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, str(snapshot)), done.stderr
    assert quiet_hub(hub, before)


@pytest.mark.parametrize("value", ["0", "", "false", "no", "off", " 1"])
def test_offline_values_huggingface_hub_reads_as_false_leave_the_hub_asked(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, value: str
) -> None:
    before = len(hub.log())
    done = blobdl_hf(hub, tmp_path, "acme/tiny", "config.json", "--cache-dir",
                     str(tmp_path / "cache"), offline=value)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert resolves(hub, before), "the Hub was not asked"


# --- auth and errors --------------------------------------------------------------------------


def test_the_token_goes_to_the_hub_and_never_to_storage(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    private = repos["acme/private"]
    before = len(hub.log())
    done = blobdl_hf(hub, tmp_path, "acme/private", "--cache-dir", str(tmp_path / "c"), token=TOKEN)
    assert done.returncode == 0, done.stderr
    assert contents(Path(done.stdout.strip())) == private.contents[private.refs["main"]]
    sent = hub.log()[before:]
    assert sent and all(e["authorization"] == f"Bearer {TOKEN}" for e in sent)
    seen = hub.storage.stats()["headers"]
    assert seen and not any(name.lower() == "authorization" for h in seen for name in h)


@pytest.mark.parametrize(
    ("args", "token", "line"),
    [
        (("acme/gated",), None, "gated repository: acme/gated (no token was sent: ask for access"),
        (
            ("acme/private",),
            None,
            "repository not found: acme/private (it does not exist, or it is private",
        ),
        (
            ("acme/private",),
            "hf_wrong",  # a token the Hub does not know: refused, whatever it asks for
            "authentication refused: the Hub refused the token sent (from $HF_TOKEN) "
            "for acme/private",
        ),
        (("acme/nosuch",), None, "repository not found: acme/nosuch"),
        (
            ("acme/tiny", "--revision", "nope"),
            None,
            "revision not found: acme/tiny has no revision 'nope'",
        ),
        (("acme/tiny", "nope.bin"), None, "file not found: acme/tiny has no 'nope.bin'"),
    ],
    ids=["gated", "private", "bad-token", "no-repo", "no-revision", "no-file"],
)
def test_hub_refusals_are_one_clear_line_each(
    hub: HubHandle, tmp_path: Path, args: tuple[str, ...], token: str | None, line: str
) -> None:
    cache = tmp_path / "cache"
    done = blobdl_hf(hub, tmp_path, *args, "--cache-dir", str(cache), token=token)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"blobdl: error: {line}"), lines
    assert not list(cache.glob("*/blobs/*")) and not list(cache.glob("*/snapshots/*/*"))


@pytest.mark.parametrize(
    ("rule", "line"),
    [
        (
            {"path": "/api/models/acme/tiny/revision/main", "action": "status", "status": 403,
             "headers": {"X-Error-Message": "Access to this resource is disabled."}},
            "repository not found: acme/tiny (the Hub has disabled access to it)",
        ),
        (
            {"path": "/acme/tiny/resolve/*", "action": "status", "status": 404},
            "file not found: acme/tiny has no 'config.json'",
        ),
    ],
    ids=["disabled", "file-404-without-code"],
)  # fmt: skip
def test_hub_refusals_without_an_error_code_are_named_as_huggingface_hub_names_them(
    hub: HubHandle, tmp_path: Path, rule: dict[str, Any], line: str
) -> None:
    """A disabled repository is a 403 with only a message (huggingface_hub's
    ``DisabledRepoError``), not a token that lacks a right; a bare 404 on a file of a
    repository just listed (a mirror's) is that file missing, not the repository."""
    hub.hub.set_faults({**rule, "times": None})
    done = blobdl_hf(hub, tmp_path, "acme/tiny", "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"blobdl: error: {line}"), lines


# --- what is never written --------------------------------------------------------------------


def _liar(hub: HubHandle, repos: dict[str, HubRepo], lfs: bool) -> HubRepo:
    """A repository whose listing names other bytes than it serves for one file."""
    repo = HubRepo(f"acme/liar-{'lfs' if lfs else 'git'}")
    # Bytes of its own: the stand-in's objects are shared, by name, with every repository.
    sha = repo.commit({"a.txt": b"true bytes\n", "w.safetensors": _bytes(7 + lfs, 80_000)})
    entry = next(e for e in repo.commits[sha] if e["path"] == ("w.safetensors" if lfs else "a.txt"))
    if lfs:
        repo.blobs[entry["lfs"]["oid"]] = _bytes(9, 80_000)
    else:
        entry["oid"] = "0" * 40
        repo.blobs["0" * 40] = b"lies here!\n"  # the same size: only the hash can tell
    hub.publish([*repos.values(), repo])
    return repo


@pytest.mark.parametrize("lfs", [False, True], ids=["git-sha1", "lfs-sha256"])
def test_a_file_whose_bytes_do_not_match_the_listing_is_never_placed(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, lfs: bool
) -> None:
    repo = _liar(hub, repos, lfs)
    cache = tmp_path / "cache"
    done = blobdl_hf(hub, tmp_path, repo.id, "--cache-dir", str(cache))
    assert done.returncode == 4, done.stderr
    assert "digest mismatch" in done.stderr
    folder = cache / f"models--acme--{repo.id.split('/')[1]}"
    bad = (
        "0" * 40
        if not lfs
        else next(e["lfs"]["oid"] for e in next(iter(repo.commits.values())) if "lfs" in e)
    )
    assert not (folder / "blobs" / bad).exists()
    assert not list(folder.glob("blobs/*.blobdl-part"))
    assert not (folder / "refs" / "main").exists()


@pytest.mark.parametrize(
    "path", ["../evil", "/abs/evil", "a/../../evil", "a//evil", ".", "a/./b", "e\x00vil", "x\nz"]
)
def test_a_hostile_listing_never_writes_outside_the_cache(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, path: str
) -> None:
    repo = HubRepo("acme/hostile")
    sha = repo.commit({"ok.txt": b"fine\n"})
    repo.commits[sha].append(
        {"type": "file", "oid": hashlib.sha1(b"x").hexdigest(), "size": 1, "path": path}
    )
    hub.publish([*repos.values(), repo])
    inside = tmp_path / "a" / "b"
    inside.mkdir(parents=True)
    done = blobdl_hf(hub, tmp_path, "acme/hostile", "--cache-dir", str(inside / "cache"))
    assert done.returncode == 4, done.stderr
    assert "not safe" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert not list(inside.rglob("*evil*")) and not list(inside.glob("cache/*/blobs/*"))


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        (
            {
                "path": "/api/models/acme/tiny/revision/main",
                "action": "status",
                "status": 200,
                "body": '{"id": "acme/tiny", "sha": "../../../../evil"}',
            },
            "not 40 hex digits",
        ),
        (
            {
                "path": "/api/models/acme/tiny/revision/main",
                "action": "status",
                "status": 200,
                "body": "[" * 200_000,
            },
            "not JSON",
        ),
        (
            {
                "path": "/api/models/acme/tiny/tree/*",
                "action": "headers",
                "set": {"Link": '<http://127.0.0.2:9/evil>; rel="next"'},
            },
            "not on the Hub's origin",
        ),
        (
            {
                "path": "/api/models/acme/tiny/revision/main",
                "action": "redirect",
                "location": "http://127.0.0.2:9/api/evil",
            },
            "away from the Hub's origin",
        ),
    ],
    ids=["commit-path", "deep-json", "next-page-elsewhere", "redirect-elsewhere"],
)
def test_a_hostile_hub_answer_is_one_line_and_nothing_written(
    hub: HubHandle, tmp_path: Path, rule: dict[str, Any], words: str
) -> None:
    hub.hub.set_faults({**rule, "times": None})
    cache = tmp_path / "cache"
    done = blobdl_hf(hub, tmp_path, "acme/tiny", "--cache-dir", str(cache), token=TOKEN)
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert not list(cache.glob("*/blobs/*")) and not list(tmp_path.rglob("*evil*"))


def test_a_tree_listing_that_starts_over_is_refused_at_its_first_repeat(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """Each page names a new next page, so no URL repeats: the paths do, and the first one
    named twice ends the listing (not 100,000 pages later, nor out of memory)."""
    repo = HubRepo("acme/echo", repeats=True)
    repo.commit({f"f{i}.txt": b"%d\n" % i for i in range(5)})  # two pages of three
    hub.publish([*repos.values(), repo])
    before = len(hub.log())
    cache = tmp_path / "cache"
    done = blobdl_hf(hub, tmp_path, repo.id, "--cache-dir", str(cache))
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "names a path twice" in lines[0], lines
    pages = [e for e in hub.log()[before:] if "/tree/" in e["path"]]
    assert len(pages) == 3  # the listing, then the first page again
    assert not list(cache.glob("*/blobs/*"))


def _hf_shrunk(
    hub: HubHandle, home: Path, repo_id: str, shrink: str
) -> subprocess.CompletedProcess[str]:
    """``blobdl hf REPO`` into ``home``'s cache, in a process whose listing bounds are
    shrunk by ``shrink`` (statements on ``blobdl.hf._hub`` as ``hub``): the real ones take
    millions of entries, or 100,000 requests, to reach."""
    code = f"import blobdl.hf._hub as hub; {shrink}; from blobdl.cli import run; run()"
    return subprocess.run(
        [sys.executable, "-c", code, "hf", repo_id, "--cache-dir", str(home / "cache"), *FAST],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=hf_env(hub.url, home),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("bound", "words", "pages"),
    [
        ("MAX_LISTED = 30", "past 30 entries", 11),
        ("MAX_LISTING = 4 << 10", "past 4,096 bytes", None),
    ],
    ids=["entries", "bytes"],
)
def test_an_endless_tree_listing_ends_past_its_bound_in_one_line(
    hub: HubHandle,
    repos: dict[str, HubRepo],
    tmp_path: Path,
    bound: str,
    words: str,
    pages: int | None,
) -> None:
    """A Hub that lists new files page after page, for ever (no path twice, no page
    twice): the listing was read for 100,000 pages of up to 64 MiB each, or until memory
    ran out. It ends at the first page past a bound no real repository reaches, in one
    line, nothing fetched. The bound and the page limit are shrunk in the run's process
    (the real ones take millions of entries to reach); without a bound, the run goes on
    to the page limit."""
    endless = HubRepo("acme/endless", endless=True)
    endless.commit({"a.txt": b"a\n"})
    hub.publish([*repos.values(), endless])
    before = len(hub.log())
    done = _hf_shrunk(hub, tmp_path, endless.id, f"hub.MAX_PAGES = 50; hub.{bound}")
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "the tree listing runs " + words in lines[0], lines
    assert hub.url in lines[0]
    asked = [e for e in hub.log()[before:] if "/tree/" in e["path"]]
    assert len(asked) == pages if pages else 2 < len(asked) < 20, len(asked)  # 3 files a page
    assert resolves(hub, before) == [] and not (tmp_path / "cache").exists()


def test_tree_pages_that_list_nothing_end_the_listing_after_a_few_in_one_line(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """A Hub whose pages, after the files, list nothing but name a next page, for ever:
    no entry and a few bytes a page, so neither the entries nor the bytes bound it, and
    the listing went on to the page limit (100,000 requests). It ends at the 16th empty
    page in a row, in one line, nothing fetched. The page limit is shrunk to 50 here, so
    that the unbounded run ends too."""
    drip = HubRepo("acme/empty-pages", endless_empty=True)
    drip.commit({"a.txt": b"a\n"})
    hub.publish([*repos.values(), drip])
    before = len(hub.log())
    done = _hf_shrunk(hub, tmp_path, drip.id, "hub.MAX_PAGES = 50")
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "list nothing, 16 in a row" in lines[0], lines
    asked = [e for e in hub.log()[before:] if "/tree/" in e["path"]]
    assert len(asked) == 1 + 16, len(asked)  # the files' page, then 16 empty ones
    assert resolves(hub, before) == [] and not (tmp_path / "cache").exists()


def test_tree_pages_that_list_only_folders_are_not_empty(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """A file 60 folders deep: its listing is the file, then 60 folders, 3 to a page
    here, so 20 pages in a row name no file, more than the 16 empty pages that end a
    listing. They list entries, and the listing goes on: the file is fetched, byte for
    byte."""
    path = "/".join(f"d{n:02d}" for n in range(60)) + "/w.bin"
    deep = HubRepo("acme/deep")
    deep.commit({path: b"deep\n"})
    hub.publish([*repos.values(), deep])
    done = blobdl_hf(hub, tmp_path, deep.id, "--local-dir", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / path).read_bytes() == b"deep\n"


def test_a_tree_page_larger_than_the_hub_sends_is_refused_once_past_the_page_bound(
    hub: HubHandle, tmp_path: Path
) -> None:
    """A page is 1,000 files; with paths of the longest kind (4 KiB) that is 4.5 MB. A
    page of 17 MiB (an empty list padded with spaces: valid JSON) was read whole, as any
    API answer up to 64 MiB; the page bound is 16 MiB."""
    page = "[" + " " * (17 << 20) + "]"
    hub.hub.set_faults({"path": "/api/models/acme/tiny/tree/*", "action": "status",
                        "status": 200, "body": page, "times": None})  # fmt: skip
    done = blobdl_hf(hub, tmp_path, "acme/tiny", "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"an API answer of more than {16 << 20} bytes" in lines[0], lines


def test_hub_api_failures_are_retried(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    hub.hub.set_faults(
        {"path": "/api/models/acme/tiny/revision/main", "action": "status", "status": 503},
        {"path": "/api/models/acme/tiny/tree/*", "action": "reset_after", "bytes": 0},
    )
    done = blobdl_hf(hub, tmp_path, "acme/tiny", "--cache-dir", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    tiny = repos["acme/tiny"]
    assert contents(Path(done.stdout.strip())) == tiny.contents[tiny.refs["main"]]
    assert hub.hub.stats()["rule_hits"] == [1, 1]  # each fault struck, and was retried


@pytest.mark.parametrize("status", [501, 505, 511])
def test_hub_api_statuses_saying_what_it_will_not_do_are_asked_once(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, status: int
) -> None:
    """Not implemented, this HTTP version, a captive portal's login: another attempt gets
    the same answer, so the API is not asked again (curl retries none of them)."""
    hub.hub.set_faults({"path": "/api/models/acme/tiny/revision/main", "times": None,
                        "action": "status", "status": status})  # fmt: skip
    done = blobdl_hf(hub, tmp_path, "acme/tiny", "--cache-dir", str(tmp_path / "c"))
    assert done.returncode == 3, done.stderr
    assert f"HTTP {status}" in done.stderr, done.stderr
    assert hub.hub.stats()["rule_hits"] == [1]


def test_the_batch_is_given_the_largest_files_first_with_their_sizes(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files listed first must not leave a large one one connection to crawl on (the
    benchmark's shards took 3x their time): the batch is handed the files largest first, each
    with its size, so a shard skips the small-item seats and claims its lanes at once (the
    batch then shares out what finished items free: test_batch_small)."""
    import blobdl.hf._download as story

    handed: list[tuple[str, int | None]] = []
    real = story.download_many

    def watched(items: list[Any], **kwargs: Any) -> Any:
        handed.extend((item.url.rsplit("/", 1)[1], item.size) for item in items)
        return real(items, **kwargs)

    monkeypatch.setattr(story, "download_many", watched)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # the caller's, if set
        monkeypatch.delenv(offline, raising=False)
    story.hf_download("acme/tiny", cache_dir=tmp_path / "c", endpoint=hub.url, token="")
    tiny = repos["acme/tiny"].contents[repos["acme/tiny"].refs["main"]]
    sizes = {n.rsplit("/", 1)[-1]: len(b) for n, b in tiny.items()}
    assert [size for _, size in handed] == sorted(sizes.values(), reverse=True)[: len(handed)]
    assert all(sizes[name] == size for name, size in handed)


def test_blobdl_and_huggingface_hub_sharing_a_cache_fetch_each_blob_once(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """Both take huggingface_hub's own lock on a blob: whoever comes second finds it there."""
    hub.storage.set_faults({"path": "/files/*", "action": "rate", "bps": 4 << 20, "times": None})
    cache = str(tmp_path / "cache")
    env = hf_env(hub.url, tmp_path / "home")
    request = json.dumps({"call": "snapshot_download",
                          "kwargs": {"repo_id": "acme/big", "cache_dir": cache}})  # fmt: skip
    theirs = subprocess.Popen([sys.executable, "-m", "tests.hf_client", request], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
    ours = blobdl_hf(hub, tmp_path, "acme/big", "--cache-dir", cache, then=PACED)
    answer = json.loads(theirs.communicate(timeout=60)[0].splitlines()[-1])
    assert ours.returncode == 0 and "error" not in answer, (ours.stderr, answer)
    assert BIG <= hub.storage.stats()["bytes_sent"] < BIG * 1.05
    big = repos["acme/big"]
    assert contents(Path(answer["path"])) == big.contents[big.refs["main"]]


@pytest.mark.parametrize(("token", "sent"), [(False, None), (True, f"Bearer {TOKEN}")])
def test_a_token_of_true_or_false_is_read_as_huggingface_hub_reads_it(
    hub: HubHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: bool, sent: str | None
) -> None:
    """Code written for huggingface_hub passes ``token=False`` for "send none" (a public
    repository, a token in the environment that must not go) and ``token=True`` for "the
    usual one": the same call to blobdl means the same (False was refused as no text)."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    before = len(hub.log())
    blobdl.hf_download("acme/tiny", cache_dir=tmp_path / "c", endpoint=hub.url, token=token)
    assert {e["authorization"] for e in hub.log()[before:]} == {sent}


def test_the_hub_cache_and_token_come_from_huggingface_hubs_variables(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """``$HF_ENDPOINT``, the token file under ``$HF_HOME`` (what ``hf auth login`` writes),
    ``$HF_HOME/hub``, then ``$HF_HUB_CACHE``: no option needed."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text(TOKEN + "\n")
    done = blobdl_hf(hub, home, "acme/private")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).parent.parent == home / "hub" / "models--acme--private"
    env = {**hf_env(hub.url, home), "HF_HUB_CACHE": str(tmp_path / "elsewhere")}
    moved = subprocess.run(
        [sys.executable, "-m", "blobdl", "hf", "acme/private", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert moved.returncode == 0, moved.stderr
    assert Path(moved.stdout.strip()).is_relative_to(tmp_path / "elsewhere")


def test_hf_home_set_empty_is_the_working_folder_for_both(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """``HF_HOME=`` (a compose file's unset variable): huggingface_hub's cache is then
    ``./hub``, and that is where blobdl must put the files for it to find them."""
    # HOME here too: were HF_HOME= skipped, the fallback must not be the real home's cache.
    env = {**hf_env(hub.url, tmp_path), "HF_HOME": "", "HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(REPO)}  # fmt: skip
    run = {"capture_output": True, "text": True, "timeout": 60, "cwd": tmp_path}
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", "hf", "acme/tiny", "-q", *FAST], env=env, **run
    )
    assert done.returncode == 0, done.stderr
    tiny = repos["acme/tiny"]
    kwargs = {"repo_id": "acme/tiny", "local_files_only": True}
    request = json.dumps({"call": "snapshot_download", "kwargs": kwargs})
    theirs = subprocess.run(
        [sys.executable, "-m", "tests.hf_client", request],
        env={**env, "HF_HUB_OFFLINE": "1"},
        **run,
    )
    answer = json.loads(theirs.stdout.splitlines()[-1])
    assert (tmp_path / answer["path"]).resolve() == (
        tmp_path / "hub" / "models--acme--tiny" / "snapshots" / tiny.refs["main"]
    ), answer


def test_a_reader_gone_before_the_last_line_costs_nothing(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """``blobdl hf REPO | true``: the reader is gone before the path is printed; the
    download still succeeds, with no traceback."""
    tiny = repos["acme/tiny"]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away
    try:
        done = subprocess.run(
            [sys.executable, "-m", "blobdl", "hf", "acme/tiny", "--cache-dir",
             str(tmp_path / "c"), "-q", *FAST],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, cwd=REPO,
            env=hf_env(hub.url, tmp_path),
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and done.stderr == ""
    snapshot = next((tmp_path / "c").glob("models--acme--tiny/snapshots/*"))
    assert contents(snapshot) == tiny.contents[tiny.refs["main"]]
