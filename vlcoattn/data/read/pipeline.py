"""Per-sample decoding and per-batch collation, run inside the loader's worker processes.

:class:`SampleDecoder` turns one raw webdataset sample (``__key__`` + bytes members) into a decoded
sample or raises :class:`SampleError` naming why it is bad. Its stages, in order::

    parse_json -> check schema -> decode image -> check boxes -> transform (letterbox / augment) -> targets

:class:`Collator` tokenizes the texts and pads everything into the batch dict described in
:mod:`vlcoattn.data`.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...tasks import IGNORE_INDEX, check_batchable, get_task, sample_task_names  # noqa: F401 (IGNORE_INDEX: re-exported)
from ...tasks.phrase import collate_phrase_spans
from ..image import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTS,
    ImageDecodeError,
    as_rgb_image,
    decode_image_and_size,
    image_size,
)
from ..schema import SampleError, check_record
from .loader_config import LoaderConfig
from .transforms import ImageTransform, Letterbox, follow_spans, normalize_boxes


def _parse_json(raw: dict[str, Any]) -> dict[str, Any]:
    if "json" not in raw:
        raise SampleError("missing_json", "no .json member")
    try:
        record = json.loads(raw["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SampleError("bad_json", f".json member is not UTF-8 JSON: {e}") from e
    if not isinstance(record, dict):
        raise SampleError("bad_json", f".json member must hold an object, got {type(record).__name__}")
    return record


def _image_member(raw: dict[str, Any]) -> bytes | None:
    found = [ext for ext in IMAGE_EXTS if ext in raw]
    if len(found) > 1:
        raise SampleError("bad_field", f"several image members: {found}")
    return raw[found[0]] if found else None


def letterbox_image(
    image: Any,
    transform: ImageTransform,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fast_decode: bool = True,
    boxes: np.ndarray | None = None,
    texts: Sequence[str] = (),
    rng: random.Random | None = None,
) -> tuple[torch.Tensor, np.ndarray, list[str], Letterbox]:
    """The one image preparation of training, evaluation and inference: decode (encoded bytes or a path
    through :func:`decode_image_and_size`, with its limits; a PIL image or an HxW[x3|4] uint8 array as
    it is, converted to RGB), then ``transform`` (letterbox, augmentation). ``boxes`` (N, 4) xyxy pixels
    of the original image and ``texts`` follow the transform. Returns (uint8 (3, H, W) canvas, boxes
    on the canvas, texts, the letterbox mapping original pixels to the canvas). Raises
    :class:`~vlcoattn.data.ImageDecodeError` for anything that is not a usable image."""
    boxes = np.zeros((0, 4)) if boxes is None else boxes
    if isinstance(image, (bytes, str, os.PathLike)):
        cropping = transform.augment and transform.crop_min_scale is not None
        fit = (transform.size[1], transform.size[0]) if fast_decode and not cropping else None
        data = image if isinstance(image, bytes) else Path(image)
        image, (orig_w, orig_h) = decode_image_and_size(data, max_pixels=max_pixels, fit_within=fit)
    else:
        image = as_rgb_image(image, max_pixels)
        orig_w, orig_h = image.size
    draft = (image.size[0] / orig_w, image.size[1] / orig_h)  # < 1 where a JPEG decoded at reduced scale
    pixels, boxes, texts, params = transform(image, boxes * np.array([*draft, *draft]), list(texts), rng)
    params = replace(params, scale_x=params.scale_x * draft[0], scale_y=params.scale_y * draft[1],
                     orig_w=orig_w, orig_h=orig_h)
    return pixels, boxes, texts, params


def stacked_boxes(record: dict[str, Any]) -> np.ndarray:
    """The record's ``boxes`` and then every phrase's, stacked (N, 4) xyxy pixels: one array through the
    transform, so a crop keeps them all whole and a flip moves them all (:func:`carry_phrases` splits it)."""
    groups = [record.get("boxes", []), *(p["boxes"] for p in record.get("phrases", ()))]
    return np.concatenate([np.asarray(g, dtype=np.float64).reshape(-1, 4) for g in groups])


def carry_phrases(
    phrases: Sequence[dict[str, Any]], text: str, new_text: str, boxes: np.ndarray, out_w: int, out_h: int
) -> list[dict[str, Any]]:
    """The record's ``phrases`` after the transform: spans moved from ``text`` onto ``new_text`` (the
    flip swaps left/right), boxes (the phrases' rows of the transformed stack, in order) as normalized
    cxcywh (K, 4) of the ``out_w x out_h`` canvas; ``type`` and ``id`` as they were."""
    spans = follow_spans(text, new_text, [p["span"] for p in phrases])
    out, row = [], 0
    for phrase, span in zip(phrases, spans):
        k = len(phrase["boxes"])
        carried = {key: phrase[key] for key in ("type", "id") if key in phrase}
        out.append({"span": span, "boxes": normalize_boxes(boxes[row:row + k], out_w, out_h), **carried})
        row += k
    return out


@dataclass(frozen=True)
class SampleDecoder:
    """Raw sample -> dict with ``key``, ``task``, ``text``, ``meta`` and, as present, ``pixels`` (uint8
    3xHxW), ``letterbox`` (8,), ``box`` (4,) normalized cxcywh, ``answers``, ``label``, ``phrases`` (see
    :func:`carry_phrases`). Without a ``transform`` (text-only models) image members and phrases are ignored."""

    transform: ImageTransform | None
    max_pixels: int = DEFAULT_MAX_PIXELS
    fast_decode: bool = True  # JPEG DCT-domain downscale when the image is >= 2x the input size
    seed: int = 0

    def __call__(self, raw: dict[str, Any], pass_index: int = 0) -> dict[str, Any]:
        record = _parse_json(raw)
        image_bytes = _image_member(raw) if self.transform is not None else None
        record = check_record(record, has_image=image_bytes is not None)
        sample = {
            "key": raw["__key__"],
            "task": record["task"],
            "text": record["text"],
            "meta": record.get("meta", {}),
        }
        answers = list(record.get("answers", ()))
        if record.get("label") is not None:
            sample["label"] = record["label"]
        if image_bytes is None:
            sample["answers"] = answers
            return sample
        try:
            orig_w, orig_h = image_size(image_bytes, self.max_pixels)
        except ImageDecodeError as e:
            raise SampleError("bad_image", str(e)) from e
        check_record(record, image_size=(orig_w, orig_h))  # boxes inside the image
        rng = random.Random(f"{self.seed}:{pass_index}:{sample['key']}") if self.transform.augment else None
        try:
            pixels, boxes, texts, params = letterbox_image(
                image_bytes, self.transform, self.max_pixels, self.fast_decode, stacked_boxes(record),
                [record["text"], *answers], rng,
            )
        except ImageDecodeError as e:
            raise SampleError("bad_image", str(e)) from e
        sample.update(text=texts[0], answers=texts[1:], pixels=pixels, letterbox=params.as_tensor().float())
        if record.get("boxes"):
            sample["box"] = normalize_boxes(boxes[:1], params.out_w, params.out_h)[0]
        if record.get("phrases"):
            rows = len(record.get("boxes", []))
            sample["phrases"] = carry_phrases(record["phrases"], record["text"], texts[0], boxes[rows:],
                                              params.out_w, params.out_h)
        return sample


# batches pad their text to a multiple of 8 tokens (as transformers' collators do for tensor cores): a
# handful of distinct shapes, so a compiled model (run.compile) compiles a few graphs, not one per length
TEXT_PAD_MULTIPLE = 8


def tokenize(tokenizer: Any, texts: list[str], offsets: bool = False) -> dict[str, torch.Tensor]:
    """The one text preparation: pad to the longest (a multiple of :data:`TEXT_PAD_MULTIPLE`), truncate at
    ``tokenizer.model_max_length`` (the length the model trains with). ``offsets``: also each token's
    ``offset_mapping`` (B, T, 2), its [start, end) characters in the text ((0, 0) for special tokens)."""
    enc = tokenizer(
        texts,
        padding="longest",
        pad_to_multiple_of=TEXT_PAD_MULTIPLE,
        truncation=True,
        max_length=int(tokenizer.model_max_length),
        return_tensors="pt",
        return_token_type_ids=True,
        return_offsets_mapping=offsets,
    )
    keys = ("input_ids", "attention_mask", "token_type_ids", *(("offset_mapping",) if offsets else ()))
    return {k: enc[k] for k in keys}


def normalize_pixels(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float ``(x / 255 - mean) / std``."""
    m = torch.tensor(mean).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std).view(1, 3, 1, 1) * 255.0
    return torch.sub(pixels, m, out=torch.empty(pixels.shape)).div_(s)


@dataclass
class Collator:
    """Decoded samples -> padded batch dict (tokenization happens here, once per batch). ``image_processor``
    (a :class:`~vlcoattn.models.VLCoAttnImageProcessor`) normalises the pixels; text-only models have none."""

    tokenizer: Any
    image_processor: Any = None
    answer_vocab: Sequence[str] = ()
    label_vocab: Sequence[str] = ()
    phrase_spans: bool = False  # every batch gets the phrases' tokens and boxes of all its rows, whatever their task

    def __post_init__(self) -> None:
        self.answer_index = {a: i for i, a in enumerate(self.answer_vocab)}
        self.label_index = {a: i for i, a in enumerate(self.label_vocab)}

    def check(self, sample: dict[str, Any]) -> None:
        """Raise SampleError for a sample whose targets cannot be encoded (e.g. an unknown label)."""
        spec = get_task(sample["task"])
        if spec.check_sample is not None:
            spec.check_sample(self, sample)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        tasks = [s["task"] for s in samples]
        texts = [s["text"] for s in samples]
        enc = tokenize(self.tokenizer, texts)
        batch: dict[str, Any] = {
            "keys": [s["key"] for s in samples],
            "tasks": tasks,
            "texts": texts,
            "meta": [s["meta"] for s in samples],
            **enc,
        }
        if any("pixels" in s for s in samples):
            batch.update(self._images(samples))
        if any("phrases" in s for s in samples):  # any task's samples may carry them
            batch["phrases"] = [s.get("phrases", []) for s in samples]
        check_batchable(tasks)
        for name in sample_task_names():  # each task present fills its own target fields (see vlcoattn.tasks)
            spec = get_task(name)
            if spec.collate is not None and name in tasks:
                batch.update(spec.collate(self, samples, enc))
        if self.phrase_spans:  # every row's phrase spans, whatever its task: what the priors' supervision reads
            batch["phrase_spans"] = True
            if "phrase_tokens" not in batch:
                batch.update(collate_phrase_spans(self, samples, enc))
        return batch

    def _images(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        shape = next(s["pixels"].shape for s in samples if "pixels" in s)
        pixels = torch.stack([s.get("pixels", torch.zeros(shape, dtype=torch.uint8)) for s in samples])
        return {
            "pixel_values": self.image_processor.normalize(pixels),
            "image_mask": torch.tensor(["pixels" in s for s in samples]),
            "letterbox": torch.stack([s.get("letterbox", torch.zeros(8)) for s in samples]),
        }


def image_transform(processor: Any, augmentation: LoaderConfig | None = None) -> ImageTransform | None:
    """The image transform of ``processor`` (its letterbox), with the training augmentation of
    ``augmentation`` (``augment``, ``color_jitter``, ``crop_min_scale``) when given; None for a text-only
    model's processor (a tokenizer). The one place where the loader options become an :class:`ImageTransform`."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return None
    if augmentation is None:
        return image_processor.transform()
    return image_processor.transform(augmentation.augment, augmentation.color_jitter, augmentation.crop_min_scale)


def decoder_and_collator(
    processor: Any,
    transform: ImageTransform | None = None,
    *,
    seed: int = 0,
    answer_vocab: Sequence[str] = (),
    label_vocab: Sequence[str] = (),
    phrase_spans: bool = False,
) -> tuple[SampleDecoder, Collator]:
    """The sample decoder and collator of ``processor``: a :class:`~vlcoattn.models.VLCoAttnProcessor`
    (image processor + tokenizer) or, for text-only models, a tokenizer. ``transform``: the image transform
    (default the processor's letterbox, see :func:`image_transform`); ``seed`` draws its augmentation.
    ``phrase_spans``: every batch carries its rows' phrase spans (:attr:`Collator.phrase_spans`)."""
    image_processor = getattr(processor, "image_processor", None)
    tokenizer = getattr(processor, "tokenizer", processor) if image_processor is not None else processor
    if getattr(tokenizer, "pad_token", None) is None:
        raise ValueError("the tokenizer has no pad token (set tokenizer.pad_token, e.g. to its eos token)")
    if image_processor is None:
        decoder = SampleDecoder(None, seed=seed)
    else:
        decoder = image_processor.sample_decoder(transform or image_processor.transform(), seed)
    return decoder, Collator(tokenizer, image_processor, list(answer_vocab), list(label_vocab), phrase_spans)
