"""Where the files go: huggingface_hub's cache (``CacheLayout``) or a local folder
(``LocalDirLayout``), what both offer the story (``Layout``), and which one a call asks for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ..store._files import absolute
from . import _env
from ._cache import CacheLayout
from ._local_dir import LocalDirLayout
from ._repo import Repo, RepoFile


class Layout(Protocol):
    """One commit's files in a cache or a local folder."""

    @property
    def where(self) -> Path: ...
    @property
    def kind(self) -> str: ...  # "cache" or "local dir", for a message
    def recorded(self) -> list[RepoFile] | None: ...
    def prepare(self, files: Sequence[RepoFile], chosen: Sequence[RepoFile]) -> None: ...
    def abandon(self, wrote: bool) -> None: ...  # after a failure: what prepare made goes
    def release(self) -> None: ...  # the run is over: prepare's hold let go
    def key(self, f: RepoFile) -> str: ...
    def present(self, f: RepoFile) -> bool: ...
    def have(self, f: RepoFile) -> bool: ...
    def staging(self, f: RepoFile) -> Path: ...
    def claim(self, f: RepoFile, *, wait: bool) -> contextlib.AbstractContextManager[bool]: ...
    def place(self, f: RepoFile, where: str, *, engine_checked: bool) -> Path: ...
    def link(self, f: RepoFile) -> None: ...
    def finish(self, revision: str) -> None: ...
    def file_path(self, f: RepoFile) -> Path: ...


def layout_for(
    repo: Repo,
    commit: str,
    cache_dir: str | os.PathLike[str] | None,
    local_dir: str | os.PathLike[str] | None,
) -> Layout:
    if local_dir is not None:
        return LocalDirLayout(Path(local_dir), commit)
    return CacheLayout(hub_cache(cache_dir), repo, commit)


def folders(
    cache_dir: str | os.PathLike[str] | None, local_dir: str | os.PathLike[str] | None
) -> tuple[Path | None, Path | None]:
    """The cache (given, else huggingface_hub's) or the local dir, made absolute before
    anything is asked: a relative one is in the current directory, and one removed is said
    ("the current directory was deleted"), not a traceback from ``getcwd``. The folder
    printed is then one any directory can read, as huggingface_hub returns a local dir."""
    if local_dir is not None:
        return None, Path(absolute(os.fspath(local_dir)))
    return Path(absolute(os.fspath(hub_cache(cache_dir)))), None


def hub_cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The cache given, else huggingface_hub's (``$HF_HUB_CACHE``...)."""
    return Path(cache_dir) if cache_dir is not None else _env.hub_cache()
