"""The official VQA v2 questions + annotations pair to shards (all 10 answers per question)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ...answers import normalize_answer
from ...schema import DatasetInfo
from ..sink import ShardSink
from .common import (
    ImageStore,
    add_shard_command,
    progress_bar,
    read_json,
    report,
    sink_options,
    write_image_sample,
    write_order,
)


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


def _read_pair(questions: str | Path, annotations: str | Path) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """The questions file's data and the annotations by question id (ValueError for another kind of file)."""
    qdata = read_json(questions, "questions")
    adata = read_json(annotations, "annotations")
    if not isinstance(qdata, dict) or "questions" not in qdata:
        raise ValueError(f"{questions}: not a VQA questions file (no 'questions' list)")
    if not isinstance(adata, dict) or "annotations" not in adata:
        raise ValueError(f"{annotations}: not a VQA annotations file (no 'annotations' list)")
    return qdata, {a["question_id"]: a for a in adata["annotations"]}


# the answer vocabulary of the VQA v2 literature (bottom-up top-down attention and its successors): the
# multiple-choice answers of at least 9 questions, 3,129 answers on train2014
VQA2_MIN_ANSWER_COUNT = 9


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
    min_answer_count: int = VQA2_MIN_ANSWER_COUNT,
) -> DatasetInfo:
    """The official VQA v2 pair (``v2_OpenEnded_mscoco_*_questions.json`` + ``v2_mscoco_*_annotations.json``).

    One sample per question with all 10 annotator answers, normalized as the official evaluation
    does (the metric needs all 10). ``image_pattern`` such as ``"COCO_val2014_{image_id:012d}.jpg"``
    overrides the image file naming. The answer vocabulary counts each question's
    ``multiple_choice_answer`` and keeps those of at least ``min_answer_count`` questions (default 9,
    as the literature does); other answers stay in the samples and score 0 in training, as in the
    official soft scores.
    """
    qdata, by_qid = _read_pair(questions, annotations)
    subtype = qdata.get("data_subtype", "")
    store = ImageStore(images, max_side)
    qs = write_order(sorted(qdata["questions"], key=lambda q: (q["image_id"], q["question_id"])), shuffle)
    options = {
        "questions": str(questions),
        "annotations": str(annotations),
        "data_subtype": subtype,
        "max_side": max_side,
        "min_answer_count": min_answer_count,
    }
    with ShardSink(out_dir, "vqa2", shard_size=shard_size, overwrite=overwrite, options=options,
                   count_answers=lambda record: [record["meta"]["multiple_choice_answer"]],
                   min_answer_count=min_answer_count) as sink:
        for q in progress_bar(qs, "vqa2", len(qs), progress):
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
                    "type": ann.get("question_type"),  # the per-type metrics' key (docs/data.md)
                    "answer_type": ann.get("answer_type"),
                    "multiple_choice_answer": normalize_answer(ann.get("multiple_choice_answer", "")),
                },
            }
            relpath = _vqa_image_path(store, subtype, q["image_id"], image_pattern)
            write_image_sample(sink, store, key, relpath, record)
    return sink.info


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``make-shards vqa2``."""
    p = add_shard_command(sub, "vqa2", "VQA v2 questions + annotations json (official layout)", images=True)
    p.add_argument("--questions", required=True, help="v2_OpenEnded_mscoco_<split>_questions.json")
    p.add_argument("--annotations", required=True, help="v2_mscoco_<split>_annotations.json")
    p.add_argument("--images", required=True, help="COCO image folder (e.g. val2014/)")
    p.add_argument(
        "--image-pattern",
        default=None,
        help="file name pattern, e.g. 'COCO_val2014_{image_id:012d}.jpg' (default: 2014 or 2017 naming)",
    )
    p.add_argument(
        "--min-answer-count", type=int, default=VQA2_MIN_ANSWER_COUNT,
        help=f"answer vocabulary: multiple-choice answers of at least this many questions (default "
             f"{VQA2_MIN_ANSWER_COUNT}, the usual 3,129 answers on train2014; 1 keeps all)",
    )
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    info = convert_vqa2(
        args.questions, args.annotations, args.images, args.out, image_pattern=args.image_pattern,
        max_side=args.max_side, min_answer_count=args.min_answer_count, **sink_options(args),
    )
    return report(args.out, info)
