"""How a loader batch (see :mod:`vlcoattn.data`) feeds the model of each task, for training and evaluation.

=============  ============================  ===================================================
task           model                         targets passed to forward()
=============  ============================  ===================================================
vqa            VLCoAttnForQuestionAnswering  labels = answer_scores, answer_mask = VQA rows
ground         VLCoAttnForGrounding          boxes, box_mask
vqa+ground     VLCoAttnForMultitask          both of the above (a batch may mix the two)
cls            *ForSequenceClassification    labels (class index)
lm             *ForCausalLM                  labels = input_ids with padding -100
=============  ============================  ===================================================

``count_items`` gives what a loss averages over (rows of a task, or target tokens for lm); the trainer
sums it over micro-batches and ranks and passes it as ``num_items_in_batch``, so accumulated and
distributed steps compute the loss of the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch

VISION_TASKS = ("vqa", "ground", "vqa+ground")
ITEM_KINDS = {"vqa": ("vqa",), "ground": ("ground",), "vqa+ground": ("vqa", "ground"), "cls": ("cls",), "lm": ("lm",)}


def _rows(batch: dict[str, Any], task: str) -> torch.Tensor:
    return torch.tensor([t == task for t in batch["tasks"]])


def model_inputs(task: str, batch: dict[str, Any], device: torch.device | str, targets: bool = True) -> dict:
    """The forward() kwargs of ``task``'s model for ``batch``, on ``device`` (targets optional)."""
    inputs: dict[str, Any] = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if task != "lm":  # GPT-2-style models would embed token types with the word table
        inputs["token_type_ids"] = batch["token_type_ids"]
    if task in VISION_TASKS:
        if "pixel_values" not in batch:
            raise ValueError(f"task {task!r} needs images, but the batch has none")
        inputs["pixel_values"] = batch["pixel_values"]
    if targets:
        if task in ("vqa", "vqa+ground") and "answer_scores" in batch:
            inputs["labels"], inputs["answer_mask"] = batch["answer_scores"], _rows(batch, "vqa")
        if task in ("ground", "vqa+ground") and "boxes" in batch:
            inputs["boxes"], inputs["box_mask"] = batch["boxes"], batch["box_mask"]
        if task in ("cls", "lm"):
            inputs["labels"] = batch["labels"]
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in inputs.items()}


def count_items(task: str, batch: dict[str, Any]) -> dict[str, int]:
    """What each loss of ``task`` averages over in ``batch``: rows per sub-task, or lm target tokens."""
    if task == "lm":
        return {"lm": int((batch["labels"][:, 1:] != -100).sum())}
    if task == "cls":
        return {"cls": int((batch["labels"] != -100).sum())}
    counts = {}
    if "vqa" in ITEM_KINDS[task]:
        counts["vqa"] = int(_rows(batch, "vqa").sum())
    if "ground" in ITEM_KINDS[task]:
        counts["ground"] = int(batch["box_mask"].sum()) if "box_mask" in batch else 0
    return counts


def num_items_argument(task: str, counts: dict[str, int]) -> int | dict[str, int]:
    """``num_items_in_batch`` for the model: a dict for the multitask model, else one number."""
    return dict(counts) if task == "vqa+ground" else counts[ITEM_KINDS[task][0]]
