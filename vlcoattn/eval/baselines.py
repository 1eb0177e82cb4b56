"""Trivial baselines a grounding model must beat, computed on the same batches as the model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from ..data.transforms import invert_boxes
from .metrics import MetricAccumulator


def mean_box_size(batches: Iterable[dict[str, Any]]) -> tuple[float, float]:
    """Mean normalized (w, h) of the grounding boxes in ``batches`` (e.g. the training split), over all
    ranks when distributed."""
    total = torch.zeros(3, dtype=torch.float64)  # sum w, sum h, count
    for batch in batches:
        if "boxes" in batch:
            rows = batch["box_mask"]
            total[:2] += batch["boxes"][rows][:, 2:].double().sum(0)
            total[2] += int(rows.sum())
    if dist.is_available() and dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        total = total.to(device)
        dist.all_reduce(total)
        total = total.cpu()
    if total[2] == 0:
        raise ValueError("no grounding boxes to average")
    return (float(total[0] / total[2]), float(total[1] / total[2]))


class CenterBoxBaseline:
    """Acc@0.5 / mean IoU of always answering a box of ``size`` (normalized w, h) at the image center,
    scored like the model (original-image pixels). :meth:`observe` passes batches through while
    scoring them, so the baseline costs no second pass over the data."""

    def __init__(self, size: tuple[float, float]) -> None:
        self.guess = torch.tensor([0.5, 0.5, *size], dtype=torch.float32)
        self.acc = MetricAccumulator()

    def add(self, batch: dict[str, Any]) -> None:
        if "boxes" not in batch:
            return
        for i in torch.nonzero(batch["box_mask"]).flatten().tolist():
            lb = batch["letterbox"][i]
            self.acc.add_box(invert_boxes(self.guess, lb), invert_boxes(batch["boxes"][i], lb))

    def observe(self, batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for batch in batches:
            self.add(batch)
            yield batch

    def compute(self) -> dict[str, float]:
        """The metrics over all ranks (a collective when distributed: every rank calls it once)."""
        return {k: v for k, v in self.acc.all_reduce().compute().items() if k in ("acc@0.5", "mean_iou")}
