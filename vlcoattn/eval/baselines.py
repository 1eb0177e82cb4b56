"""Trivial baselines a model must beat, scored on the same batches as the model.

Each has ``name`` (the prefix of its metrics, e.g. ``center_box/acc@0.5``), :meth:`observe` (pass the
evaluation batches through while scoring them: no second pass over the data) and :meth:`compute`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from ..data.read.transforms import invert_boxes
from ..data.schema import phrase_types, sample_type, trained_answers
from .metrics import MetricAccumulator, normalize_answer
from .phrase_grounding import center_box, mean_phrase_box_size, whole_image_box


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


class _Baseline(ABC):
    name = ""

    def __init__(self) -> None:
        self.acc = MetricAccumulator()

    @abstractmethod
    def add(self, batch: dict[str, Any]) -> None:
        """Score the baseline's guesses for the rows of one evaluation batch."""

    def observe(self, batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for batch in batches:
            self.add(batch)
            yield batch

    def compute(self) -> dict[str, float]:
        """``{name}/metric`` over all ranks (a collective when distributed: every rank calls it once)."""
        return {f"{self.name}/{k}": v for k, v in self.acc.all_reduce().compute().items() if k != "loss"}


class CenterBoxBaseline(_Baseline):
    """Acc@0.5 / mean IoU of always answering a box of ``size`` (normalized w, h) at the image center,
    scored like the model (original-image pixels)."""

    name = "center_box"

    def __init__(self, size: tuple[float, float]) -> None:
        super().__init__()
        self.guess = torch.tensor([0.5, 0.5, *size], dtype=torch.float32)

    def add(self, batch: dict[str, Any]) -> None:
        if "boxes" not in batch:
            return
        for i in torch.nonzero(batch["box_mask"]).flatten().tolist():
            lb = batch["letterbox"][i]
            kind = sample_type(batch["meta"][i])
            self.acc.add_box(invert_boxes(self.guess, lb), invert_boxes(batch["boxes"][i], lb), kind)


def _question_key(text: str) -> str:
    return " ".join(text.lower().split()).rstrip("?").strip()


class AnswerPriorBaseline(_Baseline):
    """Image-blind VQA: how far the question alone gets, fitted on the training split's records.

    ``by="answer"`` ("answer_prior") always gives the training split's most frequent answer;
    ``by="question"`` ("question_prior") the most frequent answer to the same question text in training,
    else to its question type, else the overall one: a text-only model that memorised the training
    questions. A model whose VQA accuracy is near these does not use the image. ``records``: the training
    split's (its VQA records count; ``meta.type`` is the question type).
    """

    def __init__(self, records: Iterable[dict[str, Any]], by: str = "question") -> None:
        super().__init__()
        if by not in ("answer", "question"):
            raise ValueError(f"by must be 'answer' or 'question', got {by!r}")
        self.name = f"{by}_prior"
        self.by = by
        overall: Counter[str] = Counter()
        per_question: defaultdict[str, Counter[str]] = defaultdict(Counter)
        per_type: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for record in records:
            if not trained_answers(record):  # not a VQA record
                continue
            answers = [normalize_answer(a) for a in record["answers"]]
            overall.update(answers)
            per_question[_question_key(record["text"])].update(answers)
            per_type[sample_type(record.get("meta") or {}) or ""].update(answers)
        if not overall:
            raise ValueError("the training split has no VQA answers to fit an answer prior on")
        self.overall = overall.most_common(1)[0][0]
        self.per_question = {q: c.most_common(1)[0][0] for q, c in per_question.items()}
        self.per_type = {t: c.most_common(1)[0][0] for t, c in per_type.items()}

    def predict(self, question: str, question_type: str | None = None) -> str:
        if self.by == "answer":
            return self.overall
        return self.per_question.get(_question_key(question)) or self.per_type.get(question_type or "", self.overall)

    def add(self, batch: dict[str, Any]) -> None:
        for i, answers in enumerate(batch.get("answers", ())):
            if answers:  # a VQA row (other rows have none)
                qtype = sample_type(batch["meta"][i])
                self.acc.add_vqa(self.predict(batch["texts"][i], qtype), answers, qtype)


def phrase_box_size(batches: Iterable[dict[str, Any]], task: str) -> tuple[float, float]:
    """Mean (w, h), as fractions of the original image, of the merged boxes of the phrases of the rows of
    sample task ``task`` in ``batches`` (e.g. the training split; see
    :func:`~vlcoattn.eval.phrase_grounding.mean_phrase_box_size`)."""
    def phrases() -> Iterator[tuple[torch.Tensor, float, float]]:
        for batch in batches:
            for i, row in enumerate(batch.get("phrases", ())):
                if batch["tasks"][i] == task:
                    lb = batch["letterbox"][i]
                    yield from ((invert_boxes(p["boxes"], lb), float(lb[4]), float(lb[5])) for p in row)

    return mean_phrase_box_size(phrases())


class PhraseBoxBaseline(_Baseline):
    """Recall@1 of one fixed box for every phrase of the rows of sample task ``task``: the whole image
    (``whole_image``) or, given ``size`` (w, h as fractions of the image), a box of that size at the
    centre (``center_box``). Phrases are scored like the model's, in original-image pixels."""

    def __init__(self, task: str, size: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.task, self.size = task, size
        self.name = "whole_image" if size is None else "center_box"

    def add(self, batch: dict[str, Any]) -> None:
        for i, row in enumerate(batch.get("phrases", ())):
            if batch["tasks"][i] != self.task:
                continue
            lb = batch["letterbox"][i]
            width, height = float(lb[4]), float(lb[5])
            guess = whole_image_box(width, height) if self.size is None else center_box(width, height, self.size)
            for phrase in row:
                truth = invert_boxes(phrase["boxes"], lb)  # (K, 4), K = 0 for a phrase without a box
                self.acc.phrases.add(guess, truth, phrase_types(phrase))
