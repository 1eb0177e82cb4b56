"""CLEVR-lite (the synthetic generator in :mod:`vlcoattn.data.synthetic`) written to shard splits."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..schema import DatasetInfo
from ..shards import ShardSink
from ..synthetic import ANSWERS, SPLITS, SyntheticConfig, synthetic_samples
from .common import (
    progress_bar,
)


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
    """CLEVR-lite scenes into ``out_dir/{train,val,test}`` (+ ``holdout`` when the config holds
    pairs out). ``num`` train scenes; val/test default to ``num // 10`` (at least 1) scenes each."""
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
    per_scene = config.questions_per_scene + config.refs_per_scene
    for split in (s for s in SPLITS if counts.get(s)):
        options = {"split": split, "seed": seed, "scenes": counts[split], **asdict(config)}
        with ShardSink(
            Path(out_dir) / split,
            "synthetic",
            shard_size=shard_size,
            overwrite=overwrite,
            options=options,
            answer_vocab=ANSWERS,
        ) as sink:
            samples = synthetic_samples(split, counts[split], seed, config)
            for key, data, ext, record in progress_bar(
                samples, f"synthetic {split}", counts[split] * per_scene, progress
            ):
                sink.write(key, record, data, ext, (config.image_size, config.image_size))
        infos[split] = sink.info
    return infos
