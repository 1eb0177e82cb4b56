"""Evaluate a model on a split: metrics (DDP-reduced), per-sample predictions and a few examples to draw.

Used by the trainer (every ``eval_every`` steps and at the end) and by ``tools/evaluate.py``, so both
report the same numbers for the same model and data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torchvision.ops import box_convert

from ..tasks import get_task


@dataclass
class EvalResult:
    """metrics: name -> value (loss included); predictions: one dict per sample (rank 0 holds all of
    them after a distributed run); examples: up to ``keep_examples`` samples with their image."""

    metrics: dict[str, float]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _keep_examples(out, batch, examples: list[dict], limit: int, image_processor, answer_vocab) -> None:
    """Copy up to ``limit`` samples (letterboxed image as uint8, boxes in its pixels, answers)."""
    mean, std = image_processor.image_mean, image_processor.image_std
    boxes = getattr(out, "pred_boxes", None)
    logits = getattr(out, "logits", None)
    n = len(batch["keys"])
    grounded = batch.get("box_mask", torch.zeros(n, dtype=torch.bool))  # rows with a target box
    answered = batch.get("answers", [[]] * n)  # rows with VQA answers
    for i in range(n):
        if len(examples) >= limit:
            return
        image = batch["pixel_values"][i].float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
        H, W = image.shape[-2:]
        scale = torch.tensor([W, H, W, H], dtype=torch.float32)
        ex = {"image": (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy(),
              "text": batch["texts"][i], "task": batch["tasks"][i]}
        if boxes is not None and bool(grounded[i]):
            ex["pred_box"] = (box_convert(boxes[i].float().cpu(), "cxcywh", "xyxy") * scale).tolist()
            ex["true_box"] = (box_convert(batch["boxes"][i], "cxcywh", "xyxy") * scale).tolist()
        if boxes is not None and boxes.dim() == 3 and batch.get("phrases"):  # a box per phrase, labelled
            ex["phrases"] = [{"text": batch["texts"][i][slice(*p["span"])],
                              "boxes": [(box_convert(boxes[i, j].float().cpu(), "cxcywh", "xyxy") * scale).tolist()]}
                             for j, p in enumerate(batch["phrases"][i])]
        if logits is not None and answered[i]:
            ex["pred_answer"] = answer_vocab[int(logits[i].argmax())]
            ex["answers"] = batch["answers"][i]
        heat = getattr(out, "heatmaps", None)
        if heat is not None:
            ex["heatmap"] = heat[i, 0].float().cpu().numpy()  # [CLS] prior (H_l, W_l)
        examples.append(ex)


def in_lockstep(batches: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], bool]]:
    """(batch, real) pairs, the same number on every rank: a rank whose share has run out repeats its
    last batch (real = False, to be discarded) while another rank still has one. A sharded (FSDP) model's
    forward all-gathers its weights, a collective, so every rank must run as many forwards as the others."""
    it, last = iter(batches), None
    while True:
        batch = next(it, None)
        more = torch.tensor([float(batch is not None)])
        if _distributed():
            dist.all_reduce(more, op=dist.ReduceOp.MAX)
        if not more.item():
            return
        if batch is None and last is None:
            raise ValueError("a sharded model's evaluation needs at least one sample per rank; "
                             "this split has fewer samples than there are ranks")
        if batch is not None:
            last = batch
        yield last, batch is not None


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[dict[str, Any]],
    task: str,
    *,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
    keep_examples: int = 0,
    image_processor: Any = None,
    progress: Iterable | None = None,
    lockstep: bool = False,
) -> EvalResult:
    """Run ``model`` over ``batches`` (an :class:`~vlcoattn.data.EvalLoader`) and compute the task's
    metrics: VQA accuracy (+ per question type), Acc@0.5 / mean IoU in original-image pixels
    (+ per expression type), accuracy / macro-F1, perplexity; plus the mean loss. Every rank calls
    it on its share; metrics and predictions are gathered (predictions on rank 0). ``lockstep``: every
    rank runs the same number of forwards (a sharded model, see :func:`in_lockstep`)."""
    was_training = model.training
    model.eval()
    spec = get_task(task)
    acc = spec.metric_accumulator(model)
    loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of batch loss x rows, rows)
    preds: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    batches = progress if progress is not None else batches
    for batch, real in in_lockstep(batches) if lockstep else ((b, True) for b in batches):
        inputs = spec.model_inputs(batch, device)
        with autocast or contextlib.nullcontext():
            out = model(**inputs)
        if not real:
            continue
        n = len(batch["keys"])
        if out.loss is not None and torch.isfinite(out.loss):
            loss_sum += torch.tensor([float(out.loss) * n, n], dtype=torch.float64)
        preds.extend({"key": k, "task": t, "text": x} for k, t, x in zip(batch["keys"], batch["tasks"], batch["texts"]))
        spec.score_batch(model, out, batch, inputs, acc, preds[-n:])
        if spec.needs_images and len(examples) < keep_examples:
            _keep_examples(out, batch, examples, keep_examples, image_processor,
                           getattr(model.config, "answer_vocab", None))
    acc.all_reduce()
    if _distributed():
        dist.all_reduce(loss_sum)
        gathered: list[list[dict]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, preds)
        preds = [p for part in gathered for p in part] if dist.get_rank() == 0 else []
    metrics = acc.compute()
    if loss_sum[1] > 0:
        metrics = {"loss": float(loss_sum[0] / loss_sum[1]), **metrics}
    model.train(was_training)
    return EvalResult(metrics, preds, examples)


def evaluate_model_dir(
    model_dir: str | Path,
    sources: str | list[str],
    *,
    batch_size: int = 64,
    limit: int | None = None,
    max_text_len: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EvalResult:
    """Load a saved model and evaluate it on shard ``sources`` with the processor it was trained with
    (``max_text_len`` overrides the text length it saved)."""
    from tqdm.auto import tqdm

    from ..data import build_eval_loader
    from ..loading import load_model_dir

    model, processor, task = load_model_dir(model_dir, device)
    if max_text_len is not None:
        getattr(processor, "tokenizer", processor).model_max_length = max_text_len
    config = model.config
    loader = build_eval_loader(
        sources, processor, batch_size=batch_size, limit=limit,
        answer_vocab=getattr(config, "answer_vocab", None) or [],
        label_vocab=get_task(task).label_names(config),
    )
    bar = tqdm(loader, desc="evaluate", disable=not progress)
    return evaluate(model, loader, task, device=device, progress=bar,
                    image_processor=getattr(processor, "image_processor", None))
