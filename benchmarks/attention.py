"""Collaborative self-attention vs transformers' BERT self-attention at the same size.

    python benchmarks/attention.py [--batch 4] [--repeats 10]

For D in (384, 768) and T in (128, 512): parameters of the attention projections, forward+backward
time as a ratio to BERT's SDPA self-attention measured in the same run, and KV-cache bytes per
token and layer (fp32). CooBERT runs at D~k = D (exact-conversion size) and D~k = D/2.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertSelfAttention

from vlcoattn.text.attention import CollaborativeSelfAttention
from vlcoattn.utils.reporting import machine, markdown_table

from timing import interleaved_medians


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fwd_bwd(module: torch.nn.Module, x: torch.Tensor) -> None:
    x.grad = None
    out = module(x)
    (out[0] if isinstance(out, tuple) else out).sum().backward()  # BertSelfAttention returns a tuple


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for D in (384, 768):
        H = 12  # MiniLM (384) and BERT-base (768) both use 12 heads
        cfg = BertConfig(hidden_size=D, num_attention_heads=H, attention_probs_dropout_prob=0.0)
        cfg._attn_implementation = "sdpa"
        bert = BertSelfAttention(cfg)
        coo = {K: CollaborativeSelfAttention(D, H, K) for K in (D, D // 2)}
        for T in (128, 512):
            x = torch.randn(args.batch, T, D, requires_grad=True)
            fns = {"bert": partial(fwd_bwd, bert, x)} | {K: partial(fwd_bwd, m, x) for K, m in coo.items()}
            t = interleaved_medians(fns, repeats=args.repeats)
            for K, m in coo.items():
                key, value = m.kv_cache_numbers_per_token()
                rows.append([
                    D, H, T, K, f"{n_params(bert):,}", f"{n_params(m):,}", f"{t['bert'] * 1e3:.1f}",
                    f"{t[K] * 1e3:.1f}", f"{t[K] / t['bert']:.2f}", 2 * D * 4, (key + value) * 4,
                    f"{key / D:.2f}",
                ])
    print(f"machine: {machine()}; batch {args.batch}; forward+backward, median of {args.repeats}\n")
    print(markdown_table(
        ["D", "heads", "T", "D~k", "BERT params", "CooBERT params", "BERT ms", "CooBERT ms", "time ratio",
         "BERT KV B/tok", "CooBERT KV B/tok", "key-cache ratio"], rows))


if __name__ == "__main__":
    main()
