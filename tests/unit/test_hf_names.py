"""The pure side of ``blobdl hf``: huggingface_hub's conventions for the token, the cache and
the Hub; repository names; which files a pattern picks; what a listing may say; blobs
claimed in turns."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects
from hypothesis import given, settings
from hypothesis import strategies as st

from blobdl.errors import BadResponse, EntryNotFound, UsageError
from blobdl.hf import _env
from blobdl.hf._disk import Made, read_tree, write_tree
from blobdl.hf._repo import (
    RepoFile,
    check_listing,
    check_revision,
    git_blob_sha1,
    is_commit,
    parse_repo,
    parse_tree_page,
    select,
)
from blobdl.store._lock import in_turns
from tests.strategies import patterns, repo_paths

SHA1, SHA256 = "a" * 40, "b" * 64


def test_the_token_is_the_flag_then_hf_token_then_the_legacy_variable_then_the_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "token").write_text("  from-file\n")
    env = {"HF_HOME": str(tmp_path)}
    file = f"the token file {tmp_path / 'token'}"
    assert _env.token(None, env) == ("from-file", file)
    legacy = {**env, "HUGGING_FACE_HUB_TOKEN": "legacy"}
    assert _env.token(None, legacy) == ("legacy", "$HUGGING_FACE_HUB_TOKEN")
    assert _env.token(None, {**legacy, "HF_TOKEN": "env"}) == ("env", "$HF_TOKEN")
    assert _env.token("flag\n", {**env, "HF_TOKEN": "env"}) == ("flag", "--token")
    assert _env.token(None, {**env, "HF_HUB_DISABLE_IMPLICIT_TOKEN": "yes"}) is None
    assert _env.token("flag", {**env, "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}) == ("flag", "--token")
    (tmp_path / "elsewhere").write_text("moved")
    moved = {**env, "HF_TOKEN_PATH": str(tmp_path / "elsewhere")}
    assert _env.token(None, moved) == ("moved", f"the token file {tmp_path / 'elsewhere'}")
    assert _env.token(None, {"HF_HOME": str(tmp_path / "nobody")}) is None
    assert _env.token(None, {**env, "HF_TOKEN": " \n"}) == ("from-file", file)  # empty: none
    # (as huggingface_hub reads them: `HF_TOKEN or HUGGING_FACE_HUB_TOKEN`, then cleaned)
    assert _env.token(None, {**legacy, "HF_TOKEN": " "}) == ("from-file", file)
    assert _env.token(None, {**legacy, "HF_TOKEN": ""}) == ("legacy", "$HUGGING_FACE_HUB_TOKEN")
    with pytest.raises(UsageError, match="header") as caught:
        _env.token("bad\x00token", env)
    assert "bad" not in str(caught.value)  # a token is never echoed


def test_the_cache_and_the_hub_are_where_huggingface_hub_puts_them(tmp_path: Path) -> None:
    home = os.path.expanduser("~")
    assert _env.hub_cache({}) == Path(home, ".cache", "huggingface", "hub")
    assert _env.hub_cache({"XDG_CACHE_HOME": "/x"}) == Path("/x/huggingface/hub")
    assert _env.hub_cache({"HF_HOME": "/h", "XDG_CACHE_HOME": "/x"}) == Path("/h/hub")
    assert _env.hub_cache({"HF_HOME": "/h", "HUGGINGFACE_HUB_CACHE": "/old"}) == Path("/old")
    assert _env.hub_cache({"HUGGINGFACE_HUB_CACHE": "/old", "HF_HUB_CACHE": "/new"}) == Path("/new")
    assert _env.endpoint({}) == "https://huggingface.co"
    assert _env.endpoint({"HF_ENDPOINT": "http://127.0.0.1:9/"}) == "http://127.0.0.1:9"
    with pytest.raises(UsageError):
        _env.endpoint({"HF_ENDPOINT": "ftp://hub"})


@pytest.mark.parametrize(
    ("repo_id", "kind", "folder"),
    [
        ("acme/tiny", "model", "models--acme--tiny"),
        ("gpt2", "model", "models--gpt2"),
        ("acme/data.v2", "dataset", "datasets--acme--data.v2"),
        ("a_b/c-d", "space", "spaces--a_b--c-d"),
    ],
)
def test_a_repository_has_huggingface_hubs_folder_name(
    repo_id: str, kind: str, folder: str
) -> None:
    assert parse_repo(repo_id, kind).folder == folder


@pytest.mark.parametrize(
    "repo_id", ["", "a/b/c", "../x", "a--b/c", "a/b.git", "a b/c", "/x", "x/", "a/..b", "-a/b"]
)
def test_what_is_not_a_repository_id_is_refused(repo_id: str) -> None:
    with pytest.raises(UsageError):
        parse_repo(repo_id)


@pytest.mark.parametrize(
    "revision", ["", "../main", "a/../b", "/main", "main/", "a\nb", "v1\udcff"]
)
def test_a_revision_that_would_leave_refs_is_refused(revision: str) -> None:
    with pytest.raises(UsageError):
        check_revision(revision)


def _files(*paths: str) -> list[RepoFile]:
    return [RepoFile(p, 1, SHA1) for p in paths]


@pytest.mark.parametrize(
    ("paths", "include", "exclude", "chosen"),
    [
        ((), None, None, ["a.json", "b.bin", "sub/c.json", "sub/d/e.txt"]),
        ((), ["*.json"], None, ["a.json", "sub/c.json"]),  # * crosses "/", as fnmatch does
        ((), ["sub/"], None, ["sub/c.json", "sub/d/e.txt"]),  # a folder gets its "*"
        ((), ["sub\\d\\*"], None, ["sub/d/e.txt"]),  # "\" is "/"
        ((), None, ["*.json", "sub/d/"], ["b.bin"]),
        ((), ["*.JSON"], None, []),  # case counts
        (("a.json", "sub/"), None, None, ["a.json", "sub/c.json", "sub/d/e.txt"]),
        (("sub/",), None, ["*.txt"], ["sub/c.json"]),
    ],
)
def test_files_are_chosen_as_huggingface_hub_filters_them(
    paths: tuple[str, ...], include: list[str] | None, exclude: list[str] | None, chosen: list[str]
) -> None:
    files = _files("a.json", "b.bin", "sub/c.json", "sub/d/e.txt")
    assert [f.path for f in select(files, paths, include, exclude)] == chosen


def test_a_path_asked_for_that_the_commit_lacks_is_entry_not_found() -> None:
    with pytest.raises(EntryNotFound, match=r"'nope\.bin'"):
        select(_files("a.json"), ("nope.bin",), repo="acme/x", revision="main")


def test_a_listing_is_read_as_files_with_their_blob_names() -> None:
    page = [
        {"type": "directory", "path": "sub", "oid": SHA1},
        {"type": "file", "path": "sub/c.json", "size": 3, "oid": SHA1},
        {"type": "file", "path": "w.bin", "size": 9, "oid": SHA1,
         "lfs": {"oid": SHA256, "size": 9, "pointerSize": 130}, "xetHash": "c" * 64},
    ]  # fmt: skip
    git, lfs = parse_tree_page(page, "u")
    assert (git.etag, git.digest) == (SHA1, None)
    assert (lfs.etag, lfs.digest, lfs.xet_hash) == (SHA256, f"sha256:{SHA256}", "c" * 64)
    assert lfs.tree_record() == {"size": 9, "blob_id": SHA1, "lfs_sha256": SHA256,
                                 "lfs_size": 9, "xet_hash": "c" * 64}  # fmt: skip


@pytest.mark.parametrize(
    "entry",
    [
        {"type": "file", "path": "../x", "size": 1, "oid": SHA1},
        {"type": "file", "path": "a\udcff", "size": 1, "oid": SHA1},  # JSON's "\udcff"
        {"type": "file", "path": "x", "size": -1, "oid": SHA1},
        {"type": "file", "path": "x", "size": True, "oid": SHA1},
        {"type": "file", "path": "x", "size": 1, "oid": "../../etc/passwd"},
        {"type": "file", "path": "x", "size": 1, "oid": SHA1, "lfs": {"oid": "../x", "size": 1}},
        {"type": "file", "path": "x", "size": 1, "oid": SHA1, "lfs": {"oid": SHA256, "size": 2}},
        {"type": "file", "path": "x", "size": 1, "oid": SHA1, "xetHash": "../x"},
        {"type": "symlink", "path": "x"},
        "x",
    ],
)
def test_a_listing_entry_that_could_lead_us_astray_is_a_bad_response(entry: object) -> None:
    with pytest.raises(BadResponse):
        parse_tree_page([entry], "u")


@pytest.mark.parametrize(
    "paths", [("a", "a"), ("a", "a/b"), ("x/y/z", "x/y")], ids=["twice", "file-folder", "deep"]
)
def test_a_listing_whose_files_cannot_all_exist_is_a_bad_response(paths: tuple[str, ...]) -> None:
    with pytest.raises(BadResponse):
        check_listing(_files(*paths), "u")


def test_the_git_blob_sha1_is_gits(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"hello\n")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert git_blob_sha1(fd) == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object
    finally:
        os.close(fd)


@pytest.mark.parametrize("text", ["a" * 40 + "\n", "acme/tiny\n"])
def test_a_trailing_newline_is_no_commit_and_no_repository(text: str) -> None:
    assert not is_commit(text)
    with pytest.raises(UsageError):
        parse_repo(text)


def test_claims_are_held_a_group_at_a_time_and_each_blob_is_fetched_once() -> None:
    """``in_turns`` (each claim holds a lock file open): never more than ``at_once`` held;
    what another process holds is fetched after it lets go, unless it left it done."""
    held, most, fetched = set(), 0, []
    theirs = {5, 8}  # held by another process when first asked
    done_by_them = {5}

    @contextlib.contextmanager
    def claim(item: int, wait: bool) -> Iterator[bool]:
        nonlocal most
        if item in theirs and not wait:
            yield False
            return
        held.add(item)
        most = max(most, len(held))
        try:
            yield True
        finally:
            held.discard(item)

    def fetch(items: list[int]) -> None:
        assert set(items) <= held
        fetched.extend(items)

    in_turns(list(range(10)), claim, lambda i: i not in done_by_them, fetch, at_once=4)
    assert most == 4 and not held
    assert fetched == [0, 1, 2, 3, 4, 6, 7, 9, 8]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(repo_paths(), min_size=1, max_size=8, unique=True),
    st.none() | patterns,
    st.none() | patterns,
)
def test_include_and_exclude_choose_what_huggingface_hubs_own_filter_chooses(
    paths: list[str], include: list[str] | None, exclude: list[str] | None
) -> None:
    """The real ``filter_repo_objects`` is the judge: globs, ``[]``, ``\\`` in a pattern or a
    path (both read as ``/``), a folder pattern ending in ``/``, an empty list."""
    theirs = list(filter_repo_objects(paths, allow_patterns=include, ignore_patterns=exclude))
    assert [f.path for f in select(_files(*paths), (), include, exclude)] == theirs


@settings(max_examples=400, deadline=None)
@given(st.text("a.:/\\", min_size=1, max_size=8))
def test_a_listed_path_huggingface_hub_refuses_to_write_is_refused(path: str) -> None:
    """huggingface_hub reads a listed path under Windows rules too (``..\\x``, ``C:x``,
    ``\\\\host\\share``: a cache shared with Windows must not be written out of), and
    refuses the download; blobdl must not write what it refuses."""
    from huggingface_hub._local_folder import _validate_relative_filename

    entry = {"type": "file", "path": path, "size": 1, "oid": SHA1}
    try:
        _validate_relative_filename(path)
    except ValueError:
        with pytest.raises(BadResponse, match="not safe"):
            parse_tree_page([entry], "u")


@pytest.mark.parametrize(
    "environ",
    [
        {"HF_HOME": ""},
        {"XDG_CACHE_HOME": ""},
        {"HF_HUB_CACHE": "", "HUGGINGFACE_HUB_CACHE": "/old"},
        {"HUGGINGFACE_HUB_CACHE": "", "HF_HOME": "/h"},
        {"HF_TOKEN_PATH": "", "HF_HOME": "/h"},
        {"HF_HOME": "~/h", "HF_TOKEN_PATH": "~/t"},
    ],
    ids=["home", "xdg", "hub-cache", "legacy-cache", "token-path", "tilde"],
)
def test_a_variable_set_empty_counts_as_huggingface_hub_counts_it(
    environ: dict[str, str],
) -> None:
    """huggingface_hub reads these with ``os.getenv(name, default)``: set but empty is set
    (``HF_HOME=`` puts the cache in ``./hub``), and transformers looks where it says."""
    import subprocess
    import sys

    read = "from huggingface_hub.constants import *\nprint(HF_HUB_CACHE)\nprint(HF_TOKEN_PATH)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "XDG_"))}
    theirs = subprocess.run(
        [sys.executable, "-c", read], env={**env, **environ}, capture_output=True, text=True
    )
    cache, token_path = theirs.stdout.splitlines()
    assert (_env.hub_cache(environ), _env.token_path(environ)) == (Path(cache), Path(token_path))


OFFLINE_CASES = [
    {},
    {"HF_HUB_OFFLINE": "1"},
    {"HF_HUB_OFFLINE": "on"},
    {"HF_HUB_OFFLINE": "Yes"},
    {"HF_HUB_OFFLINE": "TRUE"},
    {"HF_HUB_OFFLINE": "0"},
    {"HF_HUB_OFFLINE": ""},
    {"HF_HUB_OFFLINE": "false"},
    {"HF_HUB_OFFLINE": "no"},
    {"HF_HUB_OFFLINE": "off"},
    {"HF_HUB_OFFLINE": " 1"},
    {"HF_HUB_OFFLINE": "2"},
    {"TRANSFORMERS_OFFLINE": "1"},
    {"HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "1"},
    {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"},
    {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "0"},
]


def test_offline_is_on_exactly_when_huggingface_hub_reads_it_as_on() -> None:
    """huggingface_hub itself is the judge, each case read at its import: ``1``, ``ON``,
    ``YES``, ``TRUE`` in any case; ``$TRANSFORMERS_OFFLINE`` only where ``$HF_HUB_OFFLINE``
    is unset or empty; anything else (``0``, ``false``, `` 1``) is off. The variable named
    is the one that switched it on."""
    import subprocess
    import sys

    read = (
        "import importlib, json, os, sys\n"
        "import huggingface_hub.constants as c\n"
        "for case in json.loads(sys.argv[1]):\n"
        "    for k in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'):\n"
        "        os.environ.pop(k, None)\n"
        "    os.environ.update(case)\n"
        "    print(importlib.reload(c).HF_HUB_OFFLINE)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    theirs = subprocess.run(
        [sys.executable, "-c", read, json.dumps(OFFLINE_CASES)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    judged = [line == "True" for line in theirs.stdout.splitlines()]
    assert len(judged) == len(OFFLINE_CASES), theirs.stderr
    ours = [_env.offline(case) for case in OFFLINE_CASES]
    assert [name is not None for name in ours] == judged
    assert ours[1] == "HF_HUB_OFFLINE" and ours[12] == ours[13] == "TRANSFORMERS_OFFLINE"


def test_a_tree_record_reads_back_as_written(tmp_path: Path) -> None:
    """What offline trusts to say which files a commit has: ``write_tree`` read back."""
    files = [RepoFile("w.bin", 5, SHA1, SHA256, 5, "c" * 64), RepoFile("a/b.txt", 3, "d" * 40)]
    write_tree(tmp_path, "e" * 40, files, Made())
    assert read_tree(tmp_path, "e" * 40) == sorted(files)
    assert read_tree(tmp_path, "f" * 40) is None


def _record(files: object, version: int = 1) -> str:
    return json.dumps({"format_version": version, "files": files})


@pytest.mark.parametrize(
    "text",
    [
        _record({"../../x": {"size": 1, "blob_id": SHA1}}),
        _record({"a": {"size": 1, "blob_id": "../x"}}),
        _record({"a": {"size": 1, "blob_id": SHA1, "lfs_sha256": "..", "lfs_size": 1}}),
        _record({"a": {"size": 1, "blob_id": SHA1}, "a/b": {"size": 1, "blob_id": SHA1}}),
        _record({"a": {"size": -1, "blob_id": SHA1}}),
        _record({"a": []}),
        _record([]),
        _record({}, version=2),
        "[]",
        "{",
        "[" * 100_000,
        "\udcff",
    ],
    ids=["path-out", "blob-out", "lfs-out", "file-and-folder", "size", "entry", "files", "format",
         "list", "truncated", "deep", "not-utf8"],
)  # fmt: skip
def test_a_tree_record_that_could_lead_us_astray_is_no_record(tmp_path: Path, text: str) -> None:
    """Read as the Hub's listing is checked: a record on disk never chooses where we look."""
    (tmp_path / "trees").mkdir()
    (tmp_path / "trees" / f"{SHA1}.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    assert read_tree(tmp_path, SHA1) is None
