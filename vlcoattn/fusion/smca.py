"""Spatially modulated co-attention (SMCA; Gao et al., ICCV 2021) with text tokens as queries.

Every text token t predicts, per head k, a Gaussian over the image feature grid and adds its log to
the cross-attention logits (docs/design.md §3):

    c_t      = sigmoid(MLP(h_t))                 reference center in [0,1]^2 (x, y), first layer only
    c_{t,k}  = sigmoid(logit(c_t) + Δ_k(h_t))    Δ: Linear d -> 2 N_h  (the paper: c_t + Δ_k, see below)
    s_{t,k}  = S_k(h_t)                          S: Linear d -> 2 N_h, weight 0, bias 1 at init
    log G_{t,k}(i, j) = -((x_j - W c_x)^2 s_x^2 + (y_i - H c_y)^2 s_y^2) / β          (β = 8)
    attn     = softmax(q k^T / sqrt(d_h) + log G + key padding) v

Coordinates are in feature-cell units: cell (i, j) of an H x W grid has its center at
(x_j, y_i) = (j + 0.5, i + 0.5), and a normalized center c in [0,1] maps to (W c_x, H c_y), so c = 0
is the image's left/top edge and c = 1 its right/bottom edge -- the same normalized frame as
(cx, cy, w, h) boxes. Precision s is per cell: s = 1 is
a Gaussian of std sqrt(β/2) = 2 cells.

log G is passed as the float ``attn_mask`` of ``F.scaled_dot_product_attention`` (merged with the
key padding mask); :func:`attention_reference` is the explicit-softmax version used by tests and
whenever attention maps are requested (``output_attentions``). ``spatial_prior="none"`` drops the mask and leaves plain
multi-head cross-attention on the same code. Multi-scale: one Gaussian per feature level (its
precision times a per-level multiplier), one attention per level, outputs mixed by a per-token
scale-selection softmax α = softmax(Linear(h_t)).

Offsets. The paper writes c_{t,k} = c_t + Δ_k(h_t); nothing keeps that inside the image, and in our
overfitting runs heads drifted to centers like (2.6, 1.1) with sharp precisions, saw only border
cells, and the grounding model collapsed to one box for every image. Δ is therefore applied in logit
space, like the grounding head does (identical to first order at Δ = 0).

Every option (width, heads, attention dropout, ``spatial_prior``, ``beta``, ``prior_sharing``) comes from
the :class:`~vlcoattn.fusion.config.CoAttentionConfig`, which validates it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MLP

if TYPE_CHECKING:
    from .config import CoAttentionConfig

__all__ = [
    "PRIOR_SHARING",
    "SPATIAL_PRIORS",
    "CrossAttentionOutput",
    "ReferenceCenterHead",
    "SMCACrossAttention",
    "SpatialPriorHead",
    "attention_reference",
    "gaussian_log_prior",
    "grid_coordinates",
    "merge_masks",
]

SPATIAL_PRIORS = ("none", "gaussian")
# per_head: every head its own offset and scale (SMCA's default);
# shared_scales: per-head offsets, one scale pair per token shared by the heads;
# shared: one Gaussian per token shared by all heads (SMCA's "head-shared" ablation).
PRIOR_SHARING = ("per_head", "shared_scales", "shared")


def gaussian_log_prior(
    centers: torch.Tensor,
    scales: torch.Tensor,
    grid_size: tuple[int, int],
    beta: float = 8.0,
) -> torch.Tensor:
    """log G over an H x W grid for every token and head.

    centers: (B, T, N_h, 2) normalized (x, y); scales: (B, T, N_h, 2) precisions (s_x, s_y).
    Returns (B, N_h, T, H*W), row-major over the grid (index i*W + j), ready for SDPA.
    """
    H, W = grid_size
    B, T, N, _ = centers.shape
    dev, dt = centers.device, centers.dtype
    c = centers * torch.tensor([W, H], device=dev, dtype=dt)  # (B, T, N, 2) in cell units
    x = torch.arange(W, device=dev, dtype=dt) + 0.5  # (W,) cell centers x_j
    y = torch.arange(H, device=dev, dtype=dt) + 0.5  # (H,) cell centers y_i
    dx2 = (x - c[..., 0:1]).square() * scales[..., 0:1].square()  # (B, T, N, W)
    dy2 = (y - c[..., 1:2]).square() * scales[..., 1:2].square()  # (B, T, N, H)
    log_g = -(dy2[..., :, None] + dx2[..., None, :]) / beta  # (B, T, N, H, W)
    return log_g.permute(0, 2, 1, 3, 4).reshape(B, N, T, H * W)


def grid_coordinates(
    grid_size: tuple[int, int], batch: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Normalized (x, y) of every cell center, (B, 1, H*W, 2) row-major: ((j + 0.5) / W, (i + 0.5) / H)."""
    H, W = grid_size
    x = (torch.arange(W, device=device, dtype=dtype) + 0.5).expand(H, W)
    y = (torch.arange(H, device=device, dtype=dtype) + 0.5)[:, None].expand(H, W)
    cells = torch.stack([x, y], dim=-1).reshape(1, 1, H * W, 2)  # (1, 1, S, 2) in cell units
    return (cells / torch.tensor([W, H], device=device, dtype=dtype)).expand(batch, 1, H * W, 2)


def merge_masks(
    log_prior: torch.Tensor | None, key_valid: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor | None:
    """One additive float mask from a log-prior (B, N_h, T, S) and a key mask (B, S) (True = real).

    Padding keys get the dtype's minimum (set, not added, so nothing overflows to -inf/NaN). Under
    ``torch.compile`` / ``torch.export`` the key mask is always applied: skipping it would make the
    graph depend on the data.
    """
    if key_valid is None or (not torch.compiler.is_compiling() and bool(key_valid.all())):
        return log_prior.to(dtype) if log_prior is not None else None
    pad = ~key_valid.bool()[:, None, None, :]  # (B, 1, 1, S)
    base = log_prior.to(dtype) if log_prior is not None else torch.zeros(pad.shape, dtype=dtype, device=pad.device)
    return base.masked_fill(pad, torch.finfo(dtype).min)


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d_h) + mask) v, spelled out. q (B,N,T,d), k/v (B,N,S,d). ``dropout_p``: dropout
    on the probabilities before they weigh v, as SDPA's.

    Returns (output (B, N, T, d), probabilities (B, N, T, S), before dropout).
    """
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, N, T, S)
    if attn_mask is not None:
        scores = scores + attn_mask
    probs = scores.softmax(dim=-1)
    return F.dropout(probs, dropout_p) @ v if dropout_p > 0 else probs @ v, probs


class ReferenceCenterHead(MLP):
    """c_t = sigmoid(MLP(h_t)): torchvision's 2-layer MLP d -> d -> 2 (ReLU), normalized (x, y)."""

    def __init__(self, d_model: int) -> None:
        super().__init__(d_model, [d_model, 2], activation_layer=nn.ReLU)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(super().forward(h))  # (B, T, 2)


class SpatialPriorHead(nn.Module):
    """Per-head centers c_{t,k} = sigmoid(logit(c_t) + Δ_k(h_t)) and precisions S_k(h_t) (S: weight 0, bias 1
    at init). The offset acts in logit space, so a center stays inside the image (= c_t + c_t(1 - c_t) Δ_k
    to first order). ``prior_sharing`` (one of :data:`PRIOR_SHARING`) says which heads share an offset or
    a scale pair.
    """

    def __init__(self, d_model: int, num_heads: int, prior_sharing: str = "shared_scales") -> None:
        super().__init__()
        self.num_heads, self.prior_sharing = num_heads, prior_sharing
        self.n_offsets = 1 if prior_sharing == "shared" else num_heads
        self.n_scales = num_heads if prior_sharing == "per_head" else 1
        self.offsets = nn.Linear(d_model, 2 * self.n_offsets)
        self.scales = nn.Linear(d_model, 2 * self.n_scales)
        self.scales._vlcoattn_init = "unit_scale"  # tells VLCoAttnPreTrainedModel._init_weights: w 0, b 1
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.offsets.weight, std=0.02)
        nn.init.zeros_(self.offsets.bias)
        nn.init.zeros_(self.scales.weight)  # docs/design.md §3: every token starts with s = 1
        nn.init.ones_(self.scales.bias)

    def forward(self, h: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, T, d), reference (B, T, 2) -> centers, scales, each (B, T, N_h, 2)."""
        B, T, _ = h.shape
        delta = self.offsets(h).view(B, T, self.n_offsets, 2)
        ref = reference[:, :, None, :]  # (B, T, 1, 2)
        centers = torch.sigmoid(torch.logit(ref.clamp(1e-6, 1 - 1e-6)) + delta)
        scales = self.scales(h).view(B, T, self.n_scales, 2)
        N = self.num_heads
        return centers.expand(B, T, N, 2), scales.expand(B, T, N, 2)


@dataclass
class CrossAttentionOutput:
    """What one (SMCA) cross-attention returns besides its output."""

    output: torch.Tensor  # (B, T, d)
    centers: torch.Tensor | None = None  # (B, T, N_h, 2) normalized per-head Gaussian centers
    scales: torch.Tensor | None = None  # (B, T, N_h, 2) precisions s (before the per-level multipliers)
    level_weights: torch.Tensor | None = None  # (B, T, L) scale-selection softmax α
    attended: torch.Tensor | None = None  # (B, T, N_h, 2) normalized centroid of each head's attention
    attentions: list[torch.Tensor] | None = None  # per level (B, N_h, T, S_l), when requested
    log_priors: list[torch.Tensor] | None = None  # per level (B, N_h, T, S_l), when requested


class SMCACrossAttention(nn.Module):
    """Multi-head cross-attention from queries (text tokens) to one or more key grids (image levels).

    Args:
        config: the :class:`~vlcoattn.fusion.config.CoAttentionConfig`: width and heads (d_h = hidden_size /
            num_attention_heads), attention dropout, and the prior (``spatial_prior``: ``"gaussian"`` (SMCA)
            or ``"none"``, plain cross-attention on the same code; ``beta``; ``prior_sharing``).
        level_scale_multipliers: one factor per key grid on the precision s; their number is the number
            of levels (> 1 adds the scale-selection softmax).
        prior: False = no prior whatever the config says (a two-way layer's image -> text attention).
    """

    def __init__(
        self, config: CoAttentionConfig, level_scale_multipliers: Sequence[float] = (1.0,), prior: bool = True
    ) -> None:
        super().__init__()
        d_model, num_heads = config.hidden_size, config.num_attention_heads
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.spatial_prior = config.spatial_prior if prior else "none"
        self.beta, self.num_levels = float(config.beta), len(level_scale_multipliers)
        self.level_scale_multipliers = [float(m) for m in level_scale_multipliers]
        self.dropout = float(config.attention_probs_dropout_prob)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        gaussian = self.spatial_prior == "gaussian"
        self.prior = SpatialPriorHead(d_model, num_heads, config.prior_sharing) if gaussian else None
        self.level_select = nn.Linear(d_model, self.num_levels) if self.num_levels > 1 else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, S, _ = x.shape
        return x.view(B, S, self.num_heads, self.head_dim).transpose(1, 2)  # (B, N_h, S, d_h)

    def _attend_level(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
        xy: torch.Tensor | None, output_attentions: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One level: o = softmax(q k^T / sqrt(d_h) + log G + padding) v, and where each head looked,
        m = sum_j p_j (x_j, y_j). q (B, N_h, T, d_h), k / v (B, N_h, S, d_h), mask (B, N_h|1, T, S),
        xy (B, 1, S, 2) cell centers. Returns (o (B, N_h, T, d_h), m (B, T, N_h, 2), p (B, N_h, T, S))."""
        p_drop = self.dropout if self.training else 0.0
        if output_attentions:  # the explicit softmax, whose probabilities are returned
            o, p = attention_reference(q, k, v, mask, p_drop)
            looked = (p @ xy).transpose(1, 2) if xy is not None else None
            return o, looked, p
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)
        looked = None
        if xy is not None:  # the same centroid, by SDPA with the coordinates as values (no dropout)
            looked = F.scaled_dot_product_attention(q, k, xy.expand(-1, self.num_heads, -1, -1), attn_mask=mask)
            looked = looked.transpose(1, 2)
        return o, looked, None

    def forward(
        self,
        query: torch.Tensor,
        keys: Sequence[torch.Tensor],
        *,
        values: Sequence[torch.Tensor] | None = None,
        grid_sizes: Sequence[tuple[int, int]] | None = None,
        reference_centers: torch.Tensor | None = None,
        key_valid: Sequence[torch.Tensor | None] | None = None,
        output_attentions: bool = False,
    ) -> CrossAttentionOutput:
        """Attend from ``query`` (B, T, d) to each level's keys, then mix the levels.

        keys / values: per level (B, S_l, d); keys usually carry the position encoding, values not
            (values default to keys). grid_sizes: per level (H_l, W_l) with H_l * W_l = S_l (needed
            by the Gaussian prior). reference_centers: (B, T, 2) normalized (needed by the prior).
        key_valid: per level (B, S_l) bool, True for real keys (e.g. text padding), or None.
        output_attentions: use :func:`attention_reference` and return the maps and log-priors.
        """
        if len(keys) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} key levels, got {len(keys)}")
        if self.prior is not None and (reference_centers is None or grid_sizes is None):
            raise ValueError("the gaussian spatial prior needs reference_centers and grid_sizes")
        values = keys if values is None else values
        B, T, _ = query.shape
        q = self._heads(self.q_proj(query))  # (B, N_h, T, d_h)
        centers, scales = self.prior(query, reference_centers) if self.prior is not None else (None, None)

        outs, looked, attns, priors = [], [], [], []
        for lvl in range(self.num_levels):
            log_g = None
            if self.prior is not None:  # (B, N_h, T, S): this level's Gaussian, precision x its multiplier
                s = scales * self.level_scale_multipliers[lvl]
                log_g = gaussian_log_prior(centers, s, tuple(grid_sizes[lvl]), self.beta)
            mask = merge_masks(log_g, key_valid[lvl] if key_valid is not None else None, q.dtype)
            xy = grid_coordinates(tuple(grid_sizes[lvl]), B, q.dtype, q.device) if grid_sizes else None
            k, v = self._heads(self.k_proj(keys[lvl])), self._heads(self.v_proj(values[lvl]))  # (B, N_h, S, d_h)
            o, m, p = self._attend_level(q, k, v, mask, xy, output_attentions)
            outs.append(o.transpose(1, 2).reshape(B, T, self.d_model))  # (B, T, d)
            looked.append(m)
            attns.append(p)
            priors.append(log_g)

        # scale selection: out = sum_l alpha_l out_l, alpha = softmax(Linear(h_t)) (one level: alpha = 1)
        alpha = self.level_select(query).softmax(dim=-1) if self.level_select is not None else None  # (B, T, L)
        if alpha is None:
            out, attended = outs[0], looked[0]
        else:
            out = sum(alpha[..., lvl : lvl + 1] * o for lvl, o in enumerate(outs))
            attended = sum(alpha[..., lvl, None, None] * m for lvl, m in enumerate(looked)) if grid_sizes else None
        return CrossAttentionOutput(
            output=self.out_proj(out),
            centers=centers,
            scales=scales,
            level_weights=alpha,
            attended=attended,
            attentions=attns if output_attentions else None,
            log_priors=priors if output_attentions else None,
        )
