"""Evaluation metrics (docs/design.md §3) and a DDP-aware accumulator for evaluation loops.

- VQA: the official VQA accuracy (:func:`vqa_accuracy`), with the official answer normalization
  shared with the data pipeline (:func:`normalize_answer`), so vocabulary, targets and metric agree.
- Grounding: Acc@0.5 (share of boxes with IoU >= 0.5) and mean IoU of paired xyxy boxes.
- Classification: accuracy and macro-F1 (sklearn's ``f1_score(average="macro")``).
- Language modelling: perplexity = exp(total NLL / total tokens).
- Phrase grounding: Recall@1 under the Flickr30k Entities protocols (:mod:`.phrase_grounding`).

:class:`MetricAccumulator` keeps only sums and counts, so ``all_reduce()`` across DDP ranks followed
by ``compute()`` gives the single-process result on the union of the ranks' samples (counts exactly,
float sums up to summation order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from vlcoattn.data.answers import answer_scores, normalize_answer

IOU_THRESHOLD = 0.5  # Acc@0.5


# -----------------------------------------------------------------------------
# VQA


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one predicted answer against the annotators' answers.

    Prediction and answers are normalized with :func:`normalize_answer`. With exactly 10 answers
    (VQA v2) the score is ``min(#matching / 3, 1)`` averaged over the 10 leave-one-annotator-out
    subsets of 9, i.e. 0.3, 0.6, 0.9, 1.0 for 1, 2, 3, >= 4 matching annotators. With any other number
    of answers (synthetic or single-answer data) it is plain exact match: 1.0 if the prediction equals
    any answer, else 0.0.

    Unlike vqaEval.py, the ground-truth answers are always fully normalized; the official script only
    strips their punctuation (and only when annotators disagree) because the released annotations are
    already normalized, and normalizing a normalized answer is a no-op, so the scores agree there.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    return answer_scores([normalize_answer(a) for a in answers]).get(normalize_answer(prediction), 0.0)


# -----------------------------------------------------------------------------
# Grounding


def _area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes; inverted boxes (x1 < x0 or y1 < y0) count as empty."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou_xyxy(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of paired boxes ``pred[i]`` vs ``target[i]``, both (..., 4) as (x0, y0, x1, y1).

    ``torchvision.ops.box_iou`` is all-pairs (N x M); taking its diagonal would cost O(N^2), so the
    paired IoU is computed directly. A pair whose union is empty (zero-area boxes) gets IoU 0, not NaN.
    """
    if pred.shape != target.shape or pred.shape[-1] != 4:
        raise ValueError(
            f"expected two (..., 4) box tensors of the same shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if not pred.is_floating_point():
        pred = pred.float()
    if not target.is_floating_point():
        target = target.float()
    top_left = torch.maximum(pred[..., :2], target[..., :2])
    bottom_right = torch.minimum(pred[..., 2:], target[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    union = _area(pred) + _area(target) - inter
    return inter / torch.where(union > 0, union, torch.ones_like(union))  # empty union: inter = 0 -> IoU 0


def grounding_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """``acc@0.5`` (share of pairs with IoU >= 0.5) and ``mean_iou`` of paired xyxy boxes."""
    iou = box_iou_xyxy(pred, target).reshape(-1).double()
    if iou.numel() == 0:
        raise ValueError("grounding_metrics needs at least one box pair")
    return {"acc@0.5": (iou >= IOU_THRESHOLD).double().mean().item(), "mean_iou": iou.mean().item()}


# -----------------------------------------------------------------------------
# Classification


def confusion_matrix(
    pred_ids: Tensor | Sequence[int], true_ids: Tensor | Sequence[int], num_classes: int
) -> Tensor:
    """(C, C) int64 counts; entry [t, p] = samples of true class t predicted as class p."""
    pred = torch.as_tensor(pred_ids).detach().reshape(-1).long().cpu()
    true = torch.as_tensor(true_ids).detach().reshape(-1).long().cpu()
    if pred.shape != true.shape:
        raise ValueError(f"{pred.numel()} predictions but {true.numel()} labels")
    for name, ids in (("prediction", pred), ("label", true)):
        if ids.numel() and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(
                f"{name} ids must lie in [0, {num_classes}), got [{ids.min().item()}, {ids.max().item()}]"
            )
    return torch.bincount(true * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def _classification_from_confusion(confusion: Tensor) -> dict[str, float]:
    """Accuracy and macro-F1; F1 = 2 TP / (2 TP + FP + FN), averaged over the classes that occur in
    the predictions or the labels (sklearn's default ``labels``), so absent classes don't count as 0."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    two_tp_fp_fn = confusion.sum(0) + confusion.sum(1)  # predicted + true counts per class
    present = two_tp_fp_fn > 0
    f1 = 2 * tp[present] / two_tp_fp_fn[present]
    return {"accuracy": (tp.sum() / confusion.sum()).item(), "macro_f1": f1.mean().item()}


def classification_metrics(
    pred_ids: Tensor | Sequence[int], true_ids: Tensor | Sequence[int], num_classes: int
) -> dict[str, float]:
    """``accuracy`` and ``macro_f1`` (equal to sklearn's ``f1_score(average="macro")``)."""
    confusion = confusion_matrix(pred_ids, true_ids, num_classes)
    if confusion.sum() == 0:
        raise ValueError("classification_metrics needs at least one sample")
    return _classification_from_confusion(confusion)


# -----------------------------------------------------------------------------
# Language modelling


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(mean NLL per token) from the summed NLL (nats) over ``total_tokens`` predicted tokens."""
    if total_tokens <= 0:
        raise ValueError(f"perplexity needs a positive number of tokens, got {total_tokens}")
    try:
        return math.exp(total_nll / total_tokens)
    except OverflowError:  # mean NLL > ~709 nats: a diverged model
        return math.inf


# -----------------------------------------------------------------------------
# Accumulation over an evaluation loop (and DDP ranks)


class MetricAccumulator:
    """Running sums of per-sample results for all tasks; DDP-safe.

    Every rank adds its own samples, then all ranks call :meth:`all_reduce` once, after which
    :meth:`compute` on any rank equals single-process evaluation on the union of the samples.
    ``num_classes`` is needed only for classification (it sizes the confusion matrix). Phrases are
    scored by its :class:`~vlcoattn.eval.phrase_grounding.PhraseRecall`, ``acc.phrases.add(...)``.
    """

    def __init__(self, num_classes: int | None = None) -> None:
        from .phrase_grounding import PhraseRecall  # (it imports this module's IoU)

        self.phrases = PhraseRecall()
        self.sums = dict.fromkeys(
            ("vqa_score", "vqa_count", "iou_sum", "iou_hits", "box_count", "nll_sum", "token_count"), 0.0
        )
        self.vqa_by_type: dict[str, list[float]] = {}  # question type -> [score sum, count]
        self.box_by_type: dict[str, list[float]] = {}  # expression type -> [hits at IoU 0.5, count]
        self.num_classes = num_classes
        self.confusion = (
            None if num_classes is None else torch.zeros(num_classes, num_classes, dtype=torch.long)
        )
        self.reduced = False

    def add_vqa(self, prediction: str, answers: Sequence[str], qtype: str | None = None) -> float:
        """Add one VQA prediction; returns its score (for the predictions file)."""
        score = vqa_accuracy(prediction, answers)
        self.sums["vqa_score"] += score
        self.sums["vqa_count"] += 1
        if qtype is not None:
            by_type = self.vqa_by_type.setdefault(qtype, [0.0, 0.0])
            by_type[0] += score
            by_type[1] += 1
        return score

    def add_box(self, pred_xyxy: Tensor, true_xyxy: Tensor, rtype: str | None = None) -> Tensor:
        """Add paired boxes, (4,) or (N, 4) in the same coordinates, optionally all of expression type
        ``rtype`` (for the per-type Acc@0.5); returns their IoUs (float64, CPU)."""
        iou = box_iou_xyxy(pred_xyxy.detach(), true_xyxy.detach()).reshape(-1).double().cpu()
        hits = (iou >= IOU_THRESHOLD).sum().item()
        self.sums["iou_sum"] += iou.sum().item()
        self.sums["iou_hits"] += hits
        self.sums["box_count"] += iou.numel()
        if rtype is not None:
            by_type = self.box_by_type.setdefault(rtype, [0.0, 0.0])
            by_type[0] += hits
            by_type[1] += iou.numel()
        return iou

    def add_class(
        self, pred_ids: Tensor | Sequence[int] | int, true_ids: Tensor | Sequence[int] | int
    ) -> None:
        """Add class predictions (one id or a batch of ids)."""
        if self.confusion is None:
            raise ValueError("construct MetricAccumulator(num_classes=...) to collect classification metrics")
        self.confusion += confusion_matrix(pred_ids, true_ids, self.num_classes)

    def add_lm(self, nll_sum: float | Tensor, n_tokens: int | Tensor) -> None:
        """Add the summed token NLL (nats) of a batch and the number of tokens it covers."""
        self.sums["nll_sum"] += float(nll_sum)
        self.sums["token_count"] += int(n_tokens)

    def all_reduce(self) -> MetricAccumulator:
        """Sum the state over all ``torch.distributed`` ranks (a collective: every rank must call it,
        once, after its last add); a no-op when not distributed. Returns self."""
        if self.reduced:
            raise RuntimeError("MetricAccumulator.all_reduce() was already called; it would double-count")
        self.reduced = True
        self.phrases.all_reduce()
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        sums = torch.tensor(list(self.sums.values()), dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        self.sums = dict(zip(self.sums, sums.tolist()))
        if self.confusion is not None:
            confusion = self.confusion.to(device)
            dist.all_reduce(confusion)
            self.confusion = confusion.cpu()
        per_rank: list[tuple[dict, dict]] = [({}, {}) for _ in range(dist.get_world_size())]
        dist.all_gather_object(per_rank, (self.vqa_by_type, self.box_by_type))  # types differ between ranks
        self.vqa_by_type, self.box_by_type = {}, {}
        for tables in per_rank:
            for merged_table, table in zip((self.vqa_by_type, self.box_by_type), tables):
                for kind, (total, count) in table.items():
                    merged = merged_table.setdefault(kind, [0.0, 0.0])
                    merged[0] += total
                    merged[1] += count
        return self

    def compute(self) -> dict[str, float]:
        """The metrics of every task that received samples: ``vqa_acc`` (+ ``vqa_acc/<qtype>``),
        ``acc@0.5`` (+ ``acc@0.5/<rtype>``) and ``mean_iou``, ``accuracy`` and ``macro_f1``, ``perplexity``,
        ``recall@1_any`` and ``recall@1_merged`` (+ ``/<phrase type>``, see :class:`PhraseRecall`)."""
        s = self.sums
        out: dict[str, float] = {}
        if s["vqa_count"]:
            out["vqa_acc"] = s["vqa_score"] / s["vqa_count"]
            for qtype, (score, count) in sorted(self.vqa_by_type.items()):
                out[f"vqa_acc/{qtype}"] = score / count
        if s["box_count"]:
            out["acc@0.5"] = s["iou_hits"] / s["box_count"]
            out["mean_iou"] = s["iou_sum"] / s["box_count"]
            for rtype, (hits, count) in sorted(self.box_by_type.items()):
                out[f"acc@0.5/{rtype}"] = hits / count
        if self.confusion is not None and self.confusion.sum() > 0:
            out.update(_classification_from_confusion(self.confusion))
        if s["token_count"]:
            out["perplexity"] = perplexity(s["nll_sum"], int(s["token_count"]))
        return {**out, **self.phrases.compute()}
