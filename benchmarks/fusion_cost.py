"""What each image level and input size costs: a cached training step of the CLEVR-lite recipe, per setting.

    python benchmarks/fusion_cost.py [--steps 20] [--rounds 2] [--batch 32] [--flops-only] [--quick] [k=v ...]

The model is ``--config``'s (configs/clevr.yaml: converted MiniLM and EfficientNet-Lite0, both frozen, two
SMCA fusion layers, the frozen-feature cache), built by the trainer as a training run builds it, with each
setting's input size, ``vision_config.out_indices`` and ``coattention_config.keys_only_levels``. Every
setting runs in its own process (so its memory is its own): 8 batches of CLEVR-lite fill the feature cache,
then ``--steps`` steps over them are timed (forward, backward, clip + AdamW; medians), so the frozen encoders
cost nothing per step, as in a run after its first epoch. ``--rounds`` alternate the settings; the ratios are
against the first setting, today's recipe, measured in the same run.

Peak memory: the process's peak (resident set size on the CPU, CUDA allocated memory on a GPU) less its
memory after the trainer was built, before the first step: the feature cache, gradients, AdamW's state and
the step's activations. FLOPs: ``torch.utils.flop_counter`` (``step_profile.py``'s helpers) on one cached step
(fusion: its forward; step: forward + backward) and on the backbone's forward of one image (which the cache
pays once per image). ``--flops-only`` counts them without timing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from step_profile import counted_step, flop_counter, forward_by_part, model_parts, total_flops, train_step

from vlcoattn.data import write_synthetic
from vlcoattn.data.write.synthetic import SyntheticConfig
from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig
from vlcoattn.train.trainer import Trainer
from vlcoattn.utils.reporting import machine, markdown_table

ROOT = Path(__file__).resolve().parents[1]
WARMUP_BATCHES = 8
# name -> (input side in px, vision_config.out_indices, coattention_config.keys_only_levels); the first is the baseline
SETTINGS = {
    "128 px, stride 16 (the recipe)": (128, [-2], None),
    "128 px, strides 8 + 16": (128, [-3, -2], None),
    "128 px, strides 8 (keys-only) + 16": (128, [-3, -2], [0]),
    "128 px, stride 16 keys-only (the demo's fusion)": (128, [-2], [0]),
    "128 px, strides 8 + 16, both keys-only": (128, [-3, -2], [0, 1]),
    "128 px, stride 8": (128, [-3], None),
    "192 px, stride 16": (192, [-2], None),
    "192 px, strides 8 (keys-only) + 16": (192, [-3, -2], [0]),
    "256 px, stride 16": (256, [-2], None),
}
QUICK = ["128 px, stride 16 (the recipe)", "128 px, strides 8 (keys-only) + 16"]


def setting_overrides(name: str) -> list[str]:
    """The config overrides of one setting."""
    size, levels, keys_only = SETTINGS[name]
    out = [f"model.image_size={size}", f"model.config.vision_config.out_indices=[{','.join(map(str, levels))}]"]
    if keys_only is not None:
        out.append(f"model.config.coattention_config.keys_only_levels=[{','.join(map(str, keys_only))}]")
    return out


def reset_peak_memory(device: torch.device) -> None:
    """The peak starts again from the memory in use now (on the CPU: Linux's VmHWM, via clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def memory_gib(device: torch.device, peak: bool = False) -> float:
    """The memory in use now or its peak: CUDA allocated on a GPU, the resident set size on the CPU (Linux)."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated)(device) / 2**30
    key = "VmHWM:" if peak else "VmRSS:"
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))
    return int(line.split()[1]) / 2**20  # kB


def timed_steps(trainer: Trainer, batches: list[dict], steps: int) -> list[float]:
    """Seconds of each of ``steps`` training steps over ``batches`` (in turn), the device synchronised."""
    sync = torch.cuda.synchronize if trainer.dist.device.type == "cuda" else (lambda: None)
    times = []
    for b in itertools.islice(itertools.cycle(batches), steps):
        sync()
        t0 = time.perf_counter()
        train_step(trainer, b)
        sync()
        times.append(time.perf_counter() - t0)
    return times


def measure(config: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """One setting in this process: the trainer built, ``warmup`` batches cache their features, then the
    cached step is counted and ``steps`` steps timed."""
    with tempfile.TemporaryDirectory() as tmp:
        job = load_config(JobConfig, config, [f"run.dir={tmp}", "run.progress=false", *overrides])
        trainer = Trainer(job)
        device, batch = trainer.dist.device, job.data.batch_size
        batches = list(itertools.islice(trainer._batches(), warmup))
        before = memory_gib(device)
        reset_peak_memory(device)
        for b in batches:
            train_step(trainer, b)
        cached = counted_step(trainer, batches[0])
        times = timed_steps(trainer, batches, steps)
        peak = memory_gib(device, peak=True) - before
        with torch.no_grad(), flop_counter() as backbone:  # one image, what the cache pays once per image
            cells = [f.shape[-2] * f.shape[-1] for f in trainer.model.base_model.backbone(
                batches[0]["pixel_values"][:1].to(device))]
        fusion = forward_by_part(model_parts(trainer.model), cached[0]).get("vlcoattn.fusion", 0)
    flops = {"fusion": fusion / batch, "step": total_flops(cached) / batch, "backbone": backbone.get_total_flops()}
    return {"times": times, "peak_gib": peak, "flops": flops, "cells": cells}


def run_setting(args: argparse.Namespace, name: str, data: Path) -> dict:
    """:func:`measure` of one setting in a fresh process (its memory its own); its JSON line back."""
    overrides = [f"data.train=[{data}]", "data.synthetic.dir=null", "data.val=[]", "data.test={}",
                 f"data.batch_size={args.batch}", *setting_overrides(name), *args.overrides]
    cmd = [sys.executable, __file__, "--child", "--config", args.config, "--steps", str(args.steps),
           "--warmup", str(args.warmup), *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    """The table: per setting its cells, time, memory and FLOPs, and the ratios to the first setting."""
    def ms(runs: list[dict]) -> float:
        return statistics.median(statistics.median(r["times"]) for r in runs) * 1e3 if args.steps else float("nan")

    base = next(iter(results.values()))
    base_ms, base_fusion = ms(base), base[0]["flops"]["fusion"]
    rows = []
    for name, runs in results.items():
        f, step_ms = runs[0]["flops"], ms(runs)
        timing = [f"{step_ms:.0f}", f"{args.batch / step_ms * 1e3:.1f}", f"{step_ms / base_ms:.2f}",
                  f"{max(r['peak_gib'] for r in runs):.2f}"] if args.steps else []
        rows.append([name, " + ".join(map(str, runs[0]["cells"])), *timing, f"{f['fusion'] / 1e6:.0f}",
                     f"{f['fusion'] / base_fusion:.2f}", f"{f['step'] / 1e6:.0f}", f"{f['backbone'] / 1e6:.0f}"])
    timing = ["ms/step", "samples/s", "time vs first", "peak GiB"] if args.steps else []
    header = ["setting", "cells", *timing, "fusion fwd MFLOP/sample", "fusion vs first",
              "cached step MFLOP/sample", "backbone MFLOP/image (once)"]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/clevr.yaml"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=WARMUP_BATCHES, help="batches that fill the feature cache")
    parser.add_argument("--flops-only", action="store_true", help="count FLOPs, time nothing")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 settings, batch 2, 1 step")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one setting, JSON out
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for every setting")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.config, args.overrides, args.steps, args.warmup)))
        return
    if args.quick:
        args.batch, args.steps, args.rounds, args.warmup = 2, 1, 1, 1
    if args.flops_only:
        args.steps, args.rounds, args.warmup = 0, 1, 1
    names = QUICK if args.quick else list(SETTINGS)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "clevr"
        # the recipe's 128-px scenes (several samples each); the processor resizes them to each setting's size
        write_synthetic(data, max(args.warmup * args.batch, 8), config=SyntheticConfig(image_size=128), progress=False)
        results: dict[str, list[dict]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                results[name].append(run_setting(args, name, data / "train"))
    memory = "CUDA allocated" if torch.cuda.is_available() else "resident set size"
    timing = (f"cached training steps (forward, backward, clip + AdamW), median of {args.steps} steps x {args.rounds} "
              f"alternating round(s); peak GiB: {memory} over the built trainer's; ") if args.steps else ""
    print(f"Machine: {machine()}")
    print(f"{Path(args.config).name} {' '.join(args.overrides)}; batch {args.batch}, {timing}"
          f"FLOPs by torch.utils.flop_counter (fusion: forward; step: forward + backward)\n")
    print(report(results, args))


if __name__ == "__main__":
    main()
