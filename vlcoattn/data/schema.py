"""The sample schema (docs/design.md §4), its validator, and the ``dataset.json`` that describes a shard dir.

A sample is ``__key__`` + an image member (``jpg``/``png``/..., absent for text-only) + ``json``::

    {"text": str, "task": "vqa" | "ground" | "cls" | "lm",
     "answers": [str],                 # vqa: every annotator's answer (VQA v2 keeps all 10)
     "boxes": [[x0, y0, x1, y1]],      # pixels of the stored image after EXIF orientation; ground: >= 1
     "label": str,                     # cls
     "phrases": [{"span": [start, end], "boxes": [[x0, y0, x1, y1]], "type": str, "id": str}],
                                       # any image task: the objects that spans of ``text`` name
     "meta": {...}}                    # free-form provenance; "type": the kind of question / expression

A phrase is a character span ``[start, end)`` of ``text`` (no space at either end; two phrases never
share a character, so each token names at most one object) with the boxes of everything it names:
``boxes: []`` marks a phrase with no box in the image (not visual, or the whole scene), which
training and Recall@1 skip, as MDETR does. ``type`` is its kind, several joined by ``/`` as
Flickr30k Entities writes them (``bodyparts/people``); ``id`` names the entity (Flickr30k's
coreference chain across the captions of an image).

:func:`sample_problems` lists everything wrong with a record; :func:`check_record` raises a
:class:`SampleError` whose ``reason`` is one of :data:`BAD_REASONS` (the loader counts by it).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..tasks import get_task, sample_task_names

TASKS = sample_task_names()  # what a sample's "task" may say: the registry's single tasks
FIELDS = frozenset({"text", "task", "answers", "boxes", "label", "phrases", "meta"})
PHRASE_FIELDS = frozenset({"span", "boxes", "type", "id"})
TYPE_SEPARATOR = "/"  # a phrase of several types joins them, as Flickr30k Entities writes "bodyparts/people"
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


def _box_problems(boxes: Any, image_size: tuple[int, int] | None, name: str = "boxes") -> list[tuple[str, str]]:
    if not isinstance(boxes, list):
        return [("bad_field", f"'{name}' must be a list of [x0, y0, x1, y1], got {type(boxes).__name__}")]
    problems = []
    for i, box in enumerate(boxes):
        if not (isinstance(box, (list, tuple)) and len(box) == 4):
            problems.append(("bad_box", f"{name}[{i}] must be 4 numbers [x0, y0, x1, y1], got {box!r}"))
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
            problems.append(("bad_box", f"{name}[{i}] has a non-finite or non-numeric value: {box!r}"))
            continue
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            problems.append(("bad_box", f"{name}[{i}] = {box!r} is empty or inverted (need x1 > x0, y1 > y0)"))
        elif image_size is not None:
            w, h = image_size
            t = BOX_TOLERANCE
            if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
                problems.append(("bad_box", f"{name}[{i}] = {box!r} lies outside the {w}x{h} image"))
    return problems


def _span_problems(span: Any, text: Any, where: str) -> list[tuple[str, str]]:
    """A span is [start, end) character offsets into ``text`` around a non-blank run of characters."""
    if not (isinstance(span, (list, tuple)) and len(span) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in span)):
        return [("bad_field", f"{where}.span must be [start, end] (two integers), got {span!r}")]
    start, end = span
    if not isinstance(text, str):
        return []  # the text's own problem is reported already
    if not 0 <= start < end <= len(text):
        return [("bad_field", f"{where}.span {list(span)} lies outside the text (need 0 <= start < end <= "
                              f"{len(text)})")]
    words = text[start:end]
    if words != words.strip():
        return [("bad_field", f"{where}.span {list(span)} = {words!r} must start and end on a non-space character")]
    return []


def _overlap_problems(spans: list[tuple[int, int, int]]) -> list[tuple[str, str]]:
    """Spans (start, end, phrase index) may not share a character: each token names at most one object."""
    ordered = sorted(spans)
    return [("bad_field", f"phrases[{b[2]}].span {list(b[:2])} overlaps phrases[{a[2]}].span {list(a[:2])}")
            for a, b in itertools.pairwise(ordered) if b[0] < a[1]]


def _phrase_problems(phrases: Any, text: Any, image_size: tuple[int, int] | None) -> list[tuple[str, str]]:
    """Every way a ``phrases`` list breaks the schema (see the module docstring and docs/data.md)."""
    if not isinstance(phrases, list):
        return [("bad_field", f"'phrases' must be a list of objects, got {type(phrases).__name__}")]
    problems: list[tuple[str, str]] = []
    spans: list[tuple[int, int, int]] = []
    for j, phrase in enumerate(phrases):
        where = f"phrases[{j}]"
        if not isinstance(phrase, Mapping):
            problems.append(("bad_field", f"{where} must be an object, got {type(phrase).__name__}"))
            continue
        unknown = sorted(set(phrase) - PHRASE_FIELDS)
        if unknown:
            problems.append(("bad_field", f"{where} has unknown keys {unknown} (known: {sorted(PHRASE_FIELDS)})"))
        span_problems = _span_problems(phrase.get("span"), text, where)
        problems += span_problems
        if not span_problems and isinstance(text, str):
            spans.append((phrase["span"][0], phrase["span"][1], j))
        if "boxes" not in phrase:
            problems.append(("bad_field", f"{where} needs 'boxes' (a list; [] for a phrase with no box)"))
        else:
            problems += _box_problems(phrase["boxes"], image_size, f"{where}.boxes")
        for key in ("type", "id"):
            if key in phrase and not (isinstance(phrase[key], str) and phrase[key].strip()):
                problems.append(("bad_field", f"{where}.{key} must be a non-empty string, got {phrase[key]!r}"))
    return problems + _overlap_problems(spans)


def phrase_types(phrase: Mapping[str, Any]) -> list[str]:
    """The types of a phrase (``"bodyparts/people"`` -> ``["bodyparts", "people"]``; none: ``[]``)."""
    return [t for t in phrase.get("type", "").split(TYPE_SEPARATOR) if t]


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
    if "phrases" in record:
        problems += _phrase_problems(record["phrases"], text, image_size)
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
