"""``blobdl hf`` with the names real repositories hold: odd file names, short commits,
against the real huggingface_hub as the judge."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from faultserver.hub import HubHandle, HubRepo, start_hub
from tests.hf_client import call, hf_env
from tests.integration.test_hf import _bytes, blobdl_hf, contents, tree

ODD = {
    "a b.txt": b"space\n",
    "c#d.txt": b"hash\n",
    "e%20f.txt": b"percent\n",
    "g?h=1.txt": b"question\n",
    "données/é.txt": b"accents\n",
    "日本/モデル.safetensors": _bytes(11, 70_000),
    "x+y;z,@!$&'()*=.json": b"{}",
    "tilde~/~.bin": _bytes(12, 1000),
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubHandle]:
    odd = HubRepo("acme/odd")
    odd.commit(ODD)
    handle = start_hub(tmp_path_factory.mktemp("hub"), [odd], page_size=3)
    yield handle
    handle.stop()


def test_odd_file_names_land_where_huggingface_hub_puts_them(
    hub: HubHandle, tmp_path: Path
) -> None:
    env = hf_env(hub.url, tmp_path / "home")
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    got = call(env, "snapshot_download", repo_id="acme/odd", cache_dir=str(theirs))
    assert "error" not in got, got
    done = blobdl_hf(hub, tmp_path, "acme/odd", "--cache-dir", str(ours))
    assert done.returncode == 0, done.stderr
    assert tree(ours) == tree(theirs)
    assert contents(Path(done.stdout.strip())) == ODD


def test_odd_file_names_in_a_local_dir(hub: HubHandle, tmp_path: Path) -> None:
    env = hf_env(hub.url, tmp_path / "home")
    ours = tmp_path / "ours"
    done = blobdl_hf(hub, tmp_path, "acme/odd", "--local-dir", str(ours))
    assert done.returncode == 0, done.stderr
    assert contents(ours) == ODD
    before = hub.storage.stats()["requests"]
    log = len(hub.log())
    got = call(env, "snapshot_download", repo_id="acme/odd", local_dir=str(ours))
    assert "error" not in got, got
    assert [e for e in hub.log()[log:] if "/resolve/" in e["path"]] == []
    assert hub.storage.stats()["requests"] == before


def test_a_short_commit_is_cached_as_huggingface_hub_caches_it(
    hub: HubHandle, tmp_path: Path
) -> None:
    env = hf_env(hub.url, tmp_path / "home")
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    short = call(env, "snapshot_download", repo_id="acme/odd", cache_dir=str(theirs))
    commit = Path(short["path"]).name
    rev = commit[:7]
    got = call(env, "snapshot_download", repo_id="acme/odd", revision=rev, cache_dir=str(theirs))
    assert "error" not in got, got
    for run in ("main", rev):
        done = blobdl_hf(hub, tmp_path, "acme/odd", "--revision", run, "--cache-dir", str(ours))
        assert done.returncode == 0, done.stderr
    assert tree(ours) == tree(theirs)
    offline = hf_env(hub.url, tmp_path / "home", offline=True)
    got = call(offline, "snapshot_download", repo_id="acme/odd", revision=rev,
               cache_dir=str(ours), local_files_only=True)  # fmt: skip
    assert Path(got["path"]).name == commit, got
    done = blobdl_hf(hub, tmp_path, "acme/odd", "--revision", rev, "--cache-dir", str(ours),
                     offline="1")  # fmt: skip
    assert done.returncode == 0, done.stderr


def _moving() -> tuple[HubRepo, HubRepo]:
    first = {"config.json": b'{"hidden": 8}', "model.safetensors": _bytes(13, 50_000),
             "gone.txt": b"soon gone\n", "same.txt": b"same\n"}  # fmt: skip
    second = {"config.json": b'{"hidden": 9}', "model.safetensors": _bytes(14, 50_000),
              "same.txt": b"same\n", "new/file.txt": b"new\n"}  # fmt: skip
    a, b = HubRepo("acme/moving"), HubRepo("acme/moving")
    a.commit(first)
    b.commit(first)
    b.commit(second)
    return a, b


@pytest.mark.parametrize("where", ["--cache-dir", "--local-dir"])
def test_a_second_run_after_an_upstream_push_matches_huggingface_hub(
    hub: HubHandle, tmp_path: Path, where: str
) -> None:
    a, b = _moving()
    odd = HubRepo("acme/odd")
    odd.commit(ODD)
    env = hf_env(hub.url, tmp_path / "home")
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    kw = "cache_dir" if where == "--cache-dir" else "local_dir"
    try:
        for repo in (a, b):
            hub.publish([odd, repo])
            got = call(env, "snapshot_download", repo_id="acme/moving", **{kw: str(theirs)})
            assert "error" not in got, got
            done = blobdl_hf(hub, tmp_path, "acme/moving", where, str(ours))
            assert done.returncode == 0, done.stderr
        mine, hers = tree(ours), tree(theirs)
        if where == "--local-dir":  # the timestamps are each run's own
            mine = {k: v for k, v in mine.items() if not k.endswith(".metadata")}
            hers = {k: v for k, v in hers.items() if not k.endswith(".metadata")}
            # huggingface_hub leaves refs in the main cache for a local dir: blobdl does not
        assert mine == hers
        # Offline, a local dir that holds two commits' records is served only by its commit
        # (documented: blobdl writes no refs for a local dir), where huggingface_hub, offline,
        # returns it by the main cache's refs/main.
        rev = ("--revision", b.refs["main"]) if where == "--local-dir" else ()
        done = blobdl_hf(hub, tmp_path, "acme/moving", where, str(ours), *rev, offline="1")
        assert done.returncode == 0, done.stderr
    finally:
        hub.publish([odd])


def test_a_blob_huggingface_hub_keeps_in_its_shared_store_counts_as_there(
    hub: HubHandle, tmp_path: Path
) -> None:
    """huggingface_hub 2.4 keeps a xet file once per cache (``CACHE/blobs/<2hex>/<xet hash>``),
    ``blobs/<etag>`` a relative link to it: a run finds it there, fetching nothing."""
    xet = HubRepo("acme/xet")
    xet.commit({"w.safetensors": _bytes(15, 60_000), "c.json": b"{}"}, xet=("*.safetensors",))
    odd = HubRepo("acme/odd")
    odd.commit(ODD)
    hub.publish([odd, xet])
    try:
        cache = tmp_path / "cache"
        done = blobdl_hf(hub, tmp_path, "acme/xet", "--cache-dir", str(cache))
        assert done.returncode == 0, done.stderr
        entry = next(e for e in xet.commits[xet.refs["main"]] if "xetHash" in e)
        blob = cache / "models--acme--xet" / "blobs" / entry["lfs"]["oid"]
        store = cache / "blobs" / entry["xetHash"][:2] / entry["xetHash"]
        store.parent.mkdir(parents=True)
        blob.rename(store)
        blob.symlink_to(Path("..", "..", "blobs", store.parent.name, store.name))
        before = hub.storage.stats()["requests"]
        done = blobdl_hf(hub, tmp_path, "acme/xet", "--cache-dir", str(cache))
        assert done.returncode == 0, done.stderr
        assert hub.storage.stats()["requests"] == before
        assert blob.is_symlink()
        done = blobdl_hf(hub, tmp_path, "acme/xet", "--cache-dir", str(cache), offline="1")
        assert done.returncode == 0, done.stderr
    finally:
        hub.publish([odd])


@pytest.mark.parametrize("where", ["--cache-dir", "--local-dir"])
def test_a_long_file_name_huggingface_hub_writes_is_written(
    hub: HubHandle, tmp_path: Path, where: str
) -> None:
    """A name of 246 bytes, the longest huggingface_hub writes in a local dir (its
    ``.metadata`` is 255), is written in both, and the next runs fetch nothing: blobdl's
    own files beside it (its staged copy, the record's scratch) must not outgrow it."""
    name = "n" * 242 + ".txt"
    longer = HubRepo("acme/long")
    longer.commit({name: b"long\n", f"d/{name}": b"long too\n", "w.bin": _bytes(16, 5000)})
    odd = HubRepo("acme/odd")
    odd.commit(ODD)
    hub.publish([odd, longer])
    env = hf_env(hub.url, tmp_path / "home")
    kw = "cache_dir" if where == "--cache-dir" else "local_dir"
    try:
        got = call(env, "snapshot_download", repo_id="acme/long", **{kw: str(tmp_path / "t")})
        assert "error" not in got, got
        done = blobdl_hf(hub, tmp_path, "acme/long", where, str(tmp_path / "o"))
        assert done.returncode == 0, done.stderr
        assert contents(Path(done.stdout.strip())) == longer.contents[longer.refs["main"]]
        before, log = hub.storage.stats()["requests"], len(hub.log())
        done = blobdl_hf(hub, tmp_path, "acme/long", where, str(tmp_path / "o"))
        assert done.returncode == 0, done.stderr
        got = call(env, "snapshot_download", repo_id="acme/long", **{kw: str(tmp_path / "o")})
        assert "error" not in got, got
        assert [e for e in hub.log()[log:] if "/resolve/" in e["path"]] == []
        assert hub.storage.stats()["requests"] == before
    finally:
        hub.publish([odd])


def test_a_wrong_entry_at_a_long_name_in_the_cache_is_replaced(
    hub: HubHandle, tmp_path: Path
) -> None:
    """huggingface_hub links a file of 255 bytes' name into a snapshot; an entry there that
    is not the file (a copy of the wrong size) is replaced through a scratch beside it,
    which must fit too."""
    name = "n" * 251 + ".txt"
    longer = HubRepo("acme/long")
    longer.commit({name: b"long\n"})
    odd = HubRepo("acme/odd")
    odd.commit(ODD)
    hub.publish([odd, longer])
    cache = tmp_path / "cache"
    try:
        done = blobdl_hf(hub, tmp_path, "acme/long", "--cache-dir", str(cache))
        assert done.returncode == 0, done.stderr
        entry = Path(done.stdout.strip()) / name
        entry.unlink()
        entry.write_bytes(b"x")
        done = blobdl_hf(hub, tmp_path, "acme/long", "--cache-dir", str(cache))
        assert done.returncode == 0, done.stderr
        assert entry.is_symlink() and entry.read_bytes() == b"long\n"
        assert [p.name for p in entry.parent.iterdir()] == [name]
    finally:
        hub.publish([odd])
