"""Load any model this package saves (``save_pretrained`` dir) with its tokenizer and task."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, PreTrainedModel

from . import models, text
from .models import VLCoAttnPreTrainedModel, VLCoAttnProcessor
from .tasks import get_task, task_names, task_of_model

log = logging.getLogger(__name__)

TASK_FILE = "vlcoattn_task.json"  # written next to the weights: the task of training
PROCESSOR_FILE = "processor_config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def model_class(model_dir: str | Path) -> type[PreTrainedModel]:
    """The class named in the dir's config.json ``architectures`` (ours or transformers')."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model dir {model_dir} does not exist or is not a directory")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"model dir {model_dir} has no config.json (not a save_pretrained dir)")
    if not any((model_dir / w).is_file() for w in WEIGHT_FILES):
        raise FileNotFoundError(f"model dir {model_dir} has no weights ({' or '.join(WEIGHT_FILES)})")
    config = AutoConfig.from_pretrained(model_dir)
    names = config.architectures or []
    for name in names:
        for module in (models, text, transformers):
            if hasattr(module, name):
                return getattr(module, name)
    raise ValueError(f"model dir {model_dir}: unknown architecture {names} (config.json 'architectures')")


def read_task_file(model_dir: str | Path) -> dict[str, Any]:
    """{"task"} written by the trainer ({} for dirs saved otherwise)."""
    path = Path(model_dir) / TASK_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_task_file(model_dir: str | Path, task: str) -> None:
    (Path(model_dir) / TASK_FILE).write_text(json.dumps({"task": task}))


def load_processor(model_dir: str | Path, model: PreTrainedModel) -> Any:
    """What prepares the model's inputs: the saved :class:`VLCoAttnProcessor` of a VLCoAttn model (built
    from the model's preprocessing + the dir's tokenizer when the dir has none), else the tokenizer."""
    if isinstance(model, VLCoAttnPreTrainedModel) and (Path(model_dir) / PROCESSOR_FILE).is_file():
        processor = AutoProcessor.from_pretrained(model_dir)
        if not isinstance(processor, VLCoAttnProcessor):
            raise ValueError(f"model dir {model_dir}: {PROCESSOR_FILE} holds a {type(processor).__name__}")
        return processor
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return VLCoAttnProcessor.for_model(model, tokenizer) if isinstance(model, VLCoAttnPreTrainedModel) else tokenizer


def load_model_dir(
    model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, Any, str]:
    """(model in eval mode, processor (see :func:`load_processor`), task) from a save_pretrained dir."""
    cls = model_class(model_dir)
    model = cls.from_pretrained(model_dir, dtype=dtype) if dtype is not None else cls.from_pretrained(model_dir)
    processor = load_processor(model_dir, model)
    return model.to(device).eval(), processor, saved_task(model_dir, cls)


def saved_task(model_dir: str | Path, cls: type[PreTrainedModel]) -> str:
    """The task the dir's task file names, when the class has its heads (a multitask model trained on VQA
    alone says ``vqa``); else the class's own task. A task file the class cannot serve is one left by an
    earlier model saved into the same dir: the weights are the truth, and a warning names the file."""
    saved = read_task_file(model_dir).get("task")
    own = task_of_model(cls)
    fits = saved in task_names() and own is not None and set(get_task(saved).sample_tasks) <= set(own.sample_tasks)
    if saved and own and not fits:
        log.warning("model dir %s: %s says task %r, which %s cannot do (left by an earlier model?); using %r",
                    model_dir, TASK_FILE, saved, cls.__name__, own.name)
        saved = None
    if not (saved or own):
        raise ValueError(f"model dir {model_dir}: cannot tell the task of {cls.__name__}")
    return saved or own.name
