"""Build the model and tokenizer a job trains, from the config and the data's vocabularies.

One class per task (``TASK_MODELS``); the model is either loaded whole (``model.pretrained``) or
assembled from pretrained parts: a CooBERT text encoder (a converted BERT dir, converted on first use
and cached) and a timm backbone with its local pretrained weights.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedModel

from ..assets import asset_names, asset_path
from ..loading import TASK_MODELS
from ..text import CooBertConfig, CooBertModel
from ..vision.weights import cache_dir
from .job_config import JobConfig, ModelConfig


def resolve_text_dir(cfg: ModelConfig, barrier: Callable[[], None] = lambda: None, rank: int = 0) -> Path:
    """The CooBERT dir: ``cfg.text`` if it exists, else ``convert_from`` converted at ``shared_key_dim``
    into ``cfg.text`` (or the cache); rank 0 converts, written atomically, the others wait."""
    if cfg.text is not None and (Path(cfg.text) / "config.json").is_file():
        return Path(cfg.text)
    if cfg.convert_from is None:
        raise FileNotFoundError(f"model.text {cfg.text} is not a model dir and model.convert_from is not set")
    src = asset_path(cfg.convert_from) if cfg.convert_from in asset_names() else Path(cfg.convert_from)
    k = cfg.shared_key_dim
    dst = Path(cfg.text) if cfg.text else cache_dir() / f"coobert-{Path(src).name}-k{k or 'full'}"
    if rank == 0 and not (dst / "config.json").is_file():
        from ..text.convert import convert_bert_dir  # tensorly is needed only here

        tmp = dst.with_name(f".tmp-{dst.name}-{os.getpid()}")
        convert_bert_dir(src, tmp, k)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
    barrier()
    return dst


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


def build_model(
    job: JobConfig,
    answer_vocab: Sequence[str] = (),
    label_vocab: Sequence[str] = (),
    barrier: Callable[[], None] = lambda: None,
    rank: int = 0,
) -> tuple[PreTrainedModel, object]:
    """(model, tokenizer) for ``job.task``; vocabularies size the VQA / classification heads."""
    cfg, cls = job.model, TASK_MODELS[job.task]
    if cfg.pretrained is not None:
        model = cls.from_pretrained(cfg.pretrained)
        return model, load_tokenizer(cfg, None)
    text_dir = None if (job.task == "lm" and cfg.convert_from is None and cfg.text is None) else \
        resolve_text_dir(cfg, barrier, rank)
    tokenizer = load_tokenizer(cfg, text_dir)
    extra = dict(cfg.config)
    if job.is_vision:
        if job.task != "ground":
            if not answer_vocab:
                raise ValueError("the training data has no answer vocabulary (dataset.json answer_vocab)")
            extra["answer_vocab"] = list(answer_vocab)
        text = CooBertModel.from_pretrained(text_dir)
        if not cfg.pretrained_text:
            text = CooBertModel(text.config)
        model = cls.from_text_and_backbone(
            text, cfg.backbone, pretrained_backbone=cfg.pretrained_backbone,
            backbone_pretrained_file=cfg.backbone_pretrained_file,
            image_size=[cfg.image_size, cfg.image_size], **extra,
        )
        return model, tokenizer
    if job.task == "cls":
        if len(label_vocab) < 2:
            raise ValueError(f"classification needs at least 2 labels in the data, got {list(label_vocab)}")
        extra.update(num_labels=len(label_vocab), id2label=dict(enumerate(label_vocab)),
                     label2id={label: i for i, label in enumerate(label_vocab)})
    if text_dir is None:  # a causal LM from scratch: CooBertConfig fields from model.config
        config = CooBertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **extra)
        return cls(config), tokenizer
    if not cfg.pretrained_text:
        config = CooBertConfig.from_pretrained(text_dir, **extra)
        return cls(config), tokenizer
    return cls.from_pretrained(text_dir, **extra), tokenizer
