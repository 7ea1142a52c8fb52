"""The store's manifests are read as Ollama reads them: Go's ``encoding/json`` decoding a file
into Ollama's ``Manifest`` struct (``manifest/manifest.go``, ``manifest/layer.go``), and the
``manifests/*/*/*/*`` glob of ``manifest.Manifests``. The rows below are cases where Go's
decoder surprises; each was checked against Go 1.19's own ``encoding/json`` (as were
140,000 random and hostile manifests, with no difference)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from blobdl.registry._catalog import decode, scan

A, B, C = ("sha256:" + c * 64 for c in "abc")


def doc(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("data", "digests"),
    [
        (doc(config={"digest": A}, layers=[{"digest": B}]), {A, B}),
        (doc(config={"digest": A}, layers=None), {A}),
        (b"null", set()),
        (b' \r\n\t{"layers": [{"digest": "%s"}]} trailing garbage' % B.encode(), {B}),
        (b'{"LAYERS": [{"Digest": "%s"}], "Config": {"DIGEST": "%s"}}' % (B.encode(), A.encode()),
         {A, B}),  # keys match fields ignoring case
        (b'{"layers": [{"digest": "%s"}], "Layers": [{"digest": "%s"}]}' % (A.encode(), B.encode()),
         {B}),  # a later key overwrites
        (b'{"config": {"digest": "%s"}, "config": {"size": 3}}' % A.encode(), {A}),  # merged
        (b'{"layers": [{"digest": "%s"}], "layers": [{}]}' % A.encode(), {A}),  # element merged
        (b'{"layers": [{"digest": "%s"}], "layers": [null]}' % A.encode(), {A}),
        (b'{"layers": [{"digest": "%s"}], "layers": null}' % A.encode(), set()),  # nil
        (doc(layers=[None, {"digest": B, "size": -1, "unknown": [1, {"x": 2}]}]), {B}),
        (b'{"layers": [{"digest": "%s\xff"}]}' % B.encode(), {B + "\ufffd"}),  # Go replaces
        (doc(layers=[{"digest": B, "Status": 5}]), {B}),  # Status is json:"-"
        # Go folds a key only as Unicode's simple folding does: the long s and the Kelvin
        # sign are "s" and "k", a ligature is never two letters ("conﬁg" is not "config").
        (doc(config={"digeſt": A}, layers=[{"digest": B}]), {A, B}),
        (json.dumps({"conﬁg": {"digest": A}, "layers": [{"digeﬆ": B}, {"digeﬅ": C}]}).encode(),
         set()),  # (a dict: Python reads the identifier conﬁg= as config=)
        (json.dumps({"config": {"digest": A}, "LAYERS": [{"digest": B}],
                     "laYerß": [{"digest": C}]}).encode(), {A, B}),
        (doc(layers=[{"dıgest": A}, {"dİgest": B}]), set()),  # dotless i, dotted I
    ],
)  # fmt: skip
def test_what_ollama_reads_from_a_manifest(data: bytes, digests: set[str]) -> None:
    assert decode(data) == digests


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b'"a manifest"',
        b"\xef\xbb\xbf{}",  # a byte order mark
        doc(layers=5),
        doc(layers=[5]),
        doc(config=[]),
        doc(schemaVersion=2.0),
        doc(schemaVersion="2"),
        doc(layers=[{"size": 1.5}]),
        doc(layers=[{"size": True}]),
        doc(layers=[{"size": 2**63}]),
        doc(layers=[{"digest": 7}]),
        doc(mediaType=["x"]),
        b'{"schemaVersion": NaN}',
        b'{"layers": [' * 20000 + b"]" * 20000 + b"}",
        b'{"layers": [{"digest": "a\x01b"}]}',  # a raw control character in a string
    ],
)
def test_what_ollama_cannot_read(data: bytes) -> None:
    assert decode(data) is None


def test_the_store_is_globbed_at_depth_four_as_ollama_globs_it(tmp_path: Path) -> None:
    root = tmp_path / "manifests"
    good = root / "h" / "ns" / "m" / "v1"
    files = {
        good: doc(config={"digest": A}),
        root / "h" / "ns" / "m" / ".v1.tmp-12": doc(),  # a name that is no model's
        root / "h" / "ns" / "m" / "v2": b"{",  # a model Ollama cannot read
        root / "h" / "ns" / "shallow": doc(config={"digest": B}),  # depth 3: not seen
        root / "h" / "ns" / "m" / "deep" / "x": doc(config={"digest": C}),  # depth 5
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    elsewhere = tmp_path / "elsewhere" / "m2"
    elsewhere.mkdir(parents=True)
    (elsewhere / "v1").write_bytes(doc(config={"digest": B}))
    (root / "h" / "linked").symlink_to(elsewhere.parent)  # a linked folder is followed
    (root / "h" / "ns" / "m" / "dangling").symlink_to(tmp_path / "nothing")
    os.mkfifo(root / "h" / "ns" / "m" / "fifo")  # never waited on
    catalog = scan(root)
    assert catalog.models == {("h", "ns", "m", "v1"): {A}, ("h", "linked", "m2", "v1"): {B}}
    assert sorted(p.name for p in catalog.unreadable) == ["dangling", "fifo", "v2"]
    assert [p.name for p in catalog.strays] == [".v1.tmp-12"]
    assert catalog.referenced == {A, B}


def test_a_blob_is_kept_by_any_spelling_ollama_finds_it_by(tmp_path: Path) -> None:
    """Ollama's ``GetBlobsPath`` takes ``sha256[:-]`` and hex of either case, and finds the
    file at ``blobs/`` + the digest with ':' made '-': each spelling keeps that blob; one
    Ollama refuses names no file."""
    root = tmp_path / "manifests"
    spellings = [A.replace(":", "-"), "sha256:" + B[7:].upper(), C + "\n", "sha256:" + "d" * 63]
    (root / "h" / "ns" / "m").mkdir(parents=True)
    for i, spelling in enumerate(spellings):
        (root / "h" / "ns" / "m" / f"v{i}").write_bytes(doc(config={"digest": spelling}))
    assert scan(root).kept == {A, B}
