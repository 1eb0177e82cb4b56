"""The ``glyphs`` scene family's vocabulary: tiles of one colour told apart by a small mark inside.

A tile is a dark circle or square, 13 or 18 px at 128 px input (within one stride-16 cell), and its
identity is a light mark of 8 or 11 px drawn from lines and rectangles with PIL's primitives, without
anti-aliasing and without fonts, so the pixels are the same on every machine. The marks differ only in
their strokes (``plus`` and ``cross`` are the same strokes turned by 45 degrees, ``cross`` and ``slash``
one diagonal apart): a model must read the tile's inside to tell them apart. The scene, question and
expression machinery is :mod:`.synthetic`'s (``SyntheticConfig(family="glyphs")``).
"""

from __future__ import annotations

from typing import Any

from PIL import ImageDraw

MARKS = ("plus", "cross", "slash", "ring", "dot", "tee", "corner", "bars")
TILE_SHAPES = ("circle", "square")
GLYPH_SIZES = {"small": 0.1, "large": 0.14}  # tile side as a fraction of the image side: 13 / 18 px at 128
TILE_COLOR = (60, 68, 88)
MARK_COLOR = (245, 245, 240)

# CoGenT-like preset: squares never carry a cross or a ring and circles never a tee or bars in
# train/val/test; the other four marks come on both shapes.
GLYPH_HOLDOUT = (("cross", "square"), ("ring", "square"), ("tee", "circle"), ("bars", "circle"))


def glyph_side(tile_side: int) -> int:
    """The mark's side in a tile: 0.62 of it, inside the circle's inscribed square (0.71)."""
    return max(3, round(0.62 * tile_side))


def draw_glyph(draw: ImageDraw.ImageDraw, mark: str, x: int, y: int, side: int, fill: Any) -> None:
    """Draw ``mark`` in the ``side`` x ``side`` box at (x, y), strokes ~1/5 of the side wide."""
    e, w = side - 1, max(1, round(side / 5))
    c, q = (side - w) // 2, side // 4  # a centred stroke's offset; the dot's inset

    def hbar(top: int) -> None:
        draw.rectangle([x, y + top, x + e, y + top + w - 1], fill=fill)

    def vbar(left: int) -> None:
        draw.rectangle([x + left, y, x + left + w - 1, y + e], fill=fill)

    if mark == "plus":
        hbar(c), vbar(c)
    elif mark in ("cross", "slash"):  # diagonal bands as polygons: a wide line would spill out of the box
        k = w - 1
        draw.polygon([(x + e - k, y), (x + e, y), (x + e, y + k), (x + k, y + e), (x, y + e), (x, y + e - k)], fill=fill)
        if mark == "cross":
            draw.polygon([(x, y), (x + k, y), (x + e, y + e - k), (x + e, y + e), (x + e - k, y + e), (x, y + k)],
                         fill=fill)
    elif mark == "ring":
        draw.ellipse([x, y, x + e, y + e], outline=fill, width=w)
    elif mark == "dot":
        draw.rectangle([x + q, y + q, x + e - q, y + e - q], fill=fill)
    elif mark == "tee":
        hbar(0), vbar(c)
    elif mark == "corner":
        vbar(0), hbar(side - w)
    elif mark == "bars":
        hbar(side // 5), hbar(side - side // 5 - w)
    else:
        raise ValueError(f"unknown mark {mark!r}; choose from {MARKS}")
