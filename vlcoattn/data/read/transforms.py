"""Box-aware image transforms: letterbox (and its inverse), flip with left/right words, jitter, crop.

Boxes travel with the image through every geometric step as ``[x0, y0, x1, y1]`` pixels; the model
sees them as normalized ``cxcywh`` of the letterboxed canvas. :class:`Letterbox` records the
exact scale and padding so that :func:`invert_boxes` maps a prediction back to original pixels.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import astuple, dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torchvision.ops import box_convert

LETTERBOX_FIELDS = ("scale_x", "scale_y", "pad_x", "pad_y", "orig_w", "orig_h", "out_w", "out_h")


@dataclass(frozen=True)
class Letterbox:
    """Placement of an ``orig_w x orig_h`` image in an ``out_w x out_h`` canvas:
    ``x_out = x * scale_x + pad_x`` and ``y_out = y * scale_y + pad_y`` (pixels)."""

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    orig_w: int
    orig_h: int
    out_w: int
    out_h: int

    def as_tensor(self) -> torch.Tensor:
        """The fields as a float tensor of shape (8,), in :data:`LETTERBOX_FIELDS` order."""
        return torch.tensor(astuple(self), dtype=torch.float64)


def as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``224`` or ``(H, W)`` -> ``(H, W)``."""
    h, w = (size, size) if isinstance(size, int) else size
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {size!r}")
    return int(h), int(w)


def letterbox_params(orig_w: int, orig_h: int, size: int | tuple[int, int]) -> Letterbox:
    """Aspect-preserving fit of ``orig_w x orig_h`` into ``size``, centred, padding the rest."""
    out_h, out_w = as_size(size)
    scale = min(out_w / orig_w, out_h / orig_h)
    new_w, new_h = max(1, round(orig_w * scale)), max(1, round(orig_h * scale))
    return Letterbox(
        new_w / orig_w,
        new_h / orig_h,
        (out_w - new_w) // 2,
        (out_h - new_h) // 2,
        orig_w,
        orig_h,
        out_w,
        out_h,
    )


def letterbox(
    image: Image.Image,
    boxes: np.ndarray,
    size: int | tuple[int, int],
    fill: tuple[int, int, int],
    reducing_gap: float | None = None,
) -> tuple[Image.Image, np.ndarray, Letterbox]:
    """Resize ``image`` into a ``size`` canvas of colour ``fill``; ``boxes`` (N, 4) xyxy pixels follow.

    ``reducing_gap`` (PIL): shrink by an integer box filter first when downscaling by more than
    this factor; 3.0 is visually indistinguishable from a plain resize and much faster.
    """
    params = letterbox_params(*image.size, size)
    new_w, new_h = round(params.orig_w * params.scale_x), round(params.orig_h * params.scale_y)
    if (new_w, new_h) != image.size:
        resized = image.resize((new_w, new_h), Image.BILINEAR, reducing_gap=reducing_gap)
    else:
        resized = image
    if (new_w, new_h) == (params.out_w, params.out_h):
        canvas = resized
    else:
        canvas = Image.new("RGB", (params.out_w, params.out_h), fill)
        canvas.paste(resized, (params.pad_x, params.pad_y))
    scale = np.array([params.scale_x, params.scale_y, params.scale_x, params.scale_y])
    pad = np.array([params.pad_x, params.pad_y, params.pad_x, params.pad_y])
    return canvas, boxes * scale + pad, params


def invert_boxes(boxes: torch.Tensor, letterbox: torch.Tensor | Letterbox) -> torch.Tensor:
    """Normalized cxcywh boxes on letterboxed canvases -> xyxy pixels of the original images.

    ``boxes`` is (N, 4) or (4,); ``letterbox`` a :class:`Letterbox`, or its tensor form (8,) / (N, 8)
    (the batch's ``letterbox`` entry). Results are clipped to the original image.
    """
    lb = letterbox.as_tensor() if isinstance(letterbox, Letterbox) else letterbox
    lb = lb.to(torch.float64).reshape(-1, len(LETTERBOX_FIELDS))
    sx, sy, px, py, ow, oh, cw, ch = lb.unbind(-1)
    xyxy = box_convert(boxes.to(torch.float64).reshape(-1, 4), "cxcywh", "xyxy")
    x0 = ((xyxy[:, 0] * cw - px) / sx).clamp(min=0).minimum(ow)
    y0 = ((xyxy[:, 1] * ch - py) / sy).clamp(min=0).minimum(oh)
    x1 = ((xyxy[:, 2] * cw - px) / sx).clamp(min=0).minimum(ow)
    y1 = ((xyxy[:, 3] * ch - py) / sy).clamp(min=0).minimum(oh)
    out = torch.stack([x0, y0, x1, y1], dim=-1).to(
        boxes.dtype if boxes.is_floating_point() else torch.float32
    )
    return out.reshape(boxes.shape)


def normalize_boxes(boxes: np.ndarray, width: int, height: int) -> torch.Tensor:
    """(N, 4) xyxy pixels -> (N, 4) cxcywh in [0, 1] of a ``width x height`` image."""
    xyxy = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    cxcywh = box_convert(xyxy, "xyxy", "cxcywh") / torch.tensor([width, height, width, height])
    return cxcywh.clamp(0.0, 1.0)


_LEFT_RIGHT = re.compile(r"\b(left|right)", re.IGNORECASE)


Span = tuple[int, int]  # [start, end) character offsets into a text


def _swapped(word: str) -> str:
    new = "right" if word.lower() == "left" else "left"
    return new.upper() if word.isupper() else new.capitalize() if word[0].isupper() else new


def swap_left_right(text: str) -> str:
    """Swap the words left/right (also leftmost, left-hand, ...) keeping their case."""
    return _LEFT_RIGHT.sub(lambda m: _swapped(m.group(1)), text)


def swap_left_right_spans(text: str, spans: Sequence[Span]) -> tuple[str, list[Span]]:
    """:func:`swap_left_right` of ``text`` and ``spans`` moved with the words they cover ("left" has 4
    characters, "right" 5, so every offset after a swapped word shifts by one). A span edge inside a
    swapped word moves to that word's edge."""
    edits = []  # (old start, old end, new start, new end) of each swapped word
    shift = 0
    for m in _LEFT_RIGHT.finditer(text):
        delta = len(_swapped(m.group(1))) - len(m.group(1))
        edits.append((m.start(), m.end(), m.start() + shift, m.end() + shift + delta))
        shift += delta

    def moved(pos: int, is_end: bool) -> int:
        out = pos
        for old0, old1, new0, new1 in edits:
            if old0 < pos < old1:
                return new1 if is_end else new0
            if old1 <= pos:
                out = pos + (new1 - old1)
        return out

    return swap_left_right(text), [(moved(a, False), moved(b, True)) for a, b in spans]


def follow_spans(before: str, after: str, spans: Sequence[Span]) -> list[Span]:
    """``spans`` of ``before`` moved onto ``after``: ``before`` itself, or its left/right swap (the
    transform's one rewrite of a text, see :class:`ImageTransform`). Other texts are a ValueError."""
    if after == before:
        return [tuple(s) for s in spans]
    swapped, moved = swap_left_right_spans(before, spans)
    if swapped != after:
        raise ValueError(f"{after!r} is neither {before!r} nor its left/right swap: the spans cannot follow")
    return moved


def hflip(image: Image.Image, boxes: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """Mirror the image left/right; boxes (N, 4) xyxy pixels follow."""
    w = image.size[0]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return image.transpose(Image.FLIP_LEFT_RIGHT), flipped


def _random_span(lo: float, hi: float, length: int, rng: random.Random, min_scale: float) -> tuple[int, int]:
    """(start, size) of a random interval of [0, length), at least ``min_scale * length`` long,
    containing [lo, hi) when hi > lo."""
    lo_px, hi_px = math.floor(lo), math.ceil(hi)
    need = hi_px - lo_px if hi > lo else 1
    size = min(length, max(need, round(length * rng.uniform(min_scale, 1.0))))
    first, last = (max(0, hi_px - size), min(lo_px, length - size)) if hi > lo else (0, length - size)
    return rng.randint(first, max(first, last)), size


def crop_keeping_boxes(
    image: Image.Image, boxes: np.ndarray, rng: random.Random, min_scale: float
) -> tuple[Image.Image, np.ndarray]:
    """Random crop covering at least ``min_scale`` of each side that keeps every box whole."""
    w, h = image.size
    if len(boxes):
        x, cw = _random_span(boxes[:, 0].min(), boxes[:, 2].max(), w, rng, min_scale)
        y, ch = _random_span(boxes[:, 1].min(), boxes[:, 3].max(), h, rng, min_scale)
    else:
        x, cw = _random_span(0, 0, w, rng, min_scale)
        y, ch = _random_span(0, 0, h, rng, min_scale)
    return image.crop((x, y, x + cw, y + ch)), boxes - np.array([x, y, x, y], dtype=boxes.dtype)


def color_jitter(image: Image.Image, rng: random.Random, strength: float) -> Image.Image:
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s] (no hue change,
    so colour words stay true)."""
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(1.0 - strength, 1.0 + strength))
    return image


@dataclass(frozen=True)
class ImageTransform:
    """Image (+ boxes, + texts) -> uint8 CHW tensor of the letterboxed canvas.

    With ``augment``: random horizontal flip (swapping left/right in the texts), colour jitter, and,
    when ``crop_min_scale`` is set and the sample has boxes, a crop that keeps the boxes whole
    (off by default: a crop can cut away the anchor of a relational expression whose phrases are not
    given). The decoder passes a sample's ``boxes`` and its phrases' boxes as one array.
    """

    size: tuple[int, int]
    fill: tuple[int, int, int]
    augment: bool = False
    flip_prob: float = 0.5
    jitter: float = 0.2
    crop_min_scale: float | None = None
    reducing_gap: float | None = None  # see letterbox()

    def __call__(
        self, image: Image.Image, boxes: np.ndarray, texts: list[str], rng: random.Random | None
    ) -> tuple[torch.Tensor, np.ndarray, list[str], Letterbox]:
        """Return (uint8 tensor (3, H, W), boxes on the canvas, texts, letterbox parameters)."""
        if self.augment:
            if rng is None:
                raise ValueError("augmentation needs an rng")
            if self.crop_min_scale is not None and len(boxes):
                image, boxes = crop_keeping_boxes(image, boxes, rng, self.crop_min_scale)
            if rng.random() < self.flip_prob:
                image, boxes = hflip(image, boxes)
                texts = [swap_left_right(t) for t in texts]
            if self.jitter > 0:
                image = color_jitter(image, rng, self.jitter)
        canvas, boxes, params = letterbox(image, boxes, self.size, self.fill, self.reducing_gap)
        pixels = torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy()).permute(2, 0, 1)
        return pixels, boxes, texts, params
