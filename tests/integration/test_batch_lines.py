"""A batch's errors name an item so its user can find it: by the manifest line it came from
(``blobdl -i``: comments and blank lines make an item's index no line number), and, for a
list given to ``download_many``, by its index in that list, written as one (``items[1]``).
With ``--json`` each item's lines keep their ``item`` index and add the manifest ``line``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, run_cli, sha256_file

Make = Callable[..., Blob]
SIZES = {"small": PART // 2, "large": 3 * PART}  # one request holds PART (fast_settings)
FAST = ["--connections", "2", "--retries", "0"]


def manifest(tmp_path: Path, *lines: str) -> Path:
    """A manifest whose items sit after a comment and around blank lines, as people write them."""
    path = tmp_path / "list.txt"
    path.write_text("\n".join(["# fetched nightly", "", *lines]) + "\n")
    return path


def blobdl_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd)


def test_two_lines_that_write_one_file_are_named_by_their_manifest_lines(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    first, second = make(3000, seed=4101), make(5000, seed=4102)
    listed = manifest(tmp_path, f"{first.url} a.bin", "", "# the mirror", f"{second.url} a.bin")
    done = blobdl_cli("-i", str(listed), *FAST, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "manifest lines 3 and 6 both write a.bin" in done.stderr, done.stderr
    assert server.stats()["requests"] == 0 and not (tmp_path / "a.bin").exists()


@pytest.mark.parametrize("order", ["file first", "folder first"])
def test_a_line_that_writes_inside_another_lines_file_is_refused_naming_both(
    make: Make, server: ServerHandle, tmp_path: Path, order: str
) -> None:
    """``a.bin`` and ``a.bin/x`` cannot both be written: refused up front, as two lines
    writing one file are, not one written and the other failing with "directory does not
    exist" while that "directory" is there, a file."""
    first, second = make(3000, seed=4105), make(5000, seed=4106)
    lines = [f"{first.url} a.bin", f"{second.url} a.bin/sub/x"]
    listed = manifest(tmp_path, *(lines if order == "file first" else lines[::-1]))
    done = blobdl_cli("-i", str(listed), *FAST, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    file_line, folder_line = (3, 4) if order == "file first" else (4, 3)
    said = (f"manifest line {file_line} writes the file a.bin, which manifest line "
            f"{folder_line} needs as a folder (a.bin/sub/x)")  # fmt: skip
    assert done.stderr == f"blobdl: error: {said}\n"
    assert server.stats()["requests"] == 0 and sorted(tmp_path.iterdir()) == [listed]
    items = [Item(first.url, str(tmp_path / "d" / "x")), Item(second.url, str(tmp_path / "d"))]
    with pytest.raises(blobdl.UsageError, match=r"^items\[1\] writes the file .*items\[0\] needs"):
        blobdl.download_many(items, settings=fast_settings())
    assert server.stats()["requests"] == 0 and sorted(tmp_path.iterdir()) == [listed]


def test_a_list_given_to_download_many_is_named_by_its_indexes(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    first, second = make(3000, seed=4103), make(5000, seed=4104)
    items = [Item(first.url, str(tmp_path / "a.bin")), Item(second.url, str(tmp_path / "a.bin"))]
    with pytest.raises(blobdl.UsageError, match=r"^items\[0\] and items\[1\] both write "):
        blobdl.download_many(items, settings=fast_settings())
    with pytest.raises(blobdl.UsageError, match=r"^items\[1\]: .*outside"):
        blobdl.download_many([Item(first.url, "a.bin"), Item(second.url, "../b.bin")],
                             base_dir=tmp_path, settings=fast_settings())  # fmt: skip
    assert server.stats()["requests"] == 0


WHERE = {"here": [], "cluster": ["--scheduler", "local:1"]}


@pytest.mark.parametrize("where", sorted(WHERE))
@pytest.mark.parametrize("size", sorted(SIZES))
def test_an_item_the_server_names_like_another_names_that_ones_manifest_line(
    make: Make, server: ServerHandle, tmp_path: Path, size: str, where: str
) -> None:
    """The second item is named after its probe (a seat's, small; the scheduler's, large;
    a worker's, on a cluster): its failure names the line of the item that writes there,
    and its JSON lines carry its manifest ``line`` beside its ``item`` index."""
    given, same = make(SIZES[size], seed=4105), make(SIZES[size], seed=4106)
    base = tmp_path / "base"
    base.mkdir()
    named = server.route(f"/cd/{same.name}?filename=given.bin")
    size_hint = f', "size": {same.size}' if size == "large" else ""
    listed = manifest(tmp_path, f"{given.url} given.bin", "# same name", "",
                      f'{{"url": "{named}"{size_hint}}}')  # fmt: skip
    done = blobdl_cli("-i", str(listed), "--base-dir", str(base), "--json", *FAST,
                      *WHERE[where], cwd=tmp_path)  # fmt: skip
    assert done.returncode == 5, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    failed = [e for e in events if e["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["item"] == 1 and failed[0]["line"] == 6, failed
    assert "manifest line 3 writes it too" in failed[0]["error"], failed
    assert all(e["line"] == [3, 6][e["item"]] for e in events if "item" in e), events
    assert sha256_file(base / "given.bin") == given.sha256


def test_an_item_leading_outside_the_base_directory_on_a_cluster_names_its_line(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """On a cluster the base directory is checked on the worker that writes the item."""
    blob = make(3000, seed=4107)
    base = tmp_path / "base"
    base.mkdir()
    listed = manifest(tmp_path, f"{blob.url} ok.bin", "# out", f"{blob.url} ../out.bin")
    done = blobdl_cli("-i", str(listed), "--base-dir", str(base), "--scheduler", "local:1",
                      *FAST, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    said = f"FAILED  manifest line 5: {blob.url}: path '../out.bin' leads outside"
    assert said in done.stdout + done.stderr, done.stderr
    assert not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("where", sorted(WHERE))
@pytest.mark.parametrize("size", sorted(SIZES))
def test_a_name_the_server_gives_that_leads_outside_the_base_directory_names_its_line(
    make: Make, server: ServerHandle, tmp_path: Path, size: str, where: str
) -> None:
    """The server names the item after a link in the base directory that leads out of it:
    checked after its probe (a seat's, small; the scheduler's, large; a worker's, on a
    cluster), its failure names its manifest line, and nothing is written outside."""
    base, outside, listed, _ = _named_outside(make(SIZES[size], seed=4108), server, tmp_path)
    done = blobdl_cli("-i", str(listed), "--base-dir", str(base), "--json", *FAST,
                      *WHERE[where], cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0, done.stderr
    failed = [e for e in map(json.loads, done.stdout.splitlines()) if e["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["line"] == 4, (failed, done.stderr)
    assert failed[0]["error"].startswith("manifest line 4: path 'evil.bin' leads outside"), failed
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("where", sorted(WHERE))
def test_a_cached_items_name_from_its_url_that_leads_outside_names_its_line(
    make: Make, server: ServerHandle, tmp_path: Path, where: str
) -> None:
    """An item with a digest and no path comes through the cache, named from its URL before
    any request (a hit asks the server nothing): that name, a link in the base directory
    that leads out of it, fails naming the item's manifest line, and nothing is written
    outside."""
    blob = make(SIZES["small"], seed=4109)
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / blob.name).symlink_to(outside / blob.name)
    listed = manifest(tmp_path, f'{{"url": "{blob.url}", "digest": "sha256:{blob.sha256}"}}')
    done = blobdl_cli("-i", str(listed), "--base-dir", str(base), "--json", *FAST, "--cache-dir",
                      str(tmp_path / "cache"), *WHERE[where], cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0, done.stderr
    said = done.stdout + done.stderr
    assert f"manifest line 3: path '{blob.name}' leads outside" in said, said
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("where", sorted(WHERE))
@pytest.mark.parametrize("size", sorted(SIZES))
def test_a_failed_items_line_names_its_manifest_line_once(
    make: Make, server: ServerHandle, tmp_path: Path, size: str, where: str
) -> None:
    """``FAILED  manifest line 4: URL: error`` where the error names the line itself (a
    name the server gives that leads outside the base directory): the line is named once,
    not ``manifest line 4: URL: manifest line 4: path ...``."""
    base, outside, listed, named = _named_outside(make(SIZES[size], seed=4110), server, tmp_path)
    done = blobdl_cli("-i", str(listed), "--base-dir", str(base), *FAST, *WHERE[where],
                      cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0, done.stderr
    failed = [line for line in done.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, done.stderr
    assert failed[0].startswith(f"FAILED  manifest line 4: {named}: path 'evil.bin' leads "), failed
    assert failed[0].count("manifest line") == 1, failed
    assert list(outside.iterdir()) == []


def _named_outside(
    blob: Blob, server: ServerHandle, tmp_path: Path
) -> tuple[Path, Path, Path, str]:
    """A base directory whose ``evil.bin`` links outside it, and a manifest whose line 4 is
    ``blob`` served under that name (a large one says its size): (base, outside, manifest,
    the item's URL)."""
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / "evil.bin").symlink_to(outside / "evil.bin")
    named = server.route(f"/cd/{blob.name}?filename=evil.bin")
    size_hint = f', "size": {blob.size}' if blob.size == SIZES["large"] else ""
    return base, outside, manifest(tmp_path, "", f'{{"url": "{named}"{size_hint}}}'), named
