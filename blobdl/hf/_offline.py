"""``HF_HUB_OFFLINE``: a repository served from the disk alone, or refused.

As huggingface_hub's offline ``snapshot_download``: the commit is the revision itself or
what the cache's ``refs/<revision>`` names; the commit's files are those its
``trees/<commit>.json`` lists (blobdl writes it on every run, as huggingface_hub does), and
the files asked for must all be there. Anything less is ``OfflineNotCached`` naming what
lacks. Not one request, and nothing written (a local file without metadata that hashes
right gets its metadata, as on any run).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..errors import OfflineNotCached
from ._cache import ref_commit
from ._layouts import Layout, hub_cache, layout_for
from ._local_dir import held_commits
from ._repo import Repo, RepoFile, Wanted, is_commit

SHOWN = 3  # missing files named in the message; the rest counted


class OnDisk(NamedTuple):
    commit: str
    layout: Layout
    chosen: list[RepoFile]  # the files asked for, every one present


def on_disk(
    repo: Repo,
    revision: str,
    wanted: Wanted,
    cache_dir: str | os.PathLike[str] | None,
    local_dir: str | os.PathLike[str] | None,
    variable: str,
) -> OnDisk:
    """The files asked for, if every one is on disk; ``variable`` is what put us offline."""

    def refused(problem: str) -> OfflineNotCached:
        return OfflineNotCached(variable, str(repo), revision, problem)

    commit = _commit(repo, revision, cache_dir, local_dir, refused)
    layout = layout_for(repo, commit, cache_dir, local_dir)
    listing = layout.recorded()
    if listing is None:
        raise refused(f"no record of the files of commit {commit} in the {layout.kind}")
    chosen = wanted.pick(listing, repo, revision)
    missing = [f for f in chosen if not layout.present(f)]
    if missing:
        names = ", ".join(repr(f.path) for f in missing[:SHOWN])
        more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        raise refused(f"missing from the {layout.kind}, {len(missing)} of the {len(chosen)} "
                      f"files asked for: {names}{more}")  # fmt: skip
    return OnDisk(commit, layout, chosen)


def _commit(
    repo: Repo,
    revision: str,
    cache_dir: str | os.PathLike[str] | None,
    local_dir: str | os.PathLike[str] | None,
    refused: Callable[[str], OfflineNotCached],
) -> str:
    """The commit the revision names on disk: through the cache's ``refs/``. A local dir
    records no branch (nor does blobdl write the main cache's ``refs/`` for one), so there a
    branch or tag is read as the one commit it holds, as huggingface_hub returns a local dir
    it cannot check against the Hub."""
    if local_dir is None:
        cache = hub_cache(cache_dir)
        commit = ref_commit(cache, repo, revision)
        if commit is None:
            refs = cache / repo.folder / "refs"
            raise refused(f"no ref for revision {revision!r} in the cache ({refs})")
        return commit
    if is_commit(revision):
        return revision
    held = held_commits(Path(local_dir))
    if not held:
        raise refused("the local dir holds no record of a commit's files")
    if len(held) > 1:
        raise refused(f"the local dir holds the files of {len(held)} commits "
                      f"({', '.join(held)}): give one as the revision")  # fmt: skip
    return held[0]
