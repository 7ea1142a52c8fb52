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
