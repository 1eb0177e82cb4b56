"""The training job's config: one YAML file per job (``configs/*.yaml``) + ``key.sub=value`` overrides.

Sections: ``run`` (where, seed, logging), ``model`` (what to build and from which pretrained parts),
``data`` (shards, batch, workers), ``optim`` (AdamW, schedule, clipping, accumulation) and ``train``
(steps, evaluation, checkpoints). Every field has a default; :meth:`JobConfig.validate` rejects
inconsistent values before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.read.loader_config import LoaderConfig
from ..tasks import TaskSpec, get_task, task_names

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PARALLEL_MODES = ("ddp", "fsdp")  # see vlcoattn.train.parallel
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class RunConfig:
    dir: str = "runs/job"  # run directory: config.yaml, metrics.jsonl, tb/, checkpoints/, final/, report.md
    seed: int = 0
    log_every: int = 10  # steps between metrics.jsonl / TensorBoard lines
    progress: bool = True  # tqdm bar on rank 0
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 (autocast, CPU or CUDA) | fp16 (autocast + a
    # gradient scaler, for GPUs without bf16)
    precision: str = "auto"
    # ddp (every rank a full replica) | fsdp (FSDP2 fully_shard: weights, gradients and optimizer state
    # sharded over the ranks; sharded DCP checkpoints). One process trains unsharded either way.
    parallel: str = "ddp"
    compile: bool = False  # torch.compile every transformer layer and backbone stage


@dataclass
class SyntheticDataConfig:
    """CLEVR-lite generation (``vlcoattn.data.write_synthetic``) when the shard dirs are absent."""

    dir: str | None = None  # generate into this dir (train/val/test/holdout) unless it has dataset.json
    num_scenes: int = 600  # training scenes
    # val / test (and hold-out) scenes; None = num_scenes // 10. Scene i of a split is the same whatever
    # the counts, so a run with more training scenes can keep the same evaluation splits.
    val_scenes: int | None = None
    test_scenes: int | None = None
    image_size: int = 128
    seed: int = 0
    holdout: str | None = "cogent"  # (colour, shape) pairs kept for the compositional hold-out split
    questions_per_scene: int = 3  # VQA samples per scene
    refs_per_scene: int = 2  # referring expressions (grounding samples) per scene
    captions: bool = False  # also a caption per scene, a phrase per object (task "phrase")
    family: str = "clevr-lite"  # or glyphs: one-colour tiles told apart by a small mark ((mark, shape) hold-out)


@dataclass
class SourceConfig:
    """A training source with its mixing weight (``data.train`` entries may be plain strings instead)."""

    source: str  # shard dir, dataset.json or URL pattern
    weight: float  # relative share of every batch drawn from this source


@dataclass
class DataConfig(LoaderConfig):
    """The job's data: which shards, how to evaluate, and every training-loader option of
    :class:`~vlcoattn.data.LoaderConfig` (``batch_size``, ``num_workers``, ``augment``, ...) as ``data.*`` keys;
    the trainer hands it to ``build_loader`` whole."""

    # shard dirs / patterns, or {source, weight} mappings; every batch draws from the sources by weight
    # (default: each source's sample count, i.e. the natural mixture). Weights on all entries or none.
    train: list[str | SourceConfig] = field(default_factory=list)
    val: list[str] = field(default_factory=list)  # evaluated every train.eval_every steps
    test: dict[str, list[str]] = field(default_factory=dict)  # split name -> sources, evaluated at the end
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    max_text_len: int = 40  # the tokenizer's model_max_length: the processor saved with the model keeps it
    # VQA answers: a vocabulary file (JSON list or one per line) or a shard dir to take it from; default
    # the training sources' (their dataset.json, or one read of remote shards). With min_answer_count > 1
    # only answers counted that often are kept (VQA v2's usual 3,129: >= 9); the rest score 0.
    answer_vocab: str | None = None
    min_answer_count: int = 1
    eval_batch_size: int = 64
    eval_limit: int | None = None  # evaluate only the first N samples of each split (None = all)

    def validate(self, prefix: str = "data.") -> None:
        """The loader options' checks, then the job's own, each a ValueError naming its ``data.*`` key."""
        super().validate(prefix)
        checks = [
            ("max_text_len", self.max_text_len >= 1, "must be >= 1"),
            ("min_answer_count", self.min_answer_count >= 1, "must be >= 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, "must be >= 1"),
            ("eval_limit", self.eval_limit is None or self.eval_limit >= 1, "must be >= 1 (or null: all)"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{prefix}{name} {rule}, got {getattr(self, name)!r}")

    @property
    def train_sources(self) -> list[str]:
        return [e.source if isinstance(e, SourceConfig) else e for e in self.train]

    @property
    def train_weights(self) -> list[float] | None:
        """The mixing weights, or None for the default (proportional to the sources' sizes)."""
        weighted = [isinstance(e, SourceConfig) for e in self.train]
        if not any(weighted):
            return None
        if not all(weighted):
            raise ValueError("data.train: give every entry a weight ({source, weight}) or none")
        return [e.weight for e in self.train]


@dataclass
class ModelConfig:
    """What to train. ``pretrained``: a save_pretrained dir of the task's class (fine-tune / continue).
    Otherwise the model is assembled: text encoder from ``text`` (a CooBERT dir; converted from
    ``convert_from`` at ``shared_key_dim`` when missing), backbone ``backbone`` (timm), and the
    VLCoAttnConfig / CooBertConfig fields in ``config`` (for VLCoAttn nested by sub-config, e.g.
    ``coattention_config: {num_layers: 2}``; docs/models.md)."""

    pretrained: str | None = None
    text: str | None = None  # CooBERT dir (config, weights, tokenizer)
    convert_from: str | None = "minilm"  # BERT dir or asset name ("minilm") to convert when ``text`` is missing
    shared_key_dim: int | None = 192  # D~k of that conversion (None = full rank, exact)
    pretrained_text: bool = True  # False: the text encoder keeps the converted config but starts random
    backbone: str = "tf_efficientnet_lite0"
    pretrained_backbone: bool = True
    backbone_pretrained_file: str | None = None  # default: the known local file (EfficientNet-Lite0)
    image_size: int = 128
    tokenizer: str | None = None  # tokenizer dir (default: the text dir's); lm from scratch needs one
    gradient_checkpointing: bool = False  # recompute each text / fusion layer (and timm block) in the backward
    # > 0: keep the frozen text encoder's / backbone's output per sample, up to this many GiB, and skip
    # their forward on samples seen before (vision-language models; vlcoattn.models.feature_cache)
    feature_cache_gib: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)  # extra model config fields


@dataclass
class OptimConfig:
    lr: float = 1e-4
    backbone_lr: float | None = None  # None = lr
    text_lr: float | None = None  # None = lr (the CooBERT text encoder of VL models)
    weight_decay: float = 0.01  # not on biases and norm layers
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # the schedule ends at lr * min_lr_ratio
    grad_clip: float | None = 1.0  # max global grad norm (None = no clipping)
    accum_steps: int = 1


@dataclass
class TrainLoopConfig:
    steps: int = 1000
    eval_every: int = 0  # 0 = only at the end
    save_every: int = 0  # 0 = only at the end (and on SIGTERM/SIGINT)
    keep_last: int = 2
    max_bad_steps: int = 5  # stop after this many non-finite losses in a row (each is skipped)
    # stop (then evaluate and save as at the end) at the first validation that reaches every one of these
    # metrics, e.g. {"acc@0.5": 0.8}; None = run all the steps
    stop_when: dict[str, float] | None = None
    report: bool = True  # report.md with curves and a prediction grid at the end
    report_images: int = 8


@dataclass
class JobConfig:
    task: str = "vqa+ground"  # a registered task (vlcoattn.tasks; docs/training.md lists them)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)

    def validate(self) -> None:
        """ValueError naming the key for values that cannot work together."""
        if self.task not in task_names():
            raise ValueError(f"task must be one of {task_names()}, got {self.task!r}")
        vision = [name for name in task_names() if get_task(name).needs_images]
        checks = [
            (self.run.precision in PRECISIONS, f"run.precision must be one of {PRECISIONS}"),
            (self.run.device in ("auto", "cpu", "cuda"), "run.device must be auto, cpu or cuda"),
            (self.run.parallel in PARALLEL_MODES, f"run.parallel must be one of {PARALLEL_MODES}"),
            (not (self.run.parallel == "fsdp" and self.run.precision == "fp16"),
             "run.precision=fp16 is not supported with run.parallel=fsdp (its gradient scaler would see "
             "only this rank's shards); use bf16"),
            (self.optim.schedule in SCHEDULES, f"optim.schedule must be one of {SCHEDULES}"),
            (self.train.steps > 0, "train.steps must be > 0"),
            (self.optim.accum_steps > 0, "optim.accum_steps must be > 0"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (len(self.optim.betas) == 2, "optim.betas needs two numbers"),
            (self.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
            (0.0 <= self.optim.min_lr_ratio <= 1.0, "optim.min_lr_ratio must be in [0, 1]"),
            (self.train.max_bad_steps > 0, "train.max_bad_steps must be > 0"),
            (self.train.eval_every >= 0 and self.train.save_every >= 0, "eval_every / save_every must be >= 0"),
            (not self.train.stop_when or (self.train.eval_every > 0 and (self.data.val or self.data.synthetic.dir)),
             "train.stop_when needs validation during training (train.eval_every > 0 and data.val)"),
            (all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (self.train.stop_when or {}).values()),
             "train.stop_when maps metric names to numbers, e.g. {\"acc@0.5\": 0.8}"),
            (self.data.train or self.data.synthetic.dir is not None, "data.train names no shards"),
            (all(w > 0 for w in self.data.train_weights or ()), "data.train weights must be > 0"),
            (self.model.feature_cache_gib >= 0, "model.feature_cache_gib must be >= 0"),
            (self.model.feature_cache_gib == 0 or self.spec.needs_images,
             f"model.feature_cache_gib is for the vision-language tasks ({', '.join(vision)})"),
            (self.model.feature_cache_gib == 0 or self.run.parallel != "fsdp",
             "model.feature_cache_gib does not work with run.parallel=fsdp (it skips sharded modules' forward); "
             "use run.parallel=ddp"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def spec(self) -> TaskSpec:
        """The registered spec of ``task``."""
        return get_task(self.task)
