"""Where the grounding token looks, per expression type: SMCA's prior and attention against plain attention.

For every grounding sample of the first ``limit`` of a split, each model's grounding token ([CLS]) is
scored per fusion layer by :func:`vlcoattn.eval.alignment.token_alignment`: the share of its head-mean
attention inside the target box ("mass"; a uniform map scores the box's share of the image, "chance"),
whether the attention's centroid (where the box head starts) lies in the box, and the same for its
Gaussian prior (SMCA models). :func:`run` writes the means per model and expression type, with Acc@0.5,
as a markdown table, and a figure of examples per expression type: the last layer's prior and the first
and last layers' attention over the image, the true box green, the predicted one red. The convergence
study and ``studies/prior_attention.py`` call it on the study's models.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle
from torchvision.ops import box_convert, box_iou

from ..data import build_eval_loader
from ..infer.predictor import forward_with_base
from ..loading import load_model_dir
from ..tasks import model_inputs
from ..utils.reporting import markdown_table
from .alignment import token_alignment

__all__ = ["analyse", "draw", "run", "table"]

TYPES = ("attribute", "relational", "superlative")


@torch.inference_mode()
def analyse(model_dir: Path, sources: str, limit: int, examples: int, batch_size: int = 64) -> tuple[list[dict], list[dict]]:
    """(one row of scores per grounding sample, the first ``examples`` of each expression type with their
    image and last-layer maps) for the model saved in ``model_dir``."""
    model, processor, task = load_model_dir(model_dir)
    ip = processor.image_processor
    mean, std = torch.tensor(ip.image_mean).view(3, 1, 1), torch.tensor(ip.image_std).view(3, 1, 1)
    loader = build_eval_loader(sources, processor, batch_size=batch_size, limit=limit,
                               answer_vocab=getattr(model.config, "answer_vocab", None) or [])
    token = model.config.heads_config.grounding_token_index
    rows, kept = [], defaultdict(list)
    for batch in loader:
        idx = batch["box_mask"].nonzero().flatten().tolist() if "box_mask" in batch else []  # rows with a box
        if not idx:
            continue
        keep = torch.tensor(idx)
        inputs = {k: v[keep] for k, v in model_inputs(task, batch, "cpu", targets=False).items()}  # grounding rows
        out, base = forward_with_base(model, {**inputs, "output_attentions": True})
        boxes = batch["boxes"][keep].float()
        scores = token_alignment(base, boxes, token)
        ious = box_iou(box_convert(out.pred_boxes.float(), "cxcywh", "xyxy"),
                       box_convert(boxes, "cxcywh", "xyxy")).diagonal()
        grid = base.grid_sizes[-1]
        for n, i in enumerate(idx):
            kind = batch["meta"][i].get("type", "other")
            rows.append({"type": kind, "hit": float(ious[n] >= 0.5), **{k: float(v[n]) for k, v in scores.items()}})
            if len(kept[kind]) < examples:
                kept[kind].append({
                    "key": batch["keys"][i], "text": batch["texts"][i], "type": kind,
                    "image": (batch["pixel_values"][i].float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy(),
                    "true": boxes[n].tolist(), "pred": out.pred_boxes[n].float().tolist(),
                    "attention L1": base.cross_attentions[0][-1][n, :, token].mean(0).view(*grid).numpy(),
                    "attention": base.cross_attentions[-1][-1][n, :, token].mean(0).view(*grid).numpy(),
                    "prior": (base.log_priors[-1][-1][n, :, token].float().softmax(-1).mean(0).view(*grid).numpy()
                              if base.log_priors and base.log_priors[-1][-1] is not None else None),
                })
    return rows, [e for kind in TYPES for e in kept.get(kind, [])]


def _mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def table(rows_by_arm: dict[str, list[dict]]) -> str:
    """Per arm, its Acc@0.5 and, per map (prior / attention) and fusion layer, "mass / centroid in box /
    spread" per expression type (and over all types), with a uniform map's figures for reference."""
    kinds = [k for k in (*TYPES, "all")
             if k == "all" or any(r["type"] == k for rows in rows_by_arm.values() for r in rows)]
    some = next(iter(rows_by_arm.values()))

    def select(rows: list[dict], kind: str) -> list[dict]:
        return [r for r in rows if kind in ("all", r["type"])]

    out = [["uniform map", "", *(f"{_mean(select(some, k), 'chance'):.3f} / – / ≈0.40" for k in kinds)]]
    for arm, rows in rows_by_arm.items():
        out.append([arm, "Acc@0.5", *(f"{_mean(select(rows, k), 'hit'):.3f} (n={len(select(rows, k))})" for k in kinds)])
        for key in sorted({k.rsplit("_", 1)[0] + "/" + k.split("/")[1] for k in rows[0] if "/" in k},
                          key=lambda k: (k.startswith("attention"), k)):
            name, layer = key.split("/")
            out.append([arm, f"{name} L{layer}", *(
                " / ".join(f"{_mean(select(rows, k), f'{name}_{m}/{layer}'):.3f}" for m in ("mass", "inside", "spread"))
                for k in kinds)])
    return markdown_table(["arm", "map", *kinds], out)


def draw(examples_by_arm: dict[str, list[dict]], out: Path) -> Path:
    """One row per example: the text, then per arm its last-layer prior (SMCA) and its first- and last-layer
    attention over the image."""
    arms = list(examples_by_arm)
    columns = [(arm, kind) for arm in arms for kind in ("prior", "attention L1", "attention")
               if kind != "prior" or examples_by_arm[arm][0]["prior"] is not None]
    n = min(len(v) for v in examples_by_arm.values())
    fig, axes = plt.subplots(n, len(columns), figsize=(2.0 * len(columns), 2.2 * n), squeeze=False)
    for r in range(n):
        top = max(float(examples_by_arm[arm][r][kind].max()) for arm, kind in columns)  # one color scale per row
        for c, (arm, kind) in enumerate(columns):
            ex, ax = examples_by_arm[arm][r], axes[r][c]
            H, W = ex["image"].shape[:2]
            ax.imshow(ex["image"])
            ax.imshow(ex[kind], extent=(0, W, H, 0), cmap="jet", alpha=0.45, interpolation="bilinear",
                      vmin=0.0, vmax=top)
            boxes = [("true", "lime")] + ([("pred", "red")] if kind == "attention" else [])
            for name, color in boxes:
                cx, cy, w, h = ex[name]
                ax.add_patch(Rectangle(((cx - w / 2) * W, (cy - h / 2) * H), w * W, h * H, fill=False, color=color, lw=1.5))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{arm} {kind if kind.endswith('L1') else kind + ' L2'}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f'{ex["type"]}\n"{ex["text"]}"', fontsize=7, wrap=True)
    fig.suptitle("[CLS] over the image, fusion layers 1 and 2 (L1, L2)\none color scale per row; green: true box, red: predicted", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _shown(path: Path) -> str:
    """``path`` relative to the working directory (a study runs from the repository) when it lies inside it."""
    path, here = Path(path).resolve(), Path.cwd().resolve()
    return str(path.relative_to(here)) if path.is_relative_to(here) else str(path)


def run(models: dict[str, Path], sources: str, limit: int, table_path: Path, figure: Path, examples: int = 2) -> str:
    """Analyse every model (arm name -> saved model dir) on the first ``limit`` samples of ``sources``, write
    the table (markdown, to ``table_path``) and the figure; returns the table."""
    rows_by_arm, examples_by_arm = {}, {}
    for arm, model_dir in models.items():
        rows_by_arm[arm], examples_by_arm[arm] = analyse(model_dir, sources, limit, examples)
    text = table(rows_by_arm)
    table_path.parent.mkdir(parents=True, exist_ok=True)
    names = ", ".join(f"{a} = {_shown(p)}" for a, p in models.items())
    table_path.write_text(
        f"{Path(sources).name}, the grounding samples among its first {limit}; models: {names}. Each cell: mass in the "
        "true box / share of centroids in the box / spread (RMS distance from the centroid, in image sides) of "
        f"the [CLS] token's head-mean map.\n\n{text}\n")
    draw(examples_by_arm, figure)
    return text
