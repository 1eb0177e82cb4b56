"""Train a byte-level BPE (GPT-2 style) or WordPiece (BERT style) tokenizer on your own text.

    python tools/train_tokenizer.py --input shards/bbc-lm/train --out runs/tok-bpe8k --vocab-size 8000
    python tools/train_tokenizer.py --input corpus/ notes.txt --out runs/tok-wp --kind wordpiece

Inputs: text files, folders of *.txt (recursive) and shard directories from tools/make_shards.py.
The output directory loads with ``AutoTokenizer.from_pretrained(OUT)``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from vlcoattn.text.tokenizer import TOKENIZER_KINDS, TRAINING_FILE, train_tokenizer
from vlcoattn.utils.cli import ArgumentParser, run_cli


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="train_tokenizer.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, nargs="+", help="text files, folders of *.txt, shard dirs")
    parser.add_argument("--out", required=True, help="output tokenizer directory")
    parser.add_argument("--kind", choices=TOKENIZER_KINDS, default="bpe", help="bpe (byte-level) or wordpiece")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--min-frequency", type=int, default=2, help="least count of a merge / word piece")
    parser.add_argument(
        "--lowercase",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="lowercase the text (default: yes for wordpiece, no for bpe)",
    )
    parser.add_argument("--max-length", type=int, default=512, help="model_max_length of the tokenizer")
    parser.add_argument("--overwrite", action="store_true", help="replace a tokenizer already in --out")
    parser.add_argument("--progress", action="store_true", help="show the trainer's progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train_tokenizer(
        args.input,
        args.out,
        kind=args.kind,
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        lowercase=args.lowercase,
        model_max_length=args.max_length,
        overwrite=args.overwrite,
        show_progress=args.progress,
    )
    with open(f"{args.out}/{TRAINING_FILE}", encoding="utf-8") as f:
        stats = json.load(f)
    print(
        f"{args.out}: {stats['kind']} tokenizer, vocabulary {stats['vocab_size']}, trained on "
        f"{stats['texts']} texts ({stats['chars']:,} characters) from {stats['num_sources']} input(s)"
    )
    return 0


def cli() -> None:
    """Entry point of the installed ``vlcoattn-train-tokenizer`` command (and of ``tools/train_tokenizer.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
