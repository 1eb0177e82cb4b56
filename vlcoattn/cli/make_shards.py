"""Write webdataset shard directories (shard-NNNNNN.tar + dataset.json) from real dataset layouts.

    python tools/make_shards.py jsonl --input data.jsonl --images imgs/ --out shards/mine
    python tools/make_shards.py vqa2 --questions Q.json --annotations A.json --images val2014/ \\
        --out shards/vqa
    python tools/make_shards.py refcoco --refs refs.json --instances instances.json --images train2014/ \\
        --split val --out shards/refcoco-val
    python tools/make_shards.py textcls --input bbcnews/data --out shards/bbc --test-fraction 0.2 --seed 0
    python tools/make_shards.py text --input a.txt b.txt --out shards/lm [--test-fraction 0.1 --seed 0]
    python tools/make_shards.py synthetic --out shards/clevr --num 2000 --seed 0 --size 128 \\
        --split-holdout cogent
    python tools/make_shards.py inspect shards/clevr/train --show 8 --show-out preview.png
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlcoattn.data import (
    DatasetInfo,
    SyntheticConfig,
    convert_jsonl,
    convert_refcoco,
    convert_text,
    convert_text_split,
    convert_textcls,
    convert_textcls_split,
    convert_vqa2,
    parse_holdout,
    write_synthetic,
)
from vlcoattn.data.converters.vqa2 import VQA2_MIN_ANSWER_COUNT
from vlcoattn.data.inspection import inspect_shards
from vlcoattn.utils.cli import ArgumentParser, run_cli


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="make_shards.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    def command(name: str, help: str, images: bool = False) -> ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--out", required=True, help="output shard directory")
        p.add_argument("--shard-size", type=int, default=10_000, help="samples per shard (default 10000)")
        p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name != "synthetic":
            p.add_argument("--no-shuffle", action="store_true",
                           help="write samples in the input order (default: a seeded shuffle, so sorted inputs "
                                "do not give single-class shards)")
        if images:
            p.add_argument(
                "--max-side",
                type=int,
                default=None,
                help="re-encode images whose longer side exceeds this (boxes follow); default: copy",
            )
        return p

    p = command("jsonl", "generic JSONL records (+ an image folder)", images=True)
    p.add_argument(
        "--input", required=True, help="JSONL file: text, task, image, answers|answer, boxes, label"
    )
    p.add_argument("--images", default=None, help="folder that record 'image' paths are relative to")
    p.add_argument("--box-format", choices=("xyxy", "xywh"), default="xyxy", help="pixel box layout")
    p.add_argument(
        "--normalize-answers", action="store_true", help="apply the official VQA answer normalization"
    )

    p = command("vqa2", "VQA v2 questions + annotations json (official layout)", images=True)
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

    p = command("refcoco", "RefCOCO/+/g refs + COCO instances json (refer layout)", images=True)
    p.add_argument("--refs", required=True, help="refs.json, or refs(unc).p with --allow-pickle")
    p.add_argument("--instances", required=True, help="instances.json")
    p.add_argument("--images", required=True, help="COCO train2014 image folder")
    p.add_argument("--split", required=True, help="refs split: train, val, test, testA, testB")
    p.add_argument("--allow-pickle", action="store_true", help="allow a pickled refs file (runs its code!)")

    p = command("textcls", "labelled text: class folders (as BBC News), CSV or JSONL")
    p.add_argument("--input", required=True, help="DIR/<class>/*.txt, a .csv or a .jsonl file")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="stratified held-out share per class: writes OUT/train and OUT/test (default 0: one directory)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")

    p = command("text", "plain text for language modelling")
    p.add_argument("--input", required=True, nargs="+", help="text files or folders of *.txt")
    p.add_argument(
        "--unit", choices=("line", "paragraph", "file"), default="paragraph", help="one sample per ..."
    )
    p.add_argument("--min-chars", type=int, default=1, help="skip shorter units")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="share of FILES held out: writes OUT/train and OUT/test (default 0: one directory)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")

    p = command("synthetic", "CLEVR-lite scenes: out/{train,val,test[,holdout]}")
    p.add_argument(
        "--num", type=int, required=True, help="train scenes (val/test: num // 10 each by default)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument(
        "--split-holdout",
        default=None,
        help="'cogent' or colour:shape pairs ('red:circle,blue:square') kept out of train/val/test",
    )
    p.add_argument("--val-num", type=int, default=None)
    p.add_argument("--test-num", type=int, default=None)
    p.add_argument(
        "--holdout-num", type=int, default=None, help="scenes in the holdout split (default: test's)"
    )
    p.add_argument("--questions-per-scene", type=int, default=3)
    p.add_argument("--refs-per-scene", type=int, default=2)
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="image encoding")

    p = sub.add_parser("inspect", help="what shards hold and what the loader would reject",
                       description="Read every sample once through the training loader's decoder: sample and "
                                   "task counts, answer / label vocabulary, bad samples by reason.")
    p.add_argument("source", help="shard dir, dataset.json or URL pattern (pipe: / brace-expanded)")
    p.add_argument("--show", type=int, default=0, help="draw the first N usable samples (text, answers, boxes)")
    p.add_argument("--show-out", default="inspect.png", help="PNG for --show (default inspect.png)")
    p.add_argument("--answer-vocab-out", default=None,
                   help="write the answers given at least --min-answer-count times, one per line (for "
                        "data.answer_vocab, e.g. of remote shards)")
    p.add_argument("--min-answer-count", type=int, default=1)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _report(name: str, info: DatasetInfo) -> None:
    skipped = ", ".join(f"{r}={n}" for r, n in info.skipped.items()) or "none"
    tasks = ", ".join(f"{t}={n}" for t, n in info.tasks.items()) or "none"
    print(f"{name}: {info.num_samples} samples in {len(info.shards)} shard(s) ({tasks}); skipped: {skipped}")


def inspect(args: Any) -> int:
    """``make-shards inspect``: the report on stdout, previews into a PNG, the answer vocabulary to a file."""
    if args.show < 0 or args.min_answer_count < 1:
        raise ValueError("--show must be >= 0 and --min-answer-count >= 1")
    if args.show and not Path(args.show_out).parent.is_dir():
        raise FileNotFoundError(f"--show-out: folder {Path(args.show_out).parent} does not exist")
    found = inspect_shards(args.source, show=args.show, progress=not args.no_progress)
    print(found.report())
    if found.previews:
        from vlcoattn.train.report import plot_examples

        print(f"previews: {plot_examples(found.previews, args.show_out)} ({len(found.previews)} samples)")
    if args.answer_vocab_out:
        vocab = found.answer_vocab(args.min_answer_count)
        Path(args.answer_vocab_out).write_text("".join(a + "\n" for a in vocab), encoding="utf-8")
        print(f"answer vocabulary: {len(vocab)} answers -> {args.answer_vocab_out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "inspect":
        return inspect(args)
    common = {"shard_size": args.shard_size, "overwrite": args.overwrite, "progress": not args.no_progress}
    if args.command != "synthetic":
        common["shuffle"] = not args.no_shuffle
    if args.command == "jsonl":
        info = convert_jsonl(
            args.input,
            args.images,
            args.out,
            box_format=args.box_format,
            normalize_answers=args.normalize_answers,
            max_side=args.max_side,
            **common,
        )
    elif args.command == "vqa2":
        info = convert_vqa2(
            args.questions,
            args.annotations,
            args.images,
            args.out,
            image_pattern=args.image_pattern,
            max_side=args.max_side,
            min_answer_count=args.min_answer_count,
            **common,
        )
    elif args.command == "refcoco":
        info = convert_refcoco(
            args.refs,
            args.instances,
            args.images,
            args.out,
            split=args.split,
            allow_pickle=args.allow_pickle,
            max_side=args.max_side,
            **common,
        )
    elif args.command in ("textcls", "text") and args.test_fraction:
        split = {"test_fraction": args.test_fraction, "seed": args.seed, **common}
        if args.command == "textcls":
            infos = convert_textcls_split(
                args.input, args.out, text_column=args.text_column, label_column=args.label_column, **split
            )
        else:
            infos = convert_text_split(
                args.input, args.out, unit=args.unit, min_chars=args.min_chars, **split
            )
        for name, split_info in infos.items():
            _report(f"{args.out}/{name}", split_info)
        return 0
    elif args.command == "textcls":
        info = convert_textcls(
            args.input, args.out, text_column=args.text_column, label_column=args.label_column, **common
        )
    elif args.command == "text":
        info = convert_text(args.input, args.out, unit=args.unit, min_chars=args.min_chars, **common)
    else:
        config = SyntheticConfig(
            image_size=args.size,
            questions_per_scene=args.questions_per_scene,
            refs_per_scene=args.refs_per_scene,
            holdout=parse_holdout(args.split_holdout),
            image_format=args.format,
        )
        infos = write_synthetic(
            args.out,
            args.num,
            seed=args.seed,
            config=config,
            val_num=args.val_num,
            test_num=args.test_num,
            holdout_num=args.holdout_num,
            **common,
        )
        for split, split_info in infos.items():
            _report(f"{args.out}/{split}", split_info)
        return 0
    _report(args.out, info)
    return 0


def cli() -> None:
    """Entry point of the installed ``vlcoattn-make-shards`` command (and of ``tools/make_shards.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
