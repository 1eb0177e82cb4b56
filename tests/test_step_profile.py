"""The FLOP counting of benchmarks/step_profile.py against hand counts: a Linear layer and CPU attention."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_profile


class Stack(torch.nn.Module):
    def __init__(self, *layers: torch.nn.Module):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_a_linear_step_counts_2_b_in_out_forward_and_twice_that_backward():
    """y = x W^T + b: B·in·out multiply-adds forward; backward the same for dx and again for dW (the bias and
    the loss's sum are elementwise: 0). The layer sits in a ModuleList part, which is never called itself: its
    forward count is found under that part all the same."""
    B, d_in, d_out = 8, 12, 5
    model = Stack(torch.nn.Linear(d_in, d_out))
    x = torch.randn(B, d_in, requires_grad=True)  # so the backward also computes dx
    forward, backward = step_profile.count_flops(lambda: model(x).sum())
    assert step_profile.flops(forward) == 2 * B * d_in * d_out
    assert step_profile.flops(backward) == 2 * 2 * B * d_in * d_out
    assert step_profile.forward_by_part(step_profile.model_parts(model), forward) == {"layers": 2 * B * d_in * d_out}


def test_cpu_attention_counts_its_products_forward_and_backward():
    """softmax(q k^T + m) v: b·h·s_q·s_k·d multiply-adds for q k^T and as many for the product with v (d_v = d);
    the fused backward has five: it recomputes q k^T (it keeps no attention matrix), then dv, dp, dq, dk.
    torch's counter has no formula for the CPU kernel, so without the mapping each would count 0."""
    b, h, s_q, s_k, d = 2, 3, 5, 7, 4
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for s in (s_q, s_k, s_k))
    mask = torch.randn(b, h, s_q, s_k)
    forward, backward = step_profile.count_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum())
    assert step_profile.flops(forward) == 2 * (2 * b * h * s_q * s_k * d)
    assert step_profile.flops(backward) == 5 * (2 * b * h * s_q * s_k * d)

