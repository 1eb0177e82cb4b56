"""Write webdataset shard directories (shard-NNNNNN.tar + dataset.json) from real dataset layouts.

    python tools/make_shards.py jsonl --input data.jsonl --images imgs/ --out shards/mine
    python tools/make_shards.py vqa2 --questions Q.json --annotations A.json --images val2014/ \\
        --out shards/vqa
    python tools/make_shards.py refcoco --refs refs.json --instances instances.json --images train2014/ \\
        --split val --out shards/refcoco-val
    python tools/make_shards.py flickr30k --root flickr30k_entities --images flickr30k-images --split val \\
        --out shards/flickr30k-val
    python tools/make_shards.py textcls --input bbcnews/data --out shards/bbc --test-fraction 0.2 --seed 0
    python tools/make_shards.py text --input a.txt b.txt --out shards/lm [--test-fraction 0.1 --seed 0]
    python tools/make_shards.py synthetic --out shards/clevr --num 2000 --seed 0 --size 128 \\
        --split-holdout cogent [--captions]
    python tools/make_shards.py hf --input saved/ --task vqa --text-column question --out shards/hf-vqa
    python tools/make_shards.py inspect shards/clevr/train --show 8 --show-out preview.png
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from vlcoattn.data.write.converters import clevr_lite, flickr30k, hf, jsonl, refcoco, text, vqa2
from vlcoattn.data.write.inspection import inspect_shards
from vlcoattn.utils.cli import ArgumentParser, run_cli


def add_inspect_command(sub: argparse._SubParsersAction) -> None:
    """``make-shards inspect`` (here, not in ``vlcoattn.data``: its previews are the training report's plots)."""
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
    p.set_defaults(run=inspect)


def inspect(args: argparse.Namespace) -> int:
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


COMMANDS = (  # each adds its sub-command(s) with the function that runs them (args.run), in --help order
    jsonl.add_commands,
    vqa2.add_commands,
    refcoco.add_commands,
    flickr30k.add_commands,
    text.add_commands,  # textcls, text
    clevr_lite.add_commands,  # synthetic
    hf.add_commands,
    add_inspect_command,
)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="make_shards.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for add_commands in COMMANDS:
        add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.run(args)


def cli() -> None:
    """Entry point of the installed ``vlcoattn-make-shards`` command (and of ``tools/make_shards.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
