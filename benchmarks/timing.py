"""Timing for benchmarks on a noisy machine: candidates run interleaved, medians compared.

Every benchmark reports ratios against a baseline measured in the same run, never absolute
claims across runs. The machine line and the tables: :mod:`vlcoattn.utils.reporting`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each fn, running them in turn so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}
