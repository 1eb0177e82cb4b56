"""The backbone features under each object's box, as the model would see them.

The backbone is built as the model builds it (:class:`~vlcoattn.vision.VisionBackbone` with the project's local
pretrained weights, or a trained model dir's own backbone), with one output per requested stride. Images go
through the model's processor (:class:`~vlcoattn.models.VLCoAttnImageProcessor`: letterbox to the input size,
the backbone's normalisation), and each box moves with its image onto the canvas. At each level the box becomes
one feature vector:

- ``mean``: the mean of the cells the box covers (cell ``j`` of a ``w``-wide grid spans canvas pixels
  ``[j W / w, (j + 1) W / w)``; a box smaller than a cell takes the one cell it lies in);
- ``center``: the cell under the box's centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.read.pipeline import letterbox_image
from ..models.processing_vlcoattn import VLCoAttnImageProcessor
from ..vision import VisionBackbone, VisionConfig

__all__ = ["POOLS", "box_features", "build_backbone", "level_indices", "pool_boxes"]

POOLS = ("mean", "center")


def level_indices(config: VisionConfig, strides: Sequence[int]) -> tuple[list[int], list[int]]:
    """(timm feature indices, their strides) of ``strides`` (all the backbone's strides when empty), finest
    first; where several levels share a stride (a ViT's blocks) the last one. ValueError naming a stride the
    backbone does not have."""
    info = VisionBackbone(config).model.feature_info.info  # weightless: only the levels' strides are read
    by_stride = {int(level["reduction"]): i for i, level in enumerate(info)}
    wanted = sorted(set(strides)) if strides else sorted(by_stride)
    missing = [s for s in wanted if s not in by_stride]
    if missing:
        raise ValueError(f"--level {missing[0]}: backbone {config.backbone!r} has levels at strides "
                         f"{sorted(by_stride)}")
    return [by_stride[s] for s in wanted], wanted


def build_backbone(backbone: str, strides: Sequence[int] = (), weights: str | None = None
                   ) -> tuple[VisionBackbone, tuple[int, int]]:
    """The frozen backbone with one output per stride, and the input size (H, W) its model would use.

    ``backbone``: a timm name (pretrained weights from ``weights``, a local ``.safetensors`` / ``.pth`` state
    dict, else the project's local file for the name, else timm's sources) or a trained VLCoAttn model dir
    (its backbone with its trained weights, and its ``vision_config.image_size``)."""
    if not Path(backbone).is_dir():
        config = VisionConfig(backbone=backbone, freeze=True)
        config.out_indices, _ = level_indices(config, strides)
        model = VisionBackbone(config, pretrained=True, pretrained_file=weights).eval()
        return model, tuple(model.data_config["input_size"][1:])
    if weights is not None:
        raise ValueError("--weights is for a timm backbone name; a model dir brings its own backbone weights")
    from ..loading import load_model_dir  # the model classes, only for a model dir

    trained = getattr(load_model_dir(backbone)[0].base_model, "backbone", None)
    if trained is None:
        raise ValueError(f"--backbone {backbone}: a model dir without an image backbone (a text-only model)")
    kept = trained.config
    config = VisionConfig(backbone=kept.backbone, model_kwargs=kept.model_kwargs, image_size=kept.image_size,
                          freeze=True)
    config.out_indices, _ = level_indices(config, strides)
    model = VisionBackbone(config).eval()
    missing = model.model.load_state_dict(trained.model.state_dict(), strict=False).missing_keys
    if missing:
        raise ValueError(f"--backbone {backbone}: the model's backbone ends at stride {max(trained.strides)} "
                         f"(no weights for {missing[0]}): ask for --level values up to that")
    size = trained.config.image_size or model.data_config["input_size"][1:]
    return model, tuple(size)


def pool_boxes(feature: torch.Tensor, boxes: np.ndarray, canvas: tuple[int, int], pool: str) -> np.ndarray:
    """(C, h, w) feature map, (N, 4) xyxy boxes in pixels of the (H, W) canvas -> (N, C) vectors (see the
    module doc for ``pool``)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    _, h, w = feature.shape
    sy, sx = h / canvas[0], w / canvas[1]  # grid cells per canvas pixel
    rows = []
    for x0, y0, x1, y1 in boxes.tolist():
        if pool == "center":
            r = min(max(int((y0 + y1) / 2 * sy), 0), h - 1)
            c = min(max(int((x0 + x1) / 2 * sx), 0), w - 1)
            rows.append(feature[:, r, c])
            continue
        r0, c0 = min(max(math.floor(y0 * sy), 0), h - 1), min(max(math.floor(x0 * sx), 0), w - 1)
        r1, c1 = max(min(math.ceil(y1 * sy), h), r0 + 1), max(min(math.ceil(x1 * sx), w), c0 + 1)
        rows.append(feature[:, r0:r1, c0:c1].mean(dim=(1, 2)))
    return torch.stack(rows).float().numpy() if rows else np.zeros((0, feature.shape[0]), np.float32)


@torch.no_grad()
def box_features(backbone: VisionBackbone, items: Sequence[tuple[bytes, np.ndarray]], size: tuple[int, int],
                 pool: str = "mean", batch_size: int = 32, progress: bool = True
                 ) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Per backbone level, the (sum of N_i, C) features of the boxes of ``items`` = [(image bytes, (N_i, 4) xyxy
    boxes in its pixels)], in order, and the level's (h, w) grid: each image letterboxed to ``size`` (H, W) by
    the model's processor."""
    data = backbone.data_config
    processor = VLCoAttnImageProcessor(size=size, image_mean=data["mean"], image_std=data["std"])
    transform = processor.transform()
    rows: list[list[np.ndarray]] = [[] for _ in backbone.out_indices]
    grids: list[tuple[int, int]] = []
    bar = tqdm(total=len(items), desc=f"features {size[0]}x{size[1]}", unit="image", disable=not progress)
    for start in range(0, len(items), batch_size):
        canvases, boxes = [], []
        for image, image_boxes in items[start:start + batch_size]:
            pixels, on_canvas, _, _ = letterbox_image(image, transform, processor.max_pixels,
                                                      processor.fast_decode, image_boxes)
            canvases.append(pixels)
            boxes.append(on_canvas)
        feats = backbone(processor.normalize(torch.stack(canvases)))
        grids = [tuple(f.shape[-2:]) for f in feats]
        for level, f in enumerate(feats):
            rows[level] += [pool_boxes(f[b], boxes[b], size, pool) for b in range(len(canvases))]
        bar.update(len(canvases))
    bar.close()
    return [np.concatenate(r) for r in rows], grids
