"""SMCA cross-attention: fused SDPA path vs the explicit-softmax reference path.

    python benchmarks/smca.py [--batch 16] [--repeats 10]

One ``SMCACrossAttention`` layer (d=256, 8 heads, Gaussian prior), T=32 text queries over a 16x16
and a 32x32 image grid. Forward+backward time of the fused path (log-prior as SDPA's float
attn_mask) as a ratio to the reference path (scores, + log G, softmax, @ v spelled out) measured
in the same run, and the peak of live tensor memory (parameters, inputs, activations, gradients)
during one forward+backward, tracked by torch's MemTracker.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from vlcoattn.fusion import CoAttentionConfig, SMCACrossAttention, sine_position_encoding_2d
from vlcoattn.utils.reporting import machine, markdown_table

from timing import interleaved_medians

D, HEADS, T = 256, 8, 32


def setup(batch: int, grid: int, device: str = "cpu", seed: int = 0):
    torch.manual_seed(seed)
    config = CoAttentionConfig(hidden_size=D, num_attention_heads=HEADS, attention_probs_dropout_prob=0.0,
                               prior_sharing="per_head")
    attn = SMCACrossAttention(config).to(device)
    torch.nn.init.normal_(attn.prior.scales.weight, std=0.05)
    q = torch.randn(batch, T, D, device=device, requires_grad=True)
    feats = torch.randn(batch, grid * grid, D, device=device, requires_grad=True)
    pos = sine_position_encoding_2d(grid, grid, D, device=device)
    ref = torch.rand(batch, T, 2, device=device)
    return attn, q, feats, pos, ref


def step(attn, q, feats, pos, ref, grid: int, impl: str) -> None:
    q.grad = feats.grad = None
    out = attn(q, [feats + pos], values=[feats], grid_sizes=[(grid, grid)], reference_centers=ref,
               output_attentions=impl == "eager")
    out.output.square().mean().backward()


def peak_bytes(batch: int, grid: int, impl: str, device: str) -> int:
    """Peak bytes of live tensors (parameters, inputs, activations, gradients) during one
    forward+backward, tracked by torch's ``MemTracker`` (a dispatch-mode tensor-storage tracker that
    works on CPU and GPU alike)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    args = setup(batch, grid, device)
    step(*args, grid, impl)  # warm-up
    mt = MemTracker()
    mt.track_external(args[0], args[1], args[2])
    with mt:
        step(*args, grid, impl)
    return int(mt.get_tracker_snapshot("peak")[torch.device(device)]["Total"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for grid in (16, 32):
        a = setup(args.batch, grid, device)
        t = interleaved_medians(
            {"reference": partial(step, *a, grid, "eager"), "fused": partial(step, *a, grid, "sdpa")},
            repeats=args.repeats,
        )
        # sanity: both paths give the same output
        with torch.no_grad():
            run = partial(a[0], a[1], [a[2] + a[3]], values=[a[2]], grid_sizes=[(grid, grid)], reference_centers=a[4])
            o1, o2 = run(output_attentions=True).output, run(output_attentions=False).output
        err = (o1 - o2).abs().max().item()
        m_ref, m_fused = peak_bytes(args.batch, grid, "eager", device), peak_bytes(args.batch, grid, "sdpa", device)
        rows.append([
            f"{grid}x{grid}", T, args.batch, f"{t['reference'] * 1e3:.1f}", f"{t['fused'] * 1e3:.1f}",
            f"{t['fused'] / t['reference']:.2f}", f"{m_ref / 2**20:.1f}", f"{m_fused / 2**20:.1f}",
            f"{m_fused / m_ref:.2f}", f"{err:.1e}",
        ])
    print(f"Machine: {machine()}; peak = live tensor bytes (torch MemTracker)")
    print(f"SMCA cross-attention, d={D}, {HEADS} heads, forward+backward, median of {args.repeats}")
    print(markdown_table(
        ["grid", "T", "batch", "reference ms", "fused ms", "time ratio", "reference peak MiB",
         "fused peak MiB", "memory ratio", "max |diff|"],
        rows,
    ))


if __name__ == "__main__":
    main()
