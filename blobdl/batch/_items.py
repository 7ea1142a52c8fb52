"""A batch's vocabulary, for the scheduler on one machine and on a cluster alike: an item,
its result and events, an item as the batch works with it (``normalized``), the host it
counts against, where its path may lead (``confine``), and which items are the same request."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path, PurePath
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .._redact import shown_fields
from ..config import check_header, check_int, check_pairs, check_text, plain
from ..errors import BlobdlError, UsageError
from ..events import DownloadResult, Event
from ..http._urls import check_url, lift_userinfo
from ..store._destination import path_problem
from ..store._digest import parse_digest
from ..store._files import absolute


class Item(NamedTuple):
    """One blob to fetch."""

    url: str
    path: str | None = None  # destination (None: a safe name from the server or URL)
    digest: str | None = None  # sha256:<hex> the bytes must have
    headers: tuple[tuple[str, str], ...] = ()  # extra request headers for this item
    # Its size, if the caller knows it (a registry's manifest says it): a hint only, the
    # server's answer decides. A blob known to be larger than one request is probed with
    # one byte, instead of a first GET whose bytes would be thrown away.
    size: int | None = None

    def __repr__(self) -> str:  # no credential of its URL or headers: jobs log items
        return shown_fields("Item", self._asdict())


class ItemResult(NamedTuple):
    item: Item
    result: DownloadResult | None  # None when it failed
    error: BlobdlError | None  # None when it succeeded

    @property
    def ok(self) -> bool:
        return self.error is None


class BatchEvent(NamedTuple):
    item: int  # index of the item in the list given
    event: Event
    worker: str = ""  # the Dask worker that ran the item ("" on one machine)


BatchCallback = Callable[[BatchEvent], None]


class Numbering(NamedTuple):
    """How a batch's errors name its items, so their user can find them: by the manifest
    line each came from (``lines``, one per item: comments and blank lines make an index no
    line number), else by its index in the list the caller gave, written as one: ``items[3]``."""

    lines: tuple[int, ...] | None = None

    def one(self, index: int) -> str:
        """``manifest line 7``, or ``items[3]``."""
        return f"items[{index}]" if self.lines is None else f"manifest line {self.lines[index]}"

    def both(self, first: int, second: int) -> str:
        """``manifest lines 3 and 7``, or ``items[0] and items[1]``."""
        if self.lines is None:
            return f"items[{first}] and items[{second}]"
        return f"manifest lines {self.lines[first]} and {self.lines[second]}"


BY_INDEX = Numbering()  # a list given to ``download_many``


def confine(base: Path, path: str) -> Path:
    """``path`` taken inside ``base``; ValueError if it is absolute, has a ``..`` or
    leads outside ``base`` through a symbolic link (followed as far as they exist now)."""
    given = PurePath(path)
    if given.is_absolute():
        raise ValueError(f"path {path!r} is absolute; with a base directory give it relative")
    target = base / given
    root, real = Path(absolute(str(base))).resolve(), Path(absolute(str(target))).resolve()
    if ".." in given.parts or real == root or not real.is_relative_to(root):
        raise ValueError(f"path {path!r} leads outside the base directory {str(base)!r}")
    return target


def host_of(url: str) -> str:
    """The host a URL's connections count against (checked: a bad URL is a UsageError)."""
    check_url(url)
    return urlsplit(url).hostname or ""


def given(items: object, numbering: Numbering = BY_INDEX) -> list[Item]:
    """The caller's items, each an ``Item`` (a URL string is one): anything else is a
    UsageError naming it (as ``numbering`` does), here, not a TypeError from deep inside."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise UsageError(f"items must be a list of Items or URLs, not {type(items).__name__}")
    listed = [Item(i) if isinstance(i, str) else _path_as_text(i) for i in items]
    for n, item in enumerate(listed):
        _check_item(item, numbering.one(n))
    return [_plain(item) for item in listed]


def _plain(item: Item) -> Item:
    """``item`` with its text and numbers as the built-ins they are (``config.plain``);
    the caller's own item, the same object, where they are already."""
    headers = tuple((plain(name), plain(value)) for name, value in item.headers)
    taken = Item(plain(item.url), plain(item.path), plain(item.digest), headers, plain(item.size))
    same = all(type(a) is type(b) for a, b in zip(_values(taken), _values(item), strict=True))
    return item if same else taken


def _values(item: Item) -> list[object]:
    return [*item[:3], *(text for header in item.headers for text in header), item.size]


def _path_as_text(item: Any) -> Any:
    """An Item whose path is an ``os.PathLike`` (a ``pathlib.Path``), with it as text, as
    ``download`` takes one; anything else as it is, for ``_check_item`` to judge."""
    if isinstance(item, Item) and isinstance(item.path, os.PathLike):
        path = os.fspath(item.path)
        return item._replace(path=path) if isinstance(path, str) else item
    return item


def _check_item(item: object, where: str) -> None:
    if not isinstance(item, Item):
        raise UsageError(f"{where} must be an Item or a URL, not {type(item).__name__}")
    check_text(f"{where}: url", item.url)
    check_text(f"{where}: path", item.path, optional=True)
    check_text(f"{where}: digest", item.digest, optional=True)
    check_pairs(item.headers, where)
    for name, value in item.headers:
        _check_header(name, value, where)
    if item.path is not None and (problem := path_problem(item.path)) is not None:
        raise UsageError(f"{where}: {problem}")
    if item.size is not None:
        check_int(f"{where}: size", item.size, 0, 2**63 - 1)


def _check_header(name: object, value: object, where: str) -> None:
    """``check_header``'s refusal, saying which item holds the header."""
    try:
        check_header(name, value)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


def check_path_given(path: str) -> None:
    """ValueError if ``path`` cannot be a destination as written (``path_problem``: it ends
    as a directory, or is named like a file blobdl keeps beside another destination; the
    server's names are held to a stricter rule, ``safe_basename``)."""
    problem = path_problem(path)
    if problem is not None:
        raise ValueError(problem)


def normalized(item: Item) -> Item:
    """The item as the scheduler works with it: ``user:pass@`` moved out of its URL into an
    Authorization header, its digest parsed once (to bare hex; a bad one is a UsageError)."""
    url, headers = lift_userinfo(item.url, tuple((n, v) for n, v in item.headers))
    digest = parse_digest(item.digest) if item.digest is not None else None
    return item._replace(url=url, headers=headers, digest=digest)


def inside(base: Path, item: Item, where: str) -> Item:
    """The item with its path inside ``base``, or a UsageError naming ``where``."""
    if item.path is None:
        return item  # named after the probe, inside base too
    try:
        return item._replace(path=str(confine(base, item.path)))
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None


def same_file() -> Callable[[str], str]:
    """For one batch: which file a path writes, on this machine: absolute, the symbolic
    links of its folders followed as far as they exist now (``real/x`` and ``link/x`` are
    one file), its own name not (a link there is replaced, not written through). Each
    folder is resolved once: 100,000 items in one folder cost one ``realpath``, not 1.3 s."""
    real: dict[str, str] = {}

    def where_to(path: str) -> str:
        # ``absolute`` keeps a ``..`` (the kernel takes it after the link before it): only
        # ``realpath`` may take it away.
        folder, name = os.path.split(absolute(path))
        if folder not in real:
            try:
                real[folder] = os.path.realpath(folder)
            except ValueError:  # no folder is named so (a NUL byte): its item fails alone
                real[folder] = folder
        return os.path.join(real[folder], name)

    return where_to


def first_of_each(
    items: list[Item],
    where_to: Callable[[str], str] = absolute,
    numbering: Numbering = BY_INDEX,
) -> list[int]:
    """For each item, the index of the first item it duplicates (itself if none).

    Only an identical request is a duplicate: same URL, destination, digest and headers
    (items are normalized first: the same digest written two ways is the same).
    The same destination asked for with anything else different is a usage error: one of
    the two would silently overwrite the other. Destinations are compared as ``where_to``
    gives them (``same_file`` on the machine that writes them); the two items named as
    ``numbering`` names them."""
    seen: dict[tuple[object, ...], int] = {}
    claimed: dict[str, int] = {}
    firsts = []
    for index, item in enumerate(items):
        where = where_to(item.path) if item.path else None
        first = seen.setdefault((item.url, where, item.digest, item.headers), index)
        if where is not None and claimed.setdefault(where, first) != first:
            clash = numbering.both(claimed[where], index)
            raise UsageError(f"{clash} both write {item.path}")
        firsts.append(first)
    _check_no_file_is_a_folder(items, claimed, numbering)
    return firsts


def _check_no_file_is_a_folder(
    items: list[Item], claimed: dict[str, int], numbering: Numbering
) -> None:
    """A UsageError if one item's file is a folder another item writes into (``a.bin`` and
    ``a.bin/x``): one of the two must fail, so neither starts. Each folder is looked at
    once, so a batch costs about one lookup per item and per folder, not per level."""
    looked: set[str] = set()
    for where, index in claimed.items():
        folder = os.path.dirname(where)
        while folder not in looked:
            looked.add(folder)
            holder = claimed.get(folder)
            if holder is not None:
                raise UsageError(f"{numbering.one(holder)} writes the file {items[holder].path}, "
                                 f"which {numbering.one(index)} needs as a folder "
                                 f"({items[index].path})")  # fmt: skip
            folder = os.path.dirname(folder)
