"""Converters from real dataset layouts (and the synthetic generator) to shard directories.

Each ``convert_*`` reads one public format, writes ``out_dir`` through a :class:`ShardSink`
(progress bar, ``dataset.json``) and returns the :class:`DatasetInfo`. Input records that cannot be
used (missing image file, box outside the image, empty text, ...) are skipped and counted in
``dataset.json["skipped"]``; an unreadable input file is a ``ValueError`` / ``FileNotFoundError``.
Images are copied byte for byte unless ``max_side`` asks for a downscale (then re-encoded, boxes
scaled); boxes always refer to the stored image after EXIF orientation.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import pickle
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image
from tqdm import tqdm
from webdataset.tariterators import tarfile_samples

from .answers import normalize_answer
from .image import ImageDecodeError, decode_image, encode_image, image_format, image_size
from .schema import DatasetInfo, SampleError, sample_problems
from .shards import ShardSink, resolve_shards
from .synthetic import ANSWERS, SPLITS, SyntheticConfig, synthetic_samples

BOX_FORMATS = ("xyxy", "xywh")


class ImageStore:
    """Reads images below ``root`` once each (a small cache: VQA asks ~5 questions per image) and
    downscales them to ``max_side`` when asked."""

    def __init__(self, root: str | Path, max_side: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image directory {self.root} does not exist")
        if max_side is not None and max_side < 8:
            raise ValueError(f"--max-side must be >= 8, got {max_side}")
        self.max_side = max_side
        self.load = functools.lru_cache(maxsize=16)(self._load)

    def _load(self, relpath: str) -> tuple[bytes, str, tuple[int, int], float]:
        """(bytes, suffix, (width, height), scale applied to the original pixels)."""
        path = self.root / relpath
        if not path.is_file():
            raise SampleError("missing_image", f"image file {path} not found")
        data = path.read_bytes()
        try:
            size = image_size(data)
            if self.max_side is None or max(size) <= self.max_side:
                return data, image_format(data), size, 1.0
            image = decode_image(data)
            scale = self.max_side / max(image.size)
            new_size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
            fmt = "PNG" if image_format(data) == "png" else "JPEG"
            resized = image.resize(new_size, Image.BICUBIC)
            return (
                encode_image(resized, fmt),
                fmt.lower().replace("jpeg", "jpg"),
                new_size,
                new_size[0] / size[0],
            )
        except ImageDecodeError as e:
            raise SampleError("bad_image", str(e)) from e


def xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    """[x, y, w, h] (COCO) -> [x0, y0, x1, y1]."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4):
        raise SampleError("bad_box", f"box must be 4 numbers, got {box!r}")
    x, y, w, h = box
    return [x, y, x + w, y + h]


def _write_image_sample(
    sink: ShardSink, store: ImageStore, key: str, relpath: str, record: dict[str, Any]
) -> None:
    """Load the image (maybe downscaled, boxes follow) and write the sample, or count it skipped."""
    try:
        data, ext, size, scale = store.load(relpath)
    except SampleError as e:
        sink.skip(e.reason, f"{key}: {e}")
        return
    if scale != 1.0 and "boxes" in record and not sample_problems(record):  # sink.add reports bad ones
        record["boxes"] = [[round(v * scale, 2) for v in box] for box in record["boxes"]]
    sink.add(key, record, data, ext, size)


T = TypeVar("T")


def write_order(items: Iterable[T], shuffle: bool) -> list[T]:
    """The order samples are written in: a seeded shuffle by default, as shards are usually written.
    A label- or task-sorted source (many public CSVs are) would otherwise give single-class shards and,
    through a shuffle buffer smaller than a class, single-class batches that train a useless model.
    ``shuffle=False`` keeps the input order."""
    items = list(items)
    if shuffle:
        random.Random("write-order").shuffle(items)
    return items


def _read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} file {path} is not valid JSON: {e}") from e


def _progress(items: Iterable[Any], desc: str, total: int | None, progress: bool) -> Iterable[Any]:
    return tqdm(items, desc=desc, total=total, unit="rec", disable=not progress, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- jsonl


def convert_jsonl(
    input_path: str | Path,
    images: str | Path | None,
    out_dir: str | Path,
    *,
    box_format: str = "xyxy",
    normalize_answers: bool = False,
    max_side: int | None = None,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
    shuffle: bool = True,
) -> DatasetInfo:
    """Generic JSONL: one object per line with ``text``, ``task`` and, as the task needs, ``image``
    (path relative to ``images``), ``answers`` (list) or ``answer`` (str), ``boxes`` (``box_format``
    pixels), ``label``, ``meta`` and an optional ``id`` (the sample key; else the line number)."""
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box format must be one of {BOX_FORMATS}, got {box_format!r}")
    input_path = Path(input_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"input file {input_path} does not exist")
    lines = input_path.read_text(encoding="utf-8").splitlines()
    store = ImageStore(images, max_side) if images is not None else None
    options = {"input": str(input_path), "box_format": box_format, "max_side": max_side}
    with ShardSink(out_dir, "jsonl", shard_size=shard_size, overwrite=overwrite, options=options) as sink:
        for lineno, line in _progress(write_order(enumerate(lines, 1), shuffle), "jsonl", len(lines), progress):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                sink.skip("bad_json", f"line {lineno}: {e}")
                continue
            if not isinstance(raw, dict):
                sink.skip("bad_json", f"line {lineno}: not a JSON object")
                continue
            key = str(raw.pop("id", f"{lineno:09d}"))
            relpath = raw.pop("image", None)
            if "answer" in raw:
                answer = raw.pop("answer")
                raw.setdefault("answers", [answer] if isinstance(answer, str) else answer)
            if normalize_answers and isinstance(raw.get("answers"), list):
                raw["answers"] = [normalize_answer(a) if isinstance(a, str) else a for a in raw["answers"]]
            if box_format == "xywh" and isinstance(raw.get("boxes"), list):
                try:
                    raw["boxes"] = [xywh_to_xyxy(b) for b in raw["boxes"]]
                except (SampleError, TypeError) as e:
                    sink.skip("bad_box", f"line {lineno}: {e}")
                    continue
            if relpath is None:
                sink.add(key, raw)
            elif store is None:
                sink.skip("missing_image", f"line {lineno}: has an image but no --images directory was given")
            else:
                _write_image_sample(sink, store, key, str(relpath), raw)
    return sink.info


# ---------------------------------------------------------------------------------------------- VQA v2


def _vqa_image_path(store: ImageStore, subtype: str, image_id: int, pattern: str | None) -> str:
    """Relative path of a COCO image: ``pattern`` or the 2014 / 2017 naming, flat or in a subtype dir."""
    names = (
        [pattern.format(image_id=image_id, subtype=subtype)]
        if pattern
        else [
            f"COCO_{subtype}_{image_id:012d}.jpg",
            f"{image_id:012d}.jpg",
        ]
    )
    candidates = [n for name in names for n in (name, f"{subtype}/{name}")]
    return next((c for c in candidates if (store.root / c).is_file()), candidates[0])


def convert_vqa2(
    questions: str | Path,
    annotations: str | Path,
    images: str | Path,
    out_dir: str | Path,
    *,
    image_pattern: str | None = None,
    max_side: int | None = None,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
    shuffle: bool = True,
) -> DatasetInfo:
    """The official VQA v2 pair (``v2_OpenEnded_mscoco_*_questions.json`` + ``v2_mscoco_*_annotations.json``).

    One sample per question with all 10 annotator answers, normalized as the official evaluation
    does (the metric needs all 10). ``image_pattern`` such as ``"COCO_val2014_{image_id:012d}.jpg"``
    overrides the image file naming.
    """
    qdata = _read_json(questions, "questions")
    adata = _read_json(annotations, "annotations")
    if not isinstance(qdata, dict) or "questions" not in qdata:
        raise ValueError(f"{questions}: not a VQA questions file (no 'questions' list)")
    if not isinstance(adata, dict) or "annotations" not in adata:
        raise ValueError(f"{annotations}: not a VQA annotations file (no 'annotations' list)")
    subtype = qdata.get("data_subtype", "")
    by_qid = {a["question_id"]: a for a in adata["annotations"]}
    store = ImageStore(images, max_side)
    qs = write_order(sorted(qdata["questions"], key=lambda q: (q["image_id"], q["question_id"])), shuffle)
    options = {
        "questions": str(questions),
        "annotations": str(annotations),
        "data_subtype": subtype,
        "max_side": max_side,
    }
    with ShardSink(out_dir, "vqa2", shard_size=shard_size, overwrite=overwrite, options=options) as sink:
        for q in _progress(qs, "vqa2", len(qs), progress):
            key = f"vqa-{q['question_id']}"
            ann = by_qid.get(q["question_id"])
            if ann is None:
                sink.skip("no_annotation", f"{key}: question has no annotation")
                continue
            answers = [normalize_answer(a["answer"]) for a in ann.get("answers", [])]
            record = {
                "task": "vqa",
                "text": q["question"],
                "answers": [a for a in answers if a],
                "meta": {
                    "question_id": q["question_id"],
                    "image_id": q["image_id"],
                    "question_type": ann.get("question_type"),
                    "answer_type": ann.get("answer_type"),
                    "multiple_choice_answer": normalize_answer(ann.get("multiple_choice_answer", "")),
                },
            }
            relpath = _vqa_image_path(store, subtype, q["image_id"], image_pattern)
            _write_image_sample(sink, store, key, relpath, record)
    return sink.info


# ---------------------------------------------------------------------------------------------- RefCOCO


def load_refs(path: str | Path, allow_pickle: bool = False) -> list[dict[str, Any]]:
    """The refer toolkit's refs: ``refs.json`` or (only with ``allow_pickle``) ``refs(unc).p``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"refs file {path} does not exist")
    if path.suffix in (".p", ".pkl", ".pickle"):
        if not allow_pickle:
            raise ValueError(
                f"{path} is a pickle, and unpickling can run arbitrary code: pass --allow-pickle if you "
                "trust the file (or convert it to refs.json first)"
            )
        with path.open("rb") as f:
            refs = pickle.load(f)
    else:
        refs = _read_json(path, "refs")
    if not isinstance(refs, list) or not all(isinstance(r, dict) and "sentences" in r for r in refs):
        raise ValueError(f"{path}: not a refer refs file (a list of refs with 'sentences')")
    return refs


def convert_refcoco(
    refs: str | Path,
    instances: str | Path,
    images: str | Path,
    out_dir: str | Path,
    *,
    split: str,
    allow_pickle: bool = False,
    max_side: int | None = None,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
    shuffle: bool = True,
) -> DatasetInfo:
    """RefCOCO / RefCOCO+ / RefCOCOg in the refer layout: one grounding sample per sentence of
    every ref in ``split``; the box is the referred annotation's COCO ``bbox`` (xywh -> xyxy)."""
    all_refs = load_refs(refs, allow_pickle)
    inst = _read_json(instances, "instances")
    if not isinstance(inst, dict) or not {"images", "annotations"} <= set(inst):
        raise ValueError(f"{instances}: not a COCO instances file (needs 'images' and 'annotations')")
    chosen = [r for r in all_refs if r.get("split") == split]
    if not chosen:
        splits = sorted({str(r.get("split")) for r in all_refs})
        raise ValueError(f"no refs in split {split!r}; the file has splits {splits}")
    anns = {a["id"]: a for a in inst["annotations"]}
    image_files = {im["id"]: im["file_name"] for im in inst["images"]}
    categories = {c["id"]: c["name"] for c in inst.get("categories", [])}
    store = ImageStore(images, max_side)
    sentences = write_order(
        [(ref, sent) for ref in sorted(chosen, key=lambda r: (r["image_id"], r["ref_id"])) for sent in ref["sentences"]],
        shuffle,
    )
    options = {"refs": str(refs), "instances": str(instances), "split": split, "max_side": max_side}
    with ShardSink(out_dir, "refcoco", shard_size=shard_size, overwrite=overwrite, options=options) as sink:
        for ref, sent in _progress(sentences, f"refcoco {split}", len(sentences), progress):
            key = f"ref-{ref['ref_id']}-{sent.get('sent_id', ref['sentences'].index(sent))}"
            ann = anns.get(ref["ann_id"])
            if ann is None or ref["image_id"] not in image_files:
                sink.skip(
                    "no_annotation", f"{key}: annotation {ref['ann_id']} or its image is not in {instances}"
                )
                continue
            try:
                box = xywh_to_xyxy(ann["bbox"])
            except SampleError as e:
                sink.skip(e.reason, f"{key}: {e}")
                continue
            record = {
                "task": "ground",
                "text": (sent.get("raw") or sent.get("sent") or "").strip(),
                "boxes": [box],
                "meta": {
                    "ref_id": ref["ref_id"],
                    "ann_id": ref["ann_id"],
                    "image_id": ref["image_id"],
                    "sent_id": sent.get("sent_id"),
                    "category": categories.get(ref.get("category_id"), ref.get("category_id")),
                    "split": split,
                },
            }
            _write_image_sample(sink, store, key, image_files[ref["image_id"]], record)
    return sink.info


# ---------------------------------------------------------------------------------------------- text

SPLIT_NAMES = ("train", "test")


def _read_text(path: Path) -> str:
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


def _check_split_dirs(out_dir: Path, overwrite: bool) -> None:
    """Refuse before writing anything when a split dir already holds shards (ShardSink's rule)."""
    for split in SPLIT_NAMES:
        folder = out_dir / split
        if not overwrite and (any(folder.glob("shard-*.tar")) or (folder / "dataset.json").exists()):
            raise ValueError(
                f"{folder} already holds shards or dataset.json; pass --overwrite to replace them"
            )


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
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
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
                yield key, {text_column: _read_text(file), label_column: folder.name}
        return
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(_read_text(path)))
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
        for key, record in _progress(write_order(records, shuffle), source, len(records), progress):
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
    _check_split_dirs(out_dir, overwrite)
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
        for ui, chunk in enumerate(_text_units(_read_text(file), unit)):
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
        for key, record, skip in _progress(write_order(units, shuffle), "text", None, progress):
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
    _check_split_dirs(out_dir, overwrite)
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


# ---------------------------------------------------------------------------------------------- synthetic


def write_synthetic(
    out_dir: str | Path,
    num: int,
    *,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    val_num: int | None = None,
    test_num: int | None = None,
    holdout_num: int | None = None,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, DatasetInfo]:
    """CLEVR-lite scenes into ``out_dir/{train,val,test}`` (+ ``holdout`` when the config holds
    pairs out). ``num`` train scenes; val/test default to ``num // 10`` (at least 1) scenes each."""
    config = config or SyntheticConfig()
    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    small = max(1, num // 10)
    counts = {
        "train": num,
        "val": small if val_num is None else val_num,
        "test": small if test_num is None else test_num,
    }
    if config.holdout:
        counts["holdout"] = counts["test"] if holdout_num is None else holdout_num
    elif holdout_num:
        raise ValueError("--holdout-num needs --split-holdout")
    infos = {}
    per_scene = config.questions_per_scene + config.refs_per_scene
    for split in (s for s in SPLITS if counts.get(s)):
        options = {"split": split, "seed": seed, "scenes": counts[split], **asdict(config)}
        with ShardSink(
            Path(out_dir) / split,
            "synthetic",
            shard_size=shard_size,
            overwrite=overwrite,
            options=options,
            answer_vocab=ANSWERS,
        ) as sink:
            samples = synthetic_samples(split, counts[split], seed, config)
            for key, data, ext, record in _progress(
                samples, f"synthetic {split}", counts[split] * per_scene, progress
            ):
                sink.write(key, record, data, ext, (config.image_size, config.image_size))
        infos[split] = sink.info
    return infos
