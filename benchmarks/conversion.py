"""Conversion fidelity: MiniLM (BERT) -> CooBERT at D~k = 384, 192, 96 on 200 BBC News sentences.

    python benchmarks/conversion.py [--sentences 200] [--cp-iters 10]

Reports per D~k: mean / min cosine similarity of mean-pooled sentence embeddings against the
original BertModel, mean CP relative error of the W_Q W_K^T tensors, and the query/key
parameters saved. No fine-tuning after conversion: these are the raw conversion figures.
"""

from __future__ import annotations

import argparse
import re
import time

import torch

from vlcoattn.assets import bbc_news_dir, minilm_dir
from vlcoattn.text.convert import convert_bert_to_coobert
from vlcoattn.utils.reporting import machine, markdown_table


def bbc_sentences(n: int) -> list[str]:
    """The first ``n`` sentences of 6-40 words, taking files in turn from each class (sorted)."""
    root = bbc_news_dir()
    files = {c.name: sorted(c.glob("*.txt")) for c in sorted(root.iterdir()) if c.is_dir()}
    out: list[str] = []
    for i in range(max(len(f) for f in files.values())):
        for cls_files in files.values():
            if i >= len(cls_files):
                continue
            text = cls_files[i].read_text(encoding="utf-8", errors="replace")
            for sent in re.split(r"(?<=[.!?])\s+", " ".join(text.split()[8:])):
                if 6 <= len(sent.split()) <= 40:
                    out.append(sent)
                    break
            if len(out) == n:
                return out
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--cp-iters", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    sentences = bbc_sentences(args.sentences)
    rows = []
    for K in (384, 192, 96):
        t = time.perf_counter()
        _, r = convert_bert_to_coobert(minilm_dir(), K, sentences=sentences, n_iter_max=args.cp_iters)
        saved = 1 - r.attention_params_coobert / r.attention_params_bert
        rows.append([
            K, f"{r.mean_cosine:.4f}", f"{r.min_cosine:.4f}", f"{sum(r.layer_rel_errors) / len(r.layer_rel_errors):.3f}",
            f"{r.attention_params_bert:,}", f"{r.attention_params_coobert:,}", f"{saved:.1%}", f"{time.perf_counter() - t:.0f}",
        ])
    print(f"machine: {machine()}; {len(sentences)} BBC News sentences; CP: SVD-initialised ALS, {args.cp_iters} iterations\n")
    print(markdown_table(
        ["D~k", "mean cosine", "min cosine", "mean CP rel. error", "BERT q/k params/layer",
         "CooBERT q/k params/layer", "saved", "convert s"], rows))


if __name__ == "__main__":
    main()
