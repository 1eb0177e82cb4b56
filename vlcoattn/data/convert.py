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
import json
import pickle
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from .answers import normalize_answer
from .image import ImageDecodeError, decode_image, encode_image, image_format, image_size
from .schema import DatasetInfo, SampleError, sample_problems
from .shards import ShardSink
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
        for lineno, line in _progress(enumerate(lines, 1), "jsonl", len(lines), progress):
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
    qs = sorted(qdata["questions"], key=lambda q: (q["image_id"], q["question_id"]))
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
    sentences = [
        (ref, sent)
        for ref in sorted(chosen, key=lambda r: (r["image_id"], r["ref_id"]))
        for sent in ref["sentences"]
    ]
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


def _read_text(path: Path) -> str:
    """UTF-8 text, falling back to Latin-1 (never fails) for legacy corpora."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _labelled_rows(path: Path, text_column: str, label_column: str) -> Iterator[tuple[str, str, str]]:
    """(key, text, label) from a class-per-folder tree, a CSV file or a JSONL file."""
    if path.is_dir():
        classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise ValueError(f"{path}: expected one sub-folder per class, found none")
        for folder in classes:
            for file in sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".")):
                yield (
                    f"{folder.name}-{file.relative_to(folder).with_suffix('')}",
                    _read_text(file),
                    folder.name,
                )
        return
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(_read_text(path)))
        rows: Iterable[dict[str, Any]] = reader
        fields = reader.fieldnames or []
        if text_column not in fields or label_column not in fields:
            raise ValueError(f"{path}: needs columns {text_column!r} and {label_column!r}, has {fields}")
    elif path.suffix in (".jsonl", ".json"):
        rows = (json.loads(line) for line in _read_text(path).splitlines() if line.strip())
    else:
        raise ValueError(f"{path}: expected a class folder, a .csv or a .jsonl file")
    for i, row in enumerate(rows):
        yield f"{i:09d}", row.get(text_column), row.get(label_column)


def convert_textcls(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
) -> DatasetInfo:
    """Labelled text for sequence classification: ``DIR/<class>/*.txt`` (as BBC News) or the
    ``text_column`` / ``label_column`` of a CSV or JSONL file."""
    path = Path(input_path)
    rows = list(_labelled_rows(path, text_column, label_column))
    options = {"input": str(path), "text_column": text_column, "label_column": label_column}
    with ShardSink(out_dir, "textcls", shard_size=shard_size, overwrite=overwrite, options=options) as sink:
        for key, text, label in _progress(rows, "textcls", len(rows), progress):
            record = {
                "task": "cls",
                "text": text.strip() if isinstance(text, str) else text,
                "label": str(label).strip() if label is not None else None,
            }
            sink.add(key, record)
    return sink.info


TEXT_UNITS = ("line", "paragraph", "file")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n")


def _text_units(text: str, unit: str) -> list[str]:
    if unit == "line":
        return text.splitlines()
    if unit == "paragraph":
        return _PARAGRAPH_BREAK.split(text)
    return [text]


def convert_text(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    unit: str = "paragraph",
    min_chars: int = 1,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
) -> DatasetInfo:
    """Plain text for language modelling, one sample per ``unit`` (line, paragraph or file) of the
    given files (folders: their ``*.txt`` files, recursively). Units shorter than ``min_chars``
    are skipped."""
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
    options = {"inputs": [str(f) for f in files], "unit": unit, "min_chars": min_chars}
    with ShardSink(out_dir, "text", shard_size=shard_size, overwrite=overwrite, options=options) as sink:
        for fi, file in enumerate(_progress(files, "text", len(files), progress)):
            for ui, chunk in enumerate(_text_units(_read_text(file), unit)):
                chunk = " ".join(chunk.split())
                if len(chunk) < min_chars:
                    sink.skip("too_short", f"{file} unit {ui}: {len(chunk)} < {min_chars} chars")
                    continue
                sink.add(f"{fi:06d}-{ui:07d}", {"task": "lm", "text": chunk, "meta": {"file": file.name}})
    return sink.info


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
