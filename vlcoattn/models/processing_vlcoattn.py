"""The processor of the VLCoAttn models: everything between raw inputs and model inputs, and back.

:class:`VLCoAttnImageProcessor` decodes an image (PIL, array, path or encoded bytes) with
:func:`~vlcoattn.data.decode_image` and its limits, letterboxes it to the model's canvas (aspect kept,
the rest filled with the mean colour) and normalises it; ``post_process_grounding`` maps predicted
boxes back to pixels of the original image. :class:`VLCoAttnProcessor` pairs it with the tokenizer,
which truncates at ``tokenizer.model_max_length`` (the length the model was trained with).

Both are saved into every model directory the trainer writes and load with ``AutoProcessor`` /
``AutoImageProcessor`` after ``import vlcoattn``. The training loader, the evaluator and
:class:`~vlcoattn.infer.Predictor` take their sample decoder and collator from the processor
(:meth:`VLCoAttnProcessor.decoder_and_collator`), so training, evaluation and inference share one code
path (see :func:`vlcoattn.data.letterbox_image`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin
from transformers.image_processing_utils import BaseImageProcessor

from ..data.image import DEFAULT_MAX_PIXELS
from ..data.read.pipeline import (
    Collator,
    SampleDecoder,
    decoder_and_collator,
    letterbox_image,
    normalize_pixels,
    tokenize,
)
from ..data.read.transforms import ImageTransform, as_size, invert_boxes, letterbox_params
from .modeling_vlcoattn import span_means

__all__ = ["ImageLike", "VLCoAttnImageProcessor", "VLCoAttnProcessor"]

ImageLike = Image.Image | np.ndarray | str | os.PathLike | bytes


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


class VLCoAttnImageProcessor(BaseImageProcessor):
    """Image -> letterboxed canvas of ``size`` -> ``(x / 255 - image_mean) / image_std``.

    ``max_pixels`` refuses larger images before decoding (decompression bombs); ``fast_decode`` lets a
    JPEG decode at 1/2-1/8 scale when still larger than the canvas and resizes with PIL's
    ``reducing_gap=3`` (what the training loader does by default).
    """

    model_input_names = ["pixel_values", "letterbox"]

    def __init__(
        self,
        size: dict[str, int] | int | Sequence[int] = 224,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fast_decode: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        h, w = as_size((size["height"], size["width"]) if isinstance(size, dict) else
                       size if isinstance(size, int) else tuple(size))
        self.size = {"height": h, "width": w}
        self.image_mean = [float(m) for m in image_mean]
        self.image_std = [float(s) for s in image_std]
        self.max_pixels = int(max_pixels)
        self.fast_decode = bool(fast_decode)

    @classmethod
    def for_model(cls, model: Any, **kwargs: Any) -> VLCoAttnImageProcessor:
        """The processor a VLCoAttn model needs: ``config.image_size`` (or the backbone's native size) and
        the backbone's normalisation."""
        prep = model.preprocessing()
        return cls(size=prep["image_size"], image_mean=prep["mean"], image_std=prep["std"], **kwargs)

    @property
    def canvas_size(self) -> tuple[int, int]:
        """(H, W) of the letterboxed canvas."""
        return self.size["height"], self.size["width"]

    def transform(self, augment: bool = False, color_jitter: float = ImageTransform.jitter,
                  crop_min_scale: float | None = None) -> ImageTransform:
        """The letterbox (and, for training, augmentation) transform at this processor's size."""
        return ImageTransform(
            self.canvas_size, tuple(round(255 * m) for m in self.image_mean), augment=augment,
            jitter=color_jitter, crop_min_scale=crop_min_scale, reducing_gap=3.0 if self.fast_decode else None,
        )

    def sample_decoder(self, transform: ImageTransform | None = None, seed: int = 0) -> SampleDecoder:
        """The loader's per-sample decoder with this processor's decoding limits and ``transform`` (default
        :meth:`transform`: the letterbox; a training one, see :func:`vlcoattn.data.image_transform`)."""
        return SampleDecoder(transform or self.transform(), self.max_pixels, self.fast_decode, seed)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) canvases -> float pixel values."""
        return normalize_pixels(pixels, self.image_mean, self.image_std)

    def prepare(self, image: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
        """One image -> (uint8 (3, H, W) canvas, letterbox (8,)): the placement of the original image in
        the canvas, what :meth:`post_process_grounding` inverts. Raises ImageDecodeError /
        FileNotFoundError for an unusable image."""
        canvas, _, _, params = letterbox_image(image, self.transform(), self.max_pixels, self.fast_decode)
        return canvas, params.as_tensor().float()

    def preprocess(self, images: ImageLike | Sequence[ImageLike], return_tensors: str | None = "pt",
                   **kwargs: Any) -> BatchFeature:
        """One image or a list -> ``pixel_values`` (B, 3, H, W) and ``letterbox`` (B, 8)."""
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        canvases, letterboxes = zip(*(self.prepare(image) for image in _as_list(images)))
        data = {"pixel_values": self.normalize(torch.stack(canvases)), "letterbox": torch.stack(letterboxes)}
        return BatchFeature(data, tensor_type=return_tensors)

    @staticmethod
    def post_process_grounding(pred_boxes: torch.Tensor, letterbox: torch.Tensor) -> torch.Tensor:
        """(B, 4) normalized (cx, cy, w, h) boxes on the canvases -> (B, 4) (x0, y0, x1, y1) pixels of
        the original images, clipped to them; ``letterbox`` (B, 8) as :meth:`preprocess` returned it."""
        return invert_boxes(pred_boxes.detach().float().cpu(), letterbox)

    @staticmethod
    def post_process_phrase_grounding(outputs: Any, phrase_tokens: torch.Tensor,
                                      letterbox: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Phrase grounding outputs -> (boxes (B, P, 4) (x0, y0, x1, y1) pixels of the original images,
        scores (B, P) in [0, 1], or None for a model without a spatial prior).

        The model regresses one box per phrase and has no confidence head. A phrase's score is the share
        of its prior inside its own box: the mean of its tokens' head-averaged Gaussian priors on the last
        feature level (``outputs["heatmaps"]``, each summing to 1), summed over the cells whose centers the
        predicted box contains. 1: where the phrase's words look and where its box lies agree; near 0:
        the box lies away from what its words attend to. A phrase without tokens scores 0."""
        pred = outputs["pred_boxes"].detach().float().cpu()  # (B, P, 4) cxcywh on the canvas
        boxes = invert_boxes(pred.flatten(0, 1), letterbox.repeat_interleave(pred.shape[1], 0)).unflatten(0, pred.shape[:2])
        heat = outputs.get("heatmaps")
        if heat is None:
            return boxes, None
        H, W = heat.shape[-2:]
        prior = span_means(phrase_tokens.cpu(), heat.detach().float().cpu().flatten(2))  # (B, P, H*W)
        ys, xs = torch.meshgrid((torch.arange(H) + 0.5) / H, (torch.arange(W) + 0.5) / W, indexing="ij")
        x0, y0 = pred[..., 0:1] - pred[..., 2:3] / 2, pred[..., 1:2] - pred[..., 3:4] / 2  # (B, P, 1)
        x1, y1 = x0 + pred[..., 2:3], y0 + pred[..., 3:4]
        xs, ys = xs.flatten(), ys.flatten()  # (H*W,)
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)  # (B, P, H*W)
        return boxes, (prior * inside).sum(-1).clamp(0.0, 1.0)


class VLCoAttnProcessor(ProcessorMixin):
    """Image processor + tokenizer of a VLCoAttn model; ``processor(images=..., text=...)`` gives the
    model's inputs plus ``letterbox``, and :meth:`post_process_grounding` turns boxes into pixels."""

    def __init__(self, image_processor: VLCoAttnImageProcessor, tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, max_text_len: int | None = None, **kwargs: Any) -> VLCoAttnProcessor:
        """The processor of ``model`` with ``tokenizer`` (truncating at ``max_text_len`` when given, which
        sets the tokenizer's ``model_max_length``); kwargs go to :class:`VLCoAttnImageProcessor`."""
        if max_text_len is not None:
            tokenizer = copy.copy(tokenizer)  # the caller's tokenizer keeps its own length
            tokenizer.model_max_length = int(max_text_len)
        return cls(VLCoAttnImageProcessor.for_model(model, **kwargs), tokenizer)

    @property
    def max_text_len(self) -> int:
        return int(self.tokenizer.model_max_length)

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike] | None = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Texts -> ``input_ids`` / ``attention_mask`` / ``token_type_ids`` (padded to a multiple of 8,
        truncated at :attr:`max_text_len`); images -> ``pixel_values`` / ``letterbox``. The same
        tokenization and image preparation as the training loader's collator."""
        if images is None and text is None:
            raise ValueError("give images, text or both")
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        data: dict[str, Any] = {}
        if text is not None:
            data.update(tokenize(self.tokenizer, _as_list(text)))
        if images is not None:
            data.update(self.image_processor(images, return_tensors="pt"))
        return BatchFeature(data, tensor_type=return_tensors)

    def decoder_and_collator(self, **kwargs: Any) -> tuple[SampleDecoder, Collator]:
        """The loader's sample decoder and collator; see :func:`vlcoattn.data.decoder_and_collator`."""
        return decoder_and_collator(self, **kwargs)

    def post_process_grounding(self, outputs: Any, letterbox: torch.Tensor | None = None,
                               target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None) -> list[dict[str, Any]]:
        """Grounding outputs -> one ``{"box": (x0, y0, x1, y1)}`` per row, in pixels of the original image.

        Pass ``letterbox`` as this processor returned it (exact), or ``target_sizes`` (B, 2) = each
        original image's (height, width), from which the letterbox is recomputed (as transformers'
        ``post_process_object_detection`` takes them).
        """
        boxes = self.image_processor.post_process_grounding(outputs["pred_boxes"], self._letterbox(letterbox, target_sizes))
        return [{"box": box} for box in boxes]

    def _letterbox(self, letterbox: torch.Tensor | None, target_sizes: Any) -> torch.Tensor:
        """``letterbox`` as given, or recomputed from ``target_sizes`` (B, 2) = (height, width); exactly one."""
        if (letterbox is None) == (target_sizes is None):
            raise ValueError("give exactly one of letterbox (from the processor) or target_sizes")
        if letterbox is not None:
            return letterbox
        return torch.stack([letterbox_params(int(w), int(h), self.image_processor.canvas_size).as_tensor()
                            for h, w in torch.as_tensor(target_sizes).tolist()])

    def post_process_phrase_grounding(
        self, outputs: Any, phrase_tokens: torch.Tensor, letterbox: torch.Tensor | None = None,
        target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None,
        text_labels: Sequence[Sequence[str]] | None = None,
    ) -> list[dict[str, Any]]:
        """Phrase grounding outputs -> one dict per image in the shape of transformers' Grounding DINO
        ``post_process_grounded_object_detection``: ``scores`` (P,), ``boxes`` (P, 4) (x0, y0, x1, y1) in
        pixels of the original image, ``text_labels`` (each phrase's text) and ``labels`` (the same list, as
        transformers 5 still returns it). One entry per phrase, in the order given, none dropped: each
        phrase was asked for. ``phrase_tokens`` (B, P, T) as given to the model; ``letterbox`` or
        ``target_sizes`` as :meth:`post_process_grounding`. The score (``nan`` without a spatial prior) is
        the share of the phrase's prior inside its box, see
        :meth:`VLCoAttnImageProcessor.post_process_phrase_grounding`."""
        boxes, scores = self.image_processor.post_process_phrase_grounding(
            outputs, phrase_tokens, self._letterbox(letterbox, target_sizes))
        if scores is None:
            scores = torch.full(boxes.shape[:2], float("nan"))
        results = []
        for i in range(boxes.shape[0]):
            labels = list(text_labels[i]) if text_labels is not None else [f"phrase {j}" for j in range(boxes.shape[1])]
            n = len(labels)
            results.append({"scores": scores[i, :n], "boxes": boxes[i, :n], "text_labels": labels, "labels": labels})
        return results
