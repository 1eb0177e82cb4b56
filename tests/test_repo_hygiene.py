"""The repo speaks of its subject by topic: no text file names the work period, the tracker issue or the
experiment code a result came from. That history lives in git (``git log``), and docs/results.md cites
commits, not the period they were made in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("vlcoattn", "tools", "configs", "docs", "benchmarks", "studies", "tests", ".ci", "README.md")
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
THIS_FILE = Path(__file__).resolve()  # the one file that spells references out: its examples test the pattern
BINARY_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".pdf", ".pt", ".bin", ".safetensors", ".tar", ".gz", ".zip"}

# Each alternative names one kind of reference; the comments say what it deliberately does not match.
HISTORY = re.compile("|".join([
    # a work period: "<session> 12", "<sessions> 4-6", "<session>-13"; also "this/the previous/three sessions".
    # pytest's scope="session" and start_new_session= carry no number and no such qualifier.
    r"\b[Ss]essions?[ -]\d+",
    r"\b(?:this|that|previous|next|last|earlier|later|one|two|three|four|five|several|\d+) sessions?\b",
    # a tracker issue: "<issue> 15", "<issue> #15", "<issues> #8", an anchor "...-<issue>-15".
    r"\b[Ii]ssues?[ -]?#?\d+",
    # a bare "#15" / "(#8)" / "#8 investigation": one or two digits. Not hex colours (#1f77b4, #333: three
    # or more hex digits), markdown anchors (#what-is-left), ruff's "noqa: E402" or "tensor #{i}" in an error
    # message; the one literal "tensor #1 ..." a test matches against that message is excepted by its prefix.
    r"(?<![\w&#/])(?<!tensor )#[1-9]\d?(?![\w.-])",
    # an experiment code: E1, X3, E12 (one letter E or X, one or two digits, standing alone). Not ruff's
    # three-digit rule codes (E501), coordinates (x0, y1: lower case) or names such as "E2E".
    r"\b[EX][1-9]\d?\b",
]))


def _text_files() -> list[Path]:
    files = []
    for name in SCANNED:
        top = ROOT / name
        candidates = [top] if top.is_file() else sorted(top.rglob("*")) if top.is_dir() else []
        for path in candidates:
            if path.is_file() and path.resolve() != THIS_FILE and path.suffix.lower() not in BINARY_SUFFIXES \
                    and not SKIPPED_DIRS & set(path.relative_to(ROOT).parts):
                files.append(path)
    return files


def history_references(text: str) -> list[tuple[int, str]]:
    """(line number, matched text) of every work-period, issue or experiment-code reference in ``text``."""
    return [(n, m.group(0)) for n, line in enumerate(text.splitlines(), 1) for m in HISTORY.finditer(line)]


@pytest.mark.parametrize("text,expected", [
    ("the recipe of session 13 and sessions 15–17", ["session 13", "sessions 15"]),
    ("ran over three sessions; this session started", ["three sessions", "this session"]),
    ("the best recipe of issue #15, see issue 8 and issues #3", ["issue #15", "issue 8", "issues #3"]),
    ("[results](results.md#recipe-work-issue-15)", ["issue-15"]),
    ("what made grounding work (#8); the #8 investigation", ["#8", "#8"]),
    ("| E2 frozen text | X3 demo | E12 |", ["E2", "X3", "E12"]),
    ('@pytest.fixture(scope="session") start_new_session=True', []),
    ("color='#1f77b4', '#151515', '#333', '#000' and x0, y1 = box; # noqa: E402 E731", []),
    ("[left](results.md#what-is-left), docs/design.md §3, step #{i}", []),
    ("tensor #1 'y' has shape (4,); E2E, EfficientNet-B0, T5", []),
])
def test_the_pattern_finds_references_and_only_them(text, expected):
    assert [hit for _, hit in history_references(text)] == expected


def test_no_file_names_a_work_period_an_issue_or_an_experiment_code():
    assert _text_files(), "nothing scanned: the repo layout changed under this test"
    found = []
    for path in _text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found += [f"{path.relative_to(ROOT)}:{n}: {hit}" for n, hit in history_references(text)]
    assert not found, "history belongs in git, not in the repo's text:\n" + "\n".join(found)


CONFLICT_MARKER = re.compile(r"^(?:<{7} |>{7} |={7}$)", re.M)


def test_no_file_keeps_a_merge_conflict_marker():
    """A merge resolved in a hurry can commit ``<<<<<<< HEAD`` ... ``>>>>>>> branch``; docs render it as text."""
    assert CONFLICT_MARKER.findall("a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> topic\n") == ["<<<<<<< ", "=======",
                                                                                         ">>>>>>> "]
    assert not CONFLICT_MARKER.findall("=========  =====\n# ======= heading rule\n")
    found = [str(path.relative_to(ROOT)) for path in _text_files()
             if CONFLICT_MARKER.search(path.read_text(encoding="utf-8", errors="replace"))]
    assert not found, f"merge conflict markers in: {found}"
