"""Load a saved model once, then predict many image-text pairs (or texts).

:meth:`Predictor.from_pretrained` is the factory: it loads a ``save_pretrained`` dir and returns the
predictor of its task, a :class:`VisionPredictor` (VQA / grounding / both), a
:class:`ClassifierPredictor` or a :class:`GeneratorPredictor`. Preprocessing is the model's saved
:class:`~vlcoattn.models.VLCoAttnProcessor`, the one training and evaluation used (``decode_image``
with its limits, letterbox at the model's size, ``(x / 255 - mean) / std``, the trained text length),
and boxes go back to pixels of the original image (after EXIF orientation) through its
``post_process_grounding``. The ``vlcoattn-vqa`` / ``vlcoattn-grounding`` pipelines
(:mod:`vlcoattn.infer.pipelines`) use the same processor and the same answer and box post-processing.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import PreTrainedModel

from ..data.image import ImageDecodeError
from ..data.read.pipeline import tokenize
from ..loading import load_model_dir, model_class
from ..models import VLCoAttnPreTrainedModel, VLCoAttnProcessor
from ..tasks import canonical_name, get_task, task_names, task_of_model
from ..utils.cli import USER_ERRORS

__all__ = [
    "DTYPES", "TASKS", "ClassifierPredictor", "GeneratorPredictor", "ImageInput", "PhrasePredictor", "Predictor",
    "VisionPredictor",
    "canvas_to_pixels", "top_answers",
]

LOG = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# what --task may say: auto (the model's own task), a registered task, or an alias (classify = cls)
TASKS = ("auto", *task_names(), *(alias for name in task_names() for alias in get_task(name).aliases))
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")

ImageInput = str | os.PathLike | bytes


def _check_tokenizer_files(model_dir: Path) -> None:
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"model dir {model_dir} has no tokenizer ({', '.join(TOKENIZER_FILES[:3])}); save it with the model"
        )


def _check_text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"empty {what}: nothing to predict from")
    return text


def canvas_to_pixels(points: torch.Tensor, letterbox: torch.Tensor) -> torch.Tensor:
    """(B, ..., 2) points normalized to the letterboxed canvas -> pixels of the original images
    (not clipped); ``letterbox`` (B, 8) as in the batch (see :func:`vlcoattn.data.invert_boxes`)."""
    lb = letterbox.to(torch.float64).view(letterbox.shape[0], *([1] * (points.dim() - 2)), 8)
    sx, sy, px, py, _, _, cw, ch = lb.unbind(-1)
    p = points.detach().to("cpu", torch.float64)
    return torch.stack([(p[..., 0] * cw - px) / sx, (p[..., 1] * ch - py) / sy], dim=-1)


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def top_answers(probs: torch.Tensor, k: int, names: Sequence[str] | dict, key: str = "answer",
                score: str = "probability") -> list[dict[str, Any]]:
    """The ``k`` most probable entries of ``probs`` (N,) as ``[{key: name, score: p}, ...]``."""
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    values, indices = probs.float().topk(min(k, probs.numel()))
    return [{key: names[i], score: round(v, 6)} for v, i in zip(values.tolist(), indices.tolist())]


def token_words(tokenizer: Any, text: str, max_len: int) -> dict[str, Any]:
    """Token count (before truncation; a warning when over ``max_len``) and each kept token's word."""
    enc = tokenizer(text, return_offsets_mapping=tokenizer.is_fast)
    num_tokens = len(enc["input_ids"])
    truncated = num_tokens > max_len
    if truncated:
        LOG.warning("text has %d tokens, more than the model maximum of %d: truncated", num_tokens, max_len)
        enc = tokenizer(text, truncation=True, max_length=max_len, return_offsets_mapping=tokenizer.is_fast)
    if not tokenizer.is_fast:  # no offsets: tokens are not mapped to words
        word_ids: list[int | None] = [None] * len(enc["input_ids"])
        return {"word_ids": word_ids, "words": word_ids, "truncated": truncated, "num_tokens": num_tokens}
    word_ids = enc.word_ids()
    spans: dict[int, tuple[int, int]] = {}  # word -> (first, last) character of its pieces
    for w, (a, b) in zip(word_ids, enc["offset_mapping"]):
        if w is not None:
            lo, hi = spans.get(w, (a, b))
            spans[w] = (min(lo, a), max(hi, b))
    words = [text[spans[w][0] : spans[w][1]] if w is not None else None for w in word_ids]
    return {"word_ids": word_ids, "words": words, "truncated": truncated, "num_tokens": num_tokens}


def read_image_input(image: ImageInput) -> tuple[bytes, str]:
    """(encoded bytes, a name for messages) of a path or bytes; one clear error for a missing, empty or
    directory path."""
    if isinstance(image, bytes):
        data, name = image, "<image bytes>"
    else:
        path = Path(image)
        name = str(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a directory, not an image file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"image not found: {path}") from None
    if not data:
        raise ValueError(f"{name}: empty file (0 bytes), not an image")
    return data, name


def prior_summary(model: VLCoAttnPreTrainedModel, base: Any, letterbox: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """Reference / per-head / attended centers and Gaussian widths in original-image pixels (None
    without a prior), from the base model's output ``base``.

    Centers are normalized to the letterboxed canvas; on the last feature level (H x W cells) the
    prior is exp(-((x - c_x)^2 s_x^2 + (y - c_y)^2 s_y^2) / β) in cell units (s times the level's
    scale multiplier), a Gaussian of standard deviation sqrt(β / 2) / |s| cells, here in pixels.
    """
    if base.reference_centers is None or not base.centers:
        return None
    H, W = base.grid_sizes[-1]
    mult = float(model.base_model.level_scale_multipliers[-1])
    beta = float(model.config.coattention_config.beta)
    scales = base.scales[-1].detach().to("cpu", torch.float64)  # (B, T, N_h, 2)
    sigma_cells = math.sqrt(beta / 2) / (scales * mult).abs().clamp_min(1e-6)
    lb = letterbox.to(torch.float64)[:, None, None, :]  # (B, 1, 1, 8)
    sx, sy, _, _, _, _, cw, ch = lb.unbind(-1)
    pixels_per_cell = torch.stack([cw / W / sx, ch / H / sy], dim=-1)  # (B, 1, 1, 2)
    return {
        "center": canvas_to_pixels(base.reference_centers, letterbox),  # (B, T, 2)
        "attended": canvas_to_pixels(base.attended_centers[-1].mean(dim=2), letterbox),  # (B, T, 2)
        "head_centers": canvas_to_pixels(base.centers[-1], letterbox),  # (B, T, N_h, 2)
        "scales": scales,
        "sigma": sigma_cells * pixels_per_cell,  # (B, T, N_h, 2)
    }


def forward_with_base(model: VLCoAttnPreTrainedModel, inputs: dict[str, torch.Tensor]) -> tuple[Any, Any]:
    """(task output, the base model's full output: grid sizes, centers, scales) of one forward."""
    captured: list[Any] = []
    hook = model.base_model.register_forward_hook(lambda _m, _a, out: captured.append(out))
    try:
        out = model(**inputs, return_dict=True)
    finally:
        hook.remove()
    return out, captured[-1]


class Predictor:
    """A loaded model + its processor (or tokenizer); :meth:`from_pretrained` returns the subclass of
    its task. Every prediction is a JSON-ready dict."""

    def __init__(self, model: PreTrainedModel, processor: Any, *, task: str | None = None,
                 name: str = "model") -> None:
        """``processor``: a :class:`VLCoAttnProcessor` for VLCoAttn models, the tokenizer for text-only
        ones (its ``model_max_length`` is the text length). ``task``: the registered task it was trained
        on (``vqa``, ``ground``, ``vqa+ground``, ``cls``, ``lm``; default: the task of the model class)."""
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer if isinstance(processor, VLCoAttnProcessor) else processor
        self.name = name
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        spec = get_task(task) if task else task_of_model(type(model))
        if spec is None:
            classes = ", ".join(get_task(t).model_class.rpartition(":")[2] for t in task_names())
            raise ValueError(f"{name}: a {type(model).__name__} has no inference task (supported: {classes})")
        self.spec = spec
        self.tasks = spec.sample_tasks  # what --task may ask of it (besides its own name)
        config = getattr(model.config, "text_config", model.config)
        self.max_text_len = min(int(self.tokenizer.model_max_length), int(config.max_position_embeddings))
        self.tokenizer.model_max_length = self.max_text_len  # never past the model's positions

    @staticmethod
    def for_model(model: PreTrainedModel, processor: Any, **kwargs: Any) -> Predictor:
        """The predictor of ``model``'s task (its spec's ``predictor``)."""
        spec = get_task(kwargs["task"]) if kwargs.get("task") else task_of_model(type(model))
        return (spec.predictor_class() if spec is not None else Predictor)(model, processor, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        max_pixels: int | None = None,
        fast_decode: bool | None = None,
    ) -> Predictor:
        """Load a ``save_pretrained`` directory (model + processor or tokenizer) of any model class we ship
        and return the predictor of its task.

        dtype: ``float32`` | ``bfloat16`` | ``float16`` (or a torch dtype). ``max_pixels`` /
        ``fast_decode`` override the saved image processor's. A missing, incomplete or unreadable
        directory raises one clear FileNotFoundError / ValueError.
        """
        model_dir = Path(model_dir)
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
            dtype = DTYPES[dtype]
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine")
        try:
            model_class(model_dir)  # config and weights present, architecture known
            _check_tokenizer_files(model_dir)
            model, processor, task = load_model_dir(model_dir, device, dtype)
        except (FileNotFoundError, NotADirectoryError):
            raise
        except (OSError, RuntimeError, SafetensorError) as e:
            raise ValueError(f"model dir {model_dir}: cannot load the model: {e}") from e
        image_processor = getattr(processor, "image_processor", None)
        for key, value in (("max_pixels", max_pixels), ("fast_decode", fast_decode)):
            if value is not None and image_processor is not None:
                setattr(image_processor, key, value)
        return cls.for_model(model, processor, task=task, name=str(model_dir))

    def parse_row(self, row: dict[str, Any], n: int, root: Path, head: dict[str, Any]) -> Any:
        """The input of one JSONL row (line ``n``; ``head`` gets the fields to echo); ValueError names
        what is missing. Here a ``{"text"}`` row, what classification reads; subclasses read more."""
        text = row.get("text")
        if not isinstance(text, str):
            raise ValueError(f"line {n}: needs a string 'text'")
        return text

    def resolve_task(self, task: str = "auto") -> str:
        """The registered name of ``task``: ``auto`` -> the model's own task (``vqa``, ``ground``,
        ``vqa+ground``, ``cls``, ``lm``), an alias -> its task (``classify`` -> ``cls``); a task the model
        cannot do is a ValueError naming the ones it can."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
        if task == "auto":
            return self.spec.name
        name = canonical_name(task)
        if name != self.spec.name and name not in self.tasks:
            can = " / ".join(n for unit in self.spec.units for n in (unit.name, *unit.aliases))
            raise ValueError(f"--task {task} does not fit {self.name}: a {type(self.model).__name__} supports --task {can}")
        return name

    # what a predictor of another task was asked: one clear error naming what this model does
    def predict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ValueError(f"{self.name} is a text-only {type(self.model).__name__}: it takes no image")

    predict_batch = predict

    def classify(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.resolve_task("classify")
        raise ValueError(f"a {type(self).__name__} cannot classify: build predictors with Predictor.from_pretrained")

    classify_batch = classify

    def generate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.resolve_task("generate")
        raise ValueError(f"a {type(self).__name__} cannot generate: build predictors with Predictor.from_pretrained")

    def _each(self, items: Sequence[Any], prepare, run) -> list[dict[str, Any]]:
        """``run`` over the items ``prepare`` accepts, in one batch; a rejected item gives
        ``{"error": ...}`` in its place."""
        results: list[dict[str, Any] | None] = []
        good = []
        for i, item in enumerate(items):
            try:
                good.append(prepare(item, i))
                results.append(None)
            except USER_ERRORS as e:
                results.append({"error": str(e)})
        done = iter(run(good) if good else ())
        return [r if r is not None else next(done) for r in results]


class VisionPredictor(Predictor):
    """VQA (top-k answers), grounding (a box in original pixels) or both, with every token's prior."""

    def parse_row(self, row: dict[str, Any], n: int, root: Path, head: dict[str, Any]) -> Any:
        """Image-text rows: ``{"image", "text"}``, relative paths from ``root``."""
        text = super().parse_row(row, n, root, head)
        image = row.get("image")
        if not isinstance(image, str) or not image:
            raise ValueError(f"line {n}: needs an 'image' path")
        head["image"] = image
        return root / image, text

    def predict_rows(self, inputs: list[Any], task: str, top_k: int, generate_kwargs: dict[str, Any]) -> list[dict]:
        """One result (or ``{"error"}``) per parsed row, batched where the task allows."""
        return self.predict_batch(inputs, task=task, top_k=top_k) if inputs else []

    @property
    def max_pixels(self) -> int:
        return self.processor.image_processor.max_pixels

    def predict(self, image: ImageInput, text: str, *, task: str = "auto", top_k: int = 5) -> dict[str, Any]:
        """One image (path or encoded bytes) + text -> answers / box / per-token priors (see docs/inference.md).

        Raises ValueError / FileNotFoundError (one clear line) for an unusable image or text.
        """
        task = self.resolve_task(task)
        return self._run([self._prepare((image, text), 0)], task, top_k)[0]

    def predict_batch(
        self, pairs: Sequence[tuple[ImageInput, str]], *, task: str = "auto", top_k: int = 5
    ) -> list[dict[str, Any]]:
        """Many pairs in one forward pass; a pair that cannot be read gives ``{"error": ...}`` in its
        place. Equal (to float tolerance) to calling :meth:`predict` on each pair."""
        task = self.resolve_task(task)
        return self._each(pairs, self._prepare, lambda samples: self._run(samples, task, top_k))

    def _prepare(self, pair: tuple[ImageInput, str], index: int) -> dict[str, Any]:
        """Decode + letterbox the image with the processor and check the text."""
        image, text = pair
        start = time.perf_counter()
        _check_text(text)
        data, name = read_image_input(image)
        try:
            pixels, letterbox = self.processor.image_processor.prepare(data)
        except ImageDecodeError as e:  # decode_image names the bytes "<N bytes>": name the file instead
            raise ValueError(str(e).replace(f"<{len(data)} bytes>", name, 1)) from None
        return {"text": text, "image": name, "pixels": pixels, "letterbox": letterbox,
                **token_words(self.tokenizer, text, self.max_text_len), "_preprocess_s": time.perf_counter() - start}

    @torch.inference_mode()
    def _run(self, samples: list[dict[str, Any]], task: str, top_k: int) -> list[dict[str, Any]]:
        start = time.perf_counter()
        image_processor = self.processor.image_processor
        enc = tokenize(self.tokenizer, [s["text"] for s in samples])  # what processor(text=...) does
        pixels = image_processor.normalize(torch.stack([s["pixels"] for s in samples]))
        letterbox = torch.stack([s["letterbox"] for s in samples])
        collate_s = (time.perf_counter() - start) / len(samples)
        start = time.perf_counter()
        extra = self._extra_inputs(samples)
        inputs = {k: v.to(self.device) for k, v in {**enc, **extra}.items()}
        out, base = forward_with_base(self.model, {**inputs, "pixel_values": pixels.to(self.device, self.dtype)})
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        forward_s = (time.perf_counter() - start) / len(samples)
        heads: list[dict[str, Any]] = [{} for _ in samples]  # each asked task's fields: answers, box
        extras = self._predict_extras(samples, extra)  # what the hooks of tasks with predict_inputs read
        for unit in get_task(task).units:
            if unit.predict_inputs and not extras:  # a multitask model asked without the phrases: no phrase boxes
                continue
            parts = unit.predict(self.model, out, image_processor, letterbox, top_k,
                                 **(extras if unit.predict_inputs else {}))
            for fields, part in zip(heads, parts):
                fields.update(part)
        priors = prior_summary(self.model, base, letterbox)
        results = []
        for b, sample in enumerate(samples):
            post_start = time.perf_counter()
            lb = sample["letterbox"].tolist()
            res: dict[str, Any] = {
                "task": task, "image": sample["image"], "image_size": [int(lb[4]), int(lb[5])], "text": sample["text"],
            }
            res.update(heads[b])
            res["tokens"] = self._tokens(b, sample, enc, priors)
            res["truncated"] = sample["truncated"]
            pre = sample["_preprocess_s"] + collate_s
            post = time.perf_counter() - post_start
            res["timing_ms"] = {
                "preprocess": _ms(pre), "model": _ms(forward_s), "postprocess": _ms(post),
                "total": _ms(pre + forward_s + post),
            }
            results.append(res)
        return results

    def _extra_inputs(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """forward() inputs beyond the text and the image (none here)."""
        return {}

    def _predict_extras(self, samples: list[dict[str, Any]], extra: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Keyword arguments of the task's ``predict`` hook beyond the model's output (none here)."""
        return {}

    def _tokens(
        self, b: int, sample: dict[str, Any], enc: dict[str, torch.Tensor], priors: dict[str, torch.Tensor] | None
    ) -> list[dict[str, Any]]:
        n = int(enc["attention_mask"][b].sum())
        ids = enc["input_ids"][b, :n].tolist()
        special = set(self.tokenizer.all_special_ids)
        tokens = []
        for t, (i, piece) in enumerate(zip(ids, self.tokenizer.convert_ids_to_tokens(ids))):
            item: dict[str, Any] = {
                "index": t, "token": piece, "special": i in special,
                "word": sample["words"][t], "word_index": sample["word_ids"][t],
            }
            if priors is not None:
                item["center"] = [round(v, 2) for v in priors["center"][b, t].tolist()]
                item["attended"] = [round(v, 2) for v in priors["attended"][b, t].tolist()]
                item["head_centers"] = [[round(v, 2) for v in c] for c in priors["head_centers"][b, t].tolist()]
                item["scales"] = [[round(v, 4) for v in s] for s in priors["scales"][b, t].tolist()]
                item["sigma"] = [[round(v, 2) for v in s] for s in priors["sigma"][b, t].tolist()]
            tokens.append(item)
        return tokens


class PhrasePredictor(VisionPredictor):
    """Phrase grounding: an image, a caption and its phrases -> a box and a score per phrase (see
    :data:`~vlcoattn.tasks.phrase.PHRASES_USAGE` for how phrases are given), with every token's prior. It
    also serves the multitask model with a phrase head: there the phrases are needed for ``task="phrase"``
    only; without them the model answers and grounds, and ``auto`` leaves the phrase boxes out."""

    def parse_row(self, row: dict[str, Any], n: int, root: Path, head: dict[str, Any]) -> Any:
        """``{"image", "text", "phrases"}`` rows; ``phrases`` as :meth:`predict` takes them (a data row's
        ``[{"span": [start, end], ...}]`` included), optional for a multitask model."""
        image, text = super().parse_row(row, n, root, head)
        if "phrases" not in row and self.needs_phrases(self.spec.name):
            raise ValueError(f"line {n}: task 'phrase' needs a 'phrases' list (substrings of the text or "
                             "[start, end] spans)")
        return image, text, row.get("phrases")

    @staticmethod
    def needs_phrases(task: str) -> bool:
        """Whether a prediction of ``task`` (a registered name) cannot go without the caption's phrases."""
        return "phrases" in get_task(task).predict_inputs

    def predict(self, image: ImageInput, text: str, *, phrases: Sequence[Any] | None = None, task: str = "auto",
                top_k: int = 5) -> dict[str, Any]:
        """One image + caption + its ``phrases`` -> ``phrases``: ``[{"text", "span", "box", "score",
        "token_indices"}]`` (box in original pixels; score in [0, 1], see docs/inference.md), and the tokens."""
        task = self.resolve_task(task)
        return self._run([self._prepare((image, text, phrases), 0, task)], task, top_k)[0]

    def predict_batch(self, triples: Sequence[tuple[ImageInput, str, Sequence[Any]]], *, task: str = "auto",
                      top_k: int = 5) -> list[dict[str, Any]]:
        """(image, caption, phrases) triples in one forward pass; a bad one gives ``{"error": ...}``."""
        task = self.resolve_task(task)
        return self._each(triples, lambda triple, i: self._prepare(triple, i, task),
                          lambda samples: self._run(samples, task, top_k))

    def _prepare(self, triple: tuple[ImageInput, str, Sequence[Any] | None], index: int,
                 task: str | None = None) -> dict[str, Any]:
        from ..tasks.phrase import phrase_token_mask, resolve_phrases

        if len(triple) != 3:
            raise ValueError("a phrase grounding input is (image, caption, phrases)")
        image, text, phrases = triple
        if phrases is None and not self.needs_phrases(task or self.spec.name):
            return super()._prepare((image, text), index)
        spans = resolve_phrases(_check_text(text), phrases if phrases is not None else [])
        phrase_token_mask(self.tokenizer, [text], [spans])  # a phrase past the text length: its error, here
        return {**super()._prepare((image, text), index), "spans": spans}

    def _extra_inputs(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from ..tasks.phrase import phrase_token_mask

        if not any("spans" in s for s in samples):
            return {}
        return {"phrase_tokens": phrase_token_mask(self.tokenizer, [s["text"] for s in samples],
                                                   [s.get("spans", []) for s in samples])}

    def _predict_extras(self, samples: list[dict[str, Any]], extra: dict[str, torch.Tensor]) -> dict[str, Any]:
        if "phrase_tokens" not in extra:
            return {}
        return {"phrase_tokens": extra["phrase_tokens"], "spans": [s.get("spans", []) for s in samples],
                "texts": [s["text"] for s in samples]}


class ClassifierPredictor(Predictor):
    """A CooBERT (or any) sequence classifier: label + probabilities (``config.id2label``)."""

    def classify(self, text: str, *, top_k: int = 5) -> dict[str, Any]:
        """Label + probabilities of one text; raises on an empty text."""
        return self._run([_check_text(text)], top_k)[0]

    def classify_batch(self, texts: Sequence[str], *, top_k: int = 5) -> list[dict[str, Any]]:
        """:meth:`classify` for many texts in one forward pass; a bad text gives ``{"error": ...}``."""
        return self._each(texts, lambda text, _i: _check_text(text), lambda good: self._run(good, top_k))

    def predict_rows(self, inputs: list[Any], task: str, top_k: int, generate_kwargs: dict[str, Any]) -> list[dict]:
        return self.classify_batch(inputs, top_k=top_k) if inputs else []

    def predict_text(self, text: str | None, prompt: str | None, top_k: int, generate_kwargs: dict[str, Any]) -> dict:
        """What ``tools/infer.py --text`` gives: the label of ``text``."""
        if text is None:
            raise ValueError("--task classify needs --text")
        return self.classify(text, top_k=top_k)

    @torch.inference_mode()
    def _run(self, texts: list[str], top_k: int) -> list[dict[str, Any]]:
        start = time.perf_counter()
        infos = [token_words(self.tokenizer, t, self.max_text_len) for t in texts]
        enc = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_text_len,
                             return_tensors="pt").to(self.device)
        logits = self.model(**enc, return_dict=True).logits.float().cpu()
        per_item = (time.perf_counter() - start) / len(texts)
        config = self.model.config
        results = []
        for text, info, row in zip(texts, infos, logits):
            res: dict[str, Any] = {"task": self.spec.name, "text": text}
            if config.problem_type == "regression" or (config.problem_type is None and config.num_labels == 1):
                res["value"] = [round(v, 6) for v in row.tolist()]
            else:
                multi = config.problem_type == "multi_label_classification"
                probs = row.sigmoid() if multi else row.softmax(-1)
                res["label"] = config.id2label[int(probs.argmax())]
                res["probabilities"] = top_answers(probs, top_k, config.id2label, key="label")
            res.update(truncated=info["truncated"], timing_ms={"total": _ms(per_item)})
            results.append(res)
        return results


class GeneratorPredictor(Predictor):
    """A causal LM (CooBERT or any): continue a prompt with HF ``generate()``."""

    def parse_row(self, row: dict[str, Any], n: int, root: Path, head: dict[str, Any]) -> Any:
        prompt = row.get("prompt", row.get("text"))
        if not isinstance(prompt, str):
            raise ValueError(f"line {n}: needs a string 'prompt' (or 'text')")
        return prompt

    def predict_rows(self, inputs: list[Any], task: str, top_k: int, generate_kwargs: dict[str, Any]) -> list[dict]:
        """One prompt at a time (generation does not batch here); a bad prompt gives ``{"error"}``."""
        done = []
        for prompt in inputs:
            try:
                done.append(self.generate(prompt, **generate_kwargs))
            except USER_ERRORS as e:
                done.append({"error": str(e)})
        return done

    def predict_text(self, text: str | None, prompt: str | None, top_k: int, generate_kwargs: dict[str, Any]) -> dict:
        """What ``tools/infer.py --prompt`` (or ``--text``) gives: the continuation."""
        return self.generate(prompt if prompt is not None else text, **generate_kwargs)

    @torch.inference_mode()
    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 20,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        num_beams: int = 1,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Continue ``prompt`` with HF ``generate()``: greedy by default, beam search with ``num_beams``,
        sampling when ``temperature`` (> 0), ``top_p`` or ``top_k`` is given (``seed`` fixes it)."""
        _check_text(prompt, "prompt")
        if max_new_tokens < 1 or num_beams < 1:
            raise ValueError("max_new_tokens and num_beams must be >= 1")
        if max_new_tokens >= self.max_text_len:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt: the model "
                             f"holds {self.max_text_len} positions")
        tok = self.tokenizer
        ids = tok(prompt)["input_ids"]
        end = {tok.sep_token_id, tok.eos_token_id} - {None}
        if len(ids) > 1 and ids[-1] in end:  # BERT-style tokenizers close the text with [SEP]: continue it instead
            ids = ids[:-1]
        room = self.max_text_len - max_new_tokens
        truncated = len(ids) > room
        if truncated:  # keep the end of the prompt (and a leading [CLS])
            LOG.warning("prompt has %d tokens, more than the %d that fit with max_new_tokens=%d: "
                        "keeping its last tokens", len(ids), room, max_new_tokens)
            head = ids[:1] if ids[0] == tok.cls_token_id else []
            ids = head + ids[len(ids) - room + len(head):]
        sample = bool(temperature) or top_p is not None or top_k is not None
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=sample)
        if sample:
            kwargs.update({k: v for k, v in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k))
                           if v is not None})
        eos = self.model.generation_config.eos_token_id
        if eos is None:  # BERT-style tokenizers end a text with [SEP]
            eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        kwargs.update(eos_token_id=eos, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos)
        if seed is not None:
            torch.manual_seed(seed)
        input_ids = torch.tensor([ids], device=self.device)
        start = time.perf_counter()
        out = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        elapsed = time.perf_counter() - start
        new = out[0, len(ids):].tolist()
        return {
            "task": self.spec.name,
            "prompt": prompt,
            "completion": tok.decode(new, skip_special_tokens=True),
            "tokens": tok.convert_ids_to_tokens(new),
            "token_ids": new,
            "truncated": truncated,
            "timing_ms": {"total": _ms(elapsed), "per_token": _ms(elapsed / max(len(new), 1))},
        }
