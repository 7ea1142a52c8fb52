"""A pattern that must match a whole value is matched whole: ``re.match`` with ``$`` passes a
value with a final newline (``sha256:<hex>\\n`` once became a file name)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "blobdl"


def test_no_pattern_in_the_package_ends_with_a_dollar() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if call and node.func.attr in ("compile", "match", "search") and node.args:  # type: ignore[union-attr]
                first = node.args[0]  # type: ignore[attr-defined]
                if isinstance(first, ast.Constant) and str(first.value).endswith("$"):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == [], "use re.fullmatch (or \\Z) instead of $: " + ", ".join(found)
