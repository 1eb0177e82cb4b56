"""Phrase grounding Recall@1 under the Flickr30k Entities protocols, as MDETR defines them, and its
trivial baselines.

The model gives one box per phrase (Recall@1). The box hits the phrase when its IoU with the phrase's
ground truth reaches 0.5, where the ground truth is, by protocol:

- ``any`` (Any-Box): any one of the phrase's boxes (a group of people annotated person by person is
  found by finding one of them);
- ``merged`` (Merged-Box): the smallest box enclosing all of them (the group as one box).

As in MDETR's ``flickr_eval.py``: a phrase with no box (not visual, no box drawn, the whole scene) is not
scored, and a phrase of several types (``bodyparts/people``) counts once overall and once under each
type. :class:`PhraseRecall` keeps only hits and counts, so ``all_reduce()`` across DDP ranks followed by
``compute()`` gives the single-process result on the union of the ranks' phrases.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .metrics import IOU_THRESHOLD, box_iou_xyxy

PROTOCOLS = ("any", "merged")
ALL = ""  # the type key of the overall counts


def merge_boxes(boxes: Tensor) -> Tensor:
    """(K, 4) xyxy -> (4,): the smallest box enclosing all K (MDETR's ``_merge_boxes``)."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or len(boxes) == 0:
        raise ValueError(f"merge_boxes needs (K >= 1, 4) boxes, got shape {tuple(boxes.shape)}")
    return torch.cat([boxes[:, :2].min(0).values, boxes[:, 2:].max(0).values])


def phrase_hits(pred: Tensor, boxes: Tensor, threshold: float = IOU_THRESHOLD) -> dict[str, bool]:
    """Whether the predicted box ``pred`` (4,) finds a phrase whose ground truth is ``boxes`` (K >= 1, 4),
    all xyxy in the same pixels, under each protocol of :data:`PROTOCOLS`."""
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    pred = torch.as_tensor(pred, dtype=torch.float64).reshape(4)
    merged_iou = box_iou_xyxy(pred, merge_boxes(boxes))  # (a ValueError without boxes)
    any_iou = box_iou_xyxy(pred.expand_as(boxes), boxes).max()
    return {"any": bool(any_iou >= threshold), "merged": bool(merged_iou >= threshold)}


class PhraseRecall:
    """Recall@1 of phrase grounding per protocol, overall and per phrase type; DDP-safe."""

    def __init__(self, threshold: float = IOU_THRESHOLD) -> None:
        self.threshold = threshold
        self.table: dict[tuple[str, str], list[int]] = {}  # (protocol, type or ALL) -> [hits, phrases]
        self.without_box = 0  # phrases skipped: nothing to find
        self.reduced = False

    def add(self, pred: Tensor, boxes: Tensor | Sequence, types: Iterable[str] = ()) -> dict[str, bool] | None:
        """Score one phrase: predicted box (4,) against its ground-truth ``boxes`` (K, 4), both xyxy in
        original-image pixels, with its ``types`` (see :func:`vlcoattn.data.schema.phrase_types`).
        Returns the hits per protocol, or None for a phrase without a box (counted apart, not scored)."""
        boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
        if len(boxes) == 0:
            self.without_box += 1
            return None
        hits = phrase_hits(pred, boxes, self.threshold)
        for protocol, hit in hits.items():
            for kind in (ALL, *dict.fromkeys(types)):
                entry = self.table.setdefault((protocol, kind), [0, 0])
                entry[0] += int(hit)
                entry[1] += 1
        return hits

    def all_reduce(self) -> PhraseRecall:
        """Sum the counts over all ``torch.distributed`` ranks (a collective: every rank calls it once,
        after its last add); a no-op when not distributed. Returns self."""
        if self.reduced:
            raise RuntimeError("PhraseRecall.all_reduce() was already called; it would double-count")
        self.reduced = True
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        per_rank: list[tuple[dict, int]] = [({}, 0) for _ in range(dist.get_world_size())]
        dist.all_gather_object(per_rank, (self.table, self.without_box))  # the types differ between ranks
        self.table, self.without_box = {}, 0
        for table, without_box in per_rank:
            self.without_box += without_box
            for key, (hits, count) in table.items():
                entry = self.table.setdefault(key, [0, 0])
                entry[0] += hits
                entry[1] += count
        return self

    def compute(self) -> dict[str, float]:
        """``recall@1_any`` and ``recall@1_merged`` (+ ``/<type>`` for each phrase type), the number of
        scored ``phrases`` and of ``phrases_without_box``; {} before any phrase was scored."""
        if ("any", ALL) not in self.table:
            return {}
        out = {f"recall@1_{p}": self.table[p, ALL][0] / self.table[p, ALL][1] for p in PROTOCOLS}
        for (protocol, kind), (hits, count) in sorted(self.table.items()):
            if kind != ALL:
                out[f"recall@1_{protocol}/{kind}"] = hits / count
        out["phrases"] = float(self.table["any", ALL][1])
        out["phrases_without_box"] = float(self.without_box)
        return out


# ----------------------------------------------------------------------------- trivial baselines


def whole_image_box(width: float, height: float) -> Tensor:
    """The box of the whole image: a phrase naming something that fills most of it (a scene, a
    crowd) is found by it."""
    return torch.tensor([0.0, 0.0, float(width), float(height)], dtype=torch.float64)


def center_box(width: float, height: float, size: tuple[float, float]) -> Tensor:
    """A box of ``size`` (w, h as fractions of the image) centred in the image: the grounding task's
    centre-box baseline, per phrase."""
    w, h = size[0] * width, size[1] * height
    return torch.tensor([(width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2], dtype=torch.float64)


def mean_phrase_box_size(phrases: Iterable[tuple[Tensor | Sequence, float, float]]) -> tuple[float, float]:
    """Mean (w, h), as fractions of the image, of the phrases' merged ground-truth boxes; ``phrases``:
    (boxes (K, 4) xyxy pixels, image width, image height), e.g. from the training split. Phrases
    without a box are skipped."""
    total, count = torch.zeros(2, dtype=torch.float64), 0
    for boxes, width, height in phrases:
        boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
        if len(boxes):
            x0, y0, x1, y1 = merge_boxes(boxes)
            total += torch.stack([(x1 - x0) / width, (y1 - y0) / height])
            count += 1
    if count == 0:
        raise ValueError("no phrase with a box to average")
    return float(total[0] / count), float(total[1] / count)
