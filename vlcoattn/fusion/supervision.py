"""Supervising where the text tokens look: every token of a phrase whose box is known is told that box.

A supervised pair (p, t) is a phrase p with a box b = (b_x, b_y, b_w, b_h) (normalized cxcywh) and a token t
of its span. Per fusion layer l and head k (deep supervision, as DETR's auxiliary decoding losses):

    prior, center:  L_c = |c_x - b_x| + |c_y - b_y|                     c = c_{t,k}, the Gaussian's center
    prior, width:   L_s = |log σ_x - log σ*_x| + |log σ_y - log σ*_y|
                    σ_x = sqrt(β/2) / (|s_x| m W)                         the Gaussian's std, normalized
                    σ*_x = b_w / sqrt(12)                                 the std of a uniform spread over b
    attention:      L_a = -log(Σ_l α_l Σ_{j ∈ b} p^l_{t,k,j} + ε)          the share of attention on b's cells

σ: log G = -(x - W c_x)^2 s_x^2 / β is a Gaussian of std sqrt(β/2) / |s_x| cells, W cells to the image
width, on the level whose grid (H, W) and precision multiplier m the caller names (with the default
multipliers, stride_l / max stride, the width in pixels is the same on every level). σ* matches the box's
second moment: an object filling b spreads its pixels with std b_w / sqrt(12) along x, so a Gaussian of that
std has the object's spread (1-σ covers 58% of the box width). The width term is on the log, so halving or
doubling a width costs the same. p^l: level l's cross-attention probabilities, α_l the scale-selection
weights (1 with one level); "j ∈ b": the cells the box touches, so a box smaller than a cell still has one.

Each loss is a mean over heads, summed over layers, then summed over the supervised pairs and divided by
``num_items``, the pairs of the whole optimizer step (as ``num_items_in_batch``: accumulated micro-batches
give the full batch's loss), or by this batch's pairs without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["attention_mass_loss", "box_cells", "prior_supervision_loss", "supervised_pairs"]

MASS_EPS = 1e-6  # ε of -log(mass + ε): finite when no attention falls on the box


def supervised_pairs(phrase_tokens: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    """bool (B, P, T): token t is in phrase p and p has a box (``phrase_mask`` (B, P))."""
    return phrase_tokens.bool() & phrase_mask.bool()[..., None]


def _reduce(per_pair: torch.Tensor, pairs: torch.Tensor, num_items: int | None) -> torch.Tensor:
    """Σ over supervised pairs of ``per_pair`` (B, P, T), divided by ``num_items`` (default: the pairs here)."""
    denom = num_items if num_items is not None else int(pairs.sum())
    return (per_pair * pairs.to(per_pair.dtype)).sum() / max(float(denom), 1.0)


def prior_supervision_loss(
    centers: Sequence[torch.Tensor],
    scales: Sequence[torch.Tensor],
    phrase_boxes: torch.Tensor,
    pairs: torch.Tensor,
    cells: tuple[float, float],
    beta: float = 8.0,
    num_items: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_c, L_s) of the module docstring, summed over layers.

    centers / scales: per layer (B, T, N_h, 2) normalized centers and precisions s; phrase_boxes (B, P, 4)
    normalized cxcywh; pairs (B, P, T) from :func:`supervised_pairs`; cells: (m W, m H) of the level the
    width is measured on.
    """
    box = phrase_boxes[:, :, None, None, :].to(centers[0].dtype)  # (B, P, 1, 1, 4)
    size = torch.tensor(cells, dtype=box.dtype, device=box.device)
    target = torch.log(box[..., 2:].clamp_min(1e-3) / math.sqrt(12.0))  # log σ*, (B, P, 1, 1, 2)
    loss_c = loss_s = box.new_zeros(())
    for c, s in zip(centers, scales):
        c, s = c[:, None], s[:, None]  # (B, 1, T, N_h, 2)
        log_std = 0.5 * math.log(beta / 2) - 0.5 * s.square().clamp_min(1e-12).log() - size.log()
        loss_c = loss_c + _reduce((c - box[..., :2]).abs().sum(-1).mean(-1), pairs, num_items)
        loss_s = loss_s + _reduce((log_std - target).abs().sum(-1).mean(-1), pairs, num_items)
    return loss_c, loss_s


def box_cells(boxes: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """(B, P, H*W) float, 1 where the cell touches the box: boxes (B, P, 4) normalized cxcywh, the grid
    row-major as the attention's keys. Cell (i, j) spans [j/W, (j+1)/W] x [i/H, (i+1)/H]."""
    H, W = grid_size
    x0, x1 = boxes[..., 0:1] - boxes[..., 2:3] / 2, boxes[..., 0:1] + boxes[..., 2:3] / 2  # (B, P, 1)
    y0, y1 = boxes[..., 1:2] - boxes[..., 3:4] / 2, boxes[..., 1:2] + boxes[..., 3:4] / 2
    j = torch.arange(W, device=boxes.device, dtype=boxes.dtype)
    i = torch.arange(H, device=boxes.device, dtype=boxes.dtype)
    in_x = (j / W < x1) & ((j + 1) / W > x0)  # (B, P, W)
    in_y = (i / H < y1) & ((i + 1) / H > y0)  # (B, P, H)
    return (in_y[..., :, None] & in_x[..., None, :]).flatten(-2).to(boxes.dtype)  # (B, P, H*W)


def attention_mass_loss(
    cross_attentions: Sequence[Sequence[torch.Tensor]],
    grid_sizes: Sequence[tuple[int, int]],
    phrase_boxes: torch.Tensor,
    pairs: torch.Tensor,
    level_weights: Sequence[torch.Tensor] | None = None,
    num_items: int | None = None,
) -> torch.Tensor:
    """L_a of the module docstring, summed over layers.

    cross_attentions: per layer, per level (B, N_h, T, S_l) text -> image probabilities; grid_sizes: per
    level (H_l, W_l); level_weights: per layer (B, T, L) α (None or empty with one level).
    """
    boxes = phrase_boxes.to(cross_attentions[0][0].dtype)
    inside = [box_cells(boxes, tuple(g)) for g in grid_sizes]  # per level (B, P, S_l)
    loss = boxes.new_zeros(())
    for layer, maps in enumerate(cross_attentions):
        mass = 0.0
        for lvl, (p, cell) in enumerate(zip(maps, inside)):
            m = torch.einsum("bhts,bps->bhpt", p, cell)  # (B, N_h, P, T) this level's share on each box
            if len(maps) > 1:
                m = m * level_weights[layer][:, None, None, :, lvl]
            mass = mass + m
        loss = loss + _reduce(-torch.log(mass + MASS_EPS).mean(1), pairs, num_items)
    return loss
