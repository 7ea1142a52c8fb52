"""``blobdl hf`` against what the user's side does around it: a current directory removed
under a relative folder, a local dir copied or touched since it was filled; huggingface_hub
judges what it then finds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobdl.errors import EXIT_LOCAL
from faultserver.hub import HubHandle, HubRepo, start_hub
from tests.conftest import REPO
from tests.hf_client import call, hf_env
from tests.integration.conftest import freeze
from tests.integration.test_hf import FAST, blobdl_hf, contents, resolves

SHARD = 300_000  # the repository's LFS file


@pytest.fixture(scope="module")
def repo() -> HubRepo:
    repo = HubRepo("acme/small")
    repo.commit(
        {
            "config.json": b'{"hidden": 8}\n',
            "sub/notes.txt": b"notes\n",
            "w.safetensors": os.urandom(SHARD),
        }
    )
    # A tag and a branch whose names nest (git keeps them apart: refs/tags/, refs/heads/).
    repo.refs["v1"] = repo.refs["v1/fix"] = repo.refs["main"]
    return repo


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, repo: HubRepo) -> Iterator[HubHandle]:
    handle = start_hub(tmp_path_factory.mktemp("hub"), [repo])
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _fresh(hub: HubHandle) -> None:
    hub.reset()


# --- a current directory removed before the start -------------------------------------------

DELETED = "blobdl: error: .: the current directory was deleted\n"


def in_a_deleted_directory(
    hub: HubHandle, tmp_path: Path, *args: str, **variables: str
) -> subprocess.CompletedProcess[str]:
    """``blobdl hf ARGS`` run in a current directory removed before it starts (a shell left
    in a folder another one removed), with ``variables`` in its environment."""
    gone = tmp_path / "gone"
    gone.mkdir()
    env = {**hf_env(hub.url, tmp_path / "home"), "PYTHONPATH": str(REPO), **variables}
    blobdl = [sys.executable, "-m", "blobdl", "hf", *args, *FAST]
    command = ["sh", "-c", 'cd "$1" && rmdir "$1" && shift && exec "$@"', "sh", str(gone)]
    done = subprocess.run([*command, *blobdl], capture_output=True, text=True, timeout=60,
                          env=env)  # fmt: skip
    assert not gone.exists()
    return done


@pytest.mark.parametrize(
    ("args", "variables"),
    [
        (("--local-dir", "ld"), {}),
        (("--cache-dir", "cache"), {}),
        ((), {"HF_HUB_CACHE": "cache"}),
        ((), {"HF_HOME": "home"}),
        ((), {"HF_HOME": ""}),  # huggingface_hub's cache is then ./hub
        (("--local-dir", "ld"), {"HF_HUB_OFFLINE": "1"}),
        (("--cache-dir", "cache"), {"HF_HUB_OFFLINE": "1"}),
    ],
    ids=[
        "--local-dir",
        "--cache-dir",
        "HF_HUB_CACHE",
        "HF_HOME",
        "HF_HOME empty",
        "offline --local-dir",
        "offline --cache-dir",
    ],
)
def test_a_relative_folder_in_a_deleted_current_directory_is_named_not_a_traceback(
    hub: HubHandle, tmp_path: Path, args: tuple[str, ...], variables: dict[str, str]
) -> None:
    """A relative local dir or cache is in the current directory: resolving it raised
    FileNotFoundError from getcwd() out of blobdl, a traceback and exit 1, after the Hub
    was asked; a single download says it in one line."""
    done = in_a_deleted_directory(hub, tmp_path, "acme/small", *args, **variables)
    assert (done.returncode, done.stderr) == (EXIT_LOCAL, DELETED), done.stderr
    assert resolves(hub) == []


def test_a_relative_local_dir_is_printed_as_the_folder_huggingface_hub_names(
    hub: HubHandle, repo: HubRepo, tmp_path: Path
) -> None:
    """The folder printed is where the files are, whichever directory reads the line."""
    env = {**hf_env(hub.url, tmp_path / "home"), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", "hf", "acme/small", "--local-dir", "ld", "-q", *FAST],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path / 'ld'}\n"
    assert contents(tmp_path / "ld") == repo.contents[repo.refs["main"]]


# --- a local dir the user touched or changed ----------------------------------------------------


def _copied_without_times(ld: Path, to: Path) -> None:
    """``cp -r ld to`` a minute after ``ld`` was filled: the bytes and the bookkeeping,
    every file's time now, each metadata's stamp (rewritten here) a minute older."""
    shutil.copytree(ld, to, copy_function=shutil.copyfile)
    for meta in (to / ".cache" / "huggingface" / "download").rglob("*.metadata"):
        commit, etag, stamp = meta.read_text().splitlines()
        meta.write_text(f"{commit}\n{etag}\n{float(stamp) - 60}\n")


def test_a_local_dir_copied_without_its_times_is_kept_where_its_bytes_are_right(
    hub: HubHandle, repo: HubRepo, tmp_path: Path
) -> None:
    """Copied (``cp -r``, a backup restored), every file is newer than its metadata, which
    huggingface_hub then ignores and hashes the file instead (an LFS one): kept if it
    hashes right. blobdl fetched every file again, shards included."""
    env = hf_env(hub.url, tmp_path / "home")
    ld = tmp_path / "ld"
    assert blobdl_hf(hub, tmp_path, "acme/small", "--local-dir", str(ld)).returncode == 0
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    _copied_without_times(ld, theirs)
    _copied_without_times(ld, ours)
    hub.reset()
    got = call(env, "snapshot_download", repo_id="acme/small", local_dir=str(theirs))
    assert "error" not in got, got
    assert hub.storage.stats()["requests"] == 0  # the judge kept the shard
    hub.reset()
    before = len(hub.log())
    done = blobdl_hf(hub, tmp_path, "acme/small", "--local-dir", str(ours))
    assert done.returncode == 0, done.stderr
    assert resolves(hub, before) == [] and hub.storage.stats()["requests"] == 0
    assert contents(ours) == repo.contents[repo.refs["main"]]
    before = len(hub.log())
    got = call(env, "snapshot_download", repo_id="acme/small", local_dir=str(ours))
    assert "error" not in got, got
    assert resolves(hub, before) == [] and hub.storage.stats()["requests"] == 0
    offline = tmp_path / "offline"  # served from the disk, as it holds every file
    _copied_without_times(ld, offline)
    done = blobdl_hf(hub, tmp_path, "acme/small", "--local-dir", str(offline), offline="1")
    assert done.returncode == 0, done.stderr


# --- what is asked for ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--include", "*.safetensor"), "include=['*.safetensor']"),
        (("--exclude", "*"), "exclude=['*']"),
        (("sub/", "--include", "*.json", "--exclude", "x"), "include=['*.json'], exclude=['x']"),
    ],
    ids=["a typo", "all left out", "paths then patterns"],
)
@pytest.mark.parametrize("offline", [None, "1"], ids=["online", "offline"])
def test_patterns_that_match_no_file_are_said_as_huggingface_hub_says_it(
    hub: HubHandle, tmp_path: Path, args: tuple[str, ...], said: str, offline: str | None
) -> None:
    """A typo in a pattern chose nothing, and the run said nothing of it (with ``-q`` or
    ``--json``) yet succeeded; huggingface_hub warns, "No files matched allow_patterns=...".
    Still exit 0 with the snapshot folder, as huggingface_hub returns it."""
    cache = str(tmp_path / "cache")
    assert blobdl_hf(hub, tmp_path, "acme/small", "--cache-dir", cache).returncode == 0
    for quiet in ("-q", "--json"):
        done = blobdl_hf(hub, tmp_path, "acme/small", *args, "--cache-dir", cache, quiet,
                         offline=offline)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stderr == f"blobdl: warning: no file of acme/small at main matches {said}\n"


# --- a cache no one may write to --------------------------------------------------------------


def _freeze(root: Path, made: list[Path]) -> None:
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        freeze(folder, made)


@pytest.mark.parametrize("where", ["--cache-dir", "--local-dir"])
def test_a_complete_cache_no_one_may_write_to_is_served_as_huggingface_hub_serves_it(
    hub: HubHandle, repo: HubRepo, tmp_path: Path, frozen: list[Path], where: str
) -> None:
    """A shared cache (or local dir) filled once and then read-only (a read-only mount, an
    image's layer): huggingface_hub's snapshot_download online finds the commit's listing
    and every file there and writes nothing. blobdl wrote ``trees/<commit>.json`` again on
    every run, and failed (exit 5) where there was nothing to write."""
    folder = tmp_path / "folder"
    env = hf_env(hub.url, tmp_path / "home")
    into = {"cache_dir" if where == "--cache-dir" else "local_dir": str(folder)}
    got = call(env, "snapshot_download", repo_id="acme/small", **into)
    assert "error" not in got, got
    _freeze(folder, frozen)
    hub.reset()
    again = call(env, "snapshot_download", repo_id="acme/small", **into)
    assert again == got  # the judge: served as it is
    done = blobdl_hf(hub, tmp_path, "acme/small", where, str(folder), "-q")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout == f"{got['path']}\n"
    assert hub.storage.stats()["requests"] == 0
    assert contents(Path(got["path"])) == repo.contents[repo.refs["main"]]


@pytest.mark.parametrize(("first", "then"), [("v1", "v1/fix"), ("v1/fix", "v1")])
def test_a_ref_that_cannot_be_written_is_warned_of_as_huggingface_hub_does(
    hub: HubHandle, repo: HubRepo, tmp_path: Path, first: str, then: str
) -> None:
    """A tag ``v1`` in the cache, then the branch ``v1/fix`` (or the other way round):
    ``refs/v1`` is a file where ``refs/v1/fix`` needs a folder, or a folder where a file
    must go. huggingface_hub warns ("Ignored error while writing commit hash") and returns
    the snapshot; blobdl had fetched and linked every file, then failed (exit 5) on the ref
    alone."""
    cache = tmp_path / "cache"
    env = hf_env(hub.url, tmp_path / "home")
    done = blobdl_hf(hub, tmp_path, "acme/small", "--revision", first, "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr
    got = call(env, "snapshot_download", repo_id="acme/small", revision=then,
               cache_dir=str(cache))  # fmt: skip
    assert "error" not in got, got  # the judge
    done = blobdl_hf(hub, tmp_path, "acme/small", "--revision", then, "--cache-dir",
                     str(cache), "-q")  # fmt: skip
    assert (done.returncode, done.stdout) == (0, f"{got['path']}\n"), done.stderr
    refs = cache / "models--acme--small" / "refs"
    assert done.stderr.startswith("blobdl: warning: ") and str(refs / then) in done.stderr
    assert done.stderr.count("\n") == 1
    assert (refs / first).read_text() == repo.refs[first]
