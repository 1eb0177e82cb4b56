"""Copy the tables benchmarks write into the docs that show them, so each table has one source.

A doc marks an included file with

    <!-- include: studies/results/convergence/table.md -->
    ...the file's text, rewritten by this script...
    <!-- end include -->

    python benchmarks/include_tables.py           # rewrite every marked block from its file
    python benchmarks/include_tables.py --check   # exit 1 and name the stale blocks (a test runs this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/*.md", "benchmarks/RESULTS.md")
BLOCK = re.compile(r"(<!-- include: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.S)


def included(text: str, root: Path = ROOT) -> str:
    """``text`` with every include block holding its file's current text."""
    def fill(m: re.Match[str]) -> str:
        source = root / m["path"]
        if not source.is_file():
            raise FileNotFoundError(f"include: {m['path']} does not exist")
        return m[1] + source.read_text(encoding="utf-8").rstrip("\n") + "\n" + m[4]

    return BLOCK.sub(fill, text)


def docs(root: Path = ROOT) -> list[Path]:
    return sorted({p for pattern in DOCS for p in root.glob(pattern)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale blocks (exit 1 if any)")
    args = parser.parse_args()
    stale = []
    for path in docs():
        text = path.read_text(encoding="utf-8")
        new = included(text)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "stale" if args.check else "rewritten"
    print(f"include_tables: {len(stale)} doc(s) {verb}" + "".join(f"\n  {p}" for p in stale))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
