"""Our own JSONL layout (one record per line: text, task, image, answers / boxes / label) to shards."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...answers import normalize_answer
from ...schema import DatasetInfo, SampleError
from ..sink import ShardSink
from .common import (
    BOX_FORMATS,
    ImageStore,
    add_shard_command,
    map_boxes,
    progress_bar,
    report,
    sink_options,
    write_image_sample,
    write_order,
    xywh_to_xyxy,
)


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
    pixels), ``label``, ``phrases`` (their boxes in ``box_format`` too), ``meta`` and an optional ``id``
    (the sample key; else the line number)."""
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box format must be one of {BOX_FORMATS}, got {box_format!r}")
    input_path = Path(input_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"input file {input_path} does not exist")
    lines = input_path.read_text(encoding="utf-8").splitlines()
    store = ImageStore(images, max_side) if images is not None else None
    options = {"input": str(input_path), "box_format": box_format, "max_side": max_side}
    with ShardSink(out_dir, "jsonl", shard_size=shard_size, overwrite=overwrite, options=options) as sink:
        for lineno, line in progress_bar(write_order(enumerate(lines, 1), shuffle), "jsonl", len(lines), progress):
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
            if box_format == "xywh":
                try:
                    map_boxes(raw, xywh_to_xyxy)  # the sample's boxes and its phrases'
                except (SampleError, TypeError) as e:
                    sink.skip("bad_box", f"line {lineno}: {e}")
                    continue
            if relpath is None:
                sink.add(key, raw)
            elif store is None:
                sink.skip("missing_image", f"line {lineno}: has an image but no --images directory was given")
            else:
                write_image_sample(sink, store, key, str(relpath), raw)
    return sink.info


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``make-shards jsonl``."""
    p = add_shard_command(sub, "jsonl", "generic JSONL records (+ an image folder)", images=True)
    p.add_argument(
        "--input", required=True, help="JSONL file: text, task, image, answers|answer, boxes, label"
    )
    p.add_argument("--images", default=None, help="folder that record 'image' paths are relative to")
    p.add_argument("--box-format", choices=BOX_FORMATS, default="xyxy", help="pixel box layout")
    p.add_argument(
        "--normalize-answers", action="store_true", help="apply the official VQA answer normalization"
    )
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    info = convert_jsonl(
        args.input, args.images, args.out, box_format=args.box_format, normalize_answers=args.normalize_answers,
        max_side=args.max_side, **sink_options(args),
    )
    return report(args.out, info)
