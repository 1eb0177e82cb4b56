"""The step-based trainer: one code path for a single process and ``torchrun`` DDP.

A step = ``accum_steps`` micro-batches per rank -> one AdamW update. Each loss is a sum over the
step's items divided by their global count (``num_items_in_batch``: rows of a task, or target tokens),
so N ranks x batch b gives the same update as one process with batch N*b, and accumulation the same as
a bigger batch. Everything that decides the future of the run (model, optimizer, scheduler, step, every
rank's RNG and data position) is checkpointed, so a resumed run continues the uninterrupted one exactly.

    job = load_config(JobConfig, "configs/demo.yaml", ["train.steps=100"])
    result = train(job)            # or: torchrun --nproc_per_node=2 tools/train.py --config ...
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import math
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..data import (
    ShardLoader,
    answer_vocab_of,
    build_eval_loader,
    build_loader,
    image_transform,
    read_answer_vocab,
    resolve_shards,
    write_synthetic,
)
from ..data.write.synthetic import SyntheticConfig, parse_holdout
from ..eval.runner import EvalResult, evaluate
from ..loading import write_task_file
from ..models import VLCoAttnPreTrainedModel, VLCoAttnProcessor
from .build import build_model, needs_text_dir, resolve_text_dir
from .checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    load_model_weights,
    load_rank_state,
    load_trainer_state,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import save_config
from .distributed import build_once_per_node, destroy_distributed, init_distributed
from .job_config import JobConfig
from .metrics_log import MetricsLogger, peak_memory_gib
from .model_card import write_model_card
from .optim import build_optimizer, build_scheduler
from .parallel import (
    apply_fsdp,
    compile_units,
    full_state_dict,
    grad_norm_value,
    has_sharded,
    load_sharded,
    save_sharded,
)
from .report import write_report

log = logging.getLogger(__name__)

def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute every layer in the backward pass (non-reentrant ``torch.utils.checkpoint``), through the
    installed transformers' name for it (``activation_checkpointing_enable`` since 5.2x)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite losses in a row); the message says why."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> final metrics
    interrupted: bool = False  # stopped by SIGTERM / SIGINT after writing a checkpoint
    skipped_steps: int = 0  # non-finite losses skipped


def resolve_data(job: JobConfig) -> None:
    """Fill ``data.train/val/test`` from ``data.synthetic.dir``, generating CLEVR-lite there if absent
    (once per node, see :func:`build_once_per_node`; generation is deterministic by seed)."""
    syn = job.data.synthetic
    if syn.dir is None:
        return
    root = Path(syn.dir)

    def generate(out: Path) -> None:
        log.info("generating %s (%d scenes) into %s", syn.family, syn.num_scenes, root)
        config = SyntheticConfig(image_size=syn.image_size, holdout=parse_holdout(syn.holdout, syn.family),
                                 questions_per_scene=syn.questions_per_scene, refs_per_scene=syn.refs_per_scene,
                                 captions=syn.captions, family=syn.family)
        write_synthetic(out, syn.num_scenes, seed=syn.seed, config=config, val_num=syn.val_scenes,
                        test_num=syn.test_scenes, progress=job.run.progress)

    build_once_per_node(root, "train/dataset.json", generate)
    job.data.train = job.data.train or [str(root / "train")]
    job.data.val = job.data.val or [str(root / "val")]
    job.data.test = job.data.test or {s: [str(root / s)] for s in ("test", "holdout") if (root / s).is_dir()}


def data_vocabularies(sources: list[str], answer_vocab: str | None = None,
                      min_answer_count: int = 1) -> tuple[list[str], list[str], list[str]]:
    """(answer vocabulary, sorted label vocabulary, sorted tasks) of the sources' dataset.json files;
    ``answer_vocab``: a file or shard dir that gives the answers instead (see ``DataConfig``)."""
    _, infos = resolve_shards(sources)
    answers = read_answer_vocab(answer_vocab, min_answer_count) if answer_vocab \
        else answer_vocab_of(infos, min_answer_count)
    labels = sorted({label for info in infos for label in info.label_vocab})
    return answers, labels, sorted({task for info in infos for task in info.tasks})


def save_model_dir(model: torch.nn.Module, processor: Any, out: Path, task: str,
                   state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """save_pretrained dir: config + safetensors weights + processor (or tokenizer) + the task file.
    ``state_dict``: the weights to write instead of the model's own (a sharded model's, gathered by
    ``full_state_dict``)."""
    model.save_pretrained(out, state_dict=state_dict)
    processor.save_pretrained(out)
    write_task_file(out, task)


class _StopSignal:
    """SIGTERM / SIGINT set a flag; the loop checkpoints at the next step boundary and exits."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def on_any_rank(self, dist: Any) -> bool:
        """Whether any rank got a signal (a collective: every rank stops at the same step)."""
        flag = torch.tensor([float(self.received is not None)])
        return bool(dist.all_reduce(flag, torch.distributed.ReduceOp.MAX).item())


@dataclass
class LogWindow:
    """What the train log line averages over: the steps since the last line."""

    loss_names: list[str]
    losses: dict[str, float] = field(default_factory=dict)
    finite_steps: int = 0  # steps whose losses count (a skipped step's do not)
    steps: int = 0
    samples: int = 0  # all ranks
    rows: Counter[str] = field(default_factory=Counter)  # rows of each task, all ranks
    start: float = field(default_factory=time.perf_counter)

    def add(self, losses: dict[str, float] | None, samples: int, rows: dict[str, int]) -> None:
        if losses is not None:
            self.losses = {k: self.losses.get(k, 0.0) + losses[k] for k in self.loss_names}
            self.finite_steps += 1
        self.steps += 1
        self.samples += samples
        self.rows.update(rows)

    def record(self) -> dict[str, float]:
        """Mean losses, samples/s and rows per step of the window."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        record = {**{k: self.losses.get(k, 0.0) / max(self.finite_steps, 1) for k in self.loss_names},
                  "samples_per_s": self.samples / elapsed,
                  **{f"rows/{t}": n / max(self.steps, 1) for t, n in self.rows.items()}}
        return record


class Trainer:
    """Builds everything a job needs from its config and runs :meth:`fit`.

    ``model`` / ``tokenizer``: train this pre-built model instead of building one from ``job.model``
    (e.g. a transformers baseline in a benchmark); its forward must take the task's targets
    (its task spec's ``model_inputs``, see :mod:`vlcoattn.tasks`).
    """

    def __init__(self, job: JobConfig, model: torch.nn.Module | None = None, tokenizer: Any = None) -> None:
        self.job = job
        resolve_data(job)  # what a run prepares on first use, once per node, before the process group
        if model is None and needs_text_dir(job):
            resolve_text_dir(job.model)
        self.dist = dist = init_distributed(job.run.device)
        self.run_dir = Path(job.run.dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        torch.manual_seed(job.run.seed)  # the same initial weights on every rank
        self.answer_vocab, self.label_vocab, self.row_tasks = data_vocabularies(
            job.data.train_sources, job.data.answer_vocab, job.data.min_answer_count)
        self.prebuilt = model is not None  # the caller's model: its card cannot say what it started from
        if model is None:
            model, tokenizer = build_model(job, self.answer_vocab, self.label_vocab)
        elif tokenizer is None:
            raise ValueError("a pre-built model needs its tokenizer")
        self.tokenizer = tokenizer = copy.copy(tokenizer)  # the caller's tokenizer keeps its own length
        tokenizer.model_max_length = job.data.max_text_len  # the length this model trains with, saved with it
        # all preparation of samples, saved into every model dir: image processor + tokenizer (text-only: the tokenizer)
        self.processor = VLCoAttnProcessor.for_model(model, tokenizer) \
            if isinstance(model, VLCoAttnPreTrainedModel) else tokenizer
        config = getattr(model, "config", None)
        self.answer_vocab = list(getattr(config, "answer_vocab", None) or self.answer_vocab)
        self.label_vocab = job.spec.label_names(config) or self.label_vocab  # a pretrained classifier's own
        self.model = model.to(dist.device)
        self.model.train()
        if job.model.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.feature_cache = model.base_model.enable_feature_cache(job.model.feature_cache_gib) \
            if job.model.feature_cache_gib > 0 else None
        self.counts_items = "num_items_in_batch" in inspect.signature(model.forward).parameters
        # what is logged: the loss and the parts a task model reports (loss_vqa, loss_l1, loss_giou)
        self.loss_names = list(getattr(model, "loss_names", ["loss"]))
        if job.run.compile:
            compile_units(self.model)
        self.sharded = job.run.parallel == "fsdp" and dist.distributed  # one process has nothing to shard
        if self.sharded:
            apply_fsdp(self.model)  # before the optimizer: its parameters become DTensor shards
        self.ddp = DistributedDataParallel(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None) \
            if dist.distributed and not self.sharded else None
        self.optimizer = build_optimizer(self.model, job.optim)
        self.scheduler = build_scheduler(self.optimizer, job.train.steps, job.optim)
        self.loader = self._train_loader()
        self.step = 0
        self.step_rows: dict[str, int] = {}  # rows of each task in the last step, all ranks
        self.bad_in_row = self.bad_total = 0
        precision = job.run.precision if job.run.precision != "auto" else \
            ("bf16" if dist.device.type == "cuda" else "fp32")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.autocast = (lambda: torch.autocast(dist.device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        # fp16 needs loss scaling: its gradients underflow where bf16's (fp32's exponent) do not
        self.scaler = torch.amp.GradScaler(dist.device.type) if precision == "fp16" else None
        self.logger: MetricsLogger | None = None

    @property
    def loader_kwargs(self) -> dict[str, Any]:
        """What every loader of the run shares: the model's vocabularies and this rank's place."""
        return dict(answer_vocab=self.answer_vocab, label_vocab=self.label_vocab, rank=self.dist.rank,
                    world_size=self.dist.world_size)

    def _train_loader(self) -> ShardLoader:
        """The training loader: ``job.data`` is its :class:`~vlcoattn.data.LoaderConfig`, passed whole, and
        the image transform (with ``data.augment`` / ``color_jitter`` / ``crop_min_scale``) is built here, once."""
        job = self.job
        return build_loader(
            job.data.train_sources, self.processor, job.data, transform=image_transform(self.processor, job.data),
            weights=job.data.train_weights, seed=job.run.seed, pin_memory=self.dist.device.type == "cuda",
            phrase_spans=bool(getattr(self.model, "reads_phrase_spans", False)), **self.loader_kwargs,
        )

    # ------------------------------------------------------------------------------ checkpoints

    def _save(self) -> Path:
        model = self.model
        full = full_state_dict(model) if self.sharded else None  # a collective: every rank gathers
        trainer_state = {
            "step": self.step,
            **({} if self.sharded else {"optimizer": self.optimizer.state_dict()}),  # sharded: in sharded/
            "scheduler": self.scheduler.state_dict(),
            "bad_total": self.bad_total,
            "bad_in_row": self.bad_in_row,
            "world_size": self.dist.world_size,
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
        }
        rank_state = {"rng": rng_state(), "loader": self.loader.state_dict()}
        return save_checkpoint(
            self.ckpt_dir, self.step,
            lambda d: self._write_model_dir(d, self.ckpt_dir / checkpoint_name(self.step) / "model", full),
            trainer_state, rank_state, self.dist.rank, self.job.train.keep_last, self.dist.barrier,
            save_shards=(lambda d: save_sharded(d, model, self.optimizer)) if self.sharded else None,
        )

    def _summary(self) -> dict[str, Any]:
        """The facts of the run so far that its report and model cards list."""
        job, dist = self.job, self.dist
        return {"task": job.task, "steps": self.step, "processes": dist.world_size,
                "batch per step": job.data.batch_size * job.optim.accum_steps * dist.world_size,
                "skipped steps": self.bad_total, "bad samples": self.loader.bad_samples() or 0}

    def _write_model_dir(self, out: Path, location: Path, full: dict[str, torch.Tensor] | None,
                         metrics: dict[str, dict[str, float]] | None = None) -> None:
        """The save_pretrained dir (see :func:`save_model_dir`) and its model card; ``location``: where the dir
        lives once renamed into place, ``metrics``: the final ones (None for a checkpoint)."""
        save_model_dir(self.model, self.processor, out, self.job.task, full)
        write_model_card(out, self.job, metrics, self._summary(), location, self.prebuilt)

    def resume(self, path: str | Path) -> None:
        """Restore model, optimizer, scheduler, step, RNG and data position from a checkpoint.

        On the world size that wrote it the restore is exact. On another one (torchrun elastic, or a job
        moved to more or fewer GPUs) model, optimizer, scheduler and step are restored as they were, the
        data stream continues from the global sample count (approximate: see ``ShardLoader``) and every
        rank's RNG is reseeded from (seed, step, rank).
        """
        path = Path(path)
        trainer_state = load_trainer_state(path)
        saved_world = trainer_state["world_size"]
        elastic = saved_world != self.dist.world_size
        rank_state = load_rank_state(path, 0 if elastic else self.dist.rank)  # rank 0's knows the global count
        if has_sharded(path):  # an FSDP checkpoint: DCP places its shards however this run holds the model
            load_sharded(path, self.model, self.optimizer)
        elif self.sharded:
            raise ValueError(f"{path} was written with run.parallel=ddp (its optimizer state is not sharded); "
                             "resume it with run.parallel=ddp")
        else:
            load_model_weights(self.model, path / "model")
            self.optimizer.load_state_dict(trainer_state["optimizer"])
        self.scheduler.load_state_dict(trainer_state["scheduler"])
        if self.scaler is not None and "scaler" in trainer_state:
            self.scaler.load_state_dict(trainer_state["scaler"])
        self.step = int(trainer_state["step"])
        self.bad_total, self.bad_in_row = int(trainer_state["bad_total"]), int(trainer_state["bad_in_row"])
        self.loader.load_state_dict(rank_state["loader"], elastic=elastic)
        if elastic:
            torch.manual_seed(hash((self.job.run.seed, self.step, self.dist.rank)) % 2**63)
            if self.dist.is_main:
                log.warning("resuming a checkpoint of %d process(es) on %d: model, optimizer, schedule and step "
                            "restored; data continues near global sample %d (approximate); RNG reseeded",
                            saved_world, self.dist.world_size, self.loader.global_samples)
        else:
            set_rng_state(rank_state["rng"])

    # ------------------------------------------------------------------------------ the loop

    def _batches(self) -> Iterator[dict[str, Any]]:
        while True:
            yield from self.loader

    def _train_step(self, batches: Iterator[dict[str, Any]]) -> tuple[dict[str, float], float | None, int]:
        """One update from ``accum_steps`` micro-batches; returns (the loss and its parts as means over the
        global batch, grad norm or None if skipped, samples on this rank)."""
        job, dist = self.job, self.dist
        micro = [next(batches) for _ in range(job.optim.accum_steps)]
        counts: dict[str, int] = {}
        for b in micro:
            for k, v in job.spec.items(b).items():
                counts[k] = counts.get(k, 0) + v
        kinds = sorted(counts)
        rows = Counter(t for b in micro for t in b["tasks"])
        local = [counts[k] for k in kinds] + [rows[t] for t in self.row_tasks]
        totals = dist.all_reduce(torch.tensor(local, dtype=torch.float64)).tolist()  # one collective for both
        num_items = job.spec.num_items_argument({k: int(v) for k, v in zip(kinds, totals)})
        self.step_rows = {t: int(v) for t, v in zip(self.row_tasks, totals[len(kinds):])}
        module = self.ddp or self.model
        sums = torch.zeros(len(self.loss_names), dtype=torch.float64, device=dist.device)
        for i, b in enumerate(micro):
            sync = i == len(micro) - 1  # reduce the gradients after the last micro-batch only
            if self.sharded:
                self.model.set_requires_gradient_sync(sync)
            with contextlib.nullcontext() if sync or self.ddp is None else self.ddp.no_sync(), self.autocast():
                inputs = job.spec.model_inputs(b, dist.device)
                if self.counts_items:
                    out = module(**inputs, num_items_in_batch=num_items)
                    weight = 1.0  # the model's losses are already this rank's part of the global mean
                    loss = out.loss * dist.world_size  # DDP averages gradients over ranks; undo that
                else:  # the model averages over its micro-batch
                    out = module(**inputs)
                    weight = 1.0 / (len(micro) * dist.world_size)
                    loss = out.loss / len(micro)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            for j, name in enumerate(self.loss_names):  # a part is None when the batch has no rows of it
                value = getattr(out, name, None)
                if value is not None:
                    sums[j] += value.detach().double() * weight
        losses = dict(zip(self.loss_names, dist.all_reduce(sums).tolist()))  # one collective for all
        grad_norm = None
        if math.isfinite(losses["loss"]):  # the same on every rank, so all skip together
            clip = job.optim.grad_clip if job.optim.grad_clip is not None else float("inf")
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
            if math.isfinite(grad_norm):
                self.optimizer.step()
            elif self.scaler is not None:  # fp16 overflow: the scaler lowers its scale, nothing is wrong
                grad_norm = float("nan")
            else:
                grad_norm, losses["loss"] = None, float("nan")
            if self.scaler is not None:
                self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return losses, grad_norm, sum(len(b["keys"]) for b in micro)

    def _eval_loader(self, sources: list[str]):
        return build_eval_loader(sources, self.processor, batch_size=self.job.data.eval_batch_size,
                                 limit=self.job.data.eval_limit, **self.loader_kwargs)

    def evaluate_split(self, sources: list[str], keep_examples: int = 0,
                       baselines: Callable[[], list[Any]] = list) -> EvalResult:
        """Metrics of the current model on ``sources`` (every sample once, all ranks), plus those of the
        ``baselines()`` scored on the same batches (``center_box/...``, ``question_prior/...``)."""
        batches = self._eval_loader(sources)
        fresh = baselines()
        for baseline in fresh:
            batches = baseline.observe(batches)
        image_processor = getattr(self.processor, "image_processor", None)
        result = evaluate(self.model, batches, self.job.task,
                          device=self.dist.device, autocast=self.autocast(), keep_examples=keep_examples,
                          image_processor=image_processor, lockstep=self.sharded)
        for baseline in fresh:
            result.metrics.update(baseline.compute())
        return result

    def _baselines(self) -> Callable[[], list[Any]]:
        """Fit the trivial baselines of the task on the training split; returns a factory of fresh ones
        (each split is scored by its own): the center box (grounding) and the image-blind answer priors
        (VQA), so every report shows how much the image adds."""
        sources = self.job.data.train_sources
        parts = self.job.spec.baseline_factories(
            self.row_tasks, sources,
            lambda **kw: build_eval_loader(sources, self.processor, **kw, **self.loader_kwargs))
        return lambda: [make() for make in parts]

    def _log_eval(self, split: str, sources: list[str], keep_examples: int = 0,
                  baselines: Callable[[], list[Any]] = list) -> EvalResult:
        result = self.evaluate_split(sources, keep_examples, baselines)
        if self.logger is not None:
            self.logger.log(self.step, split, result.metrics)
        if self.dist.is_main:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if "/" not in k)
            tqdm.write(f"step {self.step} {split}: {shown}")
        return result

    # when things happen (torchtitan's should_*): every rule in one place
    def should_log(self) -> bool:
        return self.step % self.job.run.log_every == 0 or self.step == self.job.train.steps

    def should_validate(self) -> bool:
        every = self.job.train.eval_every
        return bool(every and self.step % every == 0 and self.job.data.val and self.step < self.job.train.steps)

    def should_save(self) -> bool:
        every = self.job.train.save_every
        return bool(every and self.step % every == 0 and self.step < self.job.train.steps)

    def reached(self, metrics: dict[str, float]) -> bool:
        """Whether a validation's ``metrics`` reach every target of ``train.stop_when`` (then the run ends here).
        A target the validation does not report is an error: a misspelt name would never stop the run."""
        targets = self.job.train.stop_when or {}
        missing = sorted(set(targets) - set(metrics))
        if missing:
            raise ValueError(f"train.stop_when names {missing}, which validation does not report "
                             f"(it reports {sorted(k for k in metrics if '/' not in k)})")
        done = bool(targets) and all(metrics[k] >= v for k, v in targets.items())
        if done and self.dist.is_main:
            tqdm.write(f"step {self.step}: val reached train.stop_when {targets}; evaluating and saving")
        return done

    def _count_bad_step(self) -> None:
        """A non-finite loss or gradient: the update was skipped; too many in a row stop the run."""
        self.bad_in_row += 1
        self.bad_total += 1
        log.warning("step %d: non-finite loss/gradients, update skipped (%d in a row)", self.step, self.bad_in_row)
        if self.bad_in_row >= self.job.train.max_bad_steps:
            raise TrainingError(
                f"{self.bad_in_row} steps in a row had a non-finite loss or gradient (last at step "
                f"{self.step}); lower optim.lr, enable optim.grad_clip or check the data"
            )

    def _log_train(self, window: LogWindow, grad_norm: float | None, bar: Any) -> None:
        lr = self.scheduler.get_last_lr()[0]
        record = {**window.record(), "lr": lr, "skipped_steps": self.bad_total, "epoch": self.loader.epoch,
                  "bad_samples": sum(self.loader.bad_samples().values()),
                  "peak_mem_gib": peak_memory_gib(self.dist.device)}
        if self.feature_cache is not None:  # this rank's
            record.update({f"feature_cache_{k}": v for k, v in self.feature_cache.stats().items()})
        if grad_norm is not None and math.isfinite(grad_norm):  # nan: an fp16 overflow step
            record["grad_norm"] = grad_norm
        self.logger.log(self.step, "train", record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", sps=f"{record['samples_per_s']:.1f}")

    def fit(self, resume: str | None = None) -> TrainResult:
        """Train to ``train.steps`` (from a checkpoint with ``resume`` = 'latest' or a path), evaluate,
        save ``final/`` and the report. Returns early, after a checkpoint, on SIGTERM / SIGINT."""
        job, dist = self.job, self.dist
        ckpt = resolve_resume(resume, self.ckpt_dir)
        if ckpt is not None:
            self.resume(ckpt)
        if dist.is_main:
            save_config(job, self.run_dir / "config.yaml")
        self.logger = MetricsLogger(self.run_dir, dist.is_main, resume_step=self.step if ckpt else None)
        bar = tqdm(total=job.train.steps, initial=self.step, disable=not (dist.is_main and job.run.progress),
                   desc="train", dynamic_ncols=True)
        window = LogWindow(self.loss_names)
        # closing: an error ends the loader's epoch (and its worker processes) here, not at interpreter exit
        with _StopSignal() as stop, contextlib.closing(self._batches()) as batches:
            while self.step < job.train.steps:
                if stop.on_any_rank(dist):
                    path = self._save()
                    if dist.is_main:
                        log.warning("stopped by a signal at step %d; checkpoint %s (continue with --resume latest)",
                                    self.step, path)
                    bar.close()
                    self.logger.close()
                    return TrainResult(self.run_dir, self.step, interrupted=True, skipped_steps=self.bad_total)
                losses, grad_norm, samples = self._train_step(batches)
                if grad_norm is None:
                    self._count_bad_step()
                else:
                    self.bad_in_row = 0
                window.add(losses if grad_norm is not None else None, samples * dist.world_size, self.step_rows)
                bar.update(1)
                if self.should_log():
                    self._log_train(window, grad_norm, bar)
                    window = LogWindow(self.loss_names)
                if self.should_validate() and self.reached(self._log_eval("val", job.data.val).metrics):
                    break
                if self.should_save():
                    self._save()
        bar.close()
        latest = latest_checkpoint(self.ckpt_dir)
        if latest is None or latest.name != checkpoint_name(self.step):
            self._save()
        return self._finish()

    def _finish(self) -> TrainResult:
        job, dist = self.job, self.dist
        final: dict[str, dict[str, float]] = {}
        examples: list[dict[str, Any]] = []
        splits = ([("val", job.data.val)] if job.data.val else []) + list(job.data.test.items())
        baselines = self._baselines() if splits else list
        for split, sources in splits:
            keep = job.train.report_images if split == "val" else 0
            result = self._log_eval(split, sources, keep_examples=keep, baselines=baselines)
            final[split] = result.metrics
            examples = examples or result.examples
            if dist.is_main:
                pred_dir = self.run_dir / "predictions"
                pred_dir.mkdir(exist_ok=True)
                with (pred_dir / f"{split}.jsonl").open("w") as f:
                    f.writelines(json.dumps(p) + "\n" for p in result.predictions)
        full = full_state_dict(self.model) if self.sharded else None  # a collective: every rank gathers
        if dist.is_main:
            out, tmp = self.run_dir / "final", self.run_dir / ".tmp-final"
            shutil.rmtree(tmp, ignore_errors=True)
            self._write_model_dir(tmp, out, full, final)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
            (self.run_dir / "final_metrics.json").write_text(json.dumps(final, indent=2))
            if job.train.report:
                write_report(self.run_dir, final, examples, self._summary())
        self.logger.close()
        dist.barrier()
        return TrainResult(self.run_dir, self.step, final, skipped_steps=self.bad_total)


def train(job: JobConfig, resume: str | None = None, model: torch.nn.Module | None = None,
          tokenizer: Any = None) -> TrainResult:
    """Run ``job`` to the end (or to a stop signal); see :class:`Trainer`."""
    try:
        return Trainer(job, model, tokenizer).fit(resume)
    finally:
        destroy_distributed()
