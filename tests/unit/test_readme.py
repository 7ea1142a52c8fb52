"""The README's promises name the tests that pin them: each named test must exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_test_the_readme_names_exists() -> None:
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", (REPO / "README.md").read_text()))
    defined = {
        match
        for path in (REPO / "tests").rglob("test_*.py")
        for match in re.findall(r"^def (test_[a-z0-9_]+)\(", path.read_text(), re.MULTILINE)
    }
    assert len(named) >= 30, "the promises name the tests that pin them"
    assert named <= defined, f"named in README.md but not defined: {sorted(named - defined)}"
