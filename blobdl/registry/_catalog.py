"""The store's manifests as Ollama reads them (``manifest.Manifests``), and what they keep.

Ollama globs ``manifests/*/*/*/*`` (dot files included, linked folders followed), takes a
file there for a model when its four names are a valid model name, and reads it with Go's
``encoding/json`` into ``{schemaVersion, mediaType, config, layers}``. A blob is kept while
some manifest it reads names it. Two kinds of file at depth 4 matter besides models:

- ``unreadable``: a valid name whose file Ollama cannot decode (not JSON, wrong types, a
  dangling link, a FIFO). Since ollama#7515 (v0.4, ``Manifests(true)``) Ollama's prune and
  ``ollama pull`` skip such a file with a warning and delete the blobs only it names (a
  dangling link, which ``os.Stat`` fails on, stops them instead). We are more careful: we
  do not know which blobs it needs, so nothing is freed while one exists.
- a folder of manifests we cannot list (its mode, an I/O error), which Go's Glob skips
  silently, counts as ``unreadable`` too: it may hold models.
- ``strays``: a name that is not a model's (``.latest.tmp-123``). Ollama skips it with a
  warning; its prune goes on.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ._names import valid_name
from ._schema import go_fold, go_string, go_text

DEPTH = 4  # host/namespace/model/tag
MAX_MANIFEST = 4 << 20  # bytes read of one manifest; a larger one counts as unreadable
_NAMES_BLOB = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")  # what Ollama's GetBlobsPath accepts

Name = tuple[str, str, str, str]


class Catalog(NamedTuple):
    models: dict[Name, frozenset[str]]  # each model's manifest: the digests it names
    unreadable: tuple[Path, ...]
    strays: tuple[Path, ...]

    @property
    def referenced(self) -> frozenset[str]:
        """Every digest a model names (config and layers), as written in its manifest."""
        return frozenset().union(*self.models.values())

    @property
    def kept(self) -> frozenset[str]:
        """The blobs (``sha256:<lower hex>``, the names of ``blobs/``) some model needs:
        Ollama finds a blob at ``blobs/`` + the digest with ':' made '-', and accepts hex of
        either case, so ``sha256-<hex>`` names the same file, as does upper case where file
        names ignore case."""
        return frozenset(d for d in map(blob_named, self.referenced) if d is not None)


def blob_named(digest: str) -> str | None:
    """The blob file a manifest's ``digest`` leads Ollama to, as ``sha256:<lower hex>``;
    None for a digest Ollama refuses (it names no file)."""
    match = _NAMES_BLOB.fullmatch(digest)
    return None if match is None else "sha256:" + match.group(1).lower()


def scan(manifests: Path) -> Catalog:
    models: dict[Name, frozenset[str]] = {}
    unreadable: list[Path] = []
    strays: list[Path] = []
    for path, names in _depth_four(manifests, unreadable):
        if not valid_name(names):
            strays.append(path)
            continue
        digests = read_digests(path)
        if digests is None:
            unreadable.append(path)
        else:
            models[(names[0], names[1], names[2], names[3])] = digests
    return Catalog(models, tuple(unreadable), tuple(strays))


def _depth_four(manifests: Path, unlisted: list[Path]) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """Every entry at depth 4, as ``filepath.Glob`` finds them: folders on the way are
    followed through links, names starting with '.' included; folders at depth 4 are
    skipped, as Ollama skips them. A folder we cannot list or look at (its mode, an I/O
    error), which Glob skips silently, may hold models: it goes to ``unlisted``."""
    level: list[tuple[Path, tuple[str, ...]]] = [(manifests, ())]
    for depth in range(DEPTH):
        found = []
        for folder, names in level:
            try:
                entries = sorted(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue  # not a folder (or gone): Glob skips it
            except OSError:
                unlisted.append(folder)
                continue
            found += [(folder / e, (*names, e)) for e in entries]
        last = depth == DEPTH - 1
        level = [(p, n) for p, n in found if _is_dir(p, unlisted) != last]
    yield from level


def _is_dir(path: Path, unlisted: list[Path]) -> bool:
    """Whether ``path`` is a folder (through a link); one we cannot look at goes to
    ``unlisted`` (and is no folder, nor a manifest, here)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False  # gone, or a dangling link: a manifest Ollama cannot read, if at depth 4
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False
        unlisted.append(path)
        return False


def read_digests(path: Path) -> frozenset[str] | None:
    """The digests the manifest at ``path`` names, as Ollama reads it (through a link), or
    None if Ollama could not read it. Never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        # A folder is opened too, but os.fdopen refuses it: look before wrapping the fd.
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = _read_upto(fd, MAX_MANIFEST + 1)
    except OSError:  # EIO...: Ollama could not read it either
        return None
    finally:
        os.close(fd)
    return None if len(data) > MAX_MANIFEST else decode(data)


def _read_upto(fd: int, limit: int) -> bytes:
    chunks, size = [], 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


# --- Go's encoding/json, as far as Ollama's Manifest struct needs it -----------------------------


class _Object(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, in order, duplicates kept."""


class _Invalid(Exception):
    """A value Go's decoder would refuse for the field (a type error)."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_Object, parse_constant=_no_constant)
_LAYER = {"mediaType": str, "digest": str, "size": int, "from": str, "name": str}
_MANIFEST: dict[str, Any] = {"schemaVersion": int, "mediaType": str, "config": _LAYER,
                             "layers": [_LAYER]}  # fmt: skip
_INT64 = range(-(1 << 63), 1 << 63)


def decode(data: bytes) -> frozenset[str] | None:
    """The config and layer digests Ollama reads from manifest bytes ``data`` (as ``read``
    reads them), or None where its ``json.Decoder.Decode(&Manifest)`` fails."""
    manifest = read(data)
    if manifest is None:
        return None
    entries = [manifest.get("config") or {}, *(manifest.get("layers") or [])]
    return frozenset(e["digest"] for e in entries if e and e.get("digest"))


def read(data: bytes, *, whole: bool = False) -> dict[str, Any] | None:
    """Manifest bytes ``data`` as Go decodes them into Ollama's ``Manifest``, or None where
    Go fails: only the first JSON value is read (``json.Decoder``; ``whole``: nothing but
    space may follow it, as ``json.Unmarshal`` of a pull's answer requires); keys match
    fields exactly, else ignoring case; a later key decodes into what an earlier one left
    (objects merge, a list's elements too); null empties a list and leaves any other field
    as it is (absent from the result, as a field no key named); any value of the wrong type
    fails the whole; invalid UTF-8 and lone surrogates are U+FFFD. Checked against Go's own
    decoder on 100,000 random and hostile manifests."""
    text = go_text(data).lstrip(" \t\r\n")
    try:
        value, end = _DECODER.raw_decode(text)
        if whole and text[end:].strip(" \t\r\n"):
            return None
        manifest: dict[str, Any] = _decode(value, _MANIFEST, {})
    except (ValueError, RecursionError, _Invalid):
        return None
    return manifest


def _decode(value: Any, kind: Any, into: Any) -> Any:
    if value is None:  # null: a list becomes nil, any other field keeps what it had
        return None if isinstance(kind, list) else into
    if isinstance(kind, dict):
        if not isinstance(value, _Object):
            raise _Invalid
        fields = {} if into is None else into
        for key, item in value:
            name = _field(key, kind)
            if name is not None:
                fields[name] = _decode(item, kind[name], fields.get(name))
        return fields
    if isinstance(kind, list):
        if not isinstance(value, list) or isinstance(value, _Object):
            raise _Invalid
        # Go decodes the i-th element into the list's i-th element if it has one.
        old = into or []
        return [_decode(v, kind[0], old[i] if i < len(old) else None) for i, v in enumerate(value)]
    ok = value in _INT64 if kind is int and type(value) is int else type(value) is kind
    if not ok:
        raise _Invalid
    return go_string(value) if kind is str else value


def _field(key: str, fields: dict[str, Any]) -> str | None:
    if key in fields:
        return key
    folded = go_fold(key)
    return next((name for name in fields if go_fold(name) == folded), None)
