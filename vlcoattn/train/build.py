"""Build the model and tokenizer a job trains, from the config and the data's vocabularies.

One class per task (its spec's ``model_class``, see :mod:`vlcoattn.tasks`); the model is either loaded whole (``model.pretrained``) or
assembled from pretrained parts: a CooBERT text encoder (a converted BERT dir, converted on first use
and cached) and a timm backbone with its local pretrained weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedModel

from ..assets import asset_names, asset_path
from ..text import CooBertConfig, CooBertModel
from ..vision.weights import cache_dir
from .config import merge_configs
from .distributed import build_once_per_node
from .job_config import JobConfig, ModelConfig


def resolve_text_dir(cfg: ModelConfig) -> Path:
    """The CooBERT dir: ``cfg.text`` if it exists, else ``convert_from`` converted at ``shared_key_dim``
    into ``cfg.text`` (or the cache): once per node, written atomically (see :func:`build_once_per_node`)."""
    if cfg.text is not None and (Path(cfg.text) / "config.json").is_file():
        return Path(cfg.text)
    if cfg.convert_from is None:
        raise FileNotFoundError(f"model.text {cfg.text} is not a model dir and model.convert_from is not set")
    src = asset_path(cfg.convert_from) if cfg.convert_from in asset_names() else Path(cfg.convert_from)
    k = cfg.shared_key_dim
    dst = Path(cfg.text) if cfg.text else cache_dir() / f"coobert-{Path(src).name}-k{k or 'full'}"

    def convert(out: Path) -> None:
        from ..text.convert import convert_bert_dir  # tensorly is needed only here

        convert_bert_dir(src, out, k)

    return build_once_per_node(dst, "config.json", convert)


def load_tokenizer(cfg: ModelConfig, text_dir: Path | None):
    """The tokenizer from ``model.tokenizer``, the pretrained model dir or the text dir; a pad token is
    ensured (a causal tokenizer without one pads with its eos token)."""
    source = cfg.tokenizer or cfg.pretrained or text_dir
    if source is None:
        raise ValueError("no tokenizer: set model.tokenizer (a dir with tokenizer.json)")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {source} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def needs_text_dir(job: JobConfig) -> bool:
    """Whether :func:`build_model` starts from a CooBERT dir (converted on first use)."""
    return job.model.pretrained is None and not (
        job.spec.from_tokenizer and job.model.convert_from is None and job.model.text is None)


def build_model(
    job: JobConfig,
    answer_vocab: Sequence[str] = (),
    label_vocab: Sequence[str] = (),
) -> tuple[PreTrainedModel, object]:
    """(model, tokenizer) for ``job.task``; vocabularies size the VQA / classification heads."""
    cfg, spec = job.model, job.spec
    cls = spec.model_class_object()
    if cfg.pretrained is not None:
        model = cls.from_pretrained(cfg.pretrained)
        return model, load_tokenizer(cfg, None)
    text_dir = resolve_text_dir(cfg) if needs_text_dir(job) else None
    tokenizer = load_tokenizer(cfg, text_dir)
    extra = merge_configs(cfg.config, spec.model_config(answer_vocab, label_vocab))  # the heads sized by the data
    if spec.needs_images:
        text = CooBertModel.from_pretrained(text_dir)
        if not cfg.pretrained_text:
            text = CooBertModel(text.config)
        model = cls.from_text_and_backbone(
            text, cfg.backbone, pretrained_backbone=cfg.pretrained_backbone,
            backbone_pretrained_file=cfg.backbone_pretrained_file,
            image_size=[cfg.image_size, cfg.image_size], **extra,
        )
        return model, tokenizer
    if text_dir is None:  # a causal LM from scratch: CooBertConfig fields from model.config
        config = CooBertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **extra)
        return cls(config), tokenizer
    if not cfg.pretrained_text:
        config = CooBertConfig.from_pretrained(text_dir, **extra)
        return cls(config), tokenizer
    return cls.from_pretrained(text_dir, **extra), tokenizer
