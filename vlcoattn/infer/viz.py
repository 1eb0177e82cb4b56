"""A prediction as a picture: the image with its box and answers, then one panel per chosen word (or
per word and head) showing that word's Gaussian spatial prior over the image. A phrase grounding
prediction draws every phrase in its own colour: its box on the image, then its tokens' prior (with
the box again) in a panel of that colour.

Everything is drawn from the prediction dict alone (centers and widths in original-image pixels,
see :meth:`Predictor.predict`), so a saved JSON line can be drawn later. Matplotlib, Agg backend.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..data.image import DEFAULT_MAX_PIXELS, decode_image

__all__ = ["PHRASE_COLORS", "STOPWORDS", "draw_prediction", "phrase_color", "prior_map", "select_words"]

STOPWORDS = frozenset(
    {
        "a", "an", "the", "this", "that", "these", "those", "there", "here", "it", "its", "of", "on", "in",
        "at", "to", "into", "onto", "from", "by", "with", "for", "as", "and", "or", "is", "are", "was",
        "were", "be", "been", "am", "do", "does", "did", "has", "have", "had", "what", "which", "who",
        "whom", "whose", "where", "when", "how", "why", "any", "some",
    }
)
PANEL_INCHES = 3.6
DISPLAY_PIXELS = 1024  # the image is shown downscaled to this longer side
MAP_PIXELS = 192  # heatmaps are evaluated on a grid of this longer side
STROKE = [patheffects.withStroke(linewidth=4, foreground="black")]  # outlines the box and the markers
PHRASE_COLORS = ("red", "cyan", "yellow", "lime", "magenta", "orange", "deepskyblue", "white")


def select_words(
    prediction: dict[str, Any], words: Sequence[str] | None = None, max_words: int = 8
) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, its tokens) of the words to draw, in text order.

    ``words``: these words (matched case-insensitively to a word of the text or one of its word
    pieces; every match is drawn); default: the content words (with a letter, not a stopword),
    at most ``max_words``. ValueError for a requested word that is not in the text.
    """
    groups: dict[Any, tuple[str, list[dict[str, Any]]]] = {}
    for tok in prediction.get("tokens", []):
        if tok["special"]:
            continue
        key = tok["word_index"] if tok["word_index"] is not None else ("token", tok["index"])
        groups.setdefault(key, (tok["word"] or tok["token"], []))[1].append(tok)
    items = list(groups.values())
    if words:
        chosen: list[tuple[str, list[dict[str, Any]]]] = []
        for word in words:
            w = word.lower()
            hits = [g for g in items if g[0].lower() == w or any(t["token"].lower() == w for t in g[1])]
            if not hits:
                known = ", ".join(dict.fromkeys(g[0] for g in items))
                raise ValueError(f"--viz-tokens: {word!r} is not a word of the text (its words: {known})")
            chosen += [h for h in hits if h not in chosen]
        return chosen
    content = [g for g in items if any(c.isalpha() for c in g[0]) and g[0].lower() not in STOPWORDS]
    return (content or items)[:max_words]


def prior_map(
    tokens: Sequence[dict[str, Any]], size: tuple[int, int], head: int | None = None, resolution: int = MAP_PIXELS
) -> np.ndarray:
    """The tokens' Gaussian priors over a ``size`` = (W, H) image on a grid of longer side ``resolution``:
    each head's Gaussian normalized over the image (as the model's softmax over the grid), averaged
    over heads (or only ``head``) and tokens. Returns (h, w), summing to 1."""
    W, H = size
    scale = resolution / max(W, H)
    gw, gh = max(1, round(W * scale)), max(1, round(H * scale))
    xs = (np.arange(gw) + 0.5) * W / gw
    ys = (np.arange(gh) + 0.5) * H / gh
    maps = []
    for tok in tokens:
        for h, ((cx, cy), (sx, sy)) in enumerate(zip(tok["head_centers"], tok["sigma"])):
            if head is not None and h != head:
                continue
            log = -0.5 * ((ys[:, None] - cy) / sy) ** 2 - 0.5 * ((xs[None, :] - cx) / sx) ** 2
            g = np.exp(log - log.max())
            maps.append(g / g.sum())
    return np.mean(maps, axis=0)


def _title(prediction: dict[str, Any]) -> str:
    lines = textwrap.wrap(f'"{prediction["text"]}"', 44)[:3]
    if answers := prediction.get("answers"):
        lines.append("  ".join(f"{a['answer']} ({a['probability']:.2f})" for a in answers[:3]))
    return "\n".join(lines)


# (title, prior map, the center's marker, colour of the title, a box to draw or None)
Panel = tuple[str, np.ndarray, tuple[float, float], str, list[float] | None]


def phrase_color(index: int) -> str:
    """The colour of the ``index``-th phrase (cycling)."""
    return PHRASE_COLORS[index % len(PHRASE_COLORS)]


def _phrase_panels(prediction: dict[str, Any], size: tuple[int, int]) -> list[Panel]:
    """One panel per phrase: the head-averaged prior of its tokens, marked at their mean reference center."""
    by_index = {t["index"]: t for t in prediction.get("tokens", []) if "center" in t}
    panels: list[Panel] = []
    for j, phrase in enumerate(prediction["phrases"]):
        toks = [by_index[t] for t in phrase["token_indices"] if t in by_index]
        if toks:
            center = tuple(np.mean([t["center"] for t in toks], axis=0).tolist())
            panels.append((phrase["text"], prior_map(toks, size), center, phrase_color(j), phrase["box"]))
    return panels


def _load_picture(
    image: str | os.PathLike | bytes, prediction: dict[str, Any], max_pixels: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """The image's display pixels (downscaled to ``DISPLAY_PIXELS``) and its original (W, H), which
    must be the prediction's."""
    picture = decode_image(image if isinstance(image, bytes) else Path(image), max_pixels=max_pixels)
    W, H = picture.size
    if list(prediction["image_size"]) != [W, H]:
        raise ValueError(f"the prediction is for a {prediction['image_size']} image, this one is {[W, H]}")
    picture.thumbnail((DISPLAY_PIXELS, DISPLAY_PIXELS))
    return np.asarray(picture), (W, H)


def _prior_panels(
    prediction: dict[str, Any], size: tuple[int, int], words: Sequence[str] | None, heads: bool, max_words: int
) -> list[Panel]:
    """One panel per chosen word (head-averaged prior, marked at the word's reference center), or with
    ``heads`` one per word and head (the default words then share the cap ``max_words`` with the heads).
    No panel for a model without a spatial prior."""
    prior_tokens = [t for t in prediction.get("tokens", []) if "center" in t]
    if not prior_tokens:
        return []
    if prediction.get("phrases") and not words and not heads:
        return _phrase_panels(prediction, size)
    if heads and not words:
        max_words = max(1, max_words // len(prior_tokens[0]["head_centers"]))
    panels: list[Panel] = []
    for label, toks in select_words(prediction, words, max_words):
        if heads:
            for h, center in enumerate(toks[0]["head_centers"]):
                panels.append((f"{label} · head {h}", prior_map(toks, size, head=h), tuple(center), "black", None))
        else:
            panels.append((label, prior_map(toks, size), tuple(toks[0]["center"]), "black", None))
    return panels


def _figure(num_panels: int, size: tuple[int, int]) -> tuple[Figure, np.ndarray]:
    """A figure of up to 4 panels a row, each of the image's aspect; its axes, flat, without ticks."""
    W, H = size
    ncols = min(4, num_panels)
    nrows = math.ceil(num_panels / ncols)
    aspect = min(max(H / W, 0.2), 2.0)  # extreme shapes are stretched to stay readable
    fig = Figure(figsize=(PANEL_INCHES * ncols, (PANEL_INCHES * aspect + 0.9) * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[num_panels:]:
        ax.set_axis_off()
    return fig, axes


def _draw_box(ax: Any, box: Sequence[float], color: str, label: str | None = None) -> None:
    """An (x0, y0, x1, y1) box outlined in ``color``, its label above its top-left corner."""
    x0, y0, x1, y1 = box
    rect = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=2.5)
    rect.set_path_effects(STROKE)
    ax.add_patch(rect)
    if label:
        ax.text(x0, y0, label, color=color, fontsize=9, fontweight="bold", va="bottom", path_effects=STROKE)


def _draw_image_panel(ax: Any, pixels: np.ndarray, size: tuple[int, int], prediction: dict[str, Any],
                      has_prior: bool) -> None:
    """The image, the predicted box (red) or every phrase's box (its colour) and, as the title, the text and
    the top answers."""
    W, H = size
    ax.imshow(pixels, extent=(0, W, H, 0), aspect="auto")
    if box := prediction.get("box"):
        _draw_box(ax, box, "red")
    for j, phrase in enumerate(prediction.get("phrases", [])):
        _draw_box(ax, phrase["box"], phrase_color(j), phrase["text"])
    title = _title(prediction)
    if not has_prior:
        title += "\n(no spatial prior in this model: no heatmaps)"
    ax.set_title(title, fontsize=9)


def _draw_prior_panel(ax: Any, gray: np.ndarray, size: tuple[int, int], panel: Panel) -> None:
    """A word's prior as a heatmap over the gray image, its center marked (+)."""
    (W, H), (label, heat, (cx, cy), color, box) = size, panel
    extent = (0, W, H, 0)
    ax.imshow(gray, extent=extent, aspect="auto", cmap="gray", alpha=0.6)
    ax.imshow(heat, extent=extent, aspect="auto", cmap="jet", alpha=0.55, interpolation="bilinear",
              vmin=0.0, vmax=float(heat.max()))
    ax.plot([cx], [cy], marker="+", markersize=14, markeredgewidth=2.5, color="white", path_effects=STROKE)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    if box is not None:
        _draw_box(ax, box, color)
    ax.set_title(label, fontsize=12, fontweight="bold", color="black" if color == "white" else color)


def draw_prediction(
    image: str | os.PathLike | bytes,
    prediction: dict[str, Any],
    out_path: str | os.PathLike,
    *,
    words: Sequence[str] | None = None,
    heads: bool = False,
    max_words: int = 8,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Path:
    """Save a PNG of ``prediction`` (from :meth:`Predictor.predict`) over ``image``.

    Panel 1: the image, the predicted box (red) and the top answers. Then, for each word chosen by
    :func:`select_words` (``words`` / ``max_words``), its head-averaged Gaussian prior as a heatmap
    with the word's reference center (+); with ``heads``, one panel per word and head (the default
    words then number ``max_words // heads``, at least 1). A phrase grounding prediction draws every
    phrase's box in its colour and, by default, one panel per phrase (its tokens' prior and its box).
    Models without a spatial prior get panel 1 only. Returns the path written.
    """
    if "image_size" not in prediction:
        raise ValueError("draw_prediction needs an image-text prediction (no image_size in it)")
    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"--viz: folder {out_path.parent} does not exist")
    pixels, size = _load_picture(image, prediction, max_pixels)
    has_prior = any("center" in t for t in prediction.get("tokens", []))
    panels = _prior_panels(prediction, size, words, heads, max_words)
    fig, axes = _figure(1 + len(panels), size)
    _draw_image_panel(axes[0], pixels, size, prediction, has_prior)
    gray = pixels.mean(-1)
    for ax, panel in zip(axes[1:], panels):
        _draw_prior_panel(ax, gray, size, panel)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    return out_path
