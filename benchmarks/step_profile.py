"""Where one training step of the real trainer goes: forward, backward, clip + AdamW, and the top ops.

    python benchmarks/step_profile.py [--config configs/demo.yaml] [--steps 16] [k=v ...]

Builds the trainer of ``--config`` (with the overrides), draws 8 batches and runs them once, so a
``feature_cache_gib`` config has every sample's frozen features cached, then times ``--steps`` steps over
the same batches (medians per phase) and profiles 4 more with ``torch.profiler``. The phases and ops are
reported as shares of the step measured in the same run; the absolute milliseconds move with the machine.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vlcoattn.tasks import model_inputs
from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig
from vlcoattn.train.trainer import Trainer
from vlcoattn.utils.reporting import machine, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/demo.yaml"))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--top", type=int, default=8, help="ops listed")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.batch_size=16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        job = load_config(JobConfig, args.config, [f"run.dir={tmp}", "run.progress=false", *args.overrides])
        trainer = Trainer(job)
        model, optimizer = trainer.model, trainer.optimizer
        batches = list(itertools.islice(trainer._batches(), 8))

        def step(batch: dict) -> tuple[float, float, float]:
            t0 = time.perf_counter()
            out = model(**model_inputs(job.task, batch, trainer.dist.device))
            t1 = time.perf_counter()
            out.loss.backward()
            t2 = time.perf_counter()
            clip = job.optim.grad_clip if job.optim.grad_clip is not None else float("inf")  # as the trainer
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return t1 - t0, t2 - t1, time.perf_counter() - t2

        for b in batches:  # warm-up; fills the feature cache
            step(b)
        cycle = itertools.cycle(batches)
        phases = [statistics.median(p) for p in zip(*(step(next(cycle)) for _ in range(args.steps)))]
        with torch.profiler.profile() as prof:
            for _ in range(4):
                step(next(cycle))
    total = sum(phases)
    batch = job.data.batch_size
    print(f"{machine()}; {Path(args.config).name} {' '.join(args.overrides)}; batch {batch}, text length "
          f"{batches[0]['input_ids'].shape[1]}, {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f} M "
          f"trainable; {total * 1e3:.0f} ms per step ({batch / total:.0f} samples/s)\n")
    print(markdown_table(["phase", "share of the step"],
                         [[n, f"{p / total:.0%}"] for n, p in zip(["forward", "backward", "clip + AdamW"], phases)]))
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    op_total = sum(e.self_cpu_time_total for e in events)
    print()
    print(markdown_table(["op (self time)", "share of op time"],
                         [[e.key, f"{e.self_cpu_time_total / op_total:.1%}"] for e in events[:args.top]]))


if __name__ == "__main__":
    main()
