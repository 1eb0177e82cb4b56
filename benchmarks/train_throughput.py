"""Training throughput and peak memory of the real trainer: processes, precision, recomputation, compile.

    python benchmarks/train_throughput.py [--steps 12] [--nproc 2] [--batch 16] [--rounds 2] [--extra k=v ...]
    python benchmarks/train_throughput.py --variant model.config.freeze_text_layers=-1   # 1 process, A/B
    python benchmarks/train_throughput.py --size large [--batch 4 --steps 6 --rounds 1]   # every option

``--size demo`` (default) runs ``tools/train.py`` with ``configs/demo.yaml`` (CLEVR-lite, converted MiniLM
CooBERT, EfficientNet-Lite0, 128 px): one process with ``--batch`` vs ``--nproc`` torchrun processes with
``--batch / nproc`` each (gloo on CPU, nccl + bf16 on a GPU), or, with ``--variant k=v ...``, one process
as configured vs one process with those overrides. ``--size large`` trains everything (nothing frozen): a
ViT-B/16 backbone at 384 px (``--backbone`` / ``--image-size`` choose another; random weights: only the
shapes matter here) and a BERT-base-sized CooBERT (12 layers, d 768, D~k 384, random), one process in fp32
against the same with
each option: gradient checkpointing, bf16 autocast, ``run.compile``, and ``--nproc`` processes with DDP
and with FSDP (``run.parallel=fsdp``) at the same global batch.

Samples/s is read from metrics.jsonl (steps after the first two; the first ones compile or warm up), peak
memory from its ``peak_mem_gib`` (rank 0: allocated CUDA memory on a GPU, peak resident set size on the
CPU). The rounds alternate the setups and the medians are compared with the first setup. On a GPU,
``--peak-tflops`` adds the model FLOPs utilisation: samples/s x training FLOPs per sample (counted by
torch's FlopCounterMode on one step) / (peak x processes).
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

from vlcoattn.data import write_synthetic
from vlcoattn.data.write.synthetic import SyntheticConfig
from vlcoattn.utils.reporting import machine, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(nproc: int, batch: int, steps: int, run_dir: Path, overrides: list[str]) -> tuple[float, float]:
    """(median samples/s of steps 3..N, rank 0's peak memory in GiB) of one training run."""
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
    cmd = [*launcher, "tools/train.py", "--config", "configs/demo.yaml", f"run.dir={run_dir}",
           f"train.steps={steps}", "train.eval_every=0", "train.save_every=0", "data.synthetic.dir=null",
           "train.report=false", "run.log_every=1", "run.progress=false", "data.val=[]", "data.test={}",
           f"data.batch_size={batch}", "optim.warmup_steps=0", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    return statistics.median(m["samples_per_s"] for m in train if m["step"] > 2), max(m["peak_mem_gib"] for m in train)


def large_text_dir(out: Path) -> Path:
    """A random BERT-base-sized CooBERT (MiniLM's WordPiece tokenizer) saved to ``out``."""
    from transformers import AutoTokenizer

    from vlcoattn.assets import minilm_dir
    from vlcoattn.text import CooBertConfig, CooBertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = CooBertConfig(vocab_size=tokenizer.vocab_size, hidden_size=768, num_hidden_layers=12,
                           num_attention_heads=12, intermediate_size=3072, shared_key_dim=384)
    CooBertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def large_overrides(text_dir: Path, backbone: str, image_size: int) -> list[str]:
    return [f"model.text={text_dir}", "model.convert_from=null", f"model.backbone={backbone}",
            "model.pretrained_backbone=false", f"model.image_size={image_size}",
            "model.config.vision_config.freeze=false", "model.config.freeze_text_layers=0",
            "model.config.vision_config.out_indices=[-1]", "model.feature_cache_gib=0"]  # nothing frozen to cache


def model_flops_per_sample(overrides: list[str], image: int, text_len: int = 16) -> float:
    """FLOPs of one training step (forward + backward) per sample of the configured model, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from vlcoattn.train.build import build_model, resolve_text_dir
    from vlcoattn.train.config import load_config
    from vlcoattn.train.job_config import JobConfig

    job = load_config(JobConfig, ROOT / "configs/demo.yaml", [o for o in overrides if o.startswith("model.")])
    job.model.pretrained_backbone = False
    if job.model.text is None:
        job.model.text = str(resolve_text_dir(job.model))
    model, _ = build_model(job, answer_vocab=[str(i) for i in range(30)])
    B = 4
    ids, px = torch.randint(1000, 2000, (B, text_len)), torch.randn(B, 3, image, image)
    with FlopCounterMode(display=False) as counter:
        model(ids, px, labels=torch.rand(B, 30), boxes=torch.rand(B, 4) * 0.5 + 0.25).loss.backward()
    return counter.get_total_flops() / B


def setups(args, base: list[str]) -> dict[str, tuple[int, int, list[str]]]:
    """name -> (processes, batch per process, overrides); the first is the baseline."""
    one = {"1 process": (1, args.batch, base)}
    if args.size == "large":
        split = (args.nproc, args.batch // args.nproc)
        return {"1 process, fp32": (1, args.batch, base),
                "+ gradient checkpointing": (1, args.batch, [*base, "model.gradient_checkpointing=true"]),
                "+ bf16 autocast": (1, args.batch, [*base, "run.precision=bf16"]),
                "+ torch.compile": (1, args.batch, [*base, "run.compile=true"]),
                f"{args.nproc} processes, DDP": (*split, base),
                f"{args.nproc} processes, FSDP": (*split, [*base, "run.parallel=fsdp"])}
    if args.variant:
        return {**one, f"1 process, {' '.join(args.variant)}": (1, args.batch, [*base, *args.variant])}
    return {**one, f"{args.nproc} processes (DDP)": (args.nproc, args.batch // args.nproc, base)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["demo", "large"], default="demo")
    parser.add_argument("--backbone", default="vit_base_patch16_384", help="--size large: the timm backbone")
    parser.add_argument("--image-size", type=int, default=384, help="--size large: the image side")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="global batch per step")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU bf16 peak, for MFU (H200: 989)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every setup")
    parser.add_argument("--variant", nargs="*", default=None, help="compare 1 process with these overrides instead of DDP")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # training samples only: no split to evaluate, so a run is its steps (and its final checkpoint)
        size = args.image_size if args.size == "large" else 128
        write_synthetic(tmp / "clevr", max(8 * args.batch, 64), config=SyntheticConfig(image_size=size), progress=False)
        base = [f"data.train=[{tmp / 'clevr' / 'train'}]", *args.extra]
        if args.size == "large":
            base = [*large_overrides(large_text_dir(tmp / "coobert-base"), args.backbone, args.image_size), *base]
        todo = setups(args, base)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in todo}
        for r in range(args.rounds):
            for i, (name, (nproc, batch, overrides)) in enumerate(todo.items()):
                results[name].append(run(nproc, batch, args.steps, tmp / f"setup{i}-{r}", overrides))
        flops = None
        if torch.cuda.is_available() and args.peak_tflops:
            flops = model_flops_per_sample(base, size)
    base_sps = statistics.median(sps for sps, _ in next(iter(results.values())))
    rows = []
    for name, runs in results.items():
        sps, mem = statistics.median(s for s, _ in runs), max(m for _, m in runs)
        row = [name, f"{sps:.2f}", f"{sps / base_sps:.2f}", f"{mem:.2f}"]
        if flops is not None:
            row.append(f"{100 * sps * flops / (args.peak_tflops * 1e12 * todo[name][0]):.1f}%")
        rows.append(row)
    print(f"Machine: {machine()}")
    model = f"{args.backbone} at {args.image_size} px + BERT-base-sized CooBERT, nothing frozen" \
        if args.size == "large" else "Demo model"
    print(f"{model}, global batch {args.batch}, {args.steps} steps, median samples/s of steps 3..{args.steps}, "
          f"{args.rounds} alternating round(s); peak memory of rank 0 "
          f"({'CUDA allocated' if torch.cuda.is_available() else 'resident set size'})")
    header = ["setup", "samples/s", "vs first", "peak GiB"] + (["MFU"] if flops is not None else [])
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
