"""Train a model from a YAML job config, on one process or under torchrun (DDP).

    python tools/train.py --config configs/demo.yaml [key.sub=value ...] [--resume latest|CKPT_DIR]
    torchrun --nproc_per_node=2 tools/train.py --config configs/demo.yaml data.num_workers=2

Writes into ``run.dir``: config.yaml (resolved), metrics.jsonl, tb/ (TensorBoard), checkpoints/,
final/ (save_pretrained model), predictions/, final_metrics.json and report.md.
SIGTERM / SIGINT write a checkpoint and exit; ``--resume latest`` continues exactly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig
from vlcoattn.train.trainer import TrainingError, train
from vlcoattn.utils.cli import ArgumentParser, fail, run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML job config (see configs/)")
    parser.add_argument("--resume", default=None, help="'latest' (the newest complete checkpoint, if any) or a checkpoint dir")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 train.steps=200")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    job = load_config(JobConfig, args.config, args.overrides)
    try:
        result = train(job, resume=args.resume)
    except TrainingError as e:
        fail("train.py", str(e))
    if rank == 0 and not result.interrupted:
        print(json.dumps({"run_dir": str(result.run_dir), "step": result.step, "metrics": result.metrics}, indent=2))
        print(f"report: {result.run_dir / 'report.md'}")
    return 0


def cli() -> None:
    """Entry point of the installed ``vlcoattn-train`` command (and of ``tools/train.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
