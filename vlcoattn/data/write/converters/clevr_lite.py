"""CLEVR-lite and the glyphs family (the synthetic generator in :mod:`vlcoattn.data.write.synthetic`) written
to shard splits."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from ...schema import DatasetInfo
from ..sink import ShardSink
from ..synthetic import FAMILIES, SPLITS, SyntheticConfig, family_named, parse_holdout, synthetic_samples
from .common import add_shard_command, progress_bar, report, sink_options


def write_synthetic(
    out_dir: str | Path,
    num: int,
    *,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    val_num: int | None = None,
    test_num: int | None = None,
    holdout_num: int | None = None,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, DatasetInfo]:
    """CLEVR-lite scenes (or ``config.family``'s) into ``out_dir/{train,val,test}`` (+ ``holdout`` when the
    config holds pairs out). ``num`` train scenes; val/test default to ``num // 10`` (at least 1) scenes each."""
    config = config or SyntheticConfig()
    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    small = max(1, num // 10)
    counts = {
        "train": num,
        "val": small if val_num is None else val_num,
        "test": small if test_num is None else test_num,
    }
    if config.holdout:
        counts["holdout"] = counts["test"] if holdout_num is None else holdout_num
    elif holdout_num:
        raise ValueError("--holdout-num needs --split-holdout")
    infos = {}
    per_scene = config.questions_per_scene + config.refs_per_scene + int(config.captions)
    for split in (s for s in SPLITS if counts.get(s)):
        options = {"split": split, "seed": seed, "scenes": counts[split], **asdict(config)}
        with ShardSink(
            Path(out_dir) / split,
            "synthetic",
            shard_size=shard_size,
            overwrite=overwrite,
            options=options,
            answer_vocab=family_named(config.family).answers,
        ) as sink:
            samples = synthetic_samples(split, counts[split], seed, config)
            for key, data, ext, record in progress_bar(
                samples, f"synthetic {split}", counts[split] * per_scene, progress
            ):
                sink.write(key, record, data, ext, (config.image_size, config.image_size))
        infos[split] = sink.info
    return infos


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``make-shards synthetic``."""
    p = add_shard_command(sub, "synthetic", "CLEVR-lite scenes: out/{train,val,test[,holdout]}", shuffle=False)
    p.add_argument(
        "--family", choices=tuple(FAMILIES), default="clevr-lite",
        help="clevr-lite: objects told apart by colour; glyphs: one-colour tiles told apart by a small mark",
    )
    p.add_argument(
        "--num", type=int, required=True, help="train scenes (val/test: num // 10 each by default)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument(
        "--split-holdout",
        default=None,
        help="'cogent' (the family's preset) or identity:shape pairs kept out of train/val/test: "
        "colour:shape ('red:circle,blue:square'), for glyphs mark:shape ('plus:circle')",
    )
    p.add_argument("--val-num", type=int, default=None)
    p.add_argument("--test-num", type=int, default=None)
    p.add_argument(
        "--holdout-num", type=int, default=None, help="scenes in the holdout split (default: test's)"
    )
    p.add_argument("--questions-per-scene", type=int, default=3)
    p.add_argument("--refs-per-scene", type=int, default=2)
    p.add_argument("--captions", action="store_true",
                   help="also write one caption per scene, each object a phrase with its box (task 'phrase')")
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="image encoding")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    config = SyntheticConfig(
        image_size=args.size,
        questions_per_scene=args.questions_per_scene,
        refs_per_scene=args.refs_per_scene,
        captions=args.captions,
        holdout=parse_holdout(args.split_holdout, args.family),
        image_format=args.format,
        family=args.family,
    )
    infos = write_synthetic(
        args.out, args.num, seed=args.seed, config=config, val_num=args.val_num, test_num=args.test_num,
        holdout_num=args.holdout_num, **sink_options(args),
    )
    return report(args.out, infos)
