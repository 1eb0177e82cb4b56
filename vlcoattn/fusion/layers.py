"""The SMCA co-attention fusion layer and its stack (docs/design.md §1).

One layer, post-LN like BERT/DETR (text stream ``t``, image stream ``v_l`` per feature level):

    t   = LN(t + W_O CollabSelfAttn(t, text padding))                 text self-attention (CooBERT's)
    t   = LN(t + SMCA(t -> v_l + pos_l, log G, image padding))         text -> image, Gaussian prior
    v   = LN(v + CrossAttn(v + pos -> t, text padding))               image -> text (two_way only)
    t   = LN(t + FFN(t));   v_l = LN(v_l + FFN'(v_l))                  FFN on both streams

The image stream's updates (image->text attention, FFN') are left out of the LAST layer, whose
image output nothing reads, and out of every layer for the keys-only levels (``keys_only_levels``): their
cells are keys and values of the SMCA attention and pass through the stack unchanged, which makes a fine
level cheap (its cells cost k/v projections and T x S scores, not an image FFN and attention per cell).

Keys and values are image tokens + 2D sine positions: the fused text tokens then hold *where* they
attended, which the grounding head needs to regress a box from one token (with DETR's content-only
values a single query can only learn absolute positions through the CNN's padding artefacts;
overfitting 8 images converged far more slowly).

Where the centers come from. Layer 0's reference c_t comes from the text alone (``ReferenceCenterHead``
on its cross-attention queries); layer l > 0 centers its Gaussians on where the token looked in layer
l - 1, the head-mean centroid m_t = mean_k sum_j p_{t,k,j} (x_j, y_j) of its attention -- the words alone
cannot know where "the red cube" is in this image, the attention can (the paper's form, every layer
reusing c_t, left the grounding head at the mean box). Each layer has its own offsets and scales.

The text self-attention and both FFNs are CooBERT's own blocks (``CooBertAttention``, ``CooBertIntermediate``
+ ``CooBertOutput``) at the fusion's width; the attention implementation (SDPA or the explicit softmax that
returns the maps) is the model config's ``_attn_implementation``, as in transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from ..text.attention import build_attention_mask, collaborative_attention_reference
from ..text.configuration_coobert import CooBertConfig
from ..text.modeling_coobert import CooBertAttention, CooBertIntermediate, CooBertOutput
from .config import CoAttentionConfig, fusion_block_config
from .smca import CrossAttentionOutput, ReferenceCenterHead, SMCACrossAttention

__all__ = ["FeedForward", "FusionLayerOutput", "FusionOutput", "SMCAFusionEncoder", "SMCAFusionLayer"]


class FeedForward(nn.Module):
    """CooBERT's FFN with its residual and LayerNorm: LN(x + dropout(W_2 act(W_1 x)))."""

    def __init__(self, config: CooBertConfig) -> None:
        super().__init__()
        self.intermediate = CooBertIntermediate(config)
        self.output = CooBertOutput(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(x), x)


@dataclass
class FusionLayerOutput:
    """What one fusion layer returns: both streams and the records of its attentions."""

    text: torch.Tensor  # (B, T, d)
    image: list[torch.Tensor]  # per level (B, S_l, d)
    reference_centers: torch.Tensor | None  # (B, T, 2) layer 0's text reference, passed on
    cross: CrossAttentionOutput  # the SMCA text -> image attention
    self_attention: torch.Tensor | None = None  # (B, N_h, T, T), when maps are requested
    # (B, N_h, S, T) over the cells of the updated levels, two-way, when maps are requested
    image_attention: torch.Tensor | None = None


@dataclass
class FusionOutput:
    """Fused streams and everything needed to look inside the SMCA prior."""

    text_hidden_state: torch.Tensor  # (B, T, d)
    image_hidden_states: list[torch.Tensor]  # per level (B, S_l, d)
    reference_centers: torch.Tensor | None = None  # (B, T, 2) normalized (x, y), from layer 0
    attended: tuple[torch.Tensor, ...] = ()  # per layer (B, T, N_h, 2) centroid of each head's attention
    # (B, T, 2) each token's center after the stack, what a box starts from: the last layer's head-mean
    # attention centroid (the layer-0 text reference when the keys are not on a grid)
    base_centers: torch.Tensor | None = None
    centers: tuple[torch.Tensor, ...] = ()  # per layer (B, T, N_h, 2)
    scales: tuple[torch.Tensor, ...] = ()  # per layer (B, T, N_h, 2)
    level_weights: tuple[torch.Tensor, ...] = ()  # per layer (B, T, L), multi-scale only
    cross_attentions: tuple[list[torch.Tensor], ...] = ()  # per layer, per level (B, N_h, T, S_l)
    log_priors: tuple[list[torch.Tensor], ...] = ()  # per layer, per level (B, N_h, T, S_l)
    self_attentions: tuple[torch.Tensor, ...] = ()  # per layer (B, N_h, T, T)
    image_attentions: tuple[torch.Tensor, ...] = ()  # per layer (B, N_h, S, T), two-way only, S: updated levels
    # the text stream entering the stack, then after every layer: num_layers + 1 of (B, T, d)
    text_hidden_states: tuple[torch.Tensor, ...] = ()


class SMCAFusionLayer(GradientCheckpointingLayer):
    """Text self-attention (collaborative) -> SMCA text->image -> [image->text] -> FFNs (recomputed in the
    backward pass under ``gradient_checkpointing_enable()``).

    config: the :class:`CoAttentionConfig` (its CooBERT blocks via :func:`fusion_block_config`, its prior, two_way);
    level_scale_multipliers: one precision factor per image level. updated_levels: the positions of the levels
    the image stream updates (image->text attention, image FFN); the others pass through. None = every level;
    [] (the last layer, or every level keys-only) leaves the image stream as it is and builds none of its blocks.
    """

    def __init__(
        self,
        config: CoAttentionConfig,
        level_scale_multipliers: Sequence[float] = (1.0,),
        has_reference_head: bool = False,
        updated_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        block = fusion_block_config(config)
        d = block.hidden_size
        self.self_attention = CooBertAttention(block)  # LN(t + W_O CollabSelfAttn(t))
        use_ref = has_reference_head and config.spatial_prior == "gaussian"
        self.reference_head = ReferenceCenterHead(d) if use_ref else None
        self.cross_attn = SMCACrossAttention(config, level_scale_multipliers)
        self.cross_norm = nn.LayerNorm(d, eps=block.layer_norm_eps)
        all_levels = range(len(level_scale_multipliers))
        self.updated_levels = list(all_levels if updated_levels is None else updated_levels)
        update_image = bool(self.updated_levels)
        if config.two_way and update_image:
            self.image_attn = SMCACrossAttention(config, prior=False)
            self.image_attn_norm = nn.LayerNorm(d, eps=block.layer_norm_eps)
        else:
            self.image_attn = self.image_attn_norm = None
        self.text_ffn = FeedForward(block)
        self.image_ffn = FeedForward(block) if update_image else None  # none: nothing to update or read
        self.dropout = nn.Dropout(block.hidden_dropout_prob)

    def forward(
        self,
        text: torch.Tensor,
        image: Sequence[torch.Tensor],
        image_pos: Sequence[torch.Tensor],
        grid_sizes: Sequence[tuple[int, int]],
        *,
        text_mask: torch.Tensor | None = None,
        reference_centers: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_cross_attentions: bool = False,
        attn_implementation: str = "sdpa",
    ) -> FusionLayerOutput:
        """text (B, T, d) with text_mask (B, T) 1 = real; image / image_pos per level (B|1, S_l, d).
        ``output_attentions`` or ``attn_implementation="eager"``: the explicit-softmax paths, with maps;
        ``output_cross_attentions``: that path for the text -> image maps only (what a loss on them reads)."""
        B, T, _ = text.shape
        eager = output_attentions or attn_implementation == "eager"
        self_probs = image_probs = None

        # 1. text self-attention, collaborative (shared W~_Q, W~_K, mixing, content bias)
        self_mask, _ = build_attention_mask(text_mask, T, 0, False, text.dtype)  # (B, 1, T, T) or None
        if eager:
            ctx, self_probs = collaborative_attention_reference(self.self_attention.self, text, self_mask)
            text = self.self_attention.output(ctx, text)
        else:
            text = self.self_attention(text, self_mask)  # (B, T, d)

        # 2. text -> image, SMCA: every token a query with its own Gaussian per head
        if self.reference_head is not None:
            reference_centers = self.reference_head(text)  # (B, T, 2), reused by later layers
        keys = [v + p for v, p in zip(image, image_pos)]  # (B, S_l, d)
        cross = self.cross_attn(
            text, keys, grid_sizes=grid_sizes, reference_centers=reference_centers,
            output_attentions=eager or output_cross_attentions,
        )
        text = self.cross_norm(text + self.dropout(cross.output))

        # 3. image -> text (two-way co-attention): the updated levels' cells attend to the real text tokens
        image, updated = list(image), self.updated_levels
        if self.image_attn is not None:
            sizes = [image[lvl].shape[1] for lvl in updated]
            flat = torch.cat([image[lvl] for lvl in updated], dim=1)  # (B, S, d)
            flat_pos = torch.cat([image_pos[lvl].expand(B, -1, -1) for lvl in updated], dim=1)
            valid = [text_mask.bool()] if text_mask is not None else None
            ia = self.image_attn(flat + flat_pos, [text], values=[text], key_valid=valid, output_attentions=eager)
            image_probs = ia.attentions[0] if eager else None  # (B, N_h, S, T)
            flat = self.image_attn_norm(flat + self.dropout(ia.output))
            for lvl, v in zip(updated, flat.split(sizes, dim=1)):
                image[lvl] = v

        # 4. FFN on both streams (the image's on the updated levels)
        text = self.text_ffn(text)
        if self.image_ffn is not None:
            for lvl in updated:
                image[lvl] = self.image_ffn(image[lvl])
        return FusionLayerOutput(text, image, reference_centers, cross, self_probs, image_probs)


class SMCAFusionEncoder(nn.Module):
    """A stack of ``config.num_layers`` :class:`SMCAFusionLayer`; layer 0 owns the reference-center head,
    later layers center on where the token looked in the layer before (see the module docstring). The last
    layer leaves the image stream as it is (no image FFN / image->text attention): only the text tokens
    leave the stack, so those parameters would get no gradient. No layer updates the keys-only levels
    (``config.keys_only_levels``).

    level_scale_multipliers: one precision factor per image level (``VLCoAttnModel`` resolves
    ``config.level_scale_multipliers``' default from the backbone's strides)."""

    def __init__(self, config: CoAttentionConfig, level_scale_multipliers: Sequence[float] = (1.0,)) -> None:
        super().__init__()
        n, updated = config.num_layers, config.updated_levels(len(level_scale_multipliers))
        self.layers = nn.ModuleList(
            SMCAFusionLayer(config, level_scale_multipliers, has_reference_head=(i == 0),
                            updated_levels=updated if i < n - 1 else [])
            for i in range(n)
        )

    def forward(
        self,
        text: torch.Tensor,
        image: Sequence[torch.Tensor],
        image_pos: Sequence[torch.Tensor],
        grid_sizes: Sequence[tuple[int, int]],
        output_hidden_states: bool = False,
        **layer_kwargs,
    ) -> FusionOutput:
        """See :meth:`SMCAFusionLayer.forward` (the other keyword arguments go to every layer); returns the
        last layer's streams and per-layer records (``output_hidden_states``: the text stream too)."""
        maps = layer_kwargs.get("output_attentions", False)
        cross_maps = maps or layer_kwargs.get("output_cross_attentions", False)
        reference = first_reference = None
        layers = []
        texts = [text]
        for i, layer in enumerate(self.layers):
            out = layer(text, image, image_pos, grid_sizes, reference_centers=reference, **layer_kwargs)
            text, image, reference = out.text, out.image, out.reference_centers
            texts.append(text)
            if i == 0:
                first_reference = reference
            if reference is not None:
                reference = out.cross.attended.mean(dim=2)  # (B, T, 2): where the token looked, head mean
            layers.append(out)
        cross = [o.cross for o in layers]
        last = cross[-1].attended  # None when the keys are not on a grid
        base = last.mean(dim=2) if last is not None else first_reference
        return FusionOutput(
            text_hidden_state=text,
            image_hidden_states=image,
            reference_centers=first_reference,
            attended=tuple(c.attended for c in cross),
            base_centers=base,
            centers=tuple(c.centers for c in cross if c.centers is not None),
            scales=tuple(c.scales for c in cross if c.scales is not None),
            level_weights=tuple(c.level_weights for c in cross if c.level_weights is not None),
            cross_attentions=tuple(c.attentions for c in cross) if cross_maps else (),
            log_priors=tuple(c.log_priors for c in cross) if cross_maps else (),
            self_attentions=tuple(o.self_attention for o in layers) if maps else (),
            image_attentions=tuple(o.image_attention for o in layers if o.image_attention is not None) if maps else (),
            text_hidden_states=tuple(texts) if output_hidden_states else (),
        )
