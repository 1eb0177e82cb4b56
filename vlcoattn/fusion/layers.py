"""The SMCA co-attention fusion layer and its stack (docs/design.md §1).

One layer, post-LN like BERT/DETR (text stream ``t``, image stream ``v_l`` per feature level):

    t   = LN(t + W_O CollabSelfAttn(t, text padding))                 text self-attention (CooBERT's)
    t   = LN(t + SMCA(t -> v_l + pos_l, log G, image padding))         text -> image, Gaussian prior
    v   = LN(v + CrossAttn(v + pos -> t, text padding))               image -> text (two_way only)
    t   = LN(t + FFN(t));   v_l = LN(v_l + FFN'(v_l))                  FFN on both streams

The image stream's updates (image->text attention, FFN') are left out of the LAST layer, whose
image output nothing reads.

Keys are image tokens + 2D sine positions. By default the VALUES carry the positions too
(``position_in_values=True``): the fused text tokens then hold *where* they attended, which the
grounding head needs to regress a box from one token (with DETR's content-only values a single
query can only learn absolute positions through the CNN's padding artefacts; overfitting 8 images
converged far more slowly). ``position_in_values=False`` is DETR's convention.

Where the centers come from (``center_from``). Layer 0's reference c_t comes from the text alone
(``ReferenceCenterHead`` on its cross-attention queries). With ``"text"`` (the paper's form, docs/design.md §3) every
later layer reuses it; with ``"attention"`` (default) layer l > 0 centers its Gaussians on where the
token looked in layer l - 1, the head-mean centroid m_t = mean_k sum_j p_{t,k,j} (x_j, y_j) of its
attention -- the words alone cannot know where "the red cube" is in this image, the attention can.
Each layer has its own offsets and scales.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from ..text.attention import (
    CollaborativeSelfAttention,
    build_attention_mask,
    collaborative_attention_reference,
)
from ..text.modeling_coobert import concatenation_mixing
from .smca import CENTER_SOURCES, CrossAttentionOutput, ReferenceCenterHead, SMCACrossAttention

__all__ = ["FeedForward", "FusionOutput", "SMCAFusionEncoder", "SMCAFusionLayer"]


class FeedForward(nn.Module):
    """dense d -> intermediate, activation, dense -> d, dropout."""

    def __init__(self, d_model: int, intermediate_size: int, act: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, intermediate_size)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(intermediate_size, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(x))))


@dataclass
class FusionOutput:
    """Fused streams and everything needed to look inside the SMCA prior."""

    text_hidden_state: torch.Tensor  # (B, T, d)
    image_hidden_states: list[torch.Tensor]  # per level (B, S_l, d)
    reference_centers: torch.Tensor | None = None  # (B, T, 2) normalized (x, y), from layer 0
    attended: tuple[torch.Tensor, ...] = ()  # per layer (B, T, N_h, 2) centroid of each head's attention
    # (B, T, 2) each token's center after the stack, what a box starts from: the last layer's head-mean
    # attention centroid (center_from "attention") or the layer-0 text reference ("text")
    base_centers: torch.Tensor | None = None
    centers: tuple[torch.Tensor, ...] = ()  # per layer (B, T, N_h, 2)
    scales: tuple[torch.Tensor, ...] = ()  # per layer (B, T, N_h, 2)
    level_weights: tuple[torch.Tensor, ...] = ()  # per layer (B, T, L), multi-scale only
    cross_attentions: tuple[list[torch.Tensor], ...] = ()  # per layer, per level (B, N_h, T, S_l)
    log_priors: tuple[list[torch.Tensor], ...] = ()  # per layer, per level (B, N_h, T, S_l)
    self_attentions: tuple[torch.Tensor, ...] = ()  # per layer (B, N_h, T, T)
    image_attentions: tuple[torch.Tensor, ...] = ()  # per layer (B, N_h, S, T), two-way only


class SMCAFusionLayer(GradientCheckpointingLayer):
    """Text self-attention (collaborative) -> SMCA text->image -> [image->text] -> FFNs (recomputed in the
    backward pass under ``gradient_checkpointing_enable()``)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        intermediate_size: int,
        shared_key_dim: int | None = None,
        spatial_prior: str = "gaussian",
        beta: float = 8.0,
        prior_sharing: str = "per_head",
        num_levels: int = 1,
        level_scale_multipliers: Sequence[float] | None = None,
        two_way: bool = False,
        position_in_values: bool = True,
        offset_mode: str = "logit",
        has_reference_head: bool = False,
        update_image: bool = True,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.position_in_values = position_in_values
        self.self_attn = CollaborativeSelfAttention(d_model, num_heads, shared_key_dim, dropout=attention_dropout)
        with torch.no_grad():
            self.self_attn.mixing.copy_(concatenation_mixing(num_heads, self.self_attn.shared_key_dim))
        self.self_out = nn.Linear(d_model, d_model)
        self.self_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        use_ref = has_reference_head and spatial_prior == "gaussian"
        self.reference_head = ReferenceCenterHead(d_model) if use_ref else None
        self.cross_attn = SMCACrossAttention(
            d_model, num_heads, spatial_prior, beta, prior_sharing, num_levels, level_scale_multipliers,
            attention_dropout, offset_mode,
        )
        self.cross_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        if two_way and update_image:
            self.image_attn = SMCACrossAttention(d_model, num_heads, "none", dropout=attention_dropout)
            self.image_attn_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        else:
            self.image_attn = self.image_attn_norm = None
        self.text_ffn = FeedForward(d_model, intermediate_size, hidden_act, dropout)
        self.text_ffn_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        if update_image:
            self.image_ffn = FeedForward(d_model, intermediate_size, hidden_act, dropout)
            self.image_ffn_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        else:  # the last layer: nothing reads an updated image stream
            self.image_ffn = self.image_ffn_norm = None
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        image: Sequence[torch.Tensor],
        image_pos: Sequence[torch.Tensor],
        grid_sizes: Sequence[tuple[int, int]],
        image_valid: Sequence[torch.Tensor | None] | None = None,
        extents: Sequence[torch.Tensor | None] | None = None,
        reference_centers: torch.Tensor | None = None,
        output_attentions: bool = False,
        attn_impl: str = "sdpa",
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None, CrossAttentionOutput, dict]:
        """text (B, T, d) with text_mask (B, T) 1 = real; image/image_pos per level (B|1, S_l, d).

        Returns (text, image levels, reference centers, the SMCA output record, other attentions).
        """
        B, T, _ = text.shape
        eager = output_attentions or attn_impl == "eager"
        maps: dict = {}

        # 1. text self-attention, collaborative (shared W~_Q, W~_K, mixing, content bias)
        self_mask, _ = build_attention_mask(text_mask, T, 0, False, text.dtype)  # (B, 1, T, T) or None
        if eager:
            ctx, maps["self"] = collaborative_attention_reference(self.self_attn, text, self_mask)
        else:
            ctx = self.self_attn(text, self_mask)  # (B, T, d)
        text = self.self_norm(text + self.dropout(self.self_out(ctx)))

        # 2. text -> image, SMCA: every token a query with its own Gaussian per head
        if self.reference_head is not None:
            reference_centers = self.reference_head(text)  # (B, T, 2), reused by later layers
        keys = [v + p for v, p in zip(image, image_pos)]  # (B, S_l, d)
        ca = self.cross_attn(
            text, keys, keys if self.position_in_values else list(image), grid_sizes, reference_centers,
            image_valid, extents,
            output_attentions=output_attentions, attn_impl=attn_impl,
        )
        text = self.cross_norm(text + self.dropout(ca.output))

        # 3. image -> text (two-way co-attention): image cells attend to the real text tokens
        image = list(image)
        if self.image_attn is not None:
            sizes = [v.shape[1] for v in image]
            flat = torch.cat(image, dim=1)  # (B, S, d)
            flat_pos = torch.cat([p.expand(B, -1, -1) for p in image_pos], dim=1)
            valid = text_mask.bool() if text_mask is not None else None
            ia = self.image_attn(
                flat + flat_pos, [text], [text], key_valid=[valid],
                output_attentions=output_attentions, attn_impl=attn_impl,
            )
            if output_attentions:
                maps["image"] = ia.attentions[0]  # (B, N_h, S, T)
            flat = self.image_attn_norm(flat + self.dropout(ia.output))
            image = list(flat.split(sizes, dim=1))

        # 4. FFN on both streams
        text = self.text_ffn_norm(text + self.text_ffn(text))
        if self.image_ffn is not None:
            image = [self.image_ffn_norm(v + self.image_ffn(v)) for v in image]
        return text, image, reference_centers, ca, maps


class SMCAFusionEncoder(nn.Module):
    """A stack of :class:`SMCAFusionLayer`; layer 0 owns the reference-center head, later layers take
    their reference from ``center_from`` (see the module docstring). The last layer leaves the image
    stream as it is (no image FFN / image->text attention): only the text tokens leave the stack, so
    those parameters would get no gradient."""

    def __init__(self, num_layers: int, center_from: str = "attention", **layer_kwargs) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"the fusion stack needs at least one layer, got {num_layers}")
        if center_from not in CENTER_SOURCES:
            raise ValueError(f"center_from must be one of {CENTER_SOURCES}, got {center_from!r}")
        self.center_from = center_from
        self.layers = nn.ModuleList(
            SMCAFusionLayer(**layer_kwargs, has_reference_head=(i == 0), update_image=(i < num_layers - 1))
            for i in range(num_layers)
        )

    def forward(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        image: Sequence[torch.Tensor],
        image_pos: Sequence[torch.Tensor],
        grid_sizes: Sequence[tuple[int, int]],
        image_valid: Sequence[torch.Tensor | None] | None = None,
        extents: Sequence[torch.Tensor | None] | None = None,
        output_attentions: bool = False,
        attn_impl: str = "sdpa",
    ) -> FusionOutput:
        """See :meth:`SMCAFusionLayer.forward`; returns the last layer's streams and per-layer records."""
        reference = first_reference = None
        centers, scales, attended, alphas, cross, priors, selfs, imgs = [], [], [], [], [], [], [], []
        for i, layer in enumerate(self.layers):
            text, image, reference, ca, maps = layer(
                text, text_mask, image, image_pos, grid_sizes, image_valid, extents, reference,
                output_attentions, attn_impl,
            )
            if i == 0:
                first_reference = reference
            attended.append(ca.attended)
            if self.center_from == "attention" and reference is not None:
                reference = ca.attended.mean(dim=2)  # (B, T, 2): where the token looked, head mean
            if ca.centers is not None:
                centers.append(ca.centers)
                scales.append(ca.scales)
            if ca.level_weights is not None:
                alphas.append(ca.level_weights)
            if output_attentions:
                cross.append(ca.attentions)
                priors.append(ca.log_priors)
                selfs.append(maps["self"])
                if "image" in maps:
                    imgs.append(maps["image"])
        last = attended[-1]  # None when the keys are not on a grid
        base = last.mean(dim=2) if self.center_from == "attention" and last is not None else first_reference
        return FusionOutput(
            text_hidden_state=text,
            image_hidden_states=image,
            reference_centers=first_reference,
            attended=tuple(attended),
            base_centers=base,
            centers=tuple(centers),
            scales=tuple(scales),
            level_weights=tuple(alphas),
            cross_attentions=tuple(cross),
            log_priors=tuple(priors),
            self_attentions=tuple(selfs),
            image_attentions=tuple(imgs),
        )
