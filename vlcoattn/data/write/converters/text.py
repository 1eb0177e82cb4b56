"""Text-only sources to shards: labelled text for classification (folders, JSONL, CSV) and plain
text for language modelling, with stratified / seeded splits; and reading the records back."""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from webdataset.tariterators import tarfile_samples

from ...read.shards import resolve_shards
from ...schema import DatasetInfo, SampleError, sample_problems
from ..sink import ShardSink
from .common import (
    add_shard_command,
    check_split_dirs,
    progress_bar,
    report,
    sink_options,
    write_order,
)

SPLIT_NAMES = ("train", "test")


def read_text_file(path: Path) -> str:
    """UTF-8 text, falling back to Latin-1 (never fails) for legacy corpora."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def text_records(sources: str | Path | Sequence[str | Path]) -> Iterator[dict[str, Any]]:
    """The JSON records of shard directories (or their ``dataset.json``, or shard patterns) in shard
    order, images not decoded; samples without a readable JSON object are left out. For statistics and
    baselines that need only the texts and the targets."""
    shards, _ = resolve_shards(sources)
    for sample in tarfile_samples([{"url": s.url} for s in shards]):
        try:
            record = json.loads(sample["json"])
        except (KeyError, ValueError):
            continue
        if isinstance(record, dict):
            yield record


def _split_counts(n: int, test_fraction: float, what: str) -> int:
    """Test items out of ``n``: round(n * fraction), at least 1 and at most n - 1."""
    if n < 2:
        raise ValueError(f"{what} has {n} item(s); a train/test split needs at least 2")
    return min(n - 1, max(1, round(n * test_fraction)))


def _check_fraction(test_fraction: float) -> None:
    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction must lie strictly between 0 and 1, got {test_fraction}")


def _class_folders(path: Path) -> list[Path]:
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{path}: expected one sub-folder per class, found none")
    if len(classes) == 1:
        raise ValueError(
            f"{path}: found a single class folder ({classes[0].name!r}); classification needs one sub-folder "
            "per class, at least two (did you pass a class folder instead of its parent?)"
        )
    return classes


def _jsonl_rows(path: Path, text_column: str, label_column: str) -> list[tuple[str, Any]]:
    """(key, row dict or SampleError for an unparseable line); ValueError if a column is in no row."""
    rows: list[tuple[str, Any]] = []
    fields: set[str] = set()
    for lineno, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append((f"{lineno:09d}", SampleError("bad_json", f"line {lineno}: {e}")))
            continue
        if not isinstance(row, dict):
            rows.append((f"{lineno:09d}", SampleError("bad_json", f"line {lineno}: not a JSON object")))
            continue
        fields |= set(row)
        rows.append((f"{lineno:09d}", row))
    missing = [c for c in (text_column, label_column) if c not in fields]
    if fields and missing:
        raise ValueError(
            f"{path}: no record has the field(s) {missing}; the records have {sorted(fields)} "
            "(choose with --text-column / --label-column)"
        )
    return rows


def _labelled_rows(path: Path, text_column: str, label_column: str) -> Iterator[tuple[str, Any]]:
    """(key, {"text", "label"} row or SampleError) from class folders, a CSV or a JSONL file."""
    if path.is_dir():
        for folder in _class_folders(path):
            for file in sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".")):
                key = f"{folder.name}-{file.relative_to(folder).with_suffix('')}"
                yield key, {text_column: read_text_file(file), label_column: folder.name}
        return
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(read_text_file(path)))
        fields = reader.fieldnames or []
        if text_column not in fields or label_column not in fields:
            raise ValueError(
                f"{path}: needs columns {text_column!r} and {label_column!r}, has {fields} "
                "(choose with --text-column / --label-column)"
            )
        yield from ((f"{i:09d}", row) for i, row in enumerate(reader))
    elif path.suffix in (".jsonl", ".json"):
        yield from _jsonl_rows(path, text_column, label_column)
    else:
        raise ValueError(f"{path}: expected a class folder, a .csv or a .jsonl file")


def _textcls_records(
    path: Path, text_column: str, label_column: str
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str]]]:
    """Valid ``cls`` records (key, record) and the skipped rows (reason, message); ValueError if none
    is valid."""
    records, skipped = [], []
    for key, row in _labelled_rows(path, text_column, label_column):
        if isinstance(row, SampleError):
            skipped.append((row.reason, f"{key}: {row}"))
            continue
        text, label = row.get(text_column), row.get(label_column)
        record = {
            "task": "cls",
            "text": text.strip() if isinstance(text, str) else text,
            "label": str(label).strip() if label is not None else None,
        }
        problems = sample_problems(record)
        if problems:
            skipped.append((problems[0][0], f"{key}: {problems[0][1]}"))
        else:
            records.append((key, record))
    if not records:
        reasons = Counter(reason for reason, _ in skipped)
        raise ValueError(
            f"{path}: no usable labelled text (skipped {dict(reasons) or 'nothing: no records'})"
        )
    return records, skipped


def _write_records(
    out_dir: Path,
    source: str,
    records: Sequence[tuple[str, dict[str, Any]]],
    skipped: Sequence[tuple[str, str]],
    options: dict[str, Any],
    *,
    shard_size: int,
    overwrite: bool,
    progress: bool,
    shuffle: bool,
) -> DatasetInfo:
    with ShardSink(out_dir, source, shard_size=shard_size, overwrite=overwrite, options=options) as sink:
        for reason, message in skipped:
            sink.skip(reason, message)
        for key, record in progress_bar(write_order(records, shuffle), source, len(records), progress):
            sink.add(key, record)
    return sink.info


def convert_textcls(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
    shuffle: bool = True,
) -> DatasetInfo:
    """Labelled text for sequence classification: ``DIR/<class>/*`` (as BBC News; at least two class
    folders) or the ``text_column`` / ``label_column`` of a CSV or JSONL file (ValueError naming the
    columns that exist when one is missing). Rows without text or label are skipped and counted."""
    path = Path(input_path)
    records, skipped = _textcls_records(path, text_column, label_column)
    options = {"input": str(path), "text_column": text_column, "label_column": label_column}
    return _write_records(
        Path(out_dir),
        "textcls",
        records,
        skipped,
        options,
        shard_size=shard_size,
        overwrite=overwrite,
        progress=progress,
        shuffle=shuffle,
    )


def stratified_split(
    records: Sequence[tuple[str, dict[str, Any]]], test_fraction: float, seed: int
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Seeded per-class split of ``cls`` records: for each label in sorted order, one
    ``random.Random(seed)`` shuffles its records and the first round(n * test_fraction) of them (at
    least 1, at most n - 1) go to ``test``. Both splits keep the input order. Needs at least two
    labels and two records per label, so both splits see every label."""
    _check_fraction(test_fraction)
    by_label: dict[str, list[int]] = {}
    for i, (_, record) in enumerate(records):
        by_label.setdefault(record["label"], []).append(i)
    if len(by_label) < 2:
        raise ValueError(f"a stratified split needs at least two labels, found {sorted(by_label)}")
    rng = random.Random(seed)
    test: set[int] = set()
    for label in sorted(by_label):
        indices = by_label[label]
        n_test = _split_counts(len(indices), test_fraction, f"label {label!r}")
        test.update(rng.sample(indices, len(indices))[:n_test])
    return {
        "train": [r for i, r in enumerate(records) if i not in test],
        "test": [r for i, r in enumerate(records) if i in test],
    }


def convert_textcls_split(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    text_column: str = "text",
    label_column: str = "label",
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
    shuffle: bool = True,
) -> dict[str, DatasetInfo]:
    """:func:`convert_textcls` into ``out_dir/train`` and ``out_dir/test`` through
    :func:`stratified_split` (fixed by ``seed``). Each ``dataset.json`` records in its options the
    split, seed, fraction and the per-label counts of both splits; rows skipped before the split are
    counted in train's ``skipped``."""
    path, out_dir = Path(input_path), Path(out_dir)
    _check_fraction(test_fraction)
    check_split_dirs(out_dir, SPLIT_NAMES, overwrite)
    records, skipped = _textcls_records(path, text_column, label_column)
    splits = stratified_split(records, test_fraction, seed)
    counts = {
        split: dict(sorted(Counter(r["label"] for _, r in recs).items())) for split, recs in splits.items()
    }
    infos = {}
    for split, recs in splits.items():
        options = {
            "input": str(path),
            "text_column": text_column,
            "label_column": label_column,
            "split": split,
            "test_fraction": test_fraction,
            "seed": seed,
            "label_counts": counts,
        }
        infos[split] = _write_records(
            out_dir / split,
            "textcls",
            recs,
            skipped if split == "train" else (),
            options,
            shard_size=shard_size,
            overwrite=overwrite,
            progress=progress,
            shuffle=shuffle,
        )
    return infos


TEXT_UNITS = ("line", "paragraph", "file")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n")


def _text_units(text: str, unit: str) -> list[str]:
    if unit == "line":
        return text.splitlines()
    if unit == "paragraph":
        return _PARAGRAPH_BREAK.split(text)
    return [text]


def _text_files(inputs: Sequence[str | Path], unit: str) -> list[Path]:
    if unit not in TEXT_UNITS:
        raise ValueError(f"unit must be one of {TEXT_UNITS}, got {unit!r}")
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(path.rglob("*.txt"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    if not files:
        raise ValueError(f"no text files found in {list(map(str, inputs))}")
    return files


# a text unit: (key, record, None) or, skipped, (key, None, (reason, message))
_Unit = tuple[str, dict[str, Any] | None, tuple[str, str] | None]


def _lm_units(files: Sequence[tuple[int, Path]], unit: str, min_chars: int) -> Iterator[_Unit]:
    for fi, file in files:
        for ui, chunk in enumerate(_text_units(read_text_file(file), unit)):
            key = f"{fi:06d}-{ui:07d}"
            chunk = " ".join(chunk.split())
            if len(chunk) < min_chars:
                yield key, None, ("too_short", f"{file} unit {ui}: {len(chunk)} < {min_chars} chars")
            else:
                yield key, {"task": "lm", "text": chunk, "meta": {"file": file.name}}, None


def _nonempty_units(
    files: Sequence[tuple[int, Path]], unit: str, min_chars: int, what: str
) -> Iterator[_Unit]:
    """:func:`_lm_units`, with a ValueError up front (before any shard is written) if none is kept."""
    units = _lm_units(files, unit, min_chars)
    head: list[_Unit] = []
    for item in units:
        head.append(item)
        if item[1] is not None:
            return itertools.chain(head, units)
    raise ValueError(
        f"empty corpus: {what} ({len(files)} file(s)) holds no {unit} of at least {min_chars} non-blank "
        f"character(s) ({len(head)} unit(s) skipped)"
    )


def _write_units(
    out_dir: Path,
    units: Iterator[_Unit],
    options: dict[str, Any],
    *,
    shard_size: int,
    overwrite: bool,
    progress: bool,
    shuffle: bool,
) -> DatasetInfo:
    with ShardSink(out_dir, "text", shard_size=shard_size, overwrite=overwrite, options=options) as sink:
        for key, record, skip in progress_bar(write_order(units, shuffle), "text", None, progress):
            if skip is not None:
                sink.skip(*skip)
            else:
                sink.add(key, record)
    return sink.info


def convert_text(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    unit: str = "paragraph",
    min_chars: int = 1,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
    shuffle: bool = True,
) -> DatasetInfo:
    """Plain text for language modelling, one sample per ``unit`` (line, paragraph or file) of the
    given files (folders: their ``*.txt`` files, recursively), whitespace collapsed. Units shorter than
    ``min_chars`` are skipped; ValueError (nothing written) when no unit is left."""
    files = _text_files(inputs, unit)
    units = _nonempty_units(list(enumerate(files)), unit, min_chars, "the input")
    options = {"inputs": [str(f) for f in files], "unit": unit, "min_chars": min_chars}
    return _write_units(
        Path(out_dir), units, options, shard_size=shard_size, overwrite=overwrite, progress=progress,
        shuffle=shuffle,
    )


def convert_text_split(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    test_fraction: float = 0.1,
    seed: int = 0,
    unit: str = "paragraph",
    min_chars: int = 1,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
    shuffle: bool = True,
) -> dict[str, DatasetInfo]:
    """:func:`convert_text` into ``out_dir/train`` and ``out_dir/test`` with whole documents held out:
    ``random.Random(seed)`` picks round(n_files * test_fraction) files (at least 1, at most n - 1) for
    test. Sample keys are those of the unsplit conversion; options list each split's files."""
    _check_fraction(test_fraction)
    files = _text_files(inputs, unit)
    n_test = _split_counts(len(files), test_fraction, "the input (counted in files)")
    test = set(random.Random(seed).sample(range(len(files)), n_test))
    chosen = {
        "train": [(i, f) for i, f in enumerate(files) if i not in test],
        "test": [(i, f) for i, f in enumerate(files) if i in test],
    }
    out_dir = Path(out_dir)
    check_split_dirs(out_dir, SPLIT_NAMES, overwrite)
    units = {s: _nonempty_units(fs, unit, min_chars, f"the {s} split") for s, fs in chosen.items()}
    infos = {}
    for split, split_files in chosen.items():
        options = {
            "inputs": [str(f) for _, f in split_files],
            "unit": unit,
            "min_chars": min_chars,
            "split": split,
            "test_fraction": test_fraction,
            "seed": seed,
            "files": {s: len(fs) for s, fs in chosen.items()},
        }
        infos[split] = _write_units(
            out_dir / split,
            units[split],
            options,
            shard_size=shard_size,
            overwrite=overwrite,
            progress=progress,
            shuffle=shuffle,
        )
    return infos


def _add_split_options(p: argparse.ArgumentParser, held_out: str) -> None:
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help=f"{held_out}: writes OUT/train and OUT/test (default 0: one directory)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``make-shards textcls`` and ``make-shards text``."""
    p = add_shard_command(sub, "textcls", "labelled text: class folders (as BBC News), CSV or JSONL")
    p.add_argument("--input", required=True, help="DIR/<class>/*.txt, a .csv or a .jsonl file")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    _add_split_options(p, "stratified held-out share per class")
    p.set_defaults(run=_run_textcls)

    p = add_shard_command(sub, "text", "plain text for language modelling")
    p.add_argument("--input", required=True, nargs="+", help="text files or folders of *.txt")
    p.add_argument(
        "--unit", choices=TEXT_UNITS, default="paragraph", help="one sample per ..."
    )
    p.add_argument("--min-chars", type=int, default=1, help="skip shorter units")
    _add_split_options(p, "share of FILES held out")
    p.set_defaults(run=_run_text)


def _run_textcls(args: argparse.Namespace) -> int:
    columns = {"text_column": args.text_column, "label_column": args.label_column, **sink_options(args)}
    if args.test_fraction:
        return report(args.out, convert_textcls_split(
            args.input, args.out, test_fraction=args.test_fraction, seed=args.seed, **columns
        ))
    return report(args.out, convert_textcls(args.input, args.out, **columns))


def _run_text(args: argparse.Namespace) -> int:
    units = {"unit": args.unit, "min_chars": args.min_chars, **sink_options(args)}
    if args.test_fraction:
        return report(args.out, convert_text_split(
            args.input, args.out, test_fraction=args.test_fraction, seed=args.seed, **units
        ))
    return report(args.out, convert_text(args.input, args.out, **units))
