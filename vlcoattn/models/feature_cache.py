"""A per-sample memo of the frozen encoders' outputs.

With the text encoder and the backbone frozen (the demo, the CLEVR-lite recipe) their forward passes
are ~60% of a training step on a 2-core CPU, and every sample comes back once per epoch and at every
evaluation. :class:`FeatureCache` keeps each sample's output, keyed by its content (its real token ids;
a digest of its pixels), and the model runs an encoder only on the rows the cache does not hold. A backbone
whose last stages train (``vision_config.trainable_stages``) has its frozen prefix's output kept, and only
the trainable stages run at each step.

A hit returns what the encoder returned for that sample in the batch that first met it. That equals a
recomputation up to float rounding: convolutions pick their algorithm by batch size (|Δ| ~3e-5 for
EfficientNet-Lite0 at batch 32 against batch 1 on a CPU), so training with the cache matches training
without it to rounding, not bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch

__all__ = ["FeatureCache", "image_keys", "text_keys"]

Row = tuple[torch.Tensor, ...]


def text_keys(input_ids: torch.Tensor, real: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> list[bytes]:
    """One key per row: its real tokens' ids (and token types), padding-independent. real (B, T) bool."""
    ids, real = input_ids.cpu(), real.cpu()
    types = token_type_ids.cpu() if token_type_ids is not None else None
    return [b"t" + ids[i][real[i]].numpy().tobytes() + (types[i][real[i]].numpy().tobytes() if types is not None
                                                         else b"") for i in range(len(ids))]


def image_keys(pixel_values: torch.Tensor) -> list[bytes]:
    """One key per image: a 128-bit BLAKE2 digest of its pixels, with its shape and dtype."""
    pixels = pixel_values.detach().cpu().contiguous()
    tag = f"{tuple(pixels.shape[1:])}{pixels.dtype}".encode()
    return [b"i" + tag + hashlib.blake2b(x.numpy().tobytes(), digest_size=16).digest() for x in pixels]


class FeatureCache:
    """Encoder outputs per sample, up to ``max_bytes`` (then new samples are computed, not stored).

    parts: which encoders it serves, a subset of ``{"text", "image"}`` (the frozen ones).
    """

    def __init__(self, max_bytes: int, parts: Sequence[str]) -> None:
        self.max_bytes = int(max_bytes)
        self.parts = frozenset(parts)
        self.store: dict[bytes, Row] = {}
        self.nbytes = self.hits = self.misses = 0

    def __call__(self, keys: Sequence[bytes], compute: Callable[[list[int]], list[Row]]) -> list[Row]:
        """The rows of ``keys``; ``compute(rows)`` encodes the batch rows the cache lacks (each distinct
        key once) and returns one tuple of tensors per row."""
        found = [self.store.get(k) for k in keys]
        first: dict[bytes, int] = {}
        for i, row in enumerate(found):
            if row is None:
                first.setdefault(keys[i], i)
        computed = dict(zip(first, compute(list(first.values())))) if first else {}
        for key, row in computed.items():
            row = tuple(t.detach().clone() for t in row)  # not a view that keeps the whole batch alive
            size = sum(t.numel() * t.element_size() for t in row)
            if self.nbytes + size <= self.max_bytes:
                self.store[key] = row
                self.nbytes += size
            computed[key] = row
        self.hits += len(keys) - len(computed)
        self.misses += len(computed)
        return [row if row is not None else computed[k] for k, row in zip(keys, found)]

    def stats(self) -> dict[str, float]:
        """hits, misses (distinct samples encoded), entries and the memory held (GiB)."""
        return {"hits": self.hits, "misses": self.misses, "entries": len(self.store), "gib": self.nbytes / 2**30}

    def clear(self) -> None:
        self.store.clear()
        self.nbytes = self.hits = self.misses = 0
