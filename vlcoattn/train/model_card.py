"""Model cards: the ``README.md`` the trainer writes into every model dir (``final/``, each checkpoint's
``model/``), in the Hub's format, so a pushed model describes itself.

The metadata header is huggingface_hub's :class:`~huggingface_hub.ModelCardData`: ``library_name``,
``pipeline_tag`` (the task's, from the task registry), ``tags``, ``base_model`` (the Hub models the
weights start from), ``datasets`` (the training shards' ``dataset.json`` sources) and a ``model-index``
of :class:`~huggingface_hub.EvalResult` s, one per split and headline metric of ``final_metrics.json``.
The body says what the model does, how to load it (lines that run), how it was trained, and its
figures beside the image-blind baselines of the same samples (``vlcoattn.eval.baselines``).

``library_name`` is ``vlcoattn`` for this package's models, not ``transformers``: the files are
transformers' own (config.json, model.safetensors, the processor), but their ``model_type`` (``vlcoattn``,
``coobert``) and pipelines are registered by ``import vlcoattn``, so the Hub's transformers snippet
(``AutoModel`` / ``pipeline`` by repo id, without that import) would fail. ``transformers`` is a tag, so
the model is listed under it. A transformers model the caller hands the trainer (a GPT-2 or BERT baseline)
loads with transformers alone: its card says ``transformers``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData, metadata_load
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig

from ..assets import asset_hub_model
from ..data.schema import INFO_FILE, DatasetInfo
from ..hub import CARD_FILE
from ..models import VLCoAttnConfig
from ..tasks import TaskSpec
from ..text import CooBertConfig
from ..utils.reporting import markdown_table
from .config import config_to_dict
from .job_config import JobConfig
from .report import metrics_table

LIBRARY = "vlcoattn"
Metrics = Mapping[str, Mapping[str, float]]  # split -> metric -> value (final_metrics.json)


def dataset_info(source: str) -> DatasetInfo | None:
    """The ``dataset.json`` of a local shard dir (or the file itself); None for a shard pattern or URL."""
    path = Path(source)
    if (path / INFO_FILE).is_file() or (path.name == INFO_FILE and path.is_file()):
        return DatasetInfo.load(path)
    return None


def dataset_names(sources: Sequence[str]) -> list[str]:
    """The datasets of ``sources``, once each in order: each shard dir's ``dataset.json`` ``source`` (the
    converter that wrote it: ``vqa2``, ``refcoco``, ``synthetic``, ...); ``webdataset`` for a shard pattern."""
    return list(dict.fromkeys(info.source if (info := dataset_info(s)) else "webdataset" for s in sources))


def base_models(job: JobConfig) -> list[str]:
    """The Hub ids the trained weights start from: a fine-tuned dir's own ``base_model``, else the text
    encoder's (the asset ``model.convert_from`` packages; ``model.text``, when given, is its conversion)
    and the backbone's (timm's Hub id of its default pretrained weights, which the bundled local files of
    ``vlcoattn.vision.weights`` are a copy of; a ``backbone_pretrained_file`` of one's own has none)."""
    cfg = job.model
    if cfg.pretrained is not None:
        card = Path(cfg.pretrained) / CARD_FILE
        base = (metadata_load(card) or {}).get("base_model") if card.is_file() else None
        return [base] if isinstance(base, str) else list(base or [])
    found = []
    text = asset_hub_model(cfg.convert_from) if cfg.pretrained_text and cfg.convert_from else None
    if text:
        found.append(text)
    if job.spec.needs_images and cfg.pretrained_backbone and cfg.backbone_pretrained_file is None:
        pretrained = timm.models.get_pretrained_cfg(cfg.backbone)
        if pretrained is not None and pretrained.hf_hub_id:
            found.append(pretrained.hf_hub_id)
    return found


def eval_sources(job: JobConfig) -> dict[str, list[str]]:
    """The shard sources of each evaluated split, as the trainer evaluates them (val, then the tests)."""
    return {**({"val": job.data.val} if job.data.val else {}), **job.data.test}


def eval_results(job: JobConfig, metrics: Metrics, model_name: str) -> list[EvalResult]:
    """One EvalResult per split and headline metric of each of the task's parts (``metric_type`` is the
    metric's name in ``final_metrics.json``); non-finite values are left out (the Hub rejects them)."""
    sources = eval_sources(job)
    results = []
    for split, values in metrics.items():
        if split not in sources:
            raise ValueError(f"metrics of split {split!r}, which the job does not evaluate (data.val, data.test)")
        dataset = "+".join(dataset_names(sources[split]))
        for unit in job.spec.units:
            for name in unit.headline_metrics:
                if name in values and math.isfinite(values[name]):
                    results.append(EvalResult(
                        task_type=unit.hub_pipeline_tag, task_name=unit.name, dataset_type=dataset,
                        dataset_name=f"{dataset} ({split})", dataset_split=split, metric_type=name,
                        metric_name=f"{split} {name}", metric_value=values[name]))
    return results


def is_ours(config: PretrainedConfig) -> bool:
    """Whether the model is one of this package's (CooBERT, VLCoAttn), not transformers' own (a baseline
    handed to the trainer: its dir loads with transformers alone)."""
    return config.model_type in (CooBertConfig.model_type, VLCoAttnConfig.model_type)


def card_data(job: JobConfig, config: PretrainedConfig, bases: Sequence[str], metrics: Metrics | None,
              model_name: str) -> ModelCardData:
    """The Hub metadata of the model ``job`` trained (``config``: the saved one; ``bases``: its base models;
    ``metrics``: None for an unevaluated checkpoint)."""
    spec, vision = job.spec, getattr(config, "vision_config", None)
    tags = [LIBRARY, "transformers", config.model_type, *(["smca", vision.backbone] if vision is not None else []),
            *(u.hub_pipeline_tag for u in spec.units if u.hub_pipeline_tag != spec.pipeline_tag)]
    results = eval_results(job, metrics, model_name) if metrics else []
    return ModelCardData(
        library_name=LIBRARY if is_ours(config) else "transformers", pipeline_tag=spec.pipeline_tag, tags=tags,
        base_model=list(bases) or None,
        datasets=dataset_names(job.data.train_sources), metrics=sorted({r.metric_type for r in results}) or None,
        model_name=model_name if results else None, eval_results=results or None,
    )


def parameter_count(model_dir: Path) -> int:
    """Parameters stored in the dir's ``model.safetensors`` (tied weights once), read from its header."""
    with safe_open(model_dir / "model.safetensors", "pt") as f:
        names = f.keys()
        return sum(math.prod(f.get_slice(k).get_shape()) for k in names)


def _model_section(model_dir: Path, config: PretrainedConfig, spec: TaskSpec) -> list[str]:
    """What the model is: its class, text encoder and backbone (from its saved config), size and purpose."""
    text = getattr(config, "text_config", config)
    vision = getattr(config, "vision_config", None)
    parts = [f"a CooBERT text encoder (layers {text.num_hidden_layers}, hidden size {text.hidden_size}, "
             f"shared key dim {getattr(text, 'shared_key_dim', None) or 'full'})" if is_ours(config)
             else f"transformers' `{config.model_type}`"]
    if vision is not None:
        parts.append(f"a timm `{vision.backbone}` backbone at {'x'.join(map(str, vision.image_size))} pixels, "
                     "fused by SMCA co-attention (a Gaussian spatial prior per text token)")
    what = " and ".join(u.summary for u in spec.units)
    return [f"A `{config.architectures[0]}` ({parameter_count(model_dir) / 1e6:.2f}M parameters): "
            + " and ".join(parts) + ".", "", "## Intended use", "",
            f"The model {what}. It was trained on the data below only, and its figures hold for that data: "
            "check it on your own before relying on it. A research model, not for decisions about people."]


def usage_snippet(spec: TaskSpec, location: str) -> str:
    """Lines that load the model at ``location`` and use it through the pipelines and the Predictor."""
    lines = ["import vlcoattn  # registers the model classes and pipelines with transformers",
             "from transformers import pipeline", "from vlcoattn.infer import Predictor", "",
             f'model_dir = "{location}"  # a copy on the Hub: huggingface_hub.snapshot_download("<user>/<repo>")']
    if spec.needs_images:
        lines.append('image = "photo.jpg"  # any image: a path, PIL image, uint8 array or encoded bytes')
    lines += ["predictor = Predictor.from_pretrained(model_dir)", *(u.usage for u in spec.units)]
    return "\n".join(lines)


def _training_section(job: JobConfig, summary: Mapping[str, Any], start: str) -> list[str]:
    """The job's key options (``start``: what the weights started from), the training data and the whole
    job config (collapsed)."""
    optim = job.optim
    rows = [*([k, v] for k, v in summary.items()),
            ["optimizer", f"AdamW, lr {optim.lr:g}, {optim.schedule} schedule, {optim.warmup_steps} warm-up steps, "
                          f"weight decay {optim.weight_decay:g}, grad clip {optim.grad_clip}"],
            ["precision", job.run.precision], ["seed", job.run.seed], ["text length", job.data.max_text_len],
            ["started from", start]]
    data = [[f"`{s}`", info.source, info.num_samples, ", ".join(f"{t} {n}" for t, n in info.tasks.items())]
            if (info := dataset_info(s)) else [f"`{s}`", "webdataset", "", ""] for s in job.data.train_sources]
    config = yaml.safe_dump(config_to_dict(job), sort_keys=False)
    return ["## Training", "", markdown_table(["option", "value"], rows), "", "Training data:", "",
            markdown_table(["shards", "dataset.json source", "samples", "tasks"], data), "",
            "<details><summary>The job's config</summary>", "", "```yaml", config.rstrip(), "```", "", "</details>"]


def card_text(model_dir: Path, job: JobConfig, config: PretrainedConfig, metrics: Metrics | None,
              summary: Mapping[str, Any], location: str, start: str) -> str:
    """The card's body (markdown, after the metadata header)."""
    lines = [f"# {Path(job.run.dir).name}: {job.task}", "", *_model_section(model_dir, config, job.spec), "",
             "## How to use", "", "```python", usage_snippet(job.spec, location), "```", "",
             "Batches, JSONL files and the command line: `vlcoattn-infer` (the project's docs/inference.md).",
             "", *_training_section(job, summary, start), "", "## Evaluation", ""]
    if metrics:
        lines += ["The model's figures per split; the trivial baselines (image-blind answer priors, the centred "
                  "mean box) are scored on the same samples:", "", metrics_table(metrics)]
    else:
        lines.append(f"Not evaluated: a checkpoint of the run; its `final/{CARD_FILE}` holds the figures.")
    return "\n".join(lines) + "\n"


def write_model_card(model_dir: str | Path, job: JobConfig, metrics: Metrics | None = None,
                     summary: Mapping[str, Any] | None = None, location: str | Path | None = None,
                     prebuilt: bool = False) -> Path:
    """Write ``model_dir/README.md``: the card of the model ``job`` trained. ``metrics``: its final metrics
    (split -> metric -> value); ``summary``: facts of the run (steps, batch per step, ...); ``location``:
    where the dir will be read from (default: ``model_dir``; the trainer writes into a temporary dir first);
    ``prebuilt``: the caller built the model (not ``job.model``), so what it started from is unknown here."""
    model_dir = Path(model_dir)
    name = Path(job.run.dir).name
    config = AutoConfig.from_pretrained(model_dir)
    bases = [] if prebuilt else base_models(job)
    start = "a model the caller built" if prebuilt else job.model.pretrained or ", ".join(bases) or "random weights"
    data = card_data(job, config, bases, metrics, name)
    text = card_text(model_dir, job, config, metrics, summary or {"task": job.task, "steps": job.train.steps},
                     str(location or model_dir), start)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")
    path = model_dir / CARD_FILE
    card.save(path)
    return path

