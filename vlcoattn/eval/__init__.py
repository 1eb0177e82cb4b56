"""Evaluation: the metrics of docs/design.md §3 and a DDP-aware accumulator for evaluation loops.

Typical use::

    from vlcoattn.eval import MetricAccumulator
    acc = MetricAccumulator(num_classes=len(labels))
    for batch in loader:
        ...
        acc.add_vqa(pred_answer, answers, qtype=meta.get("type"))
        acc.add_box(pred_xyxy, true_xyxy)
    metrics = acc.all_reduce().compute()    # every rank calls all_reduce; a no-op without DDP
"""

from .metrics import (
    IOU_THRESHOLD,
    MetricAccumulator,
    box_iou_xyxy,
    classification_metrics,
    confusion_matrix,
    grounding_metrics,
    normalize_answer,
    perplexity,
    vqa_accuracy,
)

__all__ = [
    "IOU_THRESHOLD",
    "MetricAccumulator",
    "box_iou_xyxy",
    "classification_metrics",
    "confusion_matrix",
    "grounding_metrics",
    "normalize_answer",
    "perplexity",
    "vqa_accuracy",
]
