"""Load a saved model once, then predict many image-text pairs (or texts).

Preprocessing is the training pipeline's own, not a copy of it: images go through the loader's
:class:`~vlcoattn.data.SampleDecoder` (``decode_image``: EXIF orientation, CMYK / 16-bit / palette /
alpha / grayscale to RGB, ``max_pixels`` bomb check; then the letterbox :class:`ImageTransform` at
``model.preprocessing()["image_size"]``, fill = round(255 * mean)) and the batch through its
:class:`~vlcoattn.data.Collator` (tokenizer saved with the model, ``max_position_embeddings`` tokens,
``(x / 255 - mean) / std``). Outputs are mapped back to pixels of the original image (after EXIF
orientation) with the letterbox parameters the decoder recorded.
"""

from __future__ import annotations

import json
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

from ..data.image import DEFAULT_MAX_PIXELS
from ..data.pipeline import build_decoder_and_collator
from ..data.schema import SampleError
from ..data.transforms import invert_boxes
from ..loading import TASK_OF_CLASS, load_model_dir, model_class, read_task_file
from ..models import VLCoAttnPreTrainedModel
from ..utils.cli import USER_ERRORS

__all__ = ["DTYPES", "TASKS", "ImageInput", "Predictor", "canvas_to_pixels"]

LOG = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TASKS = ("auto", "vqa", "ground", "classify", "generate")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")
INFER_TASK = {"vqa": "vqa", "ground": "ground", "cls": "classify", "lm": "generate"}  # training task -> ours

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


class Predictor:
    """One loaded model (VLCoAttn VQA / grounding / multitask, CooBERT classifier or causal LM) + its
    tokenizer and preprocessing.

    ``predict`` / ``predict_batch`` (image + text), ``classify`` / ``classify_batch`` (text) and
    ``generate`` (prompt) return JSON-ready dicts. Build with :meth:`from_pretrained`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        task: str | None = None,
        max_text_len: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fast_decode: bool = True,
        name: str = "model",
    ) -> None:
        """``task``: the training task (``vqa``, ``ground``, ``vqa+ground``, ``cls``, ``lm``; default from
        the model class). ``max_text_len``: tokens per text (default ``max_position_embeddings``).
        ``fast_decode`` must be what the training loader used (``build_loader``'s default: True)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_pixels = max_pixels
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        task = task or TASK_OF_CLASS.get(type(model).__name__)
        if task is None:
            raise ValueError(
                f"{name}: a {type(model).__name__} has no inference task (supported: "
                f"{', '.join(TASK_OF_CLASS)})"
            )
        self.tasks = tuple(INFER_TASK[t] for t in task.split("+"))
        config = model.config
        self.max_text_len = int(max_text_len or getattr(config, "text_config", config).max_position_embeddings)
        self.is_vision = isinstance(model, VLCoAttnPreTrainedModel)
        if self.is_vision:
            pre = model.preprocessing()
            self._decoder, self._collator = build_decoder_and_collator(
                tokenizer, image_size=pre["image_size"], max_text_len=self.max_text_len, mean=pre["mean"],
                std=pre["std"], max_pixels=max_pixels, fast_decode=fast_decode,
            )

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fast_decode: bool = True,
    ) -> Predictor:
        """Load a ``save_pretrained`` directory (model + tokenizer) of any model class we ship.

        The text length is the one training used (``vlcoattn_task.json``, written by the trainer), else
        the model's ``max_position_embeddings``. dtype: ``float32`` | ``bfloat16`` | ``float16`` (or a
        torch dtype). A missing, incomplete or unreadable directory raises one clear
        FileNotFoundError / ValueError.
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
            model, tokenizer, task = load_model_dir(model_dir, device, dtype)
        except (FileNotFoundError, NotADirectoryError):
            raise
        except (OSError, RuntimeError, SafetensorError) as e:
            raise ValueError(f"model dir {model_dir}: cannot load the model: {e}") from e
        return cls(
            model, tokenizer, task=task, max_text_len=read_task_file(model_dir).get("max_text_len"),
            max_pixels=max_pixels, fast_decode=fast_decode, name=str(model_dir),
        )

    # ------------------------------------------------------------------------------------- tasks

    def resolve_task(self, task: str = "auto") -> str:
        """``auto`` -> what the model does (``vqa``, ``ground``, ``vqa+ground``, ``classify``, ``generate``);
        a task the model cannot do is a ValueError naming the ones it can."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
        if task == "auto":
            return "+".join(self.tasks)
        if task not in self.tasks:
            raise ValueError(
                f"--task {task} does not fit {self.name}: a {type(self.model).__name__} supports "
                f"--task {' / '.join(self.tasks)}"
            )
        return task

    # ------------------------------------------------------------------------- image + text (VL)

    def predict(self, image: ImageInput, text: str, *, task: str = "auto", top_k: int = 5) -> dict[str, Any]:
        """One image (path or encoded bytes) + text -> answers / box / per-token priors (see README).

        Raises ValueError / FileNotFoundError (one clear line) for an unusable image or text.
        """
        task = self._vision_task(task)
        return self._run_vision([self._prepare(image, text)], task, top_k)[0]

    def predict_batch(
        self, pairs: Sequence[tuple[ImageInput, str]], *, task: str = "auto", top_k: int = 5
    ) -> list[dict[str, Any]]:
        """Many pairs in one forward pass; a pair that cannot be read gives ``{"error": ...}`` in its
        place. Equal (to float tolerance) to calling :meth:`predict` on each pair."""
        task = self._vision_task(task)
        results: list[dict[str, Any] | None] = []
        samples = []
        for i, (image, text) in enumerate(pairs):
            try:
                samples.append(self._prepare(image, text, key=str(i)))
                results.append(None)
            except USER_ERRORS as e:
                results.append({"error": str(e)})
        done = iter(self._run_vision(samples, task, top_k) if samples else ())
        return [r if r is not None else next(done) for r in results]

    def _vision_task(self, task: str) -> str:
        task = self.resolve_task(task)
        if not self.is_vision:
            raise ValueError(f"{self.name} is a text-only {type(self.model).__name__}: it takes no image")
        return task

    def _prepare(self, image: ImageInput, text: str, key: str = "0") -> dict[str, Any]:
        """Decode + letterbox the image and check the text, exactly as the training loader does."""
        start = time.perf_counter()
        _check_text(text)
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
        raw = {"__key__": key, "json": json.dumps({"text": text, "task": "lm"}).encode(), "jpg": data}
        try:
            sample = self._decoder(raw)
        except SampleError as e:  # decode_image names the bytes "<N bytes>": name the file instead
            raise ValueError(str(e).replace(f"<{len(data)} bytes>", name, 1)) from None
        sample.update(self._text_info(text), image=name, _preprocess_s=time.perf_counter() - start)
        return sample

    def _text_info(self, text: str) -> dict[str, Any]:
        """Token count (before truncation; a warning when over the maximum) and each token's word."""
        tok = self.tokenizer
        enc = tok(text, return_offsets_mapping=tok.is_fast)
        num_tokens = len(enc["input_ids"])
        truncated = num_tokens > self.max_text_len
        if truncated:
            LOG.warning(
                "text has %d tokens, more than the model maximum of %d: truncated",
                num_tokens, self.max_text_len,
            )
            enc = tok(text, truncation=True, max_length=self.max_text_len, return_offsets_mapping=tok.is_fast)
        if not tok.is_fast:  # no offsets: tokens are not mapped to words
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

    @torch.inference_mode()
    def _run_vision(self, samples: list[dict[str, Any]], task: str, top_k: int) -> list[dict[str, Any]]:
        start = time.perf_counter()
        batch = self._collator(samples)  # tokenize, pad, normalise
        collate_s = (time.perf_counter() - start) / len(samples)
        start = time.perf_counter()
        inputs = {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask", "token_type_ids")}
        pixels = batch["pixel_values"].to(self.device, self.dtype)
        captured: list[Any] = []  # the base model's full output (grid sizes, centers, scales)
        hook = self.model.base_model.register_forward_hook(lambda _m, _a, out: captured.append(out))
        try:
            out = self.model(**inputs, pixel_values=pixels, return_dict=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        finally:
            hook.remove()
        base = captured[-1]
        forward_s = (time.perf_counter() - start) / len(samples)
        want = set(task.split("+"))
        probs = None
        if "vqa" in want:  # sigmoid for a model trained with vqa_loss="bce", softmax for "ce"
            probs = self.model.answer_probabilities(out.logits.float())
        boxes = None
        if "ground" in want:
            boxes = invert_boxes(out.pred_boxes.float().cpu(), batch["letterbox"])
        priors = self._priors(base, batch["letterbox"])
        results = []
        for b, sample in enumerate(samples):
            post_start = time.perf_counter()
            lb = sample["letterbox"].tolist()
            res: dict[str, Any] = {
                "task": task, "image": sample["image"], "image_size": [int(lb[4]), int(lb[5])], "text": sample["text"],
            }
            if probs is not None:
                res["answers"] = self._top_k(probs[b], top_k, self.model.config.answer_vocab)
            if boxes is not None:
                res["box"] = [round(v, 2) for v in boxes[b].tolist()]
            res["tokens"] = self._tokens(b, sample, batch, priors)
            res["truncated"] = sample["truncated"]
            pre = sample["_preprocess_s"] + collate_s
            post = time.perf_counter() - post_start
            res["timing_ms"] = {
                "preprocess": _ms(pre), "model": _ms(forward_s), "postprocess": _ms(post),
                "total": _ms(pre + forward_s + post),
            }
            results.append(res)
        return results

    def _priors(self, base: Any, letterbox: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Reference / per-head / attended centers and Gaussian widths in original-image pixels (None
        without a prior).

        Centers are normalized to the letterboxed canvas; on the last feature level (H x W cells) the
        prior is exp(-((x - c_x)^2 s_x^2 + (y - c_y)^2 s_y^2) / β) in cell units (s times the level's
        scale multiplier), a Gaussian of standard deviation sqrt(β / 2) / |s| cells, here in pixels.
        """
        if base.reference_centers is None or not base.centers:
            return None
        H, W = base.grid_sizes[-1]
        mult = float(self.model.base_model.level_scale_multipliers[-1])
        beta = float(self.model.config.smca_beta)
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

    def _tokens(
        self, b: int, sample: dict[str, Any], batch: dict[str, Any], priors: dict[str, torch.Tensor] | None
    ) -> list[dict[str, Any]]:
        n = int(batch["attention_mask"][b].sum())
        ids = batch["input_ids"][b, :n].tolist()
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

    @staticmethod
    def _top_k(probs: torch.Tensor, k: int, names: Sequence[str] | dict, key: str = "answer") -> list[dict[str, Any]]:
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {k}")
        values, indices = probs.topk(min(k, probs.numel()))
        return [{key: names[i], "probability": round(v, 6)} for v, i in zip(values.tolist(), indices.tolist())]

    # --------------------------------------------------------------------------------- text only

    def classify(self, text: str, *, top_k: int = 5) -> dict[str, Any]:
        """Label + probabilities (config.id2label) of a sequence classifier; raises on empty text."""
        self.resolve_task("classify")
        return self._run_classify([_check_text(text)], top_k)[0]

    def classify_batch(self, texts: Sequence[str], *, top_k: int = 5) -> list[dict[str, Any]]:
        """:meth:`classify` for many texts in one forward pass; a bad text gives ``{"error": ...}``."""
        self.resolve_task("classify")
        results: list[dict[str, Any] | None] = []
        good = []
        for text in texts:
            try:
                good.append(_check_text(text))
                results.append(None)
            except ValueError as e:
                results.append({"error": str(e)})
        done = iter(self._run_classify(good, top_k) if good else ())
        return [r if r is not None else next(done) for r in results]

    @torch.inference_mode()
    def _run_classify(self, texts: list[str], top_k: int) -> list[dict[str, Any]]:
        start = time.perf_counter()
        infos = [self._text_info(t) for t in texts]
        enc = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_text_len,
                             return_tensors="pt").to(self.device)
        logits = self.model(**enc, return_dict=True).logits.float().cpu()
        per_item = (time.perf_counter() - start) / len(texts)
        config = self.model.config
        results = []
        for text, info, row in zip(texts, infos, logits):
            res: dict[str, Any] = {"task": "classify", "text": text}
            if config.problem_type == "regression" or (config.problem_type is None and config.num_labels == 1):
                res["value"] = [round(v, 6) for v in row.tolist()]
            else:
                multi = config.problem_type == "multi_label_classification"
                probs = row.sigmoid() if multi else row.softmax(-1)
                res["label"] = config.id2label[int(probs.argmax())]
                res["probabilities"] = self._top_k(probs, top_k, config.id2label, key="label")
            res.update(truncated=info["truncated"], timing_ms={"total": _ms(per_item)})
            results.append(res)
        return results

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
        self.resolve_task("generate")
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
            "task": "generate",
            "prompt": prompt,
            "completion": tok.decode(new, skip_special_tokens=True),
            "tokens": tok.convert_ids_to_tokens(new),
            "token_ids": new,
            "truncated": truncated,
            "timing_ms": {"total": _ms(elapsed), "per_token": _ms(elapsed / max(len(new), 1))},
        }
