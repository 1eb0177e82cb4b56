"""Evaluate a saved model (a ``final/`` or checkpoint ``model/`` dir) on shard dirs.

    python tools/evaluate.py --model runs/demo/final --data data/clevr-lite-4000/test [--predictions out.jsonl]

Prints the metrics as JSON: VQA accuracy (+ per question type), grounding Acc@0.5 and mean IoU
(+ per expression type), classification accuracy and macro-F1, or LM perplexity, as the task has them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from vlcoattn.eval.runner import evaluate_model_dir
from vlcoattn.utils.cli import ArgumentParser, run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="save_pretrained model dir")
    parser.add_argument("--data", required=True, nargs="+", help="shard dirs / patterns, joined")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="only the first N samples")
    parser.add_argument("--max-text-len", type=int, default=None, help="default: as in training")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--predictions", default=None, help="write per-sample predictions here (JSONL)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = evaluate_model_dir(args.model, args.data, batch_size=args.batch_size, limit=args.limit,
                                max_text_len=args.max_text_len, device=args.device, progress=not args.no_progress)
    if args.predictions:
        Path(args.predictions).write_text("".join(json.dumps(p) + "\n" for p in result.predictions))
    print(json.dumps(result.metrics, indent=2))
    return 0


def cli() -> None:
    """Entry point of the installed ``vlcoattn-evaluate`` command (and of ``tools/evaluate.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
