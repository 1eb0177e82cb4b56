"""The probe end to end: objects -> box features at each input size and level -> one linear probe per attribute."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..vision import VisionBackbone
from .features import box_features
from .linear import HELDOUT_FRACTION, fit_probe, is_heldout
from .objects import ProbeObjects
from .report import TOLERANCE, ProbeReport, ProbeResult

__all__ = ["attribute_features", "probe_features"]


def attribute_features(backbone: VisionBackbone, found: ProbeObjects, size: tuple[int, int], pool: str = "mean",
                       batch_size: int = 32, progress: bool = True
                       ) -> tuple[dict[str, list[np.ndarray]], list[tuple[int, int]]]:
    """Per attribute, per level, the (N, C) features of its objects in order, and each level's grid. Each image
    goes through the backbone once, each distinct box is pooled once, whatever the attributes that share them."""
    rows: dict[str, dict[tuple, int]] = {}  # image id -> {box: its row among the image's boxes}
    for objects in found.objects.values():
        for image, box, _ in objects:
            rows.setdefault(image, {}).setdefault(box, len(rows[image]))
    items = [(found.images[image], np.array(list(boxes), dtype=np.float64)) for image, boxes in rows.items()]
    offset = dict(zip(rows, np.cumsum([0, *(len(b) for b in rows.values())]).tolist()))
    levels, grids = box_features(backbone, items, size, pool, batch_size, progress)
    picked = {}
    for attribute, objects in found.objects.items():
        index = np.array([offset[image] + rows[image][box] for image, box, _ in objects], dtype=np.int64)
        picked[attribute] = [level[index] for level in levels]
    return picked, grids


def _split(found: ProbeObjects, heldout: ProbeObjects | None, attribute: str, train_x: np.ndarray,
           test_x: np.ndarray | None) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """(x, y) of the training and the held-out objects: a separate held-out set, else a split by image."""
    labels = [label for _, _, label in found.objects[attribute]]
    if heldout is not None:
        return train_x, labels, test_x, [label for _, _, label in heldout.objects[attribute]]
    out = np.array([is_heldout(image) for image, _, _ in found.objects[attribute]], dtype=bool)
    return (train_x[~out], [y for y, o in zip(labels, out) if not o],
            train_x[out], [y for y, o in zip(labels, out) if o])


def probe_features(backbone: VisionBackbone, found: ProbeObjects, image_sizes: Sequence[tuple[int, int]],
                   heldout: ProbeObjects | None = None, pool: str = "mean", tolerance: float = TOLERANCE,
                   batch_size: int = 32, progress: bool = True, context: dict[str, Any] | None = None) -> ProbeReport:
    """One probe per input size, backbone level and attribute of ``found`` (see :mod:`vlcoattn.probe`).

    Held out: the objects of ``heldout`` when given (another split of the data), else those of the
    images of ``found`` that :func:`~vlcoattn.probe.linear.is_heldout` picks."""
    found.check("the training samples")
    if heldout is not None:
        heldout.check("the held-out samples")
    elif len({is_heldout(image) for image in found.images}) < 2:
        raise ValueError(f"all {len(found.images)} images fall on one side of the held-out split: read more "
                         "samples, or give a separate held-out split")
    results = []
    for size in image_sizes:
        train, grids = attribute_features(backbone, found, size, pool, batch_size, progress)
        test = attribute_features(backbone, heldout, size, pool, batch_size, progress)[0] if heldout else None
        for level, (stride, grid) in enumerate(zip(backbone.strides, grids)):
            for attribute in found.objects:
                x_tr, y_tr, x_te, y_te = _split(found, heldout, attribute, train[attribute][level],
                                                test[attribute][level] if test else None)
                results.append(ProbeResult(tuple(size), stride, grid, attribute, fit_probe(x_tr, y_tr, x_te, y_te)))
    how = "the separate held-out split" if heldout is not None else \
        f"{100 * HELDOUT_FRACTION:g}% of the images, chosen by a hash of their bytes"
    return ProbeReport(results, pool, how, tolerance, dict(context or {}))
