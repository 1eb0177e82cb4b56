"""A Hugging Face ``datasets`` Dataset or DatasetDict saved with ``save_to_disk`` to shards: VQA,
grounding or (text-only) classification, from the columns that options name.

A column may be nested, written with dots: ``objects.bbox`` is the ``bbox`` field of the ``objects``
struct (COCO-style detection sets), ``answers.answer`` the ``answer`` of every item of a list of
structs (VQA v2's ten answers). A text column that holds a list gives one sample per text with the
row's targets (the referring expressions of one box). Images are copied byte for byte; a ClassLabel
column gives its label names.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ....tasks import get_task
from ...answers import normalize_answer
from ...image import ImageDecodeError, image_format, image_size
from ...schema import DatasetInfo, SampleError
from ..sink import ShardSink
from .common import (
    BOX_FORMATS,
    add_shard_command,
    check_split_dirs,
    progress_bar,
    report,
    sink_options,
    write_order,
    xywh_to_xyxy,
)

HF_TASKS = ("vqa", "ground", "cls")  # the registry's tasks whose sample has one target field a column can fill


def target_field(task: str) -> str:
    """The sample field that holds ``task``'s targets, as the task registry's schema requirement names it:
    ``answers`` (vqa), ``boxes`` (ground), ``label`` (cls); the column option is ``--<field>-column``."""
    return get_task(task).requires[0]
DEFAULT_SPLIT_NAMES = {"validation": "val", "valid": "val"}  # other splits keep their name
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class HFColumns:
    """Which columns (dotted paths for nested fields) make a sample's text, image and targets."""

    task: str
    text: str = "text"
    image: str | None = None  # vqa / ground: "image" unless given; cls: none (text-only)
    answers: str = "answers"
    boxes: str = "boxes"
    label: str = "label"
    type: str | None = None  # meta.type, the key of the per-type metrics
    box_format: str = "xyxy"
    normalize_answers: bool = False
    label_names: Sequence[str] = field(default=(), compare=False)  # a ClassLabel column's names

    def __post_init__(self) -> None:
        if self.task not in HF_TASKS:
            raise ValueError(f"--task must be one of {HF_TASKS}, got {self.task!r}")
        if self.box_format not in BOX_FORMATS:
            raise ValueError(f"--box-format must be one of {BOX_FORMATS}, got {self.box_format!r}")
        needs_images = get_task(self.task).needs_images
        if not needs_images and self.image is not None:
            raise ValueError(f"--task {self.task} is text-only: drop --image-column")
        if needs_images and self.image is None:
            object.__setattr__(self, "image", "image")

    def used(self) -> dict[str, str]:
        """option -> column, for every column this task reads."""
        named = {"--text-column": self.text, "--image-column": self.image, "--type-column": self.type,
                 f"--{target_field(self.task)}-column": getattr(self, target_field(self.task))}
        return {option: column for option, column in named.items() if column is not None}

    def targets(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The task's target field of the record, as the schema wants it (the sink rejects bad ones)."""
        name = target_field(self.task)
        value = column_value(row, getattr(self, name))
        if name == "answers":
            answers = [value] if isinstance(value, str) else value
            if self.normalize_answers and isinstance(answers, list):
                answers = [normalize_answer(a) if isinstance(a, str) else a for a in answers]
            return {"answers": answers}
        if name == "boxes":
            return {"boxes": self.boxes_xyxy(value)}
        return {"label": self.label_name(value)}

    def boxes_xyxy(self, value: Any) -> list[Any]:
        """One box or a list of boxes in ``box_format`` -> a list of [x0, y0, x1, y1] (the sink checks them)."""
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise SampleError("bad_box", f"boxes must be a box or a list of boxes, got {value!r}")
        boxes = [value] if len(value) == 4 and not any(isinstance(v, (list, tuple)) for v in value) else value
        if self.box_format == "xyxy":
            return list(boxes)
        try:
            return [xywh_to_xyxy(b) for b in boxes]
        except TypeError as e:  # a non-numeric value
            raise SampleError("bad_box", f"boxes {value!r}: {e}") from e

    def label_name(self, value: Any) -> str | None:
        """A ClassLabel index -> its name (-1, HF's "no label", -> None); a plain value -> its text."""
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, int) and self.label_names:
            return self.label_names[value] if 0 <= value < len(self.label_names) else None
        return str(value).strip()

    def records(self, row: Mapping[str, Any], meta: dict[str, Any]) -> list[dict[str, Any]]:
        """One record per text of the row (a list-valued text column gives several)."""
        texts = column_value(row, self.text)
        texts = texts if isinstance(texts, list) else [texts]
        if not texts:
            raise SampleError("empty_text", f"{self.text!r} is an empty list")
        targets = self.targets(row)
        if self.type is not None:
            meta = {**meta, "type": column_value(row, self.type)}
        return [{"task": self.task, "text": t.strip() if isinstance(t, str) else t, **targets, "meta": meta}
                for t in texts]


def column_value(row: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path``: a struct's field, or that field of every item of a list."""
    value: Any = row
    for part in path.split("."):
        if isinstance(value, list):
            value = [item.get(part) if isinstance(item, Mapping) else None for item in value]
        elif isinstance(value, Mapping):
            value = value.get(part)
        else:
            return None
    return value


def column_feature(features: Mapping[str, Any], path: str, option: str) -> Any:
    """The feature at a dotted ``path``; ValueError naming the columns (fields) that exist when absent."""
    node: Any = features
    walked: list[str] = []
    for part in path.split("."):
        while hasattr(node, "feature"):  # List / LargeList / Sequence: into the items
            node = node.feature
        if not isinstance(node, Mapping) or part not in node:
            where = f"column {'.'.join(walked)!r} has no field" if walked else "the dataset has no column"
            have = sorted(node) if isinstance(node, Mapping) else []
            raise ValueError(f"{option} {path!r}: {where} {part!r}; available: {have}")
        node = node[part]
        walked.append(part)
    return node


def load_saved(path: str | Path) -> Any:
    """A Dataset or DatasetDict that ``save_to_disk`` wrote to ``path``."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError("make-shards hf needs the datasets package: pip install 'vlcoattn[hf]'") from e
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} does not exist (a folder written by save_to_disk)")
    try:
        return datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise ValueError(f"{path} is not a Dataset / DatasetDict written by save_to_disk: {e}") from e


def split_plan(available: Sequence[str] | None, splits: Sequence[str] | None) -> dict[str | None, str | None]:
    """HF split -> our split folder. ``splits`` items are ``HF`` or ``HF=OURS`` (default: every split);
    ``validation`` is named ``val`` unless renamed. A plain Dataset (``available`` None) is written to the
    output itself."""
    if available is None:
        if splits:
            raise ValueError("--split applies to a DatasetDict; the input is a single Dataset")
        return {None: None}
    items = splits or list(available)
    plan: dict[str | None, str | None] = {}
    for item in items:
        hf_name, _, ours = item.partition("=")
        ours = ours or DEFAULT_SPLIT_NAMES.get(hf_name, hf_name)
        if hf_name not in available:
            raise ValueError(f"--split {item!r}: the dataset has no split {hf_name!r}; available: {list(available)}")
        if not _SPLIT_NAME.fullmatch(ours) or ours in plan.values():
            raise ValueError(f"--split {item!r}: {ours!r} must be a new folder name of [A-Za-z0-9_-]")
        plan[hf_name] = ours
    return plan


def _image(value: Any) -> tuple[bytes, str, tuple[int, int]]:
    """(bytes, suffix, (width, height)) of an undecoded Image value ({"bytes", "path"})."""
    if not isinstance(value, Mapping) or (value.get("bytes") is None and not value.get("path")):
        raise SampleError("missing_image", "the row has no image")
    data = value.get("bytes")
    if data is None:
        path = Path(value["path"])
        if not path.is_file():
            raise SampleError("missing_image", f"image file {path} not found")
        data = path.read_bytes()
    try:
        return data, image_format(data), image_size(data)
    except ImageDecodeError as e:
        raise SampleError("bad_image", str(e)) from e


def _prepare(dataset: Any, columns: HFColumns) -> tuple[Any, HFColumns]:
    """Check every used column exists; images left undecoded (copied as stored); ClassLabel names."""
    import datasets

    for option, column in columns.used().items():
        column_feature(dataset.features, column, option)
    if columns.image is not None:
        if "." in columns.image:
            raise ValueError(f"--image-column {columns.image!r}: the image must be a top-level column")
        feature = dataset.features[columns.image]
        if not isinstance(feature, datasets.Image):
            raise ValueError(f"--image-column {columns.image!r} holds {feature}, not a datasets.Image feature "
                             f"(a column of paths: cast_column({columns.image!r}, datasets.Image()) first)")
        dataset = dataset.cast_column(columns.image, datasets.Image(decode=False))
    label = column_feature(dataset.features, columns.label, "--label-column") if target_field(columns.task) == "label" else None
    if isinstance(label, datasets.ClassLabel):
        columns = replace(columns, label_names=tuple(label.names))
    return dataset, columns


def _write_split(
    dataset: Any, columns: HFColumns, sink: ShardSink, hf_split: str | None, *, progress: bool, shuffle: bool
) -> None:
    """Every row of one (prepared) split into ``sink``: one sample per text, bad ones counted."""
    prefix = f"{hf_split}-" if hf_split else ""
    rows = write_order(range(len(dataset)), shuffle)
    for index in progress_bar(rows, f"hf {hf_split}" if hf_split else "hf", len(dataset), progress):
        row, key = dataset[index], f"{prefix}{index:09d}"
        meta = {"index": index, **({"split": hf_split} if hf_split else {})}
        try:
            image = _image(row[columns.image]) if columns.image else None
            records = columns.records(row, meta)
        except SampleError as e:
            sink.skip(e.reason, f"{key}: {e}")
            continue
        for j, record in enumerate(records):
            sample_key = key if len(records) == 1 else f"{key}-{j}"
            if image is None:
                sink.add(sample_key, record)
            else:
                sink.add(sample_key, record, image[0], image[1], image[2])


def convert_hf(
    input_path: str | Path,
    out_dir: str | Path,
    columns: HFColumns,
    *,
    splits: Sequence[str] | None = None,
    min_answer_count: int = 1,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
    shuffle: bool = True,
) -> DatasetInfo | dict[str, DatasetInfo]:
    """A saved Dataset into ``out_dir`` (its DatasetInfo), or a saved DatasetDict into
    ``out_dir/<split>`` for each split of :func:`split_plan` (their DatasetInfos by split). Rows
    without a usable image, text or target are skipped and counted; a row's key is ``[split-]index``
    and ``meta`` keeps its index and split. The answer vocabulary keeps answers given at least
    ``min_answer_count`` times in that split; labels are sorted, as the other converters do."""
    dataset = load_saved(input_path)
    out_dir = Path(out_dir)
    plan = split_plan(list(dataset) if isinstance(dataset, Mapping) else None, splits)  # a DatasetDict is a dict
    prepared = {hf_split: _prepare(dataset if hf_split is None else dataset[hf_split], columns) for hf_split in plan}
    check_split_dirs(out_dir, [s for s in plan.values() if s is not None], overwrite)
    infos: dict[str, DatasetInfo] = {}
    for hf_split, ours in plan.items():  # every column and output folder checked: now write
        options = {"input": str(input_path), **asdict(columns), "split": hf_split,
                   "min_answer_count": min_answer_count}
        del options["label_names"]
        with ShardSink(out_dir / (ours or ""), "hf", shard_size=shard_size, overwrite=overwrite, options=options,
                       min_answer_count=min_answer_count) as sink:
            _write_split(*prepared[hf_split], sink, hf_split, progress=progress, shuffle=shuffle)
        infos[ours or ""] = sink.info
    return infos[""] if None in plan else infos


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``make-shards hf``."""
    p = add_shard_command(sub, "hf", "a datasets Dataset / DatasetDict saved with save_to_disk")
    p.add_argument("--input", required=True, help="folder written by Dataset(Dict).save_to_disk")
    p.add_argument("--task", required=True, choices=HF_TASKS, help="cls is text-only")
    p.add_argument("--text-column", default="text", help="question / expression / text (a list: one sample each)")
    p.add_argument("--image-column", default=None, help="an Image column; default 'image' (vqa, ground)")
    p.add_argument("--answers-column", "--answer-column", dest="answers_column", default="answers",
                   help="vqa: an answer or a list of them, e.g. answers.answer")
    p.add_argument("--boxes-column", default="boxes", help="ground: a box or a list of boxes, e.g. objects.bbox")
    p.add_argument("--box-format", choices=BOX_FORMATS, default="xyxy",
                   help="pixel box layout: xyxy (x0, y0, x1, y1) or xywh (COCO: x, y, width, height)")
    p.add_argument("--label-column", default="label", help="cls: a ClassLabel (its names) or text")
    p.add_argument("--type-column", default=None, help="kind of question / expression (meta.type)")
    p.add_argument("--split", nargs="+", default=None, metavar="HF[=OURS]",
                   help="DatasetDict splits to write into OUT/<OURS> (default: all, validation as val)")
    p.add_argument("--normalize-answers", action="store_true", help="the official VQA answer normalization")
    p.add_argument("--min-answer-count", type=int, default=1, help="answer vocabulary: given at least N times")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    columns = HFColumns(
        args.task, text=args.text_column, image=args.image_column, answers=args.answers_column,
        boxes=args.boxes_column, label=args.label_column, type=args.type_column, box_format=args.box_format,
        normalize_answers=args.normalize_answers,
    )
    infos = convert_hf(args.input, args.out, columns, splits=args.split, min_answer_count=args.min_answer_count,
                       **sink_options(args))
    return report(args.out, infos)
