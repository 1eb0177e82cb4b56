"""JSONL in, JSONL out: one prediction (or one ``error``) per input row, in input order."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from .predictor import Predictor

__all__ = ["predict_jsonl"]


def _rows(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of every non-blank line."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line


def _parse(line: str, n: int, predictor: Predictor, root: Path, head: dict[str, Any]) -> Any:
    """The model input of one line (``head`` gets the fields to echo); ValueError names what is wrong."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"line {n}: not valid JSON: {e}") from None
    if not isinstance(row, dict):
        raise ValueError(f"line {n}: a row must be a JSON object, got {type(row).__name__}")
    if "id" in row:
        head["id"] = row["id"]
    return predictor.parse_row(row, n, root, head)


def predict_jsonl(
    predictor: Predictor,
    input_path: str | os.PathLike,
    output: TextIO | str | os.PathLike,
    *,
    task: str = "auto",
    top_k: int = 5,
    batch_size: int = 8,
    image_root: str | os.PathLike | None = None,
    progress: bool = True,
    generate_kwargs: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Predict every row of ``input_path`` and write one JSON line per row to ``output`` (a text
    stream, or a path: opened once the input is known to exist).

    Rows: ``{"image": path, "text": ...}`` for image-text models (relative paths resolve against
    ``image_root``, default the input file's folder), ``{"text": ...}`` for classifiers,
    ``{"prompt": ...}`` (or ``text``) for causal LMs; an ``id`` field is copied to the output.
    Output rows carry ``line`` (1-based), ``id``, the prediction, or ``error`` for a row that
    could not be used (bad JSON, missing or undecodable image, empty text, ...); the others go on.
    ``batch_size`` rows share one forward pass (generation runs row by row). A tqdm bar goes to
    stderr. Returns ``{"rows": ..., "ok": ..., "errors": ...}``.
    """
    task = predictor.resolve_task(task)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = Path(input_path)
    if path.is_dir():
        raise IsADirectoryError(f"--input must be a JSONL file, got a directory: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    root = Path(image_root) if image_root is not None else path.parent
    total = sum(1 for _ in _rows(path))
    counts = {"rows": 0, "ok": 0, "errors": 0}
    stream = nullcontext(output) if hasattr(output, "write") else open(output, "w", encoding="utf-8")  # noqa: SIM115
    with stream as out, tqdm(total=total, unit="row", file=sys.stderr, disable=not progress) as bar:
        chunk: list[tuple[int, str]] = []
        for row in _rows(path):
            chunk.append(row)
            if len(chunk) == batch_size:
                _run_chunk(predictor, chunk, task, top_k, root, generate_kwargs or {}, out, counts)
                bar.update(len(chunk))
                chunk = []
        if chunk:
            _run_chunk(predictor, chunk, task, top_k, root, generate_kwargs or {}, out, counts)
            bar.update(len(chunk))
    return counts


def _run_chunk(
    predictor: Predictor,
    chunk: list[tuple[int, str]],
    task: str,
    top_k: int,
    root: Path,
    generate_kwargs: dict[str, Any],
    output: TextIO,
    counts: dict[str, int],
) -> None:
    heads: list[dict[str, Any]] = []
    results: list[dict[str, Any] | None] = []  # None: filled from the model's results below
    inputs = []
    for n, line in chunk:
        head: dict[str, Any] = {"line": n}
        try:
            inputs.append(_parse(line, n, predictor, root, head))
            results.append(None)
        except ValueError as e:
            results.append({"error": str(e)})
        heads.append(head)
    it = iter(predictor.predict_rows(inputs, task, top_k, generate_kwargs))
    for head, result in zip(heads, results):
        result = result if result is not None else next(it)
        counts["rows"] += 1
        counts["errors" if "error" in result else "ok"] += 1
        output.write(json.dumps({**head, **result}, ensure_ascii=False) + "\n")
    output.flush()
