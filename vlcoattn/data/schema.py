"""The sample schema (docs/design.md §4), its validator, and the ``dataset.json`` that describes a shard dir.

A sample is ``__key__`` + an image member (``jpg``/``png``/..., absent for text-only) + ``json``::

    {"text": str, "task": "vqa" | "ground" | "cls" | "lm",
     "answers": [str],                 # vqa: every annotator's answer (VQA v2 keeps all 10)
     "boxes": [[x0, y0, x1, y1]],      # pixels of the stored image after EXIF orientation; ground: >= 1
     "label": str,                     # cls
     "meta": {...}}                    # free-form provenance; "type": the kind of question / expression

:func:`sample_problems` lists everything wrong with a record; :func:`check_record` raises a
:class:`SampleError` whose ``reason`` is one of :data:`BAD_REASONS` (the loader counts by it).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..tasks import get_task, sample_task_names

TASKS = sample_task_names()  # what a sample's "task" may say: the registry's single tasks
FIELDS = frozenset({"text", "task", "answers", "boxes", "label", "meta"})
log = logging.getLogger(__name__)
_warned_fields: set[str] = set()  # unknown field names already warned about in this process
BOX_TOLERANCE = 1.0  # pixels a box may stick out of the image (rounding in annotation tools)

FORMAT = "vlcoattn-shards"
FORMAT_VERSION = 1
SHARD_PATTERN = "shard-%06d.tar"
INFO_FILE = "dataset.json"

# why a sample was skipped; the loader's bad-sample counters use exactly these keys
BAD_REASONS = (
    "missing_json",  # no .json member
    "bad_json",  # not UTF-8 JSON object
    "bad_field",  # missing or mistyped field
    "empty_text",  # text empty or whitespace
    "missing_image",  # task needs an image and there is none
    "bad_image",  # image member does not decode (corrupt, truncated, not an image, too large)
    "bad_box",  # box malformed, degenerate or outside the image
    "unreadable_shard",  # samples lost because the tar itself is truncated or unreadable
)


class SampleError(ValueError):
    """A sample that breaks the schema; ``reason`` is one of :data:`BAD_REASONS`."""

    def __init__(self, reason: str, message: str):
        if reason not in BAD_REASONS:
            raise AssertionError(f"unknown bad-sample reason {reason!r}")
        super().__init__(message)
        self.reason = reason


def _box_problems(boxes: Any, image_size: tuple[int, int] | None) -> list[tuple[str, str]]:
    if not isinstance(boxes, list):
        return [("bad_field", f"'boxes' must be a list of [x0, y0, x1, y1], got {type(boxes).__name__}")]
    problems = []
    for i, box in enumerate(boxes):
        if not (isinstance(box, (list, tuple)) and len(box) == 4):
            problems.append(("bad_box", f"boxes[{i}] must be 4 numbers [x0, y0, x1, y1], got {box!r}"))
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
            problems.append(("bad_box", f"boxes[{i}] has a non-finite or non-numeric value: {box!r}"))
            continue
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            problems.append(("bad_box", f"boxes[{i}] = {box!r} is empty or inverted (need x1 > x0, y1 > y0)"))
        elif image_size is not None:
            w, h = image_size
            t = BOX_TOLERANCE
            if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
                problems.append(("bad_box", f"boxes[{i}] = {box!r} lies outside the {w}x{h} image"))
    return problems


def sample_problems(
    record: Any, *, has_image: bool | None = None, image_size: tuple[int, int] | None = None
) -> list[tuple[str, str]]:
    """Every way ``record`` breaks the schema, as (reason, message) pairs; empty when valid.

    ``has_image``: whether the sample carries an image (None: not checked). ``image_size``
    (width, height) of the decoded image, to check that boxes lie inside it.
    """
    if not isinstance(record, Mapping):
        return [("bad_json", f"sample json must be an object, got {type(record).__name__}")]
    problems: list[tuple[str, str]] = []
    task = record.get("task")
    if task not in TASKS:
        problems.append(("bad_field", f"'task' must be one of {list(TASKS)}, got {task!r}"))
    text = record.get("text")
    if not isinstance(text, str):
        problems.append(("bad_field", f"'text' must be a string, got {type(text).__name__}"))
    elif not text.strip():
        problems.append(("empty_text", "'text' is empty"))
    answers = record.get("answers")
    if answers is not None and not (
        isinstance(answers, list) and all(isinstance(a, str) and a.strip() for a in answers)
    ):
        problems.append(("bad_field", f"'answers' must be a list of non-empty strings, got {answers!r}"))
    if "boxes" in record:
        problems += _box_problems(record["boxes"], image_size)
    label = record.get("label")
    if label is not None and not (isinstance(label, str) and label.strip()):
        problems.append(("bad_field", f"'label' must be a non-empty string, got {label!r}"))
    if "meta" in record and not isinstance(record["meta"], Mapping):
        problems.append(("bad_field", f"'meta' must be an object, got {type(record['meta']).__name__}"))
    spec = get_task(task) if task in TASKS else None
    if spec is not None and spec.requires is not None and record.get(spec.requires[0]) in (None, [], ""):
        problems.append(spec.requires[1:])  # (reason, message): the field the task's targets come from
    if spec is not None and has_image is False and spec.needs_images:
        problems.append(("missing_image", f"task {task!r} needs an image and the sample has none"))
    return problems


def trained_answers(record: Mapping[str, Any]) -> list[str] | None:
    """The answers of a record whose task trains on them (VQA: they make the answer vocabulary), else None."""
    task = record.get("task")
    spec = get_task(task) if task in TASKS else None
    return record.get("answers") if spec is not None and spec.requires and spec.requires[0] == "answers" else None


def sample_type(meta: Mapping[str, Any]) -> str | None:
    """The kind of question or expression a sample is (``meta.type``; the per-type metrics group by it).
    Shards written before the key was shared say ``question_type`` (VQA) or ``ref_type`` (grounding)."""
    return meta.get("type", meta.get("question_type", meta.get("ref_type")))


def keep_unknown_fields(record: dict[str, Any]) -> dict[str, Any]:
    """Fields the schema does not know move under ``meta``, where nothing reads them but nothing is lost.
    Shards from the wild carry such fields (img2dataset writes ``url``, ``caption``, ``width``,
    ``similarity``, ...): one warning per field name and process, never a bad sample."""
    unknown = sorted(set(record) - FIELDS)
    if not unknown or ("meta" in record and not isinstance(record["meta"], Mapping)):
        return record
    for name in (n for n in unknown if n not in _warned_fields):
        _warned_fields.add(name)
        log.warning("sample field %r is not in the schema %s: kept under 'meta'", name, sorted(FIELDS))
    kept = {k: v for k, v in record.items() if k in FIELDS}
    kept["meta"] = {**{k: record[k] for k in unknown}, **record.get("meta", {})}
    return kept


def check_record(
    record: Any, *, has_image: bool | None = None, image_size: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Return ``record`` (unknown fields moved under ``meta``, see :func:`keep_unknown_fields`) if
    valid, else raise :class:`SampleError` naming its first problem (and the number of further ones)."""
    problems = sample_problems(record, has_image=has_image, image_size=image_size)
    if problems:
        reason, message = problems[0]
        more = f" (+{len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise SampleError(reason, message + more)
    return keep_unknown_fields(dict(record))


@dataclass
class DatasetInfo:
    """Contents of a shard directory's ``dataset.json``."""

    source: str  # which converter wrote it: jsonl, vqa2, refcoco, textcls, text, synthetic
    num_samples: int
    shards: list[dict[str, Any]]  # [{"file": "shard-000000.tar", "samples": int}], in write order
    tasks: dict[str, int]  # samples per task
    answer_vocab: list[str] = field(default_factory=list)  # by decreasing frequency (vqa)
    answer_counts: list[int] = field(default_factory=list)  # annotator answers per vocab entry
    label_vocab: list[str] = field(default_factory=list)  # sorted labels (cls)
    label_counts: list[int] = field(default_factory=list)  # samples per label_vocab entry (empty: not recorded)
    skipped: dict[str, int] = field(default_factory=dict)  # input records skipped, by reason
    options: dict[str, Any] = field(default_factory=dict)  # converter options (split, seed, ...)
    format: str = FORMAT
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """Pretty JSON text."""
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> DatasetInfo:
        """Read ``dataset.json`` (``path`` is the file or its directory); ValueError if malformed."""
        path = Path(path)
        if path.is_dir():
            path = path / INFO_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f'{path}: not a {FORMAT} dataset.json (missing "format": "{FORMAT}")')
        if data.get("version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: format version {data['version']} is newer than this code ({FORMAT_VERSION})"
            )
        try:
            return cls(**data)
        except TypeError as e:
            raise ValueError(f"{path}: unexpected dataset.json fields: {e}") from e
