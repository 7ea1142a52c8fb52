"""The README and docs/ stay true: promises name the tests that pin them, links and paths lead
somewhere, and the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
GUARANTEES = REPO / "docs" / "guarantees.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
LINKED = [*DOCS, REPO / "benchmarks" / "README.md"]  # the harness's own page links back

README_LIMIT = 15 * 1024
# What docs/guarantees.md held when it was cut out of the README: promises may be added or
# reworded, never dropped, and neither may the tests that pin them.
PROMISES_AT_LEAST = 17
NAMED_TESTS_AT_LEAST = 38

TEST_NAME = re.compile(r"`(test_[a-z0-9_]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# A backticked path of this repository: `blobdl/engine/_lane.py`, `tests/unit/`, ...
REPO_PATH = re.compile(r"`((?:blobdl|tests|faultserver|benchmarks|docs)/[\w./-]*)`")


def prose(path: Path) -> str:
    """The text without its fenced code blocks (shell comments there are not headings)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def defined_tests() -> set[str]:
    return {
        name
        for path in (REPO / "tests").rglob("test_*.py")
        for name in re.findall(r"^\s*def (test_[a-z0-9_]+)\(", path.read_text(), re.MULTILINE)
    }


def promises() -> list[str]:
    """Each bullet of docs/guarantees.md that opens with a bold claim, with its continuation."""
    return re.findall(r"^- \*\*.*?(?=^- |^#|\Z)", prose(GUARANTEES), re.MULTILINE | re.DOTALL)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of ``path``."""
    headings = re.findall(r"^#+ (.+)$", prose(path), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_the_readme_stays_short() -> None:
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes: move the detail into docs/"


def test_every_promise_names_a_test_that_pins_it() -> None:
    found = promises()
    assert len(found) >= PROMISES_AT_LEAST, "a promise was dropped from docs/guarantees.md"
    unpinned = [p.splitlines()[0] for p in found if not TEST_NAME.search(p)]
    assert not unpinned, f"promises that name no test: {unpinned}"
    named = set(TEST_NAME.findall(GUARANTEES.read_text()))
    assert len(named) >= NAMED_TESTS_AT_LEAST, "the promises name fewer tests than they did"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_test_a_document_names_exists(doc: Path) -> None:
    missing = set(TEST_NAME.findall(doc.read_text())) - defined_tests()
    assert not missing, f"named in {doc.name} but not defined: {sorted(missing)}"


@pytest.mark.parametrize("doc", LINKED, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_leads_to_a_file_and_heading(doc: Path) -> None:
    broken = []
    for target in LINK.findall(prose(doc)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        name, _, anchor = target.partition("#")
        path = (doc.parent / name).resolve() if name else doc
        if not path.exists() or (anchor and anchor not in anchors(path)):
            broken.append(target)
    assert not broken, f"links in {doc.name} that lead nowhere: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_path_a_document_names_exists(doc: Path) -> None:
    missing = {path for path in REPO_PATH.findall(doc.read_text()) if not (REPO / path).exists()}
    assert not missing, f"paths in {doc.name} that do not exist (moved?): {sorted(missing)}"


def test_every_module_has_a_row_in_the_design() -> None:
    """A newcomer finds every module in docs/design.md's table (a layer's ``__init__.py`` is
    its folder's docstring, named by the layer table)."""
    design = (REPO / "docs" / "design.md").read_text()
    named = set(REPO_PATH.findall(design))
    modules = {
        str(path.relative_to(REPO))
        for path in (REPO / "blobdl").rglob("*.py")
        if path.name != "__init__.py" or path.parent == REPO / "blobdl"
    }
    assert modules <= named, f"not in docs/design.md: {sorted(modules - named)}"


# A row of the README's options table: its options, then its default.
OPTION_ROW = re.compile(r"^\| (`-.*?) \| ([^|]*) \|", re.MULTILINE)


def readme_defaults() -> dict[str, int]:
    """{a setting's name: the default the README's options table gives it}, for each row
    whose defaults are numbers or sizes (``100MB, 1000MB``), paired in order with the row's
    options that set a setting (``-i`` and ``--base-dir`` set none; ``--per-host`` does)."""
    from blobdl.cli._args import build_parser
    from blobdl.config import Settings, parse_size

    fields = {f for f in Settings.__dataclass_fields__} | {"per_host"}
    dests = {s: a.dest for a in build_parser()._actions for s in a.option_strings}
    found: dict[str, int] = {}
    for options, defaults in OPTION_ROW.findall(README.read_text()):
        values = [v.strip() for v in defaults.split(",") if v.strip()]
        if not values or not all(re.fullmatch(r"[0-9]+[A-Za-z]*", v) for v in values):
            continue  # no default, or one in words ("plan by size", an environment variable)
        names = [dests[o] for o in re.findall(r"`(-[-\w]+)", options)]
        names = [n for n in names if n in fields]
        assert len(names) == len(values), f"options {names} for defaults {values}"
        found.update(zip(names, map(parse_size, values), strict=True))
    return found


def test_the_readmes_option_defaults_are_the_ones_blobdl_uses() -> None:
    """Each default of the options table is what the command line, ``Settings()`` and
    ``download_many`` use: a default changed in one place and not the README (or the
    other way round) fails here, where the tests' own settings would hide it."""
    import inspect

    import blobdl
    from blobdl.batch._scheduler import PER_HOST
    from blobdl.cli._args import build_parser, settings_from

    documented = readme_defaults()
    assert {"connections", "retries", "max_backoff", "stall_timeout", "progress_interval",
            "checkpoint_interval", "max_redirects", "lock_timeout", "min_part_size",
            "max_part_size", "per_host"} <= set(documented)  # fmt: skip
    args = build_parser().parse_args(["http://x/"])
    cli, library = settings_from(args), blobdl.Settings()
    for name, value in documented.items():
        if name == "per_host":
            assert args.per_host is None and value == PER_HOST, "--per-host"
            continue
        assert getattr(cli, name) == value, f"the command line's {name}"
        assert getattr(library, name) == value, f"Settings().{name}"
    many = inspect.signature(blobdl.download_many).parameters
    assert many["per_host"].default == documented["per_host"]
    assert many["max_connections"].default == documented["connections"]
