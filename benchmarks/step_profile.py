"""Where one training step of the real trainer goes: forward, backward, clip + AdamW, the top ops, its FLOPs.

    python benchmarks/step_profile.py [--config configs/demo.yaml] [--steps 16] [k=v ...]

Builds the trainer of ``--config`` (with the overrides), draws 8 batches and runs them once, so a
``feature_cache_gib`` config has every sample's frozen features cached, then times ``--steps`` steps over
the same batches (medians per phase) and profiles 4 more with ``torch.profiler``. The phases and ops are
reported as shares of the step measured in the same run; the absolute milliseconds move with the machine.

How close the step is to the machine's limit: ``torch.utils.flop_counter`` counts the step's FLOPs
(forward and backward, by model part; the first warm-up step, before the cache holds anything, is counted
too), and a large fp32 matmul timed in the same run, on the same threads, is the machine's practical peak.
The counter counts matrix products, convolutions and attention only: elementwise ops, softmax, norms, dropout
and the optimizer count 0, so the profiler's share of op time in the counted ops is reported beside it.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

from vlcoattn.tasks import model_inputs
from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig
from vlcoattn.train.trainer import Trainer
from vlcoattn.utils.reporting import machine, markdown_table

ROOT = Path(__file__).resolve().parents[1]
PHASES = ["forward", "backward", "clip + AdamW"]
Counts = dict[str, dict[Any, int]]  # FlopCounterMode.get_flop_counts(): {module name or "Global": {op: FLOPs}}
_aten = torch.ops.aten
# the CPU's fused attention kernel, which torch's counter has no formula for: the GPU kernels' shape formulas
# (``__wrapped__``: the counter wraps a custom formula in its shape reader itself)
CPU_ATTENTION_FLOPS = {_aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flop.__wrapped__,
                       _aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_backward_flop.__wrapped__}


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter (matmul, conv, attention: 2 FLOPs per multiply-add), CPU attention included."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)


def count_flops(loss_fn: Callable[[], torch.Tensor]) -> tuple[Counts, Counts]:
    """The FLOPs of ``loss_fn()`` (the forward) and of the backward of the loss it returns, apart."""
    with flop_counter() as forward:
        loss = loss_fn()
    with flop_counter() as backward:
        loss.backward()
    return forward.get_flop_counts(), backward.get_flop_counts()


def flops(counts: Counts, name: str = "Global") -> int:
    """The FLOPs counted in module ``name`` (all of them: "Global")."""
    return sum(counts.get(name, {}).values())


def matmul_flops_per_s(n: int = 2048, reps: int = 5) -> list[float]:
    """FLOP/s of ``reps`` fp32 (n x n) @ (n x n) products (2 n³ FLOPs each) on torch's current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - t0))
    return rates


def model_parts(model: torch.nn.Module) -> list[str]:
    """The parts FLOPs are split by: the base model's children, then the task model's own (heads), as
    ``FlopCounterMode`` names them (``Class.attr.child``)."""
    root, prefix = type(model).__name__, getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    parts = [f"{prefix}.{n}" for n, _ in base.named_children()] if base is not None else []
    parts += [n for n, _ in model.named_children() if base is None or n != prefix]
    return [f"{root}.{p}" for p in parts]


def forward_by_part(parts: list[str], forward: Counts) -> dict[str, int]:
    """{part: forward FLOPs} for every part with any, and the rest (outside the parts: the losses). The
    backward is not split: the counter's module tracker cannot attribute it here (a module whose output is a
    ``ModelOutput`` gets no backward hook, one whose input needs no gradient is never left)."""
    def part(p: str) -> int:  # a container never called itself (a ModuleList): its called children
        return flops(forward, p) if p in forward else sum(flops(forward, k) for k in forward if k.rsplit(".", 1)[0] == p)

    found = {p.split(".", 1)[1]: part(p) for p in parts}
    found = {p: n for p, n in found.items() if n}
    rest = flops(forward) - sum(found.values())
    return {**found, "rest": rest} if rest else found


def counted_op_share(events: list, step: tuple[Counts, Counts]) -> float:
    """The share of the profiled ops' self time spent in ops the FLOP counter counts."""
    counted = {str(op).replace(".", "::", 1) for c in step for op, n in c.get("Global", {}).items() if n}
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in counted) / total


def train_step(trainer: Trainer, batch: dict) -> tuple[float, float, float]:
    """One step as the trainer takes it; its forward, backward and clip + AdamW seconds."""
    model, job = trainer.model, trainer.job
    t0 = time.perf_counter()
    out = model(**model_inputs(job.task, batch, trainer.dist.device))
    t1 = time.perf_counter()
    out.loss.backward()
    t2 = time.perf_counter()
    clip = job.optim.grad_clip if job.optim.grad_clip is not None else float("inf")  # as the trainer
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def counted_step(trainer: Trainer, batch: dict) -> tuple[Counts, Counts]:
    """The FLOPs of one step's forward and backward (its gradients are dropped, not applied)."""
    inputs = model_inputs(trainer.job.task, batch, trainer.dist.device)
    counts = count_flops(lambda: trainer.model(**inputs).loss)
    trainer.optimizer.zero_grad(set_to_none=True)
    return counts


def measure(trainer: Trainer, steps: int) -> dict:
    """Warm up (counting the first, uncached step), time ``steps`` steps with the matmul peak timed before
    and after them, profile 4 steps, count a cached step."""
    batches = list(itertools.islice(trainer._batches(), 8))
    first = counted_step(trainer, batches[0])  # nothing is cached yet: the encoders run
    for b in batches:  # warm-up; fills the feature cache
        train_step(trainer, b)
    cycle = itertools.cycle(batches)
    peak = matmul_flops_per_s()
    phases = [statistics.median(p) for p in zip(*(train_step(trainer, next(cycle)) for _ in range(steps)))]
    peak += matmul_flops_per_s()
    with torch.profiler.profile() as prof:
        for _ in range(4):
            train_step(trainer, next(cycle))
    return {"batches": batches, "phases": phases, "events": list(prof.key_averages()),
            "peak": statistics.median(peak), "first": first, "cached": counted_step(trainer, batches[0])}


def total_flops(step: tuple[Counts, Counts]) -> int:
    return flops(step[0]) + flops(step[1])


def report_time(m: dict, top: int) -> None:
    """The phase shares and the top ops by self time."""
    total = sum(m["phases"])
    print(markdown_table(["phase", "share of the step"], [[n, f"{p / total:.0%}"] for n, p in zip(PHASES, m["phases"])]))
    events = sorted(m["events"], key=lambda e: e.self_cpu_time_total, reverse=True)
    op_total = sum(e.self_cpu_time_total for e in events)
    print()
    print(markdown_table(["op (self time)", "share of op time"],
                         [[e.key, f"{e.self_cpu_time_total / op_total:.1%}"] for e in events[:top]]))


def report_flops(m: dict, batch: int) -> None:
    """The cached step's FLOPs against the same run's matmul peak, and what the counted ops reach alone."""
    step_s, flops, peak = sum(m["phases"]), total_flops(m["cached"]), m["peak"]
    share = counted_op_share(m["events"], m["cached"])
    rate, in_ops = flops / step_s, flops / (step_s * share)
    rows = [["FLOPs per step (forward + backward)", f"{flops / 1e9:.2f} G"],
            ["FLOPs per sample", f"{flops / batch / 1e6:.0f} M"],
            ["achieved, the whole step", f"{rate / 1e9:.1f} GFLOP/s"],
            ["fp32 2048³ matmul, same threads", f"{peak / 1e9:.1f} GFLOP/s"],
            ["**step / matmul**", f"**{rate / peak:.2f}**"],
            ["counted ops' share of op time", f"{share:.0%}"],
            ["achieved inside the counted ops", f"{in_ops / 1e9:.1f} GFLOP/s ({in_ops / peak:.2f} of the matmul)"]]
    print()
    print(markdown_table(["cached step", "value"], rows))


def report_parts(m: dict, parts: list[str]) -> None:
    """GFLOPs by model part (forward) and of the backward, for the cached step and the first, uncached one."""
    cached, first = forward_by_part(parts, m["cached"][0]), forward_by_part(parts, m["first"][0])
    rows = [[f"{p} forward", cached.get(p, 0), first.get(p, 0)] for p in dict.fromkeys([*first, *cached])]
    rows += [["backward", flops(m["cached"][1]), flops(m["first"][1])],
             ["step", total_flops(m["cached"]), total_flops(m["first"])]]
    total = total_flops(m["cached"])
    print()
    print(markdown_table(["part", "cached step GFLOP", "share", "first-epoch (uncached) step GFLOP"],
                         [[p, f"{c / 1e9:.2f}", f"{c / total:.0%}", f"{u / 1e9:.2f}"] for p, c, u in rows]))


def report_run(m: dict, steps: int, epoch: int) -> None:
    """The training run's FLOPs (its first epoch uncached) and the least time the matmul's rate needs for them."""
    uncached = min(steps, epoch)
    flops = uncached * total_flops(m["first"]) + (steps - uncached) * total_flops(m["cached"])
    print(f"\nthe run's {steps} training steps ({uncached} uncached, the first epoch): {flops / 1e12:.1f} TFLOP "
          f"counted, {flops / m['peak'] / 60:.1f} min at the matmul's rate (the least wall time its steps can take); "
          f"{steps} cached steps at this run's median take {steps * sum(m['phases']) / 60:.1f} min")


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
        m = measure(trainer, args.steps)
        model, epoch = trainer.model, len(trainer.loader)
    total, batch = sum(m["phases"]), job.data.batch_size
    print(f"{machine()}; {Path(args.config).name} {' '.join(args.overrides)}; batch {batch}, text length "
          f"{m['batches'][0]['input_ids'].shape[1]}, "
          f"{sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f} M "
          f"trainable; {total * 1e3:.0f} ms per step ({batch / total:.0f} samples/s)\n")
    report_time(m, args.top)
    report_flops(m, batch)
    report_parts(m, model_parts(model))
    report_run(m, job.train.steps, epoch)


if __name__ == "__main__":
    main()
