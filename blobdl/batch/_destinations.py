"""Which item of a batch writes each destination, and the names of items given no path.

The manifest's paths are claimed first; then each name as it is given: from the URL for an
item that comes through the cache (a hit asks the server nothing), from the server's answer
for one named after its probe (here for a large item, or asked by a seat through
``_Claim``). A later item named alike fails with a ``LocalFileError``. And the folders the
batch writes into (``Destinations.folders``), known before any item runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import LocalFileError
from ..http._remote import Remote
from ..store._files import absolute
from ..store._names import default_name, name_from_url
from ._items import BY_INDEX, Item, Numbering, inside


class Destinations:
    """Every destination of the batch, and the item that writes it (by absolute path)."""

    def __init__(
        self,
        given: dict[int, str],
        base_dir: Path | None,
        cached: bool,
        where_to: Callable[[str], str] = absolute,
        numbering: Numbering = BY_INDEX,
        on_named: Callable[[str], None] = lambda path: None,
    ) -> None:
        self.base_dir = base_dir  # where items without a path are named
        self.cached = cached  # the batch has a cache: an item with a digest may come through it
        self.where_to = where_to  # the key a destination is claimed by (``first_of_each``'s)
        self.claimed = {where_to(path): index for index, path in given.items()}
        self.names: dict[int, str] = {}  # item -> the path it was named after its probe
        self.numbering = numbering  # how errors name an item: its manifest line, or its index
        self.on_named = on_named  # told each path an item is named after (not a given one)

    def by_url(self, index: int, item: Item) -> Item:
        """An item that comes through the cache without a path is named from its URL, as a
        download is (a hit asks the server nothing), and now: inside the base directory."""
        if item.path is None and item.digest is not None and self.cached:
            return self._name(index, item, name_from_url(item.url))
        return item

    def after_probe(self, index: int, item: Item, remote: Remote) -> Item:
        """A large item without a path is named once its seat has probed it (the name the
        server gives, as a download without a path would use)."""
        if item.path is None:
            return self._name(index, item, default_name(remote))
        return item

    def claim(self, index: int, path: str) -> int | None:
        """Make ``path`` item ``index``'s destination; the item that has it already, if any."""
        holder = self.claimed.setdefault(self.where_to(path), index)
        if holder != index:
            return holder
        if self.names.setdefault(index, path) == path:
            self.on_named(path)
        return None

    def folders(
        self, items: list[Item], written: Iterable[int], cache_dir: str | None
    ) -> set[Path]:
        """Every folder the items ``written`` write into, each once: those of the paths
        claimed for them (as ``where_to`` keys them: absolute, their folders' links
        followed), the base directory (or the working one) if one is to be named after its
        probe, and the cache an item with a digest comes through, whose entries a seat fills."""
        indices = set(written)
        found = {os.path.dirname(where) for where, i in self.claimed.items() if i in indices}
        chosen = [items[i] for i in indices]
        if any(item.path is None for item in chosen):
            found.add(absolute(str(self.base_dir or os.curdir)))
        if cache_dir and any(item.digest is not None for item in chosen):
            found.add(absolute(cache_dir))
        return {Path(folder) for folder in found}

    def named(self, index: int, item: Item) -> Item:
        """Item ``index`` with the path it writes, if it was given none but has been named
        since (a seat's claim, say)."""
        path = self.names.get(index)
        return item if item.path is not None or path is None else item._replace(path=path)

    def _name(self, index: int, item: Item, name: str) -> Item:
        """Item ``index`` with the path ``name`` (inside the base directory, if any), if no
        other item of the batch writes there (else a LocalFileError)."""
        named = item._replace(path=name)
        if self.base_dir is not None:
            named = inside(self.base_dir, named, self.numbering.one(index))
        path = named.path or name
        holder = self.claim(index, path)
        if holder is not None:
            raise LocalFileError(path, self.writes_too(holder))
        return named

    def writes_too(self, holder: int) -> str:
        """Why a later item may not write the path item ``holder`` has."""
        return f"{self.numbering.one(holder)} writes it too"
