"""``blobdl hf`` against what it finds on disk and what a repository asks of it: links and
special files planted where it writes, a cache huggingface_hub filled without links, more
files than it may hold open, what a stopped run left; huggingface_hub still judges what it
wrote."""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobdl.errors import EXIT_INTEGRITY
from faultserver.hub import HubHandle, HubRepo, start_hub
from tests.conftest import REPO
from tests.hf_client import call, hf_env
from tests.integration.test_hf import FAST, blobdl_hf, contents, resolves, tree

MANY = 160  # files of the repository that outnumbers the open files allowed
OPEN_FILES = 96  # what its run may hold open


def _small() -> HubRepo:
    repo = HubRepo("acme/small")
    repo.commit(
        {
            "config.json": b'{"hidden": 8}\n',
            "empty.txt": b"",
            "copy/config.json": b'{"hidden": 8}\n',
            "sub/dir/notes.txt": b"notes\n",
            "w.safetensors": os.urandom(200_000),
        }
    )
    return repo


def _many() -> HubRepo:
    repo = HubRepo("acme/many")
    repo.commit({f"d{i % 4}/f{i:03d}.txt": b"%d\n" % i for i in range(MANY)})
    return repo


@pytest.fixture(scope="module")
def repos() -> dict[str, HubRepo]:
    return {r.id: r for r in (_small(), _many())}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, repos: dict[str, HubRepo]) -> Iterator[HubHandle]:
    handle = start_hub(tmp_path_factory.mktemp("hub"), list(repos.values()))
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _fresh(hub: HubHandle) -> None:
    hub.reset()


def _commit(repos: dict[str, HubRepo], repo_id: str = "acme/small") -> str:
    return repos[repo_id].refs["main"]


# --- what is planted where blobdl writes ------------------------------------------------------

# (where, the folder that becomes a link out, relative to the local dir or the cache)
PLANTED = [
    ("local-dir", "sub"),
    ("local-dir", "sub/dir"),
    ("local-dir", ".cache"),
    ("local-dir", ".cache/huggingface/download/sub"),
    ("local-dir", ".cache/huggingface/trees"),
    ("cache", "models--acme--small/snapshots/{commit}/sub"),
    ("cache", "models--acme--small/snapshots/{commit}"),
    ("cache", "models--acme--small/blobs"),
    ("cache", "models--acme--small/refs"),
    ("cache", "models--acme--small/trees"),
    ("cache", ".locks/models--acme--small"),
]


@pytest.mark.parametrize(("kind", "planted"), PLANTED, ids=[f"{k}:{p}" for k, p in PLANTED])
def test_a_folder_planted_as_a_link_out_is_never_written_through(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, kind: str, planted: str
) -> None:
    """A repository's folder (or the bookkeeping's) that is a link leading out of the folder
    blobdl was given: refused before any download, one line, nothing written out there."""
    where, outside = tmp_path / "dest", tmp_path / "outside"
    outside.mkdir()
    link = where / planted.format(commit=_commit(repos))
    link.parent.mkdir(parents=True)
    link.symlink_to(outside, target_is_directory=True)
    option = "--local-dir" if kind == "local-dir" else "--cache-dir"
    before = len(hub.log())
    done = blobdl_hf(hub, tmp_path, "acme/small", option, str(where))
    assert done.returncode == 5, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "symbolic link" in lines[-1] and lines[-1].startswith("blobdl: error:"), lines
    assert list(outside.iterdir()) == []
    assert resolves(hub, before) == [] and hub.storage.stats()["requests"] == 0


def test_the_local_dir_itself_may_be_a_link(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """The folder the user names is theirs to put anywhere: a link to it is followed."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "ld").symlink_to(real)
    done = blobdl_hf(hub, tmp_path, "acme/small", "--local-dir", str(tmp_path / "ld"))
    assert done.returncode == 0, done.stderr
    assert contents(real) == repos["acme/small"].contents[_commit(repos)]


def test_a_repository_folder_moved_elsewhere_by_a_link_is_used(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """``models--ORG--NAME`` linked to another disk (what users do with a large model): the
    folders in it are checked against it, not against the cache."""
    real, cache = tmp_path / "bigdisk", tmp_path / "cache"
    real.mkdir()
    cache.mkdir()
    (cache / "models--acme--small").symlink_to(real)
    done = blobdl_hf(hub, tmp_path, "acme/small", "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr
    assert (
        contents(real / "snapshots" / _commit(repos))
        == repos["acme/small"].contents[_commit(repos)]
    )
    assert (real / "refs" / "main").read_text() == _commit(repos)


@pytest.mark.parametrize("kind", ["local-dir", "cache"])
def test_special_files_and_links_planted_at_a_files_name_are_replaced_not_read_or_followed(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, kind: str
) -> None:
    """A FIFO where an empty file goes (opening it to hash it would wait for a writer
    forever), a link to a file of someone else's where a file goes: each is replaced by the
    file (or its link to the blob), the other file untouched."""
    where, victim = tmp_path / "dest", tmp_path / "victim"
    files = (
        where / "models--acme--small" / "snapshots" / _commit(repos) if kind == "cache" else where
    )
    files.mkdir(parents=True)
    os.mkfifo(files / "empty.txt")
    victim.write_bytes(b"precious\n")
    (files / "config.json").symlink_to(victim)
    done = blobdl_hf(hub, tmp_path, "acme/small", f"--{kind}", str(where))
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == files
    assert contents(files) == repos["acme/small"].contents[_commit(repos)]
    assert victim.read_bytes() == b"precious\n"
    if kind == "cache":
        assert os.readlink(files / "config.json").startswith("../../blobs/")
    else:
        assert not (files / "config.json").is_symlink()


@pytest.mark.parametrize("recorded", [False, True], ids=["no-metadata", "metadata"])
def test_a_link_at_a_local_files_name_is_replaced_even_to_the_same_bytes(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, recorded: bool
) -> None:
    """A link to someone else's file with the file's very bytes was kept (hashed through,
    or taken on its metadata), and the metadata then vouched for what the link's owner may
    change at any time after (huggingface_hub's next call trusts it unread). A local dir
    holds files, not links: each is replaced by the file, the other file left as it is."""
    ld, elsewhere = tmp_path / "ld", tmp_path / "elsewhere"
    files = repos["acme/small"].contents[_commit(repos)]
    if recorded:
        assert blobdl_hf(hub, tmp_path, "acme/small", "--local-dir", str(ld)).returncode == 0
    linked = ("config.json", "w.safetensors")
    for name in linked:
        victim = elsewhere / name
        victim.parent.mkdir(exist_ok=True)
        victim.write_bytes(files[name])
        os.utime(victim, (1_000_000_000, 1_000_000_000))  # older than any metadata
        (ld / name).unlink(missing_ok=True)
        (ld / name).parent.mkdir(parents=True, exist_ok=True)
        (ld / name).symlink_to(victim)
    before = len(hub.log())
    done = blobdl_hf(hub, tmp_path, "acme/small", "--local-dir", str(ld))
    assert done.returncode == 0, done.stderr
    assert [name for name in linked if (ld / name).is_symlink()] == []
    assert contents(ld) == files
    fetched = {p.rpartition("/")[2] for p in resolves(hub, before)}
    assert fetched == set(linked) if recorded else set(linked) <= fetched, fetched
    assert {name: (elsewhere / name).read_bytes() for name in linked} == {
        name: files[name] for name in linked
    }


def test_a_cache_huggingface_hub_filled_without_links_is_kept_as_it_is(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """Where it cannot link (``HF_HUB_DISABLE_SYMLINKS``), huggingface_hub moves each new
    blob into the snapshot: ``blobs/`` stays empty. Those copies are the files: replacing
    them with links to blobs that are not there would lose them."""
    cache = tmp_path / "cache"
    env = {**hf_env(hub.url, tmp_path / "home"), "HF_HUB_DISABLE_SYMLINKS": "1"}
    got = call(env, "snapshot_download", repo_id="acme/small", cache_dir=str(cache))
    assert "error" not in got, got
    before = tree(cache)
    hub.reset()
    done = blobdl_hf(hub, tmp_path, "acme/small", "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr
    assert tree(cache) == before and hub.storage.stats()["requests"] == 0
    offline = hf_env(hub.url, tmp_path / "home", offline=True)
    got = call(offline, "snapshot_download", repo_id="acme/small", cache_dir=str(cache))
    assert contents(Path(got["path"])) == repos["acme/small"].contents[_commit(repos)], got


# --- how many files at once -------------------------------------------------------------------


def _limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


def test_a_repository_of_more_files_than_may_be_open_at_once(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """Each blob is claimed on its own lock file: a repository of more files than the
    process may hold open (1,024 by default) must not fail for it."""
    cache = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", "hf", "acme/many", "--cache-dir", str(cache), *FAST],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=hf_env(hub.url, tmp_path / "home"),
        preexec_fn=_limit_open_files,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        contents(Path(done.stdout.strip()))
        == repos["acme/many"].contents[_commit(repos, "acme/many")]
    )


# --- what a stopped run leaves ----------------------------------------------------------------

# The staged file, the engine's partial (and one an older blobdl named without .incomplete),
# its resume record.
LEFT = (
    ".blobdl-part",
    ".blobdl-part.blobdl-tmp.incomplete",
    ".blobdl-part.blobdl-tmp",
    ".blobdl-part.blobdl-state",
)


@pytest.mark.parametrize("linked", [True, False], ids=["snapshot-complete", "links-missing"])
def test_what_a_stopped_run_left_goes_once_the_blob_is_there(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, linked: bool
) -> None:
    """A run stopped mid-download leaves its partial beside the blob's name; if the blob
    then arrives another way (huggingface_hub, another run), the next run removes the
    partial (it could be most of a 10 GB shard) instead of keeping it for ever."""
    cache = tmp_path / "cache"
    env = hf_env(hub.url, tmp_path / "home")
    got = call(env, "snapshot_download", repo_id="acme/small", cache_dir=str(cache))
    assert "error" not in got, got
    blobs = cache / "models--acme--small" / "blobs"
    names = sorted(p.name for p in blobs.iterdir())
    for name in names:
        for suffix in LEFT:
            (blobs / f"{name}{suffix}").write_bytes(b"partial")
    if not linked:
        for link in Path(got["path"]).rglob("*"):
            if link.is_symlink():
                link.unlink()
    hub.reset()
    done = blobdl_hf(hub, tmp_path, "acme/small", "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in blobs.iterdir()) == names
    assert hub.storage.stats()["requests"] == 0
    assert contents(Path(got["path"])) == repos["acme/small"].contents[_commit(repos)]


def test_what_a_stopped_run_left_in_a_local_dir_goes_once_the_file_is_there(
    hub: HubHandle, tmp_path: Path
) -> None:
    ld = tmp_path / "ld"
    assert blobdl_hf(hub, tmp_path, "acme/small", "--local-dir", str(ld)).returncode == 0
    before = tree(ld)
    download = ld / ".cache" / "huggingface" / "download"
    for path in ("config.json", "sub/dir/notes.txt", "w.safetensors"):
        for suffix in LEFT:
            (download / f"{path}{suffix}").write_bytes(b"partial")
    done = blobdl_hf(hub, tmp_path, "acme/small", "--local-dir", str(ld))
    assert done.returncode == 0, done.stderr
    after = tree(ld)
    assert set(after) == set(before)


# --- what a local dir cannot hold ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [".cache", ".cache/huggingface", ".cache/huggingface/download/a.txt.metadata"]
)
def test_a_file_in_the_way_of_the_local_dirs_bookkeeping_is_refused_unless_left_out(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, path: str
) -> None:
    """A repository file that would be (or hold) ``.cache/huggingface``: one line before any
    download, nothing written; left out with ``--exclude``, the rest comes down."""
    odd = HubRepo("acme/odd")
    odd.commit({path: b"in the way\n", "a.txt": b"a\n"})
    hub.publish([*repos.values(), odd])
    ld = tmp_path / "ld"
    done = blobdl_hf(hub, tmp_path, "acme/odd", "--local-dir", str(ld))
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"the repository holds {path!r}, in the way" in lines[0], lines
    assert contents(ld) == {}
    done = blobdl_hf(hub, tmp_path, "acme/odd", "--local-dir", str(ld), "--exclude", ".cache*")
    assert done.returncode == 0, done.stderr
    assert contents(ld) == {"a.txt": b"a\n"}


@pytest.mark.parametrize(
    "path", ["a.txt.blobdl-tmp", "sub/w.blobdl-state", "x.blobdl-lock.bin", "d.blobdl-tmp/w"]
)
def test_a_file_named_like_blobdls_own_is_refused_in_a_local_dir_unless_left_out(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, path: str
) -> None:
    """Its download would be staged as ``download/<path>.blobdl-part``, a name the engine
    refuses as one of its side files: it was a usage error (exit 2) naming "item 1" and the
    staging path, after other files had come down. Now one line naming the repository's
    file before any download; left out, the rest comes down; in the cache (blobs named by
    their hash) it comes down as it is."""
    odd = HubRepo("acme/sides")
    odd.commit({path: b"odd name\n", "a.txt": b"a\n"})
    hub.publish([*repos.values(), odd])
    ld = tmp_path / "ld"
    done = blobdl_hf(hub, tmp_path, "acme/sides", "--local-dir", str(ld))
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"the repository holds {path!r}, named like" in lines[0], lines
    assert contents(ld) == {}
    done = blobdl_hf(hub, tmp_path, "acme/sides", "--local-dir", str(ld), "--exclude", "*.blobdl-*")
    assert done.returncode == 0, done.stderr
    assert contents(ld) == {"a.txt": b"a\n"}
    done = blobdl_hf(hub, tmp_path, "acme/sides")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("suffix", [".lock", ".metadata", ".blobdl-part"])
def test_files_whose_local_dir_bookkeeping_is_one_path_are_refused_unless_one_is_left_out(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, suffix: str
) -> None:
    """``x``'s lock, metadata or staged download is ``download/x.lock`` (...), the folder
    ``x.lock/y``'s own bookkeeping needs: it was "File exists" or "Is a directory" inside
    .cache/huggingface/ (exit 5) once downloads had begun. Now one line naming both files
    before any download; with either left out, the rest comes down."""
    odd = HubRepo("acme/clash")
    odd.commit({"x": b"x\n", f"x{suffix}/y": b"y\n", "a.txt": b"a\n"})
    hub.publish([*repos.values(), odd])
    ld = tmp_path / "ld"
    done = blobdl_hf(hub, tmp_path, "acme/clash", "--local-dir", str(ld))
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"the repository holds 'x' and 'x{suffix}/y'" in lines[0], lines
    assert contents(ld) == {}
    done = blobdl_hf(hub, tmp_path, "acme/clash", "--local-dir", str(ld), "--exclude", "x")
    assert done.returncode == 0, done.stderr
    assert contents(ld) == {f"x{suffix}/y": b"y\n", "a.txt": b"a\n"}


def test_a_local_dir_that_is_a_file_is_named_as_such(hub: HubHandle, tmp_path: Path) -> None:
    (tmp_path / "ld").write_bytes(b"a file\n")
    done = blobdl_hf(hub, tmp_path, "acme/small", "--local-dir", str(tmp_path / "ld"))
    assert done.returncode == 5, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"blobdl: error: {tmp_path / 'ld'}: is a file, not a directory"
    ]


# --- a revision that moves ----------------------------------------------------------------------


def test_a_branch_pushed_to_between_the_listing_and_the_downloads_comes_down_as_listed(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """Every file is resolved at the commit the branch named when it was listed: a push
    landing meanwhile neither mixes two commits into one snapshot nor fails the run."""
    moving = HubRepo("acme/moving")
    first = {"config.json": b'{"v": 1}\n', "w.safetensors": os.urandom(100_000)}
    listed = moving.commit(first)
    pushed = moving.commit({"config.json": b'{"v": 2}\n', "w.safetensors": os.urandom(100_000)},
                           branch=None)  # fmt: skip
    moving.moves = {"main": pushed}
    hub.publish([*repos.values(), moving])
    cache = tmp_path / "cache"
    done = blobdl_hf(hub, tmp_path, "acme/moving", "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).name == listed and contents(Path(done.stdout.strip())) == first
    assert (cache / "models--acme--moving" / "refs" / "main").read_text() == listed
    offline = hf_env(hub.url, tmp_path / "home", offline=True)
    got = call(offline, "snapshot_download", repo_id="acme/moving", cache_dir=str(cache))
    assert contents(Path(got["path"])) == first, got


# --- a local dir taken to another revision ------------------------------------------------------


def _two_revisions() -> tuple[HubRepo, dict[str, bytes], dict[str, bytes]]:
    """``acme/tuned``: ``main`` and ``v2`` hold weights of one size and other bytes (a
    fine-tune keeps every tensor's shape), an LFS file and a git file alike."""
    tuned = HubRepo("acme/tuned")
    first = {"w.safetensors": os.urandom(150_000), "vocab.txt": b"a\nb\n"}
    second = {"w.safetensors": os.urandom(150_000), "vocab.txt": b"c\nd\n"}
    tuned.commit(first)
    tuned.commit(second, branch="v2")
    return tuned, first, second


@pytest.mark.parametrize("left", [".blobdl-part", ".blobdl-part.blobdl-tmp.incomplete"])
def test_what_a_stopped_run_of_another_revision_left_in_a_local_dir_is_never_taken_for_its_file(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, left: str
) -> None:
    """A local dir's downloads are staged by path (``download/<path>.blobdl-part``), not by
    content: a run of ``main`` stopped once a file had come down (or part of it), then a
    run of ``v2`` into the same folder, finds ``main``'s bytes where ``v2``'s file is staged.
    They are the other revision's bytes, whatever their size: never moved into place."""
    tuned, first, second = _two_revisions()
    hub.publish([*repos.values(), tuned])
    ld = tmp_path / "ld"
    assert blobdl_hf(hub, tmp_path, "acme/tuned", "--local-dir", str(ld)).returncode == 0
    download = ld / ".cache" / "huggingface" / "download"
    for path in first:  # what a run stopped between the download and its move leaves
        (ld / path).rename(download / f"{path}{left}")
        (download / f"{path}.metadata").unlink()
    done = blobdl_hf(hub, tmp_path, "acme/tuned", "--local-dir", str(ld), "--revision", "v2")
    assert done.returncode == 0, done.stderr
    assert contents(ld) == second


@pytest.mark.parametrize("planted", ["fifo", "link to /dev/null"])
def test_a_blob_that_is_no_regular_file_is_fetched_again_not_linked(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path, planted: str
) -> None:
    """``blobs/<etag>`` of the empty file's size that is a FIFO (or a link to a device): its
    name and size are right, but a reader of the snapshot's ``empty.txt`` would wait for a
    writer for ever. It is no blob: the file comes down and takes its place."""
    cache = tmp_path / "cache"
    blobs = cache / "models--acme--small" / "blobs"
    blobs.mkdir(parents=True)
    empty = blobs / "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's name for no bytes
    if planted == "fifo":
        os.mkfifo(empty)
    else:
        empty.symlink_to("/dev/null")
    done = blobdl_hf(hub, tmp_path, "acme/small", "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr
    snapshot = Path(done.stdout.strip())
    assert (snapshot / "empty.txt").is_file() and not empty.is_symlink()
    assert contents(snapshot) == repos["acme/small"].contents[_commit(repos)]


def test_a_staged_blob_whose_bytes_are_not_its_name_is_fetched_again(
    hub: HubHandle, repos: dict[str, HubRepo], tmp_path: Path
) -> None:
    """In the cache a download is staged by its etag (``blobs/<etag>.blobdl-part``); one
    found there with bytes of the right size that are not that etag's (cut short and
    zero-filled, copied by hand) is hashed like any left behind, and fetched again."""
    tuned, first, second = _two_revisions()
    hub.publish([*repos.values(), tuned])
    cache = tmp_path / "cache"
    blobs = cache / "models--acme--tuned" / "blobs"
    blobs.mkdir(parents=True)
    etag = hashlib.sha256(second["w.safetensors"]).hexdigest()
    (blobs / f"{etag}.blobdl-part").write_bytes(first["w.safetensors"])
    done = blobdl_hf(hub, tmp_path, "acme/tuned", "--cache-dir", str(cache), "--revision", "v2")
    assert done.returncode == 0, done.stderr
    assert contents(Path(done.stdout.strip())) == second


@pytest.mark.parametrize("in_the_way", [".", "models--acme--small", "models--acme--small/blobs"])
def test_a_file_in_the_way_of_the_cache_is_named_as_such(
    hub: HubHandle, tmp_path: Path, in_the_way: str
) -> None:
    """A file where the cache, or one of the folders blobdl makes in it, should be is named
    as a file in the way, as a local dir that is a file is: not as mkdir's "File exists"."""
    cache = tmp_path / "cache"
    where = (cache / in_the_way).resolve()
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_bytes(b"a file\n")
    done = blobdl_hf(hub, tmp_path, "acme/small", "--cache-dir", str(cache))
    assert done.returncode == 5, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"blobdl: error: {where}: is a file, not a directory"
    ]


def test_an_api_answer_dripped_never_silent_fails_within_the_stall_timeout(
    hub: HubHandle, tmp_path: Path
) -> None:
    """The Hub's answer to the revision look-up sent a byte every quarter second: never
    silent for a read timeout, so each read goes on, but the whole answer is due within the
    stall timeout of its head, as every small document's is (a registry's manifest, a
    token): past it the answer is a bad response, never a wait as long as the server likes
    (this one would take about a minute)."""
    hub.hub.set_faults({"path": "/api/models/acme/small/revision/*", "action": "rate",
                        "bps": 4, "step": 1, "times": None})  # fmt: skip
    started = time.monotonic()
    done = blobdl_hf(hub, tmp_path, "acme/small", then=("--stall-timeout", "1", "--retries", "0"))
    took = time.monotonic() - started
    assert done.returncode == EXIT_INTEGRITY, done.stderr  # a bad response, as everywhere
    assert "did not arrive whole" in done.stderr, done.stderr
    assert took < 20, f"took {took:.1f} s"
    assert not (tmp_path / "hub" / "models--acme--small" / "snapshots").exists()
