"""End-of-run report: ``report.md`` with the final metrics, loss / metric curves and a prediction grid."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..tasks import get_task, sample_task_names
from .metrics_log import read_metrics

HEADLINE = tuple(m for name in sample_task_names() for m in get_task(name).headline_metrics)  # each task's figures
BASELINES = ("answer_prior", "question_prior", "center_box", "whole_image")  # metric prefixes of vlcoattn.eval.baselines


def plot_curves(metrics: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """Train loss (and LR) and every headline validation metric against the step, one panel each."""
    train = [m for m in metrics if m["split"] == "train" and "loss" in m]
    val = [m for m in metrics if m["split"] == "val"]
    names = ["loss"] + [n for n in HEADLINE if any(n in m for m in val)]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        if name == "loss" and train:
            ax.plot([m["step"] for m in train], [m["loss"] for m in train], label="train", lw=1)
        points = [(m["step"], m[name]) for m in val if name in m]
        if points:
            ax.plot(*zip(*points), "o-", label="val", ms=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_examples(examples: Sequence[dict[str, Any]], out: str | Path, cols: int = 4) -> Path:
    """Grid of validation images: true box green, predicted box red, the [CLS] prior as a faint
    heatmap, phrases' boxes dashed in a colour per phrase with its words; the title holds the text and the predicted vs true answer (or the answer / label alone,
    for shard previews). A text-only sample gets a blank panel with its title."""
    rows = max(1, -(-len(examples) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, ex in zip(axes.flat, examples):
        image = ex.get("image")
        if image is None:  # a text-only sample: its title alone
            ax.set_title(textwrap.fill(ex["text"], 34) + (f"\nlabel: {ex['label']}" if "label" in ex else ""), fontsize=8)
            continue
        H, W = image.shape[:2]
        ax.imshow(image)
        if "heatmap" in ex and "true_box" in ex:  # a grounding row: its prior as a red glow, transparent where low
            heat = ex["heatmap"] / max(float(ex["heatmap"].max()), 1e-12)
            glow = np.zeros((*heat.shape, 4))
            glow[..., 0], glow[..., 3] = 1.0, 0.55 * heat
            ax.imshow(glow, extent=(0, W, H, 0), interpolation="bilinear")
        for key, color in (("true_box", "lime"), ("pred_box", "red")):
            if key in ex:
                x0, y0, x1, y1 = ex[key]
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=color, lw=2))
        _draw_phrases(ax, ex.get("phrases", ()))
        title = textwrap.fill(ex["text"], 34)
        truth = max(set(ex["answers"]), key=ex["answers"].count) if ex.get("answers") else "?"
        if "pred_answer" in ex:
            title += f"\npred: {ex['pred_answer']}  true: {truth}"
        elif "answers" in ex:
            title += f"\nanswer: {truth}"
        if "label" in ex:
            title += f"\nlabel: {ex['label']}"
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def _draw_phrases(ax: Any, phrases: Sequence[dict[str, Any]]) -> None:
    """Each phrase's boxes (xyxy pixels) dashed in a colour of its own, labelled with its words."""
    for k, phrase in enumerate(phrases):
        color = plt.get_cmap("tab10")(k % 10)
        for x0, y0, x1, y1 in phrase["boxes"]:
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=color, lw=1.5, ls="--"))
            ax.text(x0, y0, phrase["text"], color="white", fontsize=6, va="bottom",
                    bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "lw": 0})


def _baseline_table(final: dict[str, dict[str, float]]) -> list[str]:
    """The model next to the trivial baselines scored on the same samples (see ``vlcoattn.eval.baselines``)."""
    names = [b for b in BASELINES if any(k.startswith(b + "/") for m in final.values() for k in m)]
    if not names:
        return []
    lines = ["", "The model next to trivial baselines on the same samples (answer prior: the most frequent",
             "training answer; question prior: the most frequent training answer to the same question, no",
             "image; center box: the mean training box, or phrase box, at the image center; whole image: the",
             "image's box for every phrase):", "",
             "| split | metric | model | " + " | ".join(b.replace("_", " ") for b in names) + " |",
             "|---" * (len(names) + 3) + "|"]
    for split, m in final.items():
        for metric in ("vqa_acc", "acc@0.5", "mean_iou", "recall@1_any", "recall@1_merged"):
            cells = [f"{m[f'{b}/{metric}']:.4f}" if f"{b}/{metric}" in m else "" for b in names]
            if metric in m and any(cells):
                lines.append(f"| {split} | {metric} | {m[metric]:.4f} | " + " | ".join(cells) + " |")
    return lines


def metrics_table(final: dict[str, dict[str, float]]) -> str:
    """The final metrics per split, the trivial baselines beside them and the per-type breakdown (markdown)."""
    names = [n for n in (*HEADLINE, "loss") if any(n in m for m in final.values())]
    extra = sorted({n for m in final.values() for n in m if "/" in n and n.split("/")[0] not in BASELINES})
    lines = ["| split | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for split, m in final.items():
        lines.append(f"| {split} | " + " | ".join(f"{m[n]:.4f}" if n in m else "" for n in names) + " |")
    lines += _baseline_table(final)
    if extra:
        lines += ["", "Breakdown by question / expression / phrase type:", "", "| split | metric | value |", "|---|---|---|"]
        lines += [f"| {s} | {n} | {m[n]:.4f} |" for s, m in final.items() for n in extra if n in m]
    return "\n".join(lines)


def write_report(
    run_dir: str | Path,
    final: dict[str, dict[str, float]],
    examples: Sequence[dict[str, Any]] = (),
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write ``report.md`` (+ ``curves.png``, ``predictions.png``) into ``run_dir``; returns its path."""
    run_dir = Path(run_dir)
    parts = ["# Training report", ""]
    if summary:
        parts += [f"- {k}: {v}" for k, v in summary.items()] + [""]
    parts += ["## Final metrics", "", metrics_table(final), ""]
    metrics = read_metrics(run_dir / "metrics.jsonl")
    if metrics:
        plot_curves(metrics, run_dir / "curves.png")
        parts += ["## Curves", "", "![curves](curves.png)", ""]
    if examples:
        plot_examples(examples, run_dir / "predictions.png")
        parts += ["## Validation predictions", "",
                  "Green: true box, red: predicted box; red glow: the [CLS] token's Gaussian prior.", "",
                  "![predictions](predictions.png)", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(parts))
    return path


__all__ = ["metrics_table", "np", "plot_curves", "plot_examples", "write_report"]
