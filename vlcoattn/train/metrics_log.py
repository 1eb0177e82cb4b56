"""Metrics to ``metrics.jsonl`` (one JSON object per line) and TensorBoard, from rank 0 only."""

from __future__ import annotations

import json
import math
import resource
import time
from pathlib import Path
from typing import Any

import torch

METRICS_FILE = "metrics.jsonl"


def peak_memory_gib(device: torch.device) -> float:
    """This process's peak memory so far, in GiB: allocated CUDA memory on a GPU (what activations and
    optimizer state cost), the peak resident set size on the CPU (everything the process holds)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl file (an absent file reads as empty)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    """``log(step, split, metrics)`` appends ``{"step", "split", "time", ...metrics}`` to metrics.jsonl and
    writes each number as TensorBoard scalar ``split/name``. On resume from step k, lines after k are
    dropped first, so the file describes one uninterrupted run."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int | None = None,
                 tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        if resume_step is not None:
            kept = [m for m in read_metrics(self.path) if m["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(m) + "\n" for m in kept))
        elif self.path.exists():
            self.path.unlink()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)

    def log(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, "time": round(time.time(), 3), **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{split}/{name}", value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
