"""House style: no function in the package is longer than 60 lines (a longer one is split into named steps)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlcoattn"
MAX_LINES = 60


def function_lengths(source: str) -> dict[str, int]:
    """Lines of every function and method (nested ones too) from its ``def`` to its last line, by
    qualified name."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}."
                if not isinstance(child, ast.ClassDef):
                    lengths[name[:-1]] = child.end_lineno - child.lineno + 1
            visit(child, name)

    visit(ast.parse(source), "")
    return lengths


def test_function_lengths_count_from_def_to_the_last_line():
    source = "class A:\n    def f(self):\n        def g():\n            pass\n\n        return g\n\n\ndef h(): pass\n"
    assert function_lengths(source) == {"A.f": 5, "A.f.g": 2, "h": 1}


def test_no_function_in_the_package_is_longer_than_60_lines():
    too_long = {
        f"{path.relative_to(PACKAGE.parent)}:{name}": n
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, n in function_lengths(path.read_text(encoding="utf-8")).items()
        if n > MAX_LINES
    }
    assert not too_long, f"functions over {MAX_LINES} lines: {too_long}"
