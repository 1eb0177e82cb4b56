"""The task registry: one :class:`TaskSpec` per task that a job trains, evaluates and serves.

torchtitan's ``TrainSpec`` is the model: a task is a frozen record of everything that differs between
tasks (the model class and its head's config, whether it needs images, the batch fields the loader
builds, how a batch becomes the model's inputs and targets, what each loss averages over, how
evaluation scores a batch, the baselines it must beat, the predictor that serves it, what its model
card says), registered once by name (:func:`register_task`) and looked up everywhere else
(:func:`get_task`).

One vocabulary of names. A single task (``vqa``, ``ground``, ``cls``, ``lm``) is also what a sample's
``task`` field says; a multitask spec (``vqa+ground``) has ``parts``, the single tasks whose samples it
trains on, and runs their hooks in turn. ``aliases`` are further names users may pass to the predictor
and ``tools/infer.py`` (``classify`` for ``cls``).

Heavy classes (model, predictor) are named by a ``"module:attr"`` string resolved on first use, and the
hooks import what they need inside, so this package imports only torch: ``data/``, ``eval/``, ``train/``
and ``infer/`` all ask the registry while the layers still import only downward.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Batch = dict[str, Any]
IGNORE_INDEX = -100  # a target that cross_entropy skips: padding, and the rows of other tasks
# the phrase spans of a batch (vlcoattn.tasks.phrase): the phrase task's targets, and what the supervision of the
# priors reads on the rows of any image task when the loader is asked for them (the batch then says
# ``phrase_spans``: True)
PHRASE_SPAN_KEYS = ("phrase_tokens", "phrase_boxes", "phrase_mask")
SUPERVISED_TOKENS = "supervised_tokens"  # the items the supervision losses average over: (phrase, token) pairs


def resolve(ref: str) -> Any:
    """The object a ``"package.module:attr"`` reference names (imported on first use)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def rows_of(batch: Batch, name: str) -> torch.Tensor:
    """bool (B,): the rows of ``batch`` whose sample task is ``name``."""
    return torch.tensor([t == name for t in batch["tasks"]])


@dataclass(frozen=True)
class TaskSpec:
    """What one task is. Hooks left None contribute nothing; a multitask spec leaves them all None and
    runs its parts' (see :attr:`units`)."""

    name: str
    model_class: str  # "module:Class" of the model a job of this task trains
    predictor: str  # "module:Class" of the Predictor that serves a saved model of this task
    needs_images: bool = False
    parts: tuple[TaskSpec, ...] = ()  # the single tasks of a multitask spec
    aliases: tuple[str, ...] = ()  # other names users may pass for it (predictor, tools/infer.py)
    token_type_ids: bool = True  # False: GPT-2-style models would embed token types with the word table
    from_tokenizer: bool = False  # the model may be built from a tokenizer alone (no text encoder given)
    # --- samples and batches (single tasks)
    requires: tuple[str, str, str] | None = None  # (field, bad-sample reason, message) a sample must have
    check_sample: Callable[[Any, dict], None] | None = None  # (collator, sample): SampleError if unencodable
    collate: Callable[[Any, Sequence[dict], Batch], Batch] | None = None  # (collator, samples, encoding) -> fields
    batch_keys: tuple[str, ...] = ()  # the batch fields ``collate`` fills (two tasks filling one cannot mix)
    targets: Callable[[Batch], dict] | None = None  # forward()'s target kwargs of a batch
    count_items: Callable[[Batch], int] | None = None  # what this task's loss averages over in a batch
    # --- model, evaluation, baselines, inference (single tasks)
    head_config: Callable[[Sequence[str], Sequence[str]], dict] | None = None  # (answers, labels) -> config fields
    saved_labels: Callable[[Any], list[str]] | None = None  # model config -> the label names it was trained on
    metric_options: Callable[[Any], dict] | None = None  # model -> MetricAccumulator keyword arguments
    score: Callable[..., None] | None = None  # (model, out, batch, inputs, acc, rows): metrics + prediction rows
    baselines: Callable[..., list[Callable[[], Any]]] | None = None  # (sources, loader) -> baseline factories
    # (model, out, image processor, letterbox, top_k, **what the task's predictor adds: the phrases) -> fields per sample
    predict: Callable[..., list[dict]] | None = None
    predict_inputs: tuple[str, ...] = ()  # what a prediction needs beyond the image and the text (the phrases)
    # --- model card and the Hub (single tasks; see vlcoattn.train.model_card)
    hub_pipeline_tag: str | None = None  # the Hub's pipeline tag (its fixed list: text-classification, ...)
    headline_metrics: tuple[str, ...] = ()  # the evaluation figures a report and a card lead with
    summary: str = ""  # what a model of the task does: one sentence of its card's intended use
    usage: str = ""  # runnable lines that use a saved model: ``model_dir``, ``predictor`` (and ``image``) are set

    @property
    def units(self) -> tuple[TaskSpec, ...]:
        """The single tasks this task trains on: its parts, or itself."""
        return self.parts or (self,)

    @property
    def pipeline_tag(self) -> str | None:
        """The Hub's pipeline tag: its own, or its first part's (a card has one)."""
        return self.hub_pipeline_tag or self.units[0].hub_pipeline_tag

    @property
    def sample_tasks(self) -> tuple[str, ...]:
        """The ``task`` values of the samples it trains on."""
        return tuple(u.name for u in self.units)

    def model_class_object(self) -> type:
        return resolve(self.model_class)

    def predictor_class(self) -> type:
        return resolve(self.predictor)

    def model_inputs(self, batch: Batch, device: torch.device | str, targets: bool = True) -> dict:
        """The forward() kwargs of this task's model for ``batch``, on ``device`` (targets optional)."""
        keys = ("input_ids", "attention_mask", *(("token_type_ids",) if self.token_type_ids else ()))
        inputs: dict[str, Any] = {k: batch[k] for k in keys}
        if self.needs_images:
            if "pixel_values" not in batch:
                raise ValueError(f"task {self.name!r} needs images, but the batch has none")
            inputs["pixel_values"] = batch["pixel_values"]
        if targets:
            for unit in self.units:
                inputs.update(unit.targets(batch) if unit.targets else {})
            if self.needs_images and batch.get("phrase_spans"):  # any image row's phrases supervise its priors
                inputs.update({k: batch[k] for k in PHRASE_SPAN_KEYS})
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in inputs.items()}

    def items(self, batch: Batch) -> dict[str, int]:
        """What each loss averages over in ``batch``: rows of each sample task, or lm target tokens. The
        trainer sums these over micro-batches and ranks and passes them as ``num_items_in_batch``, so
        accumulated and distributed steps compute the loss of the whole batch. A batch with every row's phrase
        spans also counts its supervised (phrase with a box, token) pairs, under :data:`SUPERVISED_TOKENS`."""
        counts = {u.name: u.count_items(batch) for u in self.units}
        if self.needs_images and batch.get("phrase_spans"):
            counts[SUPERVISED_TOKENS] = int((batch["phrase_tokens"] & batch["phrase_mask"][..., None]).sum())
        return counts

    def num_items_argument(self, counts: dict[str, int]) -> int | dict[str, int]:
        """``num_items_in_batch`` for the model: a dict per item kind for a multitask model or when the
        batches count supervised tokens too, else one number."""
        return dict(counts) if self.parts or len(counts) > 1 else counts[self.name]

    def model_config(self, answer_vocab: Sequence[str], label_vocab: Sequence[str]) -> dict[str, Any]:
        """The config fields that size the task's heads from the data's vocabularies."""
        return {k: v for u in self.units if u.head_config for k, v in u.head_config(answer_vocab, label_vocab).items()}

    def label_names(self, config: Any) -> list[str]:
        """The label vocabulary a model of this task was trained on ([] for tasks without labels)."""
        return [n for u in self.units if u.saved_labels for n in u.saved_labels(config)]

    def metric_accumulator(self, model: Any) -> Any:
        """A fresh :class:`~vlcoattn.eval.metrics.MetricAccumulator` for ``model``'s evaluation."""
        options = {k: v for u in self.units if u.metric_options for k, v in u.metric_options(model).items()}
        return resolve("vlcoattn.eval.metrics:MetricAccumulator")(**options)

    def score_batch(self, model: Any, out: Any, batch: Batch, inputs: dict, acc: Any, rows: list[dict]) -> None:
        """Add one evaluated batch to ``acc`` and its per-sample fields to ``rows`` (one dict per sample)."""
        for unit in self.units:
            unit.score(model, out, batch, inputs, acc, rows)

    def baseline_factories(self, row_tasks: Sequence[str], sources: Sequence[str],
                           loader: Callable[..., Any]) -> list[Callable[[], Any]]:
        """Factories of the trivial baselines of the sample tasks the training data has (``row_tasks``),
        fitted on the training ``sources`` (``loader(batch_size, limit)`` reads them as batches)."""
        return [f for u in self.units if u.baselines and u.name in row_tasks for f in u.baselines(sources, loader)]


_REGISTRY: dict[str, TaskSpec] = {}
_ALIASES: dict[str, str] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` under its name and aliases; a name taken already is a ValueError."""
    for name in (spec.name, *spec.aliases):
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"task name {name!r} is registered already")
    _REGISTRY[spec.name] = spec
    _ALIASES.update(dict.fromkeys(spec.aliases, spec.name))
    return spec


def task_names() -> tuple[str, ...]:
    """The registered task names, in registration order."""
    return tuple(_REGISTRY)


def sample_task_names() -> tuple[str, ...]:
    """The single tasks: what a sample's ``task`` field may say."""
    return tuple(name for name, spec in _REGISTRY.items() if not spec.parts)


def canonical_name(name: str) -> str:
    """``name`` itself, or the task an alias stands for; one clear error naming the registered ones."""
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    known = ", ".join([*_REGISTRY, *(f"{a} (= {t})" for a, t in _ALIASES.items())])
    raise ValueError(f"unknown task {name!r}; the registered tasks are: {known}")


def get_task(name: str) -> TaskSpec:
    """The spec registered as ``name`` (or one of its aliases)."""
    return _REGISTRY[canonical_name(name)]


def check_batchable(tasks: Sequence[str], what: str = "a batch mixes") -> None:
    """ValueError when two of the sample ``tasks`` fill the same batch field (e.g. the labels of ``cls``,
    one class per row, and of ``lm``, one per token): they cannot share a batch."""
    seen: dict[str, str] = {}
    present = set(tasks)
    for name in (n for n in _REGISTRY if n in present):  # registration order: the same message every time
        for key in _REGISTRY[name].batch_keys:
            if key in seen:
                raise ValueError(f"{what} {seen[key]!r} and {name!r} samples, whose {key!r} differ in shape: "
                                 "use two loaders")
            seen[key] = name


def task_of_model(model_class: type) -> TaskSpec | None:
    """The task whose model class is ``model_class`` (by class name), or None for a class of no task."""
    return next((s for s in _REGISTRY.values() if s.model_class.rpartition(":")[2] == model_class.__name__), None)
