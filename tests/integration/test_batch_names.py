"""Where a batch's items land: each destination is one item's, and inside ``base_dir``.

An item given no path is named after its probe (the server's Content-Disposition, else its
URL), or from its URL alone when it comes through the cache. A name is not a promise that
nobody else of the batch writes there: the manifest may give that path to another item, or
the server may give two items one name. Then the later one fails alone, and says why; no
item ever reports a file that another one replaced. With a base directory every name,
the cache's included, is inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import PART, Blob, fast_settings, sha256_file
from tests.integration.conftest import PKI

Make = Callable[..., Blob]
SIZES = {"small": PART // 2, "large": 3 * PART}  # one request holds PART: fast_settings


def named(server: ServerHandle, blob: Blob, name: str) -> str:
    """The blob's URL, its response naming it ``name`` (Content-Disposition)."""
    return server.route(f"/cd/{blob.name}?filename={name}")


@pytest.mark.parametrize("hint", [False, True], ids=["", "size given"])
@pytest.mark.parametrize("size", sorted(SIZES))
def test_items_the_server_names_alike_never_overwrite_each_other(
    make: Make, server: ServerHandle, tmp_path: Path, size: str, hint: bool
) -> None:
    blobs = [make(SIZES[size], seed=3200 + n) for n in range(4)]
    sizes = [b.size if hint else None for b in blobs]
    base = tmp_path / "base"
    base.mkdir()
    items = [
        Item(named(server, blobs[0], "same.bin"), None, blobs[0].sha256, size=sizes[0]),
        Item(named(server, blobs[1], "same.bin"), None, blobs[1].sha256, size=sizes[1]),
        Item(blobs[2].url, "given.bin", blobs[2].sha256, size=sizes[2]),
        Item(named(server, blobs[3], "given.bin"), None, blobs[3].sha256, size=sizes[3]),
    ]
    # One at a time: the first of the two alike is the first to be named.
    results = blobdl.download_many(items, max_connections=1, base_dir=base,
                                   settings=fast_settings(connections=1))  # fmt: skip
    assert [r.ok for r in results] == [True, False, True, False], results
    for result in (results[1], results[3]):
        assert isinstance(result.error, blobdl.LocalFileError), result
        assert result.error.exit_code == 5 and "writes it too" in str(result.error)
    assert sha256_file(base / "same.bin") == blobs[0].sha256
    assert sha256_file(base / "given.bin") == blobs[2].sha256
    assert sorted(p.name for p in base.iterdir()) == ["given.bin", "same.bin"]


@pytest.mark.parametrize("size", sorted(SIZES))
def test_a_cached_item_given_no_path_is_named_inside_the_base_directory(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: str
) -> None:
    """Through the cache an item is named from its URL alone (a hit asks the server
    nothing): that name, too, is taken inside the base directory."""
    blob = make(SIZES[size], seed=3210)
    base, cache, cwd = tmp_path / "base", tmp_path / "cache", tmp_path / "cwd"
    for folder in (base, cache, cwd):
        folder.mkdir()
    monkeypatch.chdir(cwd)
    settings = fast_settings(cache_dir=str(cache))
    for _ in range(2):  # filling the cache, then a hit
        [result] = blobdl.download_many([Item(blob.url, None, blob.sha256)], base_dir=base,
                                        settings=settings)  # fmt: skip
        assert result.ok and result.result is not None, result
        assert result.result.path == base / blob.name
        assert sha256_file(base / blob.name) == blob.sha256
        assert list(cwd.iterdir()) == []


def test_a_kept_connection_carries_each_item_to_its_own_origin_only(
    make: Make, server: ServerHandle, other: ServerHandle, tls_server: ServerHandle,
    pki: PKI, tmp_path: Path,
) -> None:  # fmt: skip
    """Small items one after another on one seat, alternating between three origins (two
    ports, one over TLS on the same host as the first), each with a header of its own: each
    origin sees only its items' requests, and only their headers."""
    origins = [server, other, tls_server]
    for origin in origins:
        origin.reset()
    blobs = []
    for n in range(9):  # on its origin's server, named after the origin
        origin = origins[n % 3]
        blob = make_blob(origin.root, f"o{n % 3}-{n}.bin", PART // 4, 3400 + n)
        blobs.append((origin, blob))
    urls = [o.url(f"o{n % 3}-{n}.bin") for n, (o, _) in enumerate(blobs)]
    urls = [u.replace("127.0.0.1", "localhost") if n % 3 == 1 else u for n, u in enumerate(urls)]
    items = [Item(url, str(tmp_path / f"f{n}"), headers=(("X-Item", f"secret-{n}"),))
             for n, url in enumerate(urls)]  # fmt: skip
    results = blobdl.download_many(items, max_connections=1,
                                   settings=fast_settings(ca_bundle=pki.ca_pem))  # fmt: skip
    assert all(r.ok for r in results), results
    assert [sha256_file(tmp_path / f"f{n}") for n in range(9)] == [b for _, b in blobs]
    for number, origin in enumerate(origins):
        stats = origin.stats()
        assert sorted(stats["per_path"]) == sorted(f"/files/o{number}-{n}.bin"
                                                   for n in range(number, 9, 3))  # fmt: skip
        secrets = {h.get("X-Item") for h in stats["headers"]}
        assert secrets == {f"secret-{n}" for n in range(number, 9, 3)}, secrets


@pytest.mark.parametrize("side", ["blobdl-tmp", "blobdl-state", "blobdl-lock"])
def test_a_path_named_like_another_items_side_file_is_refused_before_anything_starts(
    make: Make, server: ServerHandle, tmp_path: Path, side: str
) -> None:
    """``a.blobdl-tmp`` is item ``a``'s partial: written by a second item while ``a``
    downloads, it was renamed into place as ``a`` (a's result ok, its bytes the other's),
    and the second item's file was gone though it said ok."""
    large, small = make(16 * PART, seed=2811), make(3000, seed=2812)
    pace = {"times": None, "action": "rate", "bps": 200_000}
    server.set_faults(
        {"path": f"/files/{large.name}", **pace},
        {"path": f"/files/{small.name}", "times": None, "action": "ttfb", "delay": 1.0},
    )
    items = [Item(large.url, str(tmp_path / "a")), Item(small.url, str(tmp_path / f"a.{side}"))]
    with pytest.raises(blobdl.UsageError, match=rf"items\[1\]: .*a.{side}"):
        blobdl.download_many(items, settings=fast_settings(min_part_size=4 * PART,
                                                           max_part_size=4 * PART))  # fmt: skip
    assert server.stats()["requests"] == 0 and list(tmp_path.iterdir()) == []
    with pytest.raises(blobdl.UsageError, match="manifest line 2: "):
        blobdl.parse_manifest("\n".join(f"{i.url} {i.path}" for i in items))


def test_an_item_path_may_be_a_pathlib_path_as_a_download_path_may(
    make: Make, tmp_path: Path
) -> None:
    """``download(url, Path(...))`` takes a Path: so does an Item, small or large."""
    small, large = make(3000, seed=2821), make(16 * PART, seed=2822)
    paths = [tmp_path / "small", tmp_path / "large"]
    items = [Item(b.url, p) for b, p in zip((small, large), paths, strict=True)]  # type: ignore[arg-type]
    settings = fast_settings(min_part_size=4 * PART, max_part_size=4 * PART)
    results = blobdl.download_many(items, settings=settings)
    assert all(r.ok for r in results), results
    assert sha256_file(tmp_path / "small") == small.sha256
    assert sha256_file(tmp_path / "large") == large.sha256


def test_two_paths_to_one_file_through_a_linked_folder_are_refused_before_anything_starts(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """``real/x`` and ``link/x`` (``link`` a link to ``real``) are one file: with ``force``
    and one connection, both items said ok while the second's bytes replaced the first's."""
    first, second = make(3000, seed=2831), make(5000, seed=2832)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    items = [Item(first.url, str(tmp_path / "real" / "x")),
             Item(second.url, str(tmp_path / "link" / "x"))]  # fmt: skip
    with pytest.raises(blobdl.UsageError, match=r"items\[0\] and items\[1\] both write"):
        blobdl.download_many(items, max_connections=1, settings=fast_settings(force=True))
    assert server.stats()["requests"] == 0 and list((tmp_path / "real").iterdir()) == []


def test_the_same_request_through_a_linked_folder_is_fetched_once(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(3000, seed=2833)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    items = [Item(blob.url, str(tmp_path / folder / "x"), blob.sha256)
             for folder in ("real", "link")]  # fmt: skip
    first, second = blobdl.download_many(items, settings=fast_settings())
    assert first.result and second.result, (first, second)
    assert second.result.bytes_fetched == 0
    assert sha256_file(tmp_path / "real" / "x") == blob.sha256


def test_two_paths_to_one_file_through_a_link_and_dot_dot_are_refused_before_anything_starts(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """``link/../../b/x`` (``link`` a link to ``deep/er``) is ``b/x``, as the kernel walks it:
    ``..`` is taken after the link, not before. Collapsed first (``abspath``), it was keyed
    as a file outside the folder, so both items said ok while the second's bytes replaced
    the first's."""
    first, second = make(3000, seed=2834), make(5000, seed=2835)
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to("deep/er")
    items = [Item(first.url, str(tmp_path / "link" / ".." / ".." / "b" / "x"), first.sha256),
             Item(second.url, str(tmp_path / "b" / "x"), second.sha256)]  # fmt: skip
    with pytest.raises(blobdl.UsageError, match=r"items\[0\] and items\[1\] both write"):
        blobdl.download_many(items, max_connections=1, settings=fast_settings())
    assert server.stats()["requests"] == 0 and list((tmp_path / "b").iterdir()) == []


def test_a_path_through_a_link_and_dot_dot_is_not_taken_for_the_file_it_spells(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """``link/../b/y`` (``link`` a link to ``deep/er``) is ``deep/b/y``, not ``b/y``: the
    same request to both is two files, each written. Taken for one, the second item said
    ok with the first's result while ``b/y`` was never written."""
    blob = make(3000, seed=2836)
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "b").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to("deep/er")
    paths = [tmp_path / "link" / ".." / "b" / "y", tmp_path / "b" / "y"]
    items = [Item(blob.url, str(path)) for path in paths]
    results = blobdl.download_many(items, settings=fast_settings())
    assert all(r.ok for r in results), results
    assert sha256_file(tmp_path / "deep" / "b" / "y") == blob.sha256
    assert sha256_file(tmp_path / "b" / "y") == blob.sha256
