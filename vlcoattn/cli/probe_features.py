"""What can your backbone see? A linear probe of its frozen features under each object's box, per level.

    vlcoattn-probe-features --shards data/clevr --split train --backbone tf_efficientnet_lite0 \\
        --image-size 64 128 --level 8 16 32 --attribute meta.objects[].color meta.objects[].shape --out probe

Reads the objects each ``--attribute`` names (text, answer, label, meta.KEY, meta.LIST[].KEY: see
:mod:`vlcoattn.probe.objects`), runs the backbone on their images letterboxed as the model's processor does,
and fits a logistic regression per attribute, input size and level. Prints a markdown table of train and
held-out accuracy beside a chance baseline, and the smallest input and coarsest level within --tolerance of
the best; --out writes it as report.md and probe.json.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from vlcoattn.probe import POOLS, TOLERANCE, build_backbone, collect_objects, probe_features, read_samples
from vlcoattn.utils.cli import ArgumentParser, fail, run_cli


def image_size(text: str) -> tuple[int, int]:
    """``128`` (square) or ``120x160`` (H x W) -> (H, W)."""
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
    if m is None or int(m[1]) < 8 or (m[2] is not None and int(m[2]) < 8):
        raise ValueError(f"--image-size {text!r}: use N (a square) or HxW, each at least 8 px")
    return int(m[1]), int(m[2] or m[1])


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="vlcoattn-probe-features", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True, help="shard dir, dataset.json or URL pattern (or their root "
                                                        "with --split)")
    parser.add_argument("--split", default=None, help="read --shards/SPLIT (a converter's output root)")
    parser.add_argument("--heldout-split", default=None,
                        help="held-out objects from --shards/SPLIT (default: 30%% of the images, by hash)")
    parser.add_argument("--backbone", required=True, help="timm model name, or a trained model dir")
    parser.add_argument("--weights", default=None, help="local .safetensors/.pth weights for a timm name")
    parser.add_argument("--image-size", nargs="+", type=str, default=None,
                        help="input sizes, N or HxW (default: the model's / the backbone's native size)")
    parser.add_argument("--level", nargs="+", type=int, default=[], help="strides (default: every level)")
    parser.add_argument("--attribute", nargs="+", required=True,
                        help="label sources: text, answer, label, meta.KEY, meta.LIST[].KEY")
    parser.add_argument("--pool", default="mean", choices=POOLS,
                        help="mean of the cells a box covers, or the cell under its centre")
    parser.add_argument("--max-samples", type=int, default=2000, help="samples read per split (default 2000)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help="recommend the cheapest setting within this of the best held-out accuracy")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=None, help="write report.md and probe.json here")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _source(args, split: str | None) -> str:
    source = Path(args.shards) / split if split else Path(args.shards)
    if split and not source.exists():
        raise FileNotFoundError(f"--shards {args.shards}: no split {split!r} in it ({source} does not exist)")
    return str(source)


def _objects(args, split: str | None, what: str):
    bad: Counter[str] = Counter()
    found = collect_objects(read_samples(_source(args, split), args.max_samples, bad), args.attribute)
    if bad:
        logging.warning("%s: skipped %s", what, ", ".join(f"{n} {reason}" for reason, n in bad.most_common()))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.max_samples < 1 or args.batch_size < 1 or not 0 <= args.tolerance < 1:
        raise ValueError("--max-samples and --batch-size must be >= 1, --tolerance in [0, 1)")
    if any(s < 1 for s in args.level):
        raise ValueError(f"--level takes strides >= 1, got {args.level}")
    sizes = [image_size(s) for s in args.image_size] if args.image_size else None
    found = _objects(args, args.split, "training samples")
    heldout = _objects(args, args.heldout_split, "held-out samples") if args.heldout_split else None
    backbone, native = build_backbone(args.backbone, args.level, args.weights)
    context = {"backbone": args.backbone, "shards": _source(args, args.split),
               "held-out shards": _source(args, args.heldout_split) if heldout else "none (split by image)",
               "samples read": found.samples + (heldout.samples if heldout else 0)}
    try:
        report = probe_features(backbone, found, sizes or [native], heldout, args.pool, args.tolerance,
                                args.batch_size, not args.no_progress, context)
    except ModuleNotFoundError as e:
        fail("vlcoattn-probe-features", str(e))
    print(report.markdown(), end="")
    if args.out:
        print(f"wrote {', '.join(str(p) for p in report.write(args.out))}")
    return 0


def cli() -> None:
    """Entry point of the installed ``vlcoattn-probe-features`` command (and of ``tools/probe_features.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
