"""Training throughput of the real trainer at the demo size: 1 process vs N-process DDP (torchrun).

    python benchmarks/train_throughput.py [--steps 12] [--nproc 2] [--batch 16] [--rounds 2] [--extra k=v ...]
    python benchmarks/train_throughput.py --variant model.config.freeze_text_layers=-1   # 1 process, A/B

Runs ``tools/train.py`` with ``configs/demo.yaml`` (CLEVR-lite, converted MiniLM CooBERT, EfficientNet-
Lite0, 128 px) for ``--steps`` steps with the same global batch: one process with ``--batch`` vs
``--nproc`` torchrun processes with ``--batch / nproc`` each (gloo on CPU, nccl + bf16 on a GPU).
Samples/s is read from metrics.jsonl (steps after the first two); the rounds alternate the two setups
and the medians are compared. ``--variant k=v ...`` compares one process as configured with one process
with those overrides instead of DDP (e.g. what freezing the text encoder buys). On a GPU, ``--peak-tflops`` adds the model FLOPs utilisation:
samples/s x training FLOPs per sample (counted by torch's FlopCounterMode on one step) / peak.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from timing import machine, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(nproc: int, batch: int, steps: int, run_dir: Path, data_dir: Path, extra: list[str]) -> float:
    """Median samples/s of one training run (steps 3..N)."""
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
    cmd = [*launcher, "tools/train.py", "--config", "configs/demo.yaml", f"run.dir={run_dir}",
           f"data.synthetic.dir={data_dir}", f"train.steps={steps}", "train.eval_every=0", "train.save_every=0",
           "train.report=false", "run.log_every=1", "run.progress=false", "data.val=[]", "data.test={}",
           f"data.batch_size={batch}", "optim.warmup_steps=0", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [m["samples_per_s"] for m in lines if m["split"] == "train" and m["step"] > 2]
    return statistics.median(rates)


def model_flops_per_sample(image: int = 128, text_len: int = 16) -> float:
    """FLOPs of one training step (forward + backward) per sample of the demo model, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from vlcoattn import VLCoAttnForMultitask
    from vlcoattn.train.build import resolve_text_dir
    from vlcoattn.train.job_config import ModelConfig

    model = VLCoAttnForMultitask.from_text_and_backbone(
        resolve_text_dir(ModelConfig()), "tf_efficientnet_lite0", pretrained_backbone=False,
        image_size=[image, image], answer_vocab=[str(i) for i in range(30)])
    B = 4
    ids, px = torch.randint(1000, 2000, (B, text_len)), torch.randn(B, 3, image, image)
    with FlopCounterMode(display=False) as counter:
        model(ids, px, labels=torch.rand(B, 30), boxes=torch.rand(B, 4) * 0.5 + 0.25).loss.backward()
    return counter.get_total_flops() / B


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="global batch per step")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU bf16 peak, for MFU (H100 SXM: 989)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for both setups")
    parser.add_argument("--variant", nargs="*", default=None, help="compare 1 process with these overrides instead of DDP")
    args = parser.parse_args()
    if args.variant:  # name -> (processes, batch per process, overrides)
        setups = {"1 process": (1, args.batch, args.extra),
                  f"1 process, {' '.join(args.variant)}": (1, args.batch, [*args.extra, *args.variant])}
    else:
        setups = {"1 process": (1, args.batch, args.extra),
                  f"{args.nproc} processes (DDP)": (args.nproc, args.batch // args.nproc, args.extra)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "clevr"
        results: dict[str, list[float]] = {name: [] for name in setups}
        for r in range(args.rounds):
            for i, (name, (nproc, batch, extra)) in enumerate(setups.items()):
                results[name].append(run(nproc, batch, args.steps, tmp / f"setup{i}-{r}", data, extra))
    base = statistics.median(results["1 process"])
    rows = []
    flops = model_flops_per_sample() if torch.cuda.is_available() and args.peak_tflops else None
    for name, rates in results.items():
        sps = statistics.median(rates)
        row = [name, f"{sps:.1f}", f"{sps / base:.2f}"]
        if flops is not None:
            row.append(f"{100 * sps * flops / (args.peak_tflops * 1e12 * setups[name][0]):.1f}%")
        rows.append(row)
    print(f"Machine: {machine()}")
    print(f"Demo model, global batch {args.batch}, {args.steps} steps, median samples/s of steps 3..{args.steps}, "
          f"{args.rounds} alternating rounds")
    header = ["setup", "samples/s", "vs 1 process"] + (["MFU"] if flops is not None else [])
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
