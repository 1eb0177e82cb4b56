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
from ..utils.checks import check_choice, check_positive
from .smca import CENTER_SOURCES, CrossAttentionOutput, ReferenceCenterHead, SMCACrossAttention

__all__ = ["FeedForward", "FusionLayerOutput", "FusionOutput", "SMCAFusionEncoder", "SMCAFusionLayer",
           "fusion_block_config"]


def fusion_block_config(
    d_model: int,
    num_heads: int,
    intermediate_size: int,
    shared_key_dim: int | None = None,
    dropout: float = 0.1,
    attention_dropout: float = 0.1,
    hidden_act: str = "gelu",
    layer_norm_eps: float = 1e-12,
) -> CooBertConfig:
    """The CooBERT block config of a fusion layer: its width, heads, D~k, FFN size, dropout and norm."""
    return CooBertConfig(
        hidden_size=d_model, num_attention_heads=num_heads, intermediate_size=intermediate_size,
        shared_key_dim=shared_key_dim, hidden_dropout_prob=dropout, attention_probs_dropout_prob=attention_dropout,
        hidden_act=hidden_act, layer_norm_eps=layer_norm_eps,
    )


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
    image_attention: torch.Tensor | None = None  # (B, N_h, S, T), two-way, when maps are requested


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
    backward pass under ``gradient_checkpointing_enable()``).

    block: the CooBERT block config (:func:`fusion_block_config`); the SMCA arguments as
    :class:`SMCACrossAttention`'s. ``update_image=False`` (the last layer) leaves the image stream as it is.
    """

    def __init__(
        self,
        block: CooBertConfig,
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
    ) -> None:
        super().__init__()
        d, heads, p_attn = block.hidden_size, block.num_attention_heads, block.attention_probs_dropout_prob
        self.position_in_values = position_in_values
        self.self_attention = CooBertAttention(block)  # LN(t + W_O CollabSelfAttn(t))
        use_ref = has_reference_head and spatial_prior == "gaussian"
        self.reference_head = ReferenceCenterHead(d) if use_ref else None
        self.cross_attn = SMCACrossAttention(
            d, heads, spatial_prior, beta=beta, prior_sharing=prior_sharing, num_levels=num_levels,
            level_scale_multipliers=level_scale_multipliers, dropout=p_attn, offset_mode=offset_mode,
        )
        self.cross_norm = nn.LayerNorm(d, eps=block.layer_norm_eps)
        if two_way and update_image:
            self.image_attn = SMCACrossAttention(d, heads, "none", dropout=p_attn)
            self.image_attn_norm = nn.LayerNorm(d, eps=block.layer_norm_eps)
        else:
            self.image_attn = self.image_attn_norm = None
        self.text_ffn = FeedForward(block)
        self.image_ffn = FeedForward(block) if update_image else None  # the last layer: nothing reads it
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
        attn_implementation: str = "sdpa",
    ) -> FusionLayerOutput:
        """text (B, T, d) with text_mask (B, T) 1 = real; image / image_pos per level (B|1, S_l, d).
        ``output_attentions`` or ``attn_implementation="eager"``: the explicit-softmax paths, with maps."""
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
            text, keys, values=keys if self.position_in_values else list(image), grid_sizes=grid_sizes,
            reference_centers=reference_centers, output_attentions=eager,
        )
        text = self.cross_norm(text + self.dropout(cross.output))

        # 3. image -> text (two-way co-attention): image cells attend to the real text tokens
        image = list(image)
        if self.image_attn is not None:
            sizes = [v.shape[1] for v in image]
            flat = torch.cat(image, dim=1)  # (B, S, d)
            flat_pos = torch.cat([p.expand(B, -1, -1) for p in image_pos], dim=1)
            valid = [text_mask.bool()] if text_mask is not None else None
            ia = self.image_attn(flat + flat_pos, [text], values=[text], key_valid=valid, output_attentions=eager)
            image_probs = ia.attentions[0] if eager else None  # (B, N_h, S, T)
            flat = self.image_attn_norm(flat + self.dropout(ia.output))
            image = list(flat.split(sizes, dim=1))

        # 4. FFN on both streams
        text = self.text_ffn(text)
        if self.image_ffn is not None:
            image = [self.image_ffn(v) for v in image]
        return FusionLayerOutput(text, image, reference_centers, cross, self_probs, image_probs)


class SMCAFusionEncoder(nn.Module):
    """A stack of :class:`SMCAFusionLayer`; layer 0 owns the reference-center head, later layers take
    their reference from ``center_from`` (see the module docstring). The last layer leaves the image
    stream as it is (no image FFN / image->text attention): only the text tokens leave the stack, so
    those parameters would get no gradient."""

    def __init__(self, num_layers: int, block: CooBertConfig, center_from: str = "attention", **smca_kwargs) -> None:
        super().__init__()
        check_positive("num_layers", num_layers)
        check_choice("center_from", center_from, CENTER_SOURCES)
        self.center_from = center_from
        self.layers = nn.ModuleList(
            SMCAFusionLayer(block, **smca_kwargs, has_reference_head=(i == 0), update_image=(i < num_layers - 1))
            for i in range(num_layers)
        )

    def forward(
        self,
        text: torch.Tensor,
        image: Sequence[torch.Tensor],
        image_pos: Sequence[torch.Tensor],
        grid_sizes: Sequence[tuple[int, int]],
        **layer_kwargs,
    ) -> FusionOutput:
        """See :meth:`SMCAFusionLayer.forward` (the keyword arguments go to every layer); returns the last
        layer's streams and per-layer records."""
        maps = layer_kwargs.get("output_attentions", False)
        reference = first_reference = None
        layers = []
        for i, layer in enumerate(self.layers):
            out = layer(text, image, image_pos, grid_sizes, reference_centers=reference, **layer_kwargs)
            text, image, reference = out.text, out.image, out.reference_centers
            if i == 0:
                first_reference = reference
            if self.center_from == "attention" and reference is not None:
                reference = out.cross.attended.mean(dim=2)  # (B, T, 2): where the token looked, head mean
            layers.append(out)
        cross = [o.cross for o in layers]
        last = cross[-1].attended  # None when the keys are not on a grid
        base = last.mean(dim=2) if self.center_from == "attention" and last is not None else first_reference
        return FusionOutput(
            text_hidden_state=text,
            image_hidden_states=image,
            reference_centers=first_reference,
            attended=tuple(c.attended for c in cross),
            base_centers=base,
            centers=tuple(c.centers for c in cross if c.centers is not None),
            scales=tuple(c.scales for c in cross if c.scales is not None),
            level_weights=tuple(c.level_weights for c in cross if c.level_weights is not None),
            cross_attentions=tuple(c.attentions for c in cross) if maps else (),
            log_priors=tuple(c.log_priors for c in cross) if maps else (),
            self_attentions=tuple(o.self_attention for o in layers) if maps else (),
            image_attentions=tuple(o.image_attention for o in layers if o.image_attention is not None) if maps else (),
        )
