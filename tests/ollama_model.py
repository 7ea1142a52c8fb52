"""A small model of how Ollama treats its store, written from its source (not from ours), for
tests to play Ollama beside blobdl. See /work/shared/notes/ollama.md §3 and §5:

- ``manifests``: ``manifest.Manifests``: every entry at ``manifests/*/*/*/*`` (dot files
  included), a valid name (``types/model`` part rules) whose file decodes as JSON; anything
  else there is "corrupt".
- ``prune_layers``: the start-up prune (``server.PruneLayers``): nothing at all if any entry
  at depth 4 is corrupt; else every file in ``blobs/`` older than an hour is deleted if its
  name is not a blob name, or if no manifest names it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

GRACE = 3600.0  # layerPruneGracePeriod
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}", re.ASCII)
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}", re.ASCII)
_MODEL_OR_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}", re.ASCII)
_BLOB = re.compile(r"sha256[:-][0-9a-fA-F]{64}")


class Corrupt(Exception):
    """What makes Ollama log "corrupt manifests detected, skipping prune operation"."""


def manifests(models: Path) -> dict[tuple[str, ...], dict[str, object]]:
    """name -> decoded manifest, or Corrupt."""
    found = {}
    root = models / "manifests"
    for path in _glob4(root):
        if not path.exists():
            raise Corrupt(f"{path}: stat fails (dangling link)")
        if path.is_dir():
            continue
        name = path.relative_to(root).parts
        rules = (_HOST, _NAMESPACE, _MODEL_OR_TAG, _MODEL_OR_TAG)
        if not all(rule.fullmatch(part) for rule, part in zip(rules, name, strict=True)):
            raise Corrupt(f"{path}: bad manifest name")
        try:
            # Go's decoder reads invalid UTF-8 in a string as U+FFFD, byte by byte.
            doc = json.loads(path.read_bytes().decode("utf-8", "replace"))
        except ValueError as exc:
            raise Corrupt(f"{path}: bad manifest: {exc}") from None
        if not isinstance(doc, dict):
            raise Corrupt(f"{path}: bad manifest: not an object")
        found[name] = doc
    return found


def _glob4(root: Path) -> list[Path]:
    level = [root]
    for _ in range(4):
        level = [
            folder / name
            for folder in level
            if folder.is_dir()
            for name in sorted(os.listdir(folder))
        ]
    return level


def referenced(doc: dict[str, object]) -> set[str]:
    config = doc.get("config")
    layers = doc.get("layers")
    entries = [config, *(layers if isinstance(layers, list) else [])]
    return {str(e["digest"]) for e in entries if isinstance(e, dict) and e.get("digest")}


def prune_layers(models: Path, now: float | None = None) -> list[str]:
    """Ollama's start-up prune; the names of the files it deleted from ``blobs/``."""
    now = time.time() if now is None else now
    try:
        known = manifests(models)
    except Corrupt:
        return []
    used = set().union(*(referenced(doc) for doc in known.values()))
    deleted = []
    blobs = models / "blobs"
    for name in sorted(os.listdir(blobs)):
        path = blobs / name
        if path.is_dir() or now - path.lstat().st_mtime < GRACE:
            continue
        digest = name.replace("-", ":")
        if _BLOB.fullmatch(digest) and digest in used:
            continue
        path.unlink()
        deleted.append(name)
    return deleted


def assert_ollama_reads(models: Path) -> dict[tuple[str, ...], dict[str, object]]:
    """Every manifest Ollama would list is readable and names only blobs that are there
    with the bytes of their digest; returns the manifests."""
    import hashlib

    known = manifests(models)  # raises Corrupt
    for name, doc in known.items():
        for digest in referenced(doc):
            blob = models / "blobs" / digest.replace(":", "-")
            assert blob.is_file(), f"{'/'.join(name)} names a missing blob {digest}"
            actual = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
            assert actual == digest, f"{blob} does not hold the bytes of its digest"
    return known
