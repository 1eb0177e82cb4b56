"""Where a text token looks: its cross-attention and its Gaussian prior against the box it refers to.

For one token (the grounding token, ``heads_config.grounding_token_index``) of each sample, per fusion layer, a map
over the H x W feature grid (summing to 1) is scored against the target box:

    mass    = sum_c map(c) * |c ∩ box| / |c|     expected share of the looked-at cell inside the box
    inside  = centroid(map) in box               the centroid is where the box head starts
    spread  = sqrt(sum_c map(c) |xy_c - centroid|^2)   RMS distance from the centroid, in image sides
    chance  = |box| / |image|                    a uniform map's mass (its spread: 0.405 on an 8 x 8 grid)

Two maps: ``attention`` = head-mean softmax(q k^T / sqrt(d_h) + log G) (what the token reads) and
``prior`` = head-mean softmax(log G) (where its Gaussian points; SMCA models only). With several
feature levels, each level's scores are mixed by the token's scale-selection weights α, as the
model mixes the levels' outputs. Boxes and maps live on the normalized letterboxed canvas.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_convert

from ..fusion.smca import grid_coordinates

__all__ = ["cell_box_overlap", "inside", "map_scores", "token_alignment"]


def cell_box_overlap(boxes: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """(N, H*W): the share of each grid cell's area inside each box; boxes (N, 4) normalized cxcywh,
    cells in row-major order (cell (i, j) spans x in [j/W, (j+1)/W], y in [i/H, (i+1)/H])."""
    H, W = grid_size
    x0, y0, x1, y1 = box_convert(boxes.float(), "cxcywh", "xyxy").unbind(-1)  # (N,) each
    edges_x = torch.arange(W + 1, dtype=torch.float32, device=boxes.device) / W
    edges_y = torch.arange(H + 1, dtype=torch.float32, device=boxes.device) / H
    # overlap of [a, b] with [lo, hi], as a share of the cell's side
    ox = ((torch.minimum(edges_x[None, 1:], x1[:, None]) - torch.maximum(edges_x[None, :-1], x0[:, None])) * W).clamp(0, 1)
    oy = ((torch.minimum(edges_y[None, 1:], y1[:, None]) - torch.maximum(edges_y[None, :-1], y0[:, None])) * H).clamp(0, 1)
    return (oy[:, :, None] * ox[:, None, :]).flatten(1)  # (N, H, W) -> (N, H*W)


def map_scores(maps: Tensor, boxes: Tensor, grid_size: tuple[int, int]) -> dict[str, Tensor]:
    """``mass`` (N,) against boxes (N, 4) cxcywh, ``centroid`` (N, 2) normalized (x, y) and ``spread`` (N,)
    of maps (N, H*W)."""
    maps = maps.float()
    mass = (maps * cell_box_overlap(boxes, grid_size)).sum(-1)
    xy = grid_coordinates(grid_size, 1, torch.float32, maps.device)[0, 0]  # (H*W, 2) cell centers
    centroid = maps @ xy  # (N, 2)
    spread = (maps * (xy[None] - centroid[:, None]).square().sum(-1)).sum(-1).sqrt()
    return {"mass": mass, "centroid": centroid, "spread": spread}


def inside(points: Tensor, boxes: Tensor) -> Tensor:
    """(N,) 1.0 where point (N, 2) normalized (x, y) lies in box (N, 4) normalized cxcywh, else 0.0."""
    x0, y0, x1, y1 = box_convert(boxes.float(), "cxcywh", "xyxy").unbind(-1)
    x, y = points.unbind(-1)
    return ((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)).float()


def token_alignment(base: Any, boxes: Tensor, token: int = 0) -> dict[str, Tensor]:
    """Scores (N,) of token ``token``'s maps against ``boxes`` (N, 4) normalized cxcywh, per fusion layer
    (``attention_mass/1``, ``attention_inside/1``, ``attention_spread/1``, ..., ``prior_*`` with a prior),
    plus ``chance``.

    ``base``: a :class:`~vlcoattn.models.VLCoAttnModelOutput` of a forward with ``output_attentions=True``
    (its ``cross_attentions`` / ``log_priors``: per layer, per level (N, N_h, T, S_l)).
    """
    if not base.cross_attentions:
        raise ValueError("token_alignment needs the attention maps: run the model with output_attentions=True")
    out = {"chance": (boxes[:, 2] * boxes[:, 3]).float()}
    for layer, attns in enumerate(base.cross_attentions):
        priors = base.log_priors[layer] if base.log_priors else [None] * len(attns)
        # the levels' weights α (N, L), as the model mixes their outputs; one level: 1
        alpha = base.level_weights[layer][:, token].float() if base.level_weights else torch.ones(len(boxes), 1, device=boxes.device)
        maps = {"attention": [a[:, :, token].mean(1) for a in attns]}  # per level (N, S_l)
        if all(p is not None for p in priors):
            maps["prior"] = [p[:, :, token].float().softmax(-1).mean(1) for p in priors]
        for kind, levels in maps.items():
            scores = [map_scores(m, boxes, tuple(g)) for m, g in zip(levels, base.grid_sizes)]
            mass = sum(alpha[:, lvl] * s["mass"] for lvl, s in enumerate(scores))
            centroid = sum(alpha[:, lvl, None] * s["centroid"] for lvl, s in enumerate(scores))
            out[f"{kind}_spread/{layer + 1}"] = sum(alpha[:, lvl] * s["spread"] for lvl, s in enumerate(scores))
            out[f"{kind}_mass/{layer + 1}"] = mass
            out[f"{kind}_inside/{layer + 1}"] = inside(centroid, boxes)
    return out
