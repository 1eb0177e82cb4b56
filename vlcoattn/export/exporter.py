"""Export a saved model dir to ONNX: ``model.onnx``, its processor (or tokenizer), ``export.json`` and the
torch-free runner, in one folder that runs with onnxruntime alone.

torch's exporter (``torch.onnx.export(dynamo=True)``: ``torch.export`` traces the model, onnxscript
writes the graph) traces :class:`ExportModule`, the model behind a signature of tensors in, a flat
tuple of named outputs out. The batch size and the text length are dynamic; the image size is the
processor's canvas (every image is letterboxed to it). The trace runs on inputs the saved processor
prepares (two texts of different lengths, so padding is in the graph), and the written model is
checked against eager PyTorch on them with onnxruntime before the export returns.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PreTrainedModel

from ..data.read.pipeline import TEXT_PAD_MULTIPLE, tokenize
from ..loading import load_model_dir, load_processor, model_class
from ..models import VLCoAttnPreTrainedModel, VLCoAttnProcessor
from ..tasks import get_task, task_of_model
from ..text import CooBertModel

__all__ = [
    "EXPORT_FILE", "ONNX_FILE", "OUTPUTS", "RUNTIME_FILE", "TOLERANCE", "ExportModule", "ExportReport",
    "export_onnx", "output_field", "require_onnx",
]

ONNX_FILE = "model.onnx"
EXPORT_FILE = "export.json"  # what the runner reads: task, inputs / outputs, preprocessing, label names
RUNTIME_FILE = "vlcoattn_runtime.py"  # runtime.py, copied beside the model
TOLERANCE = 1e-4  # max |onnxruntime - eager| of every output on the trace inputs
ENCODER_TASK = "encoder"  # what export.json says of a bare CooBertModel (no registered task)
EXAMPLE_TEXTS = ("what is on the table?", "the small red cup to the left of the large white plate on the table")

# every output a model may give, in export order: name -> what it is. Per-layer outputs are the last layer's.
OUTPUTS: dict[str, str] = {
    "logits": "(B, num_answers) answer logits (VQA) or (B, num_labels) class logits (classification)",
    "pred_boxes": "(B, 4) box, normalized (cx, cy, w, h) on the letterboxed canvas",
    "heatmaps": "(B, T, H, W) each token's head-averaged Gaussian prior on the last feature level (sums to 1)",
    "reference_centers": "(B, T, 2) each token's reference center, normalized (x, y) on the canvas (first layer)",
    "centers": "(B, T, N_h, 2) each token's per-head Gaussian centers, normalized (x, y) (last fusion layer)",
    "scales": "(B, T, N_h, 2) each token's per-head Gaussian precisions s (x, y) (last fusion layer)",
    "attended_centers": "(B, T, N_h, 2) where each head's attention looked, normalized (x, y) (last fusion layer)",
    "last_hidden_state": "(B, T, d) the text encoder's last hidden state",
    "pooler_output": "(B, d) the pooled [CLS] state",
}
LAYER_OUTPUTS = ("centers", "scales", "attended_centers")


def require_onnx() -> None:
    """ImportError naming the extra when onnx, onnxscript or onnxruntime is missing."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'vlcoattn[onnx]'")


def output_field(outputs: Any, name: str) -> torch.Tensor | None:
    """Output ``name`` of a model's output (the last layer's for the per-layer :data:`LAYER_OUTPUTS`)."""
    value = getattr(outputs, name, None)
    if name in LAYER_OUTPUTS and value is not None:
        value = value[-1]
    return value if isinstance(value, torch.Tensor) else None


class ExportModule(nn.Module):
    """The model as the exporter traces it: named tensors in, the named outputs as a flat tuple out."""

    def __init__(self, model: PreTrainedModel, output_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.output_names = list(output_names)
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                pixel_values: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        images = {"pixel_values": pixel_values} if pixel_values is not None else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         **images, return_dict=True)
        return tuple(output_field(out, name) for name in self.output_names)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how close onnxruntime came to eager PyTorch."""

    out_dir: Path
    task: str
    model_class: str
    inputs: list[str]
    outputs: list[str]
    max_abs_diff: dict[str, float]  # per output, onnxruntime vs eager on the trace inputs

    def lines(self) -> list[str]:
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in self.max_abs_diff.items())
        return [f"task {self.task} ({self.model_class}); inputs {', '.join(self.inputs)}",
                f"max |onnxruntime - torch| on the processor's example batch: {diffs} (tolerance {TOLERANCE:g})"]


def load_for_export(model_dir: str | Path) -> tuple[PreTrainedModel, Any, str]:
    """(model in eval mode, processor or tokenizer, task) of a dir :func:`export_onnx` can export."""
    cls = model_class(model_dir)
    if cls is CooBertModel:
        model = CooBertModel.from_pretrained(model_dir).eval()
        return model, load_processor(model_dir, model), ENCODER_TASK
    spec = task_of_model(cls)
    if spec is None or cls.can_generate():  # a generating LM decodes step by step: not one forward graph
        names = ["VLCoAttnForQuestionAnswering", "VLCoAttnForGrounding", "VLCoAttnForMultitask",
                 "CooBertForSequenceClassification", "CooBertModel"]
        raise ValueError(f"model dir {model_dir}: cannot export a {cls.__name__}; export takes {', '.join(names)}")
    if extra := getattr(cls, "extra_inputs", ()):  # e.g. the phrase task's phrase_tokens
        raise ValueError(f"model dir {model_dir}: cannot export a {cls.__name__} (task {spec.name!r}): its input(s) "
                         f"{', '.join(extra)} are not exported yet; serve it with Predictor or its pipeline")
    return load_model_dir(model_dir)


def max_positions(model: PreTrainedModel) -> int:
    """The longest text the model's position embeddings take."""
    return int(getattr(model.config, "text_config", model.config).max_position_embeddings)


def max_text_len(model: PreTrainedModel, tokenizer: Any) -> int:
    """The text length the predictor cuts at: the tokenizer's, never past the model's positions."""
    return min(int(tokenizer.model_max_length), max_positions(model))


def example_inputs(model: PreTrainedModel, processor: Any) -> dict[str, torch.Tensor]:
    """A batch of two the processor prepares: texts of different lengths (the first padded) and, for
    image-text models, two images of other aspect ratios than the canvas."""
    vision = isinstance(processor, VLCoAttnProcessor)
    tokenizer = processor.tokenizer if vision else processor
    inputs = tokenize(tokenizer, list(EXAMPLE_TEXTS))
    if vision:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((48, 80), (90, 40))]
        inputs["pixel_values"] = processor.image_processor(images)["pixel_values"]
    return inputs


def _trace(module: ExportModule, inputs: dict[str, torch.Tensor], opset: int | None) -> Any:
    """``torch.onnx.export`` with a dynamic batch and text length. SDPA is pinned to its math backend while
    tracing: the CPU flash kernel's output strides make the exporter's decomposition fail on the
    reshape that follows attention, and both backends compute the same softmax."""
    batch, text = torch.export.Dim("batch", min=1), torch.export.Dim("text", min=1, max=max_positions(module.model))
    shapes = {name: {0: batch, 1: text} for name in ("input_ids", "attention_mask", "token_type_ids")}
    if "pixel_values" in inputs:
        shapes["pixel_values"] = {0: batch}
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="# The axis name")  # one name for the axis all inputs share
        return torch.onnx.export(
            module, (), kwargs=inputs, dynamo=True, input_names=list(inputs), output_names=module.output_names,
            dynamic_shapes=shapes, opset_version=opset, verbose=False,
        )


def check_parity(session: Any, expected: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max |onnxruntime - eager| per output; RuntimeError above :data:`TOLERANCE` (an exporter bug)."""
    names = list(expected)
    got = session.run(names, {k: v.numpy() for k, v in inputs.items()})
    diffs = {n: float(np.abs(g - expected[n].numpy()).max()) for n, g in zip(names, got)}
    bad = {n: d for n, d in diffs.items() if not d <= TOLERANCE}
    if bad:
        raise RuntimeError(f"onnxruntime differs from torch by more than {TOLERANCE:g}: {bad}")
    return diffs


def text_settings(model: PreTrainedModel, processor: Any, tokenizer_file: str) -> dict[str, Any]:
    """How the runner tokenizes: as the predictor does (truncation at :func:`max_text_len`; image-text
    models pad to a multiple of 8 as the processor does, text models to the longest text)."""
    vision = isinstance(processor, VLCoAttnProcessor)
    tok = processor.tokenizer if vision else processor
    if tok.pad_token is None:
        raise ValueError(f"the tokenizer of {type(model).__name__} has no pad token (nor an end token to pad with)")
    return {
        "tokenizer_file": tokenizer_file, "max_length": max_text_len(model, tok),
        "pad_to_multiple_of": TEXT_PAD_MULTIPLE if vision else None, "padding_side": tok.padding_side,
        "truncation_side": tok.truncation_side, "pad_token": tok.pad_token, "pad_id": tok.pad_token_id,
        "pad_type_id": tok.pad_token_type_id,
    }


def image_settings(processor: VLCoAttnProcessor) -> dict[str, Any]:
    """How the runner prepares images: the image processor's canvas, decoding limits and letterbox."""
    ip = processor.image_processor
    transform = ip.transform()
    return {
        "height": transform.size[0], "width": transform.size[1], "mean": ip.image_mean, "std": ip.image_std,
        "fill": list(transform.fill), "max_pixels": ip.max_pixels, "fast_decode": ip.fast_decode,
        "reducing_gap": transform.reducing_gap,
    }


def head_settings(model: PreTrainedModel) -> dict[str, Any]:
    """The names behind the logits and how they become probabilities (as the predictors do)."""
    config = model.config
    if isinstance(model, VLCoAttnPreTrainedModel):
        heads = config.heads_config
        if not getattr(model, "has_answers", False):
            return {}
        return {"answers": {"vocab": list(heads.answer_vocab),
                            "probability": "sigmoid" if heads.answer_loss == "bce" else "softmax"}}
    if isinstance(model, CooBertModel):
        return {}
    regression = config.problem_type == "regression" or (config.problem_type is None and config.num_labels == 1)
    multi = config.problem_type == "multi_label_classification"
    return {"labels": {"id2label": {str(i): name for i, name in config.id2label.items()},
                       "probability": "none" if regression else "sigmoid" if multi else "softmax"}}


def _signature(args: list[Any], descriptions: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Name, dtype and shape (symbolic axes by name) of the session's inputs or outputs."""
    return [{"name": a.name, "dtype": a.type.removeprefix("tensor(").rstrip(")"), "shape": a.shape,
             **({"description": descriptions[a.name]} if descriptions else {})} for a in args]


def export_onnx(model_dir: str | Path, out_dir: str | Path, *, opset: int | None = None) -> ExportReport:
    """Export the model of ``model_dir`` (VQA, grounding, multitask, text classification, or a bare CooBERT
    encoder) into ``out_dir``: :data:`ONNX_FILE`, the processor (or tokenizer) files, :data:`EXPORT_FILE`
    and the runner (:data:`RUNTIME_FILE`). Raises ValueError / FileNotFoundError for a dir it cannot
    export, ImportError without the ``onnx`` extra, RuntimeError if onnxruntime misses eager PyTorch."""
    require_onnx()
    import onnxruntime

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists() and out_dir.resolve() == model_dir.resolve():
        raise ValueError(f"the output dir {out_dir} is the model dir: give another one")
    model, processor, task = load_for_export(model_dir)
    inputs = example_inputs(model, processor)
    with torch.no_grad():
        eager = model(**inputs, return_dict=True)
    expected = {n: output_field(eager, n) for n in OUTPUTS if output_field(eager, n) is not None}
    text = text_settings(model, processor, "tokenizer.json")
    program = _trace(ExportModule(model, list(expected)), inputs, opset)

    out_dir.mkdir(parents=True, exist_ok=True)
    program.save(str(out_dir / ONNX_FILE))
    processor.save_pretrained(out_dir)
    if not (out_dir / text["tokenizer_file"]).is_file():
        raise ValueError(f"model dir {model_dir}: the runner needs a fast tokenizer (tokenizer.json)")
    shutil.copyfile(Path(__file__).with_name("runtime.py"), out_dir / RUNTIME_FILE)
    session = onnxruntime.InferenceSession(str(out_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    diffs = check_parity(session, expected, inputs)
    description = {
        "format": "vlcoattn-onnx", "format_version": 1, "task": task, "model_class": type(model).__name__,
        "predicts": list(get_task(task).sample_tasks) if task != ENCODER_TASK else [], "onnx_file": ONNX_FILE,
        "opset": program.model.opset_imports[""], "inputs": _signature(session.get_inputs()),
        "outputs": _signature(session.get_outputs(), OUTPUTS), "text": text,
        **({"image": image_settings(processor)} if "pixel_values" in inputs else {}), **head_settings(model),
    }
    (out_dir / EXPORT_FILE).write_text(json.dumps(description, indent=2, ensure_ascii=False) + "\n")
    return ExportReport(out_dir, task, type(model).__name__, list(inputs), list(expected), diffs)
