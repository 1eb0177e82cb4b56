"""VLCoAttn: CooBERT text tokens x timm image grid, fused by SMCA co-attention (docs/design.md §1, §3).

    image ─► VisionBackbone ─► 1x1 conv + GroupNorm per level ─► + level embed ─► image tokens (B, S_l, d)
    text  ─► CooBertModel ─► Linear (if widths differ) ─────────────────────────► text tokens (B, T, d)
                     SMCAFusionEncoder (N layers; 2D sine positions on the image keys)
    ─► VLCoAttnModel outputs: fused text tokens, image tokens, per-token Gaussian centers / scales
    ─► VLCoAttnForQuestionAnswering: fused [CLS] -> MLP -> answer logits
    ─► VLCoAttnForGrounding: [CLS] box: center sigmoid(logit(c) + Δ), c = where [CLS] attended; (w, h) from an MLP
    ─► VLCoAttnForMultitask: both heads, batches may mix VQA and grounding rows

Boxes are normalized (cx, cy, w, h) in [0, 1] relative to the (unpadded) image, like DETR.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MLP, box_convert, generalized_box_iou
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

from ..fusion.layers import SMCAFusionEncoder
from ..fusion.position import PositionEmbeddingSine2D
from ..fusion.smca import gaussian_log_prior
from ..fusion.supervision import attention_mass_loss, prior_supervision_loss, supervised_pairs
from ..tasks.spec import SUPERVISED_TOKENS
from ..text.attention import CollaborativeSelfAttention, concatenation_mixing
from ..text.modeling_coobert import CooBertModel
from ..vision.backbone import VisionBackbone
from .configuration_vlcoattn import VLCoAttnConfig
from .feature_cache import FeatureCache, image_keys, text_keys

__all__ = [
    "AnswerHead",
    "BoxHead",
    "GatedImagePooling",
    "VLCoAttnForGrounding",
    "VLCoAttnForMultitask",
    "VLCoAttnForQuestionAnswering",
    "VLCoAttnGroundingOutput",
    "VLCoAttnModel",
    "VLCoAttnModelOutput",
    "VLCoAttnMultitaskOutput",
    "VLCoAttnPreTrainedModel",
    "VLCoAttnQuestionAnsweringOutput",
    "answer_loss",
    "grounding_loss",
    "phrase_loss",
    "prior_heatmaps",
    "span_means",
    "text_positions",
    "token_at",
]


# ---------------------------------------------------------------------------------------- outputs


@dataclass
class VLCoAttnModelOutput(ModelOutput):
    """last_hidden_state: fused text tokens (B, T, d); pooler_output: the fused [CLS], each row's first real
    token (B, d).

    text_encoder_hidden_state: the text encoder's output projected to the fusion width (B, T, d).
    image_hidden_states: per level (B, H_l*W_l, d) (a keys-only level's as it entered the fusion);
    image_positions: their 2D sine positions (B|1, H_l*W_l, d); grid_sizes: per level (H_l, W_l).
    reference_centers: (B, T, 2) normalized (x, y) from the first fusion layer (None without prior).
    attended_centers: per fusion layer (B, T, N_h, 2) normalized centroid of each head's attention.
    base_centers: (B, T, 2) where each token's box starts: the last layer's head-mean attended center.
    centers / scales: per fusion layer (B, T, N_h, 2); level_weights: per layer (B, T, L) (multi-scale).

    With ``output_attentions`` (call or config), per fusion layer: cross_attentions / log_priors, per level
    (B, N_h, T, S_l), the text -> image probabilities and the log G added to their logits (log_priors'
    entries are None without a prior); attentions (B, N_h, T, T), the fused text self-attention;
    image_attentions (B, N_h, S, T), image -> text over the updated (not keys-only) levels' S cells (two-way;
    every layer but the last); and
    text_encoder_attentions, CooBERT's per layer (B, N_h_text, T, T).
    With ``output_hidden_states``: hidden_states, the fused text stream entering the stack and after every
    layer (num_layers + 1 of (B, T, d); the last is last_hidden_state), and text_encoder_hidden_states,
    CooBERT's (num_hidden_layers + 1 of (B, T, d_text)).
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    text_encoder_hidden_state: torch.Tensor | None = None
    image_hidden_states: tuple[torch.Tensor, ...] | None = None
    image_positions: tuple[torch.Tensor, ...] | None = None
    grid_sizes: tuple[tuple[int, int], ...] | None = None
    reference_centers: torch.Tensor | None = None
    attended_centers: tuple[torch.Tensor, ...] | None = None
    base_centers: torch.Tensor | None = None
    centers: tuple[torch.Tensor, ...] | None = None
    scales: tuple[torch.Tensor, ...] | None = None
    level_weights: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple | None = None
    log_priors: tuple | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    image_attentions: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    text_encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    text_encoder_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class VLCoAttnQuestionAnsweringOutput(ModelOutput):
    """loss (scalar), logits (B, num_answers), plus the fused outputs of the base model (the records that
    ``output_attentions`` / ``output_hidden_states`` add as in :class:`VLCoAttnModelOutput`).
    loss_prior_center / loss_prior_scale / loss_attention_mass: the supervision losses, unweighted (set when
    their weight in ``coattention_config`` is > 0 and the call has phrase boxes; see :meth:`supervision_losses`)."""

    loss: torch.Tensor | None = None
    loss_prior_center: torch.Tensor | None = None
    loss_prior_scale: torch.Tensor | None = None
    loss_attention_mass: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    reference_centers: torch.Tensor | None = None
    attended_centers: tuple[torch.Tensor, ...] | None = None
    centers: tuple[torch.Tensor, ...] | None = None
    scales: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple | None = None
    log_priors: tuple | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    image_attentions: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    text_encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    text_encoder_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class VLCoAttnGroundingOutput(ModelOutput):
    """pred_boxes (B, 4) normalized (cx, cy, w, h); loss = w_l1 * loss_l1 + w_giou * loss_giou.

    heatmaps: (B, T, H, W) every token's head-averaged spatial prior on the last level of the last
    fusion layer (each map sums to 1); computed in eval mode only, None with ``spatial_prior="none"``.
    """

    loss: torch.Tensor | None = None
    loss_l1: torch.Tensor | None = None
    loss_giou: torch.Tensor | None = None
    loss_prior_center: torch.Tensor | None = None
    loss_prior_scale: torch.Tensor | None = None
    loss_attention_mass: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    reference_centers: torch.Tensor | None = None
    attended_centers: tuple[torch.Tensor, ...] | None = None
    centers: tuple[torch.Tensor, ...] | None = None
    scales: tuple[torch.Tensor, ...] | None = None
    heatmaps: torch.Tensor | None = None
    cross_attentions: tuple | None = None
    log_priors: tuple | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    image_attentions: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    text_encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    text_encoder_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class VLCoAttnMultitaskOutput(ModelOutput):
    """loss = loss_vqa + box loss; logits (B, num_answers) and pred_boxes (B, 4) for every row."""

    loss: torch.Tensor | None = None
    loss_vqa: torch.Tensor | None = None
    loss_l1: torch.Tensor | None = None
    loss_giou: torch.Tensor | None = None
    loss_prior_center: torch.Tensor | None = None
    loss_prior_scale: torch.Tensor | None = None
    loss_attention_mass: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    reference_centers: torch.Tensor | None = None
    attended_centers: tuple[torch.Tensor, ...] | None = None
    centers: tuple[torch.Tensor, ...] | None = None
    scales: tuple[torch.Tensor, ...] | None = None
    heatmaps: torch.Tensor | None = None
    cross_attentions: tuple | None = None
    log_priors: tuple | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    image_attentions: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    text_encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    text_encoder_attentions: tuple[torch.Tensor, ...] | None = None


# ------------------------------------------------------------------------------------------ helpers


def prior_heatmaps(
    centers: torch.Tensor,
    scales: torch.Tensor,
    grid_size: tuple[int, int],
    beta: float = 8.0,
) -> torch.Tensor:
    """Each token's Gaussian prior as a map: softmax of log G over the grid, averaged over heads.

    centers / scales (B, T, N_h, 2) as in :func:`vlcoattn.fusion.gaussian_log_prior`.
    Returns (B, T, H, W); every map sums to 1.
    """
    H, W = grid_size
    log_g = gaussian_log_prior(centers, scales, grid_size, beta)  # (B, N_h, T, H*W)
    return log_g.softmax(-1).mean(1).unflatten(-1, (H, W))  # (B, T, H, W)


def text_positions(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) position ids that count real tokens only, so a row's tokens get 0, 1, ... whichever side it
    is padded on (right padding: the usual arange at every real token); None without a mask."""
    if attention_mask is None:
        return None
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_at(x: torch.Tensor, attention_mask: torch.Tensor | None, k: int = 0) -> torch.Tensor:
    """x (B, T, ...) at each row's k-th real token -> (B, ...): the [CLS] (k = 0) is a row's first real
    token, at 0 with right padding and after the padding with left padding."""
    if attention_mask is None:
        return x[:, k]
    first = attention_mask.to(torch.int32).argmax(-1)  # (B,) the first 1 of each row
    return x[torch.arange(x.shape[0], device=x.device), first + k]


def _reject_extra_arguments(owner: str, kwargs: dict) -> None:
    """One ValueError naming forward() keywords the model does not take (they would be silently ignored)."""
    if kwargs:
        raise ValueError(f"{owner}.forward got unexpected argument(s) {sorted(kwargs)}")


def _reduce_rows(per_row: torch.Tensor, mask: torch.Tensor | None, num_items: int | None) -> torch.Tensor:
    """Sum of ``per_row`` (B,) over the rows in ``mask``, divided by ``num_items`` (the rows of this task
    in the whole optimizer step, over micro-batches and ranks, as transformers' ``num_items_in_batch``)
    or, without it, by the rows counted here: a plain mean."""
    if mask is not None:
        per_row = per_row * mask.to(per_row.dtype)
    denom = num_items if num_items is not None else (mask.sum() if mask is not None else per_row.shape[0])
    return per_row.sum() / max(float(denom), 1.0)


def grounding_loss(
    pred_boxes: torch.Tensor,
    target_boxes: torch.Tensor,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    mask: torch.Tensor | None = None,
    num_items: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DETR's box loss for one box per sample: (total, L1, GIoU), boxes (B, 4) normalized cxcywh.

    L1 sums the 4 coordinates per box; GIoU loss is 1 - GIoU (torchvision); both are averaged over the
    boxes in ``mask`` (all by default) or divided by ``num_items``.
    """
    p, t = box_convert(pred_boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
    if mask is not None:  # rows without a box get a dummy one so GIoU stays finite
        t = torch.where(mask[:, None], t, t.new_tensor([0.0, 0.0, 1.0, 1.0]))
    loss_l1 = _reduce_rows((pred_boxes - target_boxes).abs().sum(-1), mask, num_items)
    loss_giou = _reduce_rows(1 - torch.diag(generalized_box_iou(p, t)), mask, num_items)
    return l1_weight * loss_l1 + giou_weight * loss_giou, loss_l1, loss_giou


def span_means(phrase_tokens: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` (B, T, k) over each phrase's tokens: phrase_tokens (B, P, T) bool -> (B, P, k);
    a phrase without tokens gets zeros."""
    w = phrase_tokens.to(values.dtype)
    return (w / w.sum(-1, keepdim=True).clamp_min(1.0)) @ values


def phrase_loss(
    pred_boxes: torch.Tensor,
    present: torch.Tensor,
    phrase_boxes: torch.Tensor,
    phrase_mask: torch.Tensor | None,
    phrase_rows: torch.Tensor | None,
    l1_weight: float,
    giou_weight: float,
    num_items: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`grounding_loss` of the phrase boxes (B, P, 4) against ``phrase_boxes`` (B, P, 4), over the phrases
    that train: those with tokens (``present`` (B, P)) in ``phrase_mask`` (default: all of them) of the rows in
    ``phrase_rows`` (B,) (default: every row). ``phrase_mask`` alone is what the priors' supervision reads
    (every row's phrases when it is on); ``phrase_rows`` keeps the box loss on the phrase task's rows."""
    mask = present if phrase_mask is None else phrase_mask.bool() & present
    if phrase_rows is not None:
        mask = mask & phrase_rows.bool()[:, None]
    return grounding_loss(pred_boxes.flatten(0, 1), phrase_boxes.flatten(0, 1).to(pred_boxes.dtype), l1_weight,
                          giou_weight, mask.flatten(), num_items)


def answer_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "bce",
    mask: torch.Tensor | None = None,
    num_items: int | None = None,
) -> torch.Tensor:
    """VQA loss of logits (B, A) against labels: (B,) answer indices (-100 = none) or (B, A) soft scores.

    "bce": BCE-with-logits on soft scores, summed over answers (the VQA v2 convention);
    "ce": cross-entropy (soft scores normalized to a distribution). Averaged over the rows in ``mask``
    (all by default; index -100 rows are left out too) or divided by ``num_items``.
    """
    A = logits.shape[-1]
    soft = labels.is_floating_point()
    if soft and labels.shape != logits.shape:
        raise ValueError(f"soft-score labels must be (B, {A}), got {tuple(labels.shape)}")
    if not soft:
        valid = labels != -100
        mask = valid if mask is None else mask & valid
        labels = labels.clamp_min(0)
    if kind == "ce":
        target = labels / labels.sum(-1, keepdim=True).clamp_min(1e-12) if soft else labels
        per_row = F.cross_entropy(logits, target, reduction="none")
    else:
        target = labels.to(logits.dtype) if soft else F.one_hot(labels, A).to(logits.dtype)
        per_row = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
    return _reduce_rows(per_row, mask, num_items)


# ------------------------------------------------------------------------------------------- models


class VLCoAttnPreTrainedModel(PreTrainedModel):
    config_class = VLCoAttnConfig
    base_model_prefix = "vlcoattn"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["SMCAFusionLayer", "CooBertLayer"]

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs) -> None:
        """transformers' switch for the CooBERT and fusion layers, plus timm's for the backbone."""
        super()._set_gradient_checkpointing(enable, *args, **kwargs)
        for module in self.modules():
            if isinstance(module, VisionBackbone):
                module.set_grad_checkpointing(enable)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """transformers' loading, then the config's freezing once more: loading materialises every
        parameter with ``requires_grad=True``, which would train (and stale the feature cache of) a
        frozen text encoder or backbone."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        model.base_model.apply_freezing()
        return loaded

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if getattr(module, "_vlcoattn_timm_module", False):
            # timm initialised (or the checkpoint loaded) the backbone; only buffers that checkpoints
            # never hold (relative-position indices ...) must be rebuilt after from_pretrained
            backbone = getattr(module, "_vlcoattn_backbone", lambda: None)()
            if backbone is not None:
                backbone.reset_non_persistent_buffers(module._vlcoattn_name)
            return
        super()._init_weights(module)  # Linear/Conv/Embedding normal(0, initializer_range), norms (1, 0)
        if isinstance(module, CollaborativeSelfAttention):
            init.copy_(module.mixing, concatenation_mixing(module.num_heads, module.shared_key_dim))
        # special inits are tagged on the Linear itself: transformers skips parameter-less parents
        tag = getattr(module, "_vlcoattn_init", None)
        if tag == "unit_scale":  # SMCA scales: s = 1 for every token and head at init (docs/design.md §3)
            init.zeros_(module.weight)
            init.ones_(module.bias)

    @classmethod
    def from_text_and_backbone(
        cls,
        text_model: str | os.PathLike | CooBertModel,
        backbone: str | None = None,
        *,
        image_size: list[int] | None = None,
        pretrained_backbone: bool = True,
        backbone_pretrained_file: str | os.PathLike | None = None,
        **config_kwargs,
    ):
        """A fresh model whose text encoder and backbone carry pretrained weights.

        text_model: a CooBERT directory (e.g. from ``tools/convert_bert.py``) or a ``CooBertModel``.
        backbone, image_size: ``vision_config.backbone`` (timm name) and ``vision_config.image_size``; with
            ``pretrained_backbone`` the backbone's weights come from ``backbone_pretrained_file`` or the known
            local file (EfficientNet-Lite0).
        config_kwargs: the other :class:`VLCoAttnConfig` fields (``vision_config``, ``coattention_config``,
            ``heads_config`` as dicts, ``freeze_text_layers`` ...).
        The fusion layers and heads start from their initialisation. Save with ``save_pretrained``
        and reload with ``from_pretrained`` as one directory.
        """
        text = text_model if isinstance(text_model, CooBertModel) else CooBertModel.from_pretrained(text_model)
        vision = dict(config_kwargs.pop("vision_config", None) or {})
        for name, value in (("backbone", backbone), ("image_size", image_size)):
            if value is not None and vision.get(name, value) != value:
                raise ValueError(f"{name}={value!r} and vision_config.{name}={vision[name]!r} disagree")
            if value is not None:
                vision[name] = value
        config = VLCoAttnConfig(text_config=text.config.to_dict(), vision_config=vision, **config_kwargs)
        model = cls(config)
        base = model.base_model
        state = {k: v for k, v in text.state_dict().items() if not k.startswith("pooler.")}
        base.text_encoder.load_state_dict(state, strict=True)
        if pretrained_backbone or backbone_pretrained_file is not None:
            pre = VisionBackbone(config.vision_config, pretrained=True, pretrained_file=backbone_pretrained_file)
            base.backbone.model.load_state_dict(pre.model.state_dict(), strict=True)
        return model

    def output_flags(
        self, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None
    ) -> tuple[bool, bool, bool]:
        """A call's output options, each the call's value or, when None, the config's (as transformers
        models resolve them)."""
        c = self.config
        calls = (output_attentions, output_hidden_states, return_dict)
        defaults = (c.output_attentions, c.output_hidden_states, c.return_dict)
        return tuple(bool(default if value is None else value) for value, default in zip(calls, defaults))

    def preprocessing(self) -> dict[str, tuple]:
        """What :class:`VLCoAttnImageProcessor` needs to know of this model (``VLCoAttnProcessor.for_model``):
        ``image_size`` (H, W) = ``config.vision_config.image_size`` or the backbone's native size, and the
        backbone's normalisation ``mean`` / ``std`` (pixels in [0, 1])."""
        data = self.base_model.backbone.data_config
        image_size = self.config.vision_config.image_size
        size = tuple(image_size) if image_size else tuple(data["input_size"][1:])
        return {"image_size": size, "mean": tuple(data["mean"]), "std": tuple(data["std"])}


class VLCoAttnModel(VLCoAttnPreTrainedModel):
    """CooBERT + timm backbone + SMCA fusion stack; returns fused text/image tokens and the priors."""

    def __init__(self, config: VLCoAttnConfig) -> None:
        super().__init__(config)
        fusion = config.coattention_config
        d = fusion.hidden_size
        self.text_encoder = CooBertModel(config.text_config, add_pooling_layer=False)
        self.backbone = VisionBackbone(config.vision_config)
        text_d = config.text_config.hidden_size
        self.text_proj = nn.Linear(text_d, d) if text_d != d else nn.Identity()
        groups = math.gcd(32, d)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, d, kernel_size=1), nn.GroupNorm(groups, d)) for c in self.backbone.channels
        )
        L = config.vision_config.num_levels
        self.level_embed = nn.Embedding(L, d) if L > 1 else None
        self.position = PositionEmbeddingSine2D(d)
        strides = self.backbone.strides
        multipliers = fusion.level_scale_multipliers or [s / max(strides) for s in strides]
        self.fusion = SMCAFusionEncoder(fusion, multipliers)
        self.post_init()
        self.apply_freezing()
        self.feature_cache: FeatureCache | None = None

    def apply_freezing(self) -> None:
        """No gradients into what the config freezes: the text encoder's ``freeze_text_layers`` and a
        ``vision_config.freeze`` backbone (but its ``trainable_stages``); frozen parts stay in eval mode."""
        self.frozen_text = self._frozen_text_modules()
        for p in (p for m in self.frozen_text for p in m.parameters()):
            p.requires_grad_(False)
        if self.backbone.frozen:
            self.backbone.freeze()
        self.train(self.training)

    def enable_feature_cache(self, max_gib: float = 4.0) -> FeatureCache:
        """Memoise the frozen encoders' per-sample outputs (text encoder and/or backbone) in up to
        ``max_gib`` GiB (see :mod:`vlcoattn.models.feature_cache`); only frozen parts, whose outputs never
        change, are cached: a frozen text encoder's output, a frozen backbone's, or with
        ``vision_config.trainable_stages`` its frozen prefix's (the trainable stages then run at every step).
        Raises ``ValueError`` when neither is frozen."""
        text_frozen = not any(p.requires_grad for p in self.text_encoder.parameters())
        parts = [name for name, frozen in (("text", text_frozen), ("image", self.backbone.frozen)) if frozen]
        if not parts:
            raise ValueError("the feature cache needs a frozen text encoder (freeze_text_layers: -1) or a frozen "
                             "backbone (vision_config.freeze: true); this model trains both "
                             "(model.feature_cache_gib=0: no cache)")
        self.feature_cache = FeatureCache(int(max_gib * 2**30), parts)
        return self.feature_cache

    def disable_feature_cache(self) -> None:
        self.feature_cache = None

    def _cached(self, part: str) -> FeatureCache | None:
        cache = self.feature_cache
        return cache if cache is not None and part in cache.parts else None

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d_text) the text encoder's last hidden state, positions counting real tokens
        (:func:`text_positions`); rows the feature cache holds are not recomputed (their padding positions
        are then zeros, which the fusion masks out)."""
        def run(rows: torch.Tensor | slice) -> torch.Tensor:
            mask, types = (x[rows] if x is not None else None for x in (attention_mask, token_type_ids))
            return self.text_encoder(
                input_ids[rows], attention_mask=mask, token_type_ids=types, position_ids=text_positions(mask),
                output_attentions=False, output_hidden_states=False,
            ).last_hidden_state

        cache = self._cached("text")
        if cache is None:
            return run(slice(None))
        real = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)

        def compute(rows: list[int]) -> list[tuple[torch.Tensor]]:
            hidden = run(torch.tensor(rows, device=input_ids.device))  # (R, T, d)
            return [(h[real[i]],) for h, i in zip(hidden, rows)]

        found = cache(text_keys(input_ids, real, token_type_ids), compute)
        out = found[0][0].new_zeros(*input_ids.shape, found[0][0].shape[-1])  # (B, T, d)
        for i, (row,) in enumerate(found):
            out[i][real[i]] = row
        return out

    def text_outputs(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None = None, output_attentions: bool = False, output_hidden_states: bool = False,
    ) -> BaseModelOutput:
        """The text encoder's output: :meth:`encode_text` (feature cache included) or, for ``inputs_embeds``
        (B, T, d_text) or recorded attentions / hidden states, one full CooBERT call (no cache)."""
        if inputs_embeds is None and not (output_attentions or output_hidden_states):
            return BaseModelOutput(last_hidden_state=self.encode_text(input_ids, attention_mask, token_type_ids))
        return self.text_encoder(
            input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=text_positions(attention_mask), inputs_embeds=inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )

    def image_tokens(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list]:
        """Per level: image tokens (B, H_l*W_l, d) (1x1 conv + GroupNorm, + level embedding), their 2D sine
        positions (1, H_l*W_l, d) and the grid size (H_l, W_l)."""
        tokens, pos, grid = [], [], []
        for lvl, f in enumerate(self.encode_image(pixel_values)):  # f (B, C_l, H_l, W_l)
            x = self.input_proj[lvl](f)  # (B, d, H_l, W_l)
            H, W = x.shape[-2:]
            t = x.flatten(2).transpose(1, 2)  # (B, H*W, d)
            if self.level_embed is not None:
                t = t + self.level_embed.weight[lvl]
            tokens.append(t)
            pos.append(self.position(x))  # (1, H*W, d)
            grid.append((H, W))
        return tokens, pos, grid

    def encode_image(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's feature maps, per level (B, C_l, H_l, W_l); for images the feature cache holds, the
        frozen part (:meth:`VisionBackbone.forward_frozen`) is not recomputed, only the trainable stages run."""
        cache = self._cached("image")
        if cache is None:
            return self.backbone(pixel_values)

        def compute(rows: list[int]) -> list[tuple[torch.Tensor, ...]]:
            feats = self.backbone.forward_frozen(pixel_values[torch.tensor(rows, device=pixel_values.device)])
            return [tuple(f[j] for f in feats) for j in range(len(rows))]

        found = cache(image_keys(pixel_values), compute)
        frozen = [torch.stack([row[lvl] for row in found]) for lvl in range(len(found[0]))]
        return self.backbone.forward_trainable(frozen)

    def _frozen_text_modules(self) -> list[nn.Module]:
        """The text encoder's parts ``config.freeze_text_layers`` freezes: embeddings + the first N layers."""
        n = self.config.freeze_text_layers
        layers = self.text_encoder.encoder.layer
        n = len(layers) if n == -1 else n
        return [self.text_encoder.embeddings, *layers[:n]] if n > 0 else []

    def train(self, mode: bool = True) -> VLCoAttnModel:
        super().train(mode)
        for module in getattr(self, "frozen_text", ()):  # frozen layers: dropout off, as a feature extractor
            module.eval()
        return self

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_encoder.set_input_embeddings(value)

    @property
    def level_scale_multipliers(self) -> list[float]:
        return self.fusion.layers[0].cross_attn.level_scale_multipliers

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_cross_attentions: bool = False,
        **kwargs,
    ) -> VLCoAttnModelOutput | tuple:
        """input_ids (B, T) [or inputs_embeds (B, T, d_text)], attention_mask (B, T) 1 = real token, padded on
        either side; pixel_values (B, 3, H, W).

        output_attentions / output_hidden_states / return_dict: the call's or, when None, the config's.
        The attentions are computed by the explicit softmax path (same numbers as the SDPA path, which
        ``config._attn_implementation`` "sdpa" runs otherwise; "eager" always takes the explicit path).
        ``output_cross_attentions``: that path and maps for the text -> image attention only (a loss reads them)."""
        _reject_extra_arguments(type(self).__name__, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("VLCoAttnModel: pass exactly one of input_ids or inputs_embeds")
        if pixel_values is None:
            raise ValueError("VLCoAttnModel needs pixel_values (B, 3, H, W)")
        output_attentions, output_hidden_states, return_dict = self.output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        encoded = self.text_outputs(input_ids, attention_mask, token_type_ids, inputs_embeds, output_attentions,
                                    output_hidden_states)
        text = self.text_proj(encoded.last_hidden_state)  # (B, T, d)
        tokens, pos, grid = self.image_tokens(pixel_values)
        fused = self.fusion(
            text, tokens, pos, grid, output_hidden_states=output_hidden_states, text_mask=attention_mask,
            output_attentions=output_attentions, output_cross_attentions=output_cross_attentions,
            attn_implementation=self.config._attn_implementation)
        hidden = fused.text_hidden_state
        out = VLCoAttnModelOutput(
            last_hidden_state=hidden,
            pooler_output=token_at(hidden, attention_mask),
            text_encoder_hidden_state=text,
            image_hidden_states=tuple(fused.image_hidden_states),
            image_positions=tuple(pos),
            grid_sizes=tuple(grid),
            reference_centers=fused.reference_centers,
            attended_centers=fused.attended,
            base_centers=fused.base_centers,
            centers=fused.centers or None,
            scales=fused.scales or None,
            level_weights=fused.level_weights or None,
            cross_attentions=fused.cross_attentions or None,
            log_priors=fused.log_priors or None,
            attentions=fused.self_attentions or None,
            image_attentions=fused.image_attentions or None,
            hidden_states=fused.text_hidden_states or None,
            text_encoder_hidden_states=encoded.hidden_states,
            text_encoder_attentions=encoded.attentions,
        )
        return out if return_dict else out.to_tuple()

    def token_heatmaps(self, outputs: VLCoAttnModelOutput, layer: int = -1, level: int = -1) -> torch.Tensor | None:
        """(B, T, H_l, W_l) head-averaged Gaussian prior of every token (see :func:`prior_heatmaps`)."""
        if not outputs.centers:
            return None
        mult = self.level_scale_multipliers[level]
        beta = float(self.config.coattention_config.beta)
        return prior_heatmaps(outputs.centers[layer], outputs.scales[layer] * mult, outputs.grid_sizes[level], beta)


class AnswerHead(nn.Sequential):
    """Fused [CLS] (B, d) -> Linear, GELU, LayerNorm, Dropout, Linear -> answer logits (B, A)."""

    def __init__(self, d: int, num_answers: int, eps: float, dropout: float, d_in: int | None = None) -> None:
        super().__init__(
            nn.Linear(d_in or d, 2 * d), nn.GELU(), nn.LayerNorm(2 * d, eps=eps), nn.Dropout(dropout),
            nn.Linear(2 * d, num_answers),
        )


class GatedImagePooling(nn.Module):
    """A question-conditioned SUM over the image cells, for the answer head (``answer_pooling="cls+gated"``).

    Per head k: g_{k,j} = sigmoid(q_k · κ_{k,j} / √d_h) with q = W_q h_[CLS] and κ_j = W_k (v_j + pos_j), then

        pooled = W_o [ Σ_j g_{k,j} W_v (v_j + pos_j) / S ]_k,     counts_k = log(1 + Σ_j g_{k,j})

    Softmax attention normalises over the cells, so its output is an average that cannot tell one
    matching object from three; these gates are not normalised, so the sum and ``counts`` grow with the
    number of matching cells, which is what "how many ..." and "is there ..." questions ask.
    """

    def __init__(self, d: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d // num_heads
        self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))

    @property
    def extra_features(self) -> int:
        """Numbers appended after the pooled vector: one count per head."""
        return self.num_heads

    def forward(self, query: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """query (B, d), image (B, S, d) with positions added -> (B, d + N_h)."""
        B, S, d = image.shape
        H, dh = self.num_heads, self.head_dim
        q = self.query(query).view(B, H, 1, dh)  # (B, H, 1, dh)
        k = self.key(image).view(B, S, H, dh).transpose(1, 2)  # (B, H, S, dh)
        v = self.value(image).view(B, S, H, dh).transpose(1, 2)  # (B, H, S, dh)
        gate = torch.sigmoid(q @ k.transpose(-1, -2) / math.sqrt(dh))  # (B, H, 1, S)
        pooled = self.out((gate @ v / S).reshape(B, d))  # (B, d)
        counts = torch.log1p(gate.sum(-1)).reshape(B, H)  # (B, H)
        return torch.cat([pooled, counts], dim=-1)


class BoxHead(MLP):  # torchvision's MLP: Linear -> ReLU -> ... -> Linear
    """One box from a token's base center c (B, 2) and its fused state h (B, d).

    center = sigmoid(logit(c) + Δ(h)), (w, h) = sigmoid(size logits); Δ and the size logits come from
    one 3-layer MLP (d -> d -> d -> 4) with a small init (std ``initializer_range``), so the first box
    sits at c with w = h ~ 0.5. c is where the token attended in the last fusion layer (the box loss then
    reaches the attention logits directly, like a soft-argmax); without one (c is None) the MLP regresses
    the box directly.
    """

    def __init__(self, d: int) -> None:
        super().__init__(d, [d, d, 4], activation_layer=nn.ReLU)

    def raw(self, h: torch.Tensor) -> torch.Tensor:
        """(B, 4): center offsets Δ (2) and size logits (2)."""
        return super().forward(h)

    def forward(self, h: torch.Tensor, reference_center: torch.Tensor | None) -> torch.Tensor:
        raw = self.raw(h)
        if reference_center is not None:
            c = reference_center.clamp(1e-4, 1 - 1e-4)  # (B, 2)
            center = torch.sigmoid(torch.logit(c) + raw[:, :2])
        else:
            center = torch.sigmoid(raw[:, :2])
        return torch.cat([center, torch.sigmoid(raw[:, 2:])], dim=-1)  # (B, 4) cxcywh

    def phrases(self, hidden: torch.Tensor, base_centers: torch.Tensor | None,
                phrase_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One box per phrase: this head on the mean of each span's fused tokens ``hidden`` (B, T, d), from the
        mean of their ``base_centers`` (B, T, 2) -> pred (B, P, 4), and ``present`` (B, P): the phrases of
        ``phrase_tokens`` (B, P, T) that have tokens (the others' boxes mean nothing)."""
        B, P = phrase_tokens.shape[:2]
        present = phrase_tokens.any(-1)  # (B, P)
        ref = None
        if base_centers is not None:
            ref = span_means(phrase_tokens, base_centers)  # (B, P, 2)
            ref = torch.where(present[..., None], ref, torch.full_like(ref, 0.5)).flatten(0, 1)
        pred = self(span_means(phrase_tokens, hidden).flatten(0, 1), ref)  # (B * P, 4)
        return pred.unflatten(0, (B, P)), present


def _num_items(num_items_in_batch: int | dict[str, int] | None, task: str) -> int | None:
    return num_items_in_batch.get(task) if isinstance(num_items_in_batch, dict) else num_items_in_batch


# each supervision loss part and the coattention_config weight that turns it on
SUPERVISION_WEIGHTS = {"loss_prior_center": "prior_supervision_weight", "loss_prior_scale": "prior_supervision_weight",
                       "loss_attention_mass": "attention_supervision_weight"}


class _VLCoAttnTaskModel(VLCoAttnPreTrainedModel):
    """Base of the task models: the fused model plus the heads the subclass names."""

    has_answers = False
    has_boxes = False
    has_phrases = False  # a phrase head (a BoxHead on each phrase's span mean) besides the grounding box head
    phrase_boxes_output: str | None = None  # the output field of the phrase boxes (B, P, 4), where the model has them
    output_class: type[ModelOutput] = ModelOutput

    def __init__(self, config: VLCoAttnConfig) -> None:
        super().__init__(config)
        fusion, heads = config.coattention_config, config.heads_config
        d = fusion.hidden_size
        self.vlcoattn = VLCoAttnModel(config)
        if self.has_answers:
            if not heads.answer_vocab:
                raise ValueError(f"{type(self).__name__} needs config.heads_config.answer_vocab (the answer list)")
            self.num_answers = len(heads.answer_vocab)
            self.image_pooling = None
            if heads.answer_pooling == "cls+gated":
                self.image_pooling = GatedImagePooling(d, fusion.num_attention_heads)
            d_in = d if self.image_pooling is None else 2 * d + self.image_pooling.extra_features
            self.vqa_head = AnswerHead(d, self.num_answers, fusion.layer_norm_eps, fusion.hidden_dropout_prob, d_in)
        if self.has_boxes:
            self.box_head = BoxHead(d)
        if self.has_phrases:
            self.phrase_head = BoxHead(d)
        self.post_init()

    def answer_features(self, out: VLCoAttnModelOutput) -> torch.Tensor:
        """What the answer head reads: the fused [CLS] (B, d), with ``answer_pooling="cls+gated"`` followed by
        the :class:`GatedImagePooling` of the image cells (B, 2d + N_h)."""
        if self.image_pooling is None:
            return out.pooler_output
        image = torch.cat([v + p for v, p in zip(out.image_hidden_states, out.image_positions)], dim=1)
        return torch.cat([out.pooler_output, self.image_pooling(out.pooler_output, image)], dim=-1)

    def vqa_loss(self, logits: torch.Tensor, labels: torch.Tensor, mask=None, num_items=None) -> torch.Tensor:
        """:func:`answer_loss` with ``config.heads_config.answer_loss``."""
        return answer_loss(logits, labels, self.config.heads_config.answer_loss, mask, num_items)

    def predict_answers(self, logits: torch.Tensor) -> list[str]:
        """Top-1 answer string per sample."""
        return [self.config.heads_config.answer_vocab[i] for i in logits.argmax(-1).tolist()]

    def answer_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-answer probabilities: sigmoid for the "bce" loss (independent scores), softmax for "ce"."""
        return torch.sigmoid(logits) if self.config.heads_config.answer_loss == "bce" else logits.softmax(-1)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        answer_mask: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        phrase_tokens: torch.Tensor | None = None,
        phrase_boxes: torch.Tensor | None = None,
        phrase_mask: torch.Tensor | None = None,
        phrase_rows: torch.Tensor | None = None,
        num_items_in_batch: int | dict[str, int] | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> ModelOutput | tuple:
        """input_ids (B, T), attention_mask (B, T), pixel_values (B, 3, H, W) (letterboxed canvases).

        labels: (B,) answer indices (-100 = none) or (B, num_answers) soft scores in [0, 1] (VQA v2);
        answer_mask (B,): rows that are VQA samples (default all). boxes (B, 4) target boxes, normalized
        (cx, cy, w, h); box_mask (B,): rows that have one (default all). Targets of a head the model
        does not have are ignored. phrase_tokens (B, P, T) / phrase_boxes (B, P, 4) / phrase_mask (B, P): the
        rows' phrase spans, read by the supervision losses when they are on (:meth:`supervision_losses`); a phrase
        head boxes them too, trained on the phrases of the ``phrase_rows`` (B,) only (:meth:`_phrase_outputs`).
        num_items_in_batch: the number of rows of the task ({"vqa": n, "ground": m} for both, plus "phrase"
        and "supervised_tokens" with phrase spans) in the whole optimizer step (all micro-batches and ranks);
        losses are then sums divided by it, so gradient accumulation and DDP give the gradient of the full
        batch. Default: per-batch means. output_attentions / output_hidden_states / inputs_embeds: as
        :meth:`VLCoAttnModel.forward`; the output carries the base model's fields of the same names."""
        _reject_extra_arguments(type(self).__name__, kwargs)
        return_dict = self.output_flags(None, None, return_dict)[2]
        out, maps = self.fused_outputs(input_ids, pixel_values, attention_mask, token_type_ids, phrase_boxes, output_attentions,
                                       output_hidden_states=output_hidden_states, inputs_embeds=inputs_embeds)
        result = dict(out.items())  # the base model's fields that are set; those the output class has stay
        # A training micro-batch without rows of one task still gives that head a (zero) loss: under DDP every rank
        training = labels is not None or boxes is not None or phrase_rows is not None  # must produce every gradient
        phrase_total = self._phrase_outputs(out, phrase_tokens, phrase_boxes, phrase_mask, phrase_rows, training, result,
                                            _num_items(num_items_in_batch, "phrase")) if self.has_phrases else None
        spans = self._with_grounding_token(phrase_tokens, phrase_boxes, phrase_mask, boxes, box_mask, attention_mask,
                                           num_items_in_batch)  # the phrase head above reads the phrases alone
        losses = self.supervision_losses(out, maps, *spans, result)  # [] when off
        if self.has_answers:
            losses.append(self._answer_outputs(out, labels, answer_mask, _num_items(num_items_in_batch, "vqa"),
                                               training, result))
        if self.has_boxes:
            losses.append(self._box_outputs(out, attention_mask, boxes, box_mask,
                                            _num_items(num_items_in_batch, "ground"), training, result))
        losses = [loss for loss in (*losses, phrase_total) if loss is not None]  # None: a head without a loss here
        if losses:
            result["loss"] = sum(losses)
        fields = self.output_class.__dataclass_fields__  # e.g. no loss_vqa for VQA alone
        output = self.output_class(**{k: v for k, v in result.items() if k in fields})
        return output if return_dict else output.to_tuple()

    @property
    def loss_names(self) -> list[str]:
        """The loss and the parts this model reports (loss_vqa, loss_l1, ...): what the trainer logs. A
        supervision part is left out while its weight in ``coattention_config`` is 0."""
        fusion = self.config.coattention_config
        off = {name for name, weight in SUPERVISION_WEIGHTS.items() if getattr(fusion, weight) == 0}
        return ["loss", *(f.name for f in dataclasses.fields(self.output_class)
                          if f.name.startswith("loss_") and f.name not in off)]

    @property
    def reads_phrase_spans(self) -> bool:
        """Whether a supervision loss is on (``coattention_config``'s weights): the trainer then asks its loader
        for every row's phrase spans."""
        return self.config.coattention_config.supervised

    def fused_outputs(self, input_ids: torch.Tensor | None, pixel_values: torch.Tensor | None,
                      attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None,
                      phrase_boxes: torch.Tensor | None = None, output_attentions: bool | None = None,
                      **kwargs) -> tuple[VLCoAttnModelOutput, tuple | None]:
        """The base model's outputs, and the text -> image maps the attention-mass loss reads (None unless it
        is on and the call has phrase boxes; computed by the explicit softmax on that path only, and left
        out of the outputs unless ``output_attentions`` asks for them)."""
        cross = phrase_boxes is not None and self.config.coattention_config.attention_supervision_weight > 0
        out = self.vlcoattn(input_ids, pixel_values, attention_mask, token_type_ids, output_attentions=output_attentions,
                            return_dict=True, output_cross_attentions=cross, **kwargs)
        maps = out.cross_attentions if cross else None
        if cross and not self.output_flags(output_attentions, None, None)[0]:
            out = dataclasses.replace(out, cross_attentions=None, log_priors=None)
        return out, maps

    def _with_grounding_token(self, phrase_tokens: torch.Tensor | None, phrase_boxes: torch.Tensor | None,
                              phrase_mask: torch.Tensor | None, boxes: torch.Tensor | None, box_mask: torch.Tensor | None,
                              attention_mask: torch.Tensor | None, num_items_in_batch: int | dict[str, int] | None,
                              ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, int | None]:
        """What the supervision losses read: the phrase spans and their pair count, plus, with
        ``supervise_grounding_token`` and grounding targets, one more phrase per grounding row: the box head's
        token (the row's ``grounding_token_index``-th real token) with the row's target box. The pair count
        then grows by the step's grounding rows."""
        if not (self.has_boxes and boxes is not None and phrase_boxes is not None
                and self.config.coattention_config.supervise_grounding_token):
            return phrase_tokens, phrase_boxes, phrase_mask, _num_items(num_items_in_batch, SUPERVISED_TOKENS)
        B, _, T = phrase_tokens.shape
        rows = torch.ones(B, dtype=torch.bool, device=boxes.device) if box_mask is None else box_mask.bool()
        positions = torch.arange(T, device=boxes.device).expand(B, T)
        k = token_at(positions, attention_mask, self.config.heads_config.grounding_token_index)  # (B,) the box's token
        query = F.one_hot(k, T).bool()  # (B, T)
        mask = phrase_tokens.any(-1) if phrase_mask is None else phrase_mask.bool()
        tokens = torch.cat([phrase_tokens.bool(), (query & rows[:, None])[:, None]], dim=1)  # (B, P + 1, T)
        targets = torch.cat([phrase_boxes, boxes.to(phrase_boxes.dtype)[:, None]], dim=1)  # (B, P + 1, 4)
        items = _num_items(num_items_in_batch, SUPERVISED_TOKENS)
        ground = _num_items(num_items_in_batch, "ground")
        items = items + ground if items is not None and ground is not None else None
        return tokens, targets, torch.cat([mask, rows[:, None]], dim=1), items

    def supervision_losses(self, out: VLCoAttnModelOutput, maps: tuple | None, phrase_tokens: torch.Tensor | None,
                           phrase_boxes: torch.Tensor | None, phrase_mask: torch.Tensor | None,
                           num_items: int | None, result: dict) -> list[torch.Tensor]:
        """The weighted supervision losses of the phrases' tokens (:mod:`vlcoattn.fusion.supervision`; docs/models.md,
        "Prior supervision"), each unweighted part set in ``result``; none without phrase boxes or weights.
        maps: :meth:`fused_outputs`' text -> image maps; phrase_mask: the phrases with a box (default: those
        with tokens)."""
        fusion = self.config.coattention_config
        if phrase_boxes is None or not fusion.supervised:
            return []
        if phrase_tokens is None:
            raise ValueError(f"{type(self).__name__}: phrase_boxes without phrase_tokens (which tokens each phrase covers)")
        pairs = supervised_pairs(phrase_tokens, phrase_tokens.any(-1) if phrase_mask is None else phrase_mask)
        layers, losses = fusion.supervised_layer_indices(), []
        if fusion.prior_supervision_weight > 0:
            (H, W), m = out.grid_sizes[-1], self.vlcoattn.level_scale_multipliers[-1]
            center, scale = prior_supervision_loss([out.centers[i] for i in layers], [out.scales[i] for i in layers],
                                                   phrase_boxes, pairs, (m * W, m * H), float(fusion.beta), num_items)
            result["loss_prior_center"], result["loss_prior_scale"] = center, scale
            losses.append(fusion.prior_supervision_weight * (center + scale))
        if fusion.attention_supervision_weight > 0:
            weights = [out.level_weights[i] for i in layers] if out.level_weights else None
            result["loss_attention_mass"] = mass = attention_mass_loss(
                [maps[i] for i in layers], out.grid_sizes, phrase_boxes, pairs, weights, num_items)
            losses.append(fusion.attention_supervision_weight * mass)
        return losses

    def _answer_outputs(self, out: VLCoAttnModelOutput, labels: torch.Tensor | None, answer_mask: torch.Tensor | None,
                        num_items: int | None, training: bool, result: dict) -> torch.Tensor | None:
        """The answer head's entries of ``result`` (logits; loss_vqa); returns the VQA loss (a zero one when
        training without answer targets), None otherwise."""
        result["logits"] = logits = self.vqa_head(self.answer_features(out))  # (B, A)
        if labels is not None:
            result["loss_vqa"] = self.vqa_loss(logits, labels, answer_mask, num_items)
        elif training:
            result["loss_vqa"] = logits.sum() * 0.0
        return result.get("loss_vqa")

    def _box_outputs(self, out: VLCoAttnModelOutput, attention_mask: torch.Tensor | None, boxes: torch.Tensor | None,
                     box_mask: torch.Tensor | None, num_items: int | None, training: bool,
                     result: dict) -> torch.Tensor | None:
        """The box head's entries of ``result`` (pred_boxes; heatmaps in eval mode; loss_l1 and loss_giou);
        returns the weighted box loss (a zero one when training without box targets), None otherwise."""
        heads = self.config.heads_config
        k = heads.grounding_token_index  # counted from each row's first real token
        ref = token_at(out.base_centers, attention_mask, k) if out.base_centers is not None else None  # (B, 2)
        result["pred_boxes"] = pred = self.box_head(token_at(out.last_hidden_state, attention_mask, k), ref)
        if not self.training:  # read by evaluation and inference; a training step has no use for them
            result["heatmaps"] = self.vlcoattn.token_heatmaps(out)
        if boxes is not None:
            total, result["loss_l1"], result["loss_giou"] = grounding_loss(
                pred, boxes.to(pred.dtype), float(heads.box_l1_weight), float(heads.box_giou_weight), box_mask,
                num_items,
            )
            return total
        if training:
            result["loss_l1"] = result["loss_giou"] = pred.sum() * 0.0
            return result["loss_l1"]
        return None

    def _phrase_outputs(self, out: VLCoAttnModelOutput, phrase_tokens: torch.Tensor | None,
                        phrase_boxes: torch.Tensor | None, phrase_mask: torch.Tensor | None,
                        phrase_rows: torch.Tensor | None, training: bool, result: dict,
                        num_items: int | None) -> torch.Tensor | None:
        """The phrase head's entries of ``result`` (pred_phrase_boxes and phrase_mask, the phrases with tokens;
        loss_phrase_l1 and loss_phrase_giou, see :func:`phrase_loss`); returns the weighted phrase box loss (a
        zero one when training without phrase targets), None otherwise."""
        heads = self.config.heads_config
        if phrase_tokens is not None:
            pred, present = self.phrase_head.phrases(out.last_hidden_state, out.base_centers, phrase_tokens)
            result.update(pred_phrase_boxes=pred, phrase_mask=present)
            if phrase_boxes is not None:
                total, result["loss_phrase_l1"], result["loss_phrase_giou"] = phrase_loss(
                    pred, present, phrase_boxes, phrase_mask, phrase_rows, float(heads.box_l1_weight),
                    float(heads.box_giou_weight), num_items)
                return total
        if not training:
            return None
        zero = (pred if phrase_tokens is not None else self.phrase_head.raw(out.pooler_output)).sum() * 0.0
        result["loss_phrase_l1"] = result["loss_phrase_giou"] = zero
        return zero

    @staticmethod
    def boxes_to_pixels(pred_boxes: torch.Tensor, image_sizes: torch.Tensor | tuple[int, int]) -> torch.Tensor:
        """Normalized (cx, cy, w, h) -> pixel (x0, y0, x1, y1); image_sizes (B, 2) or one (H, W)."""
        sizes = torch.as_tensor(image_sizes, dtype=pred_boxes.dtype, device=pred_boxes.device)
        sizes = sizes.expand(pred_boxes.shape[0], 2) if sizes.dim() == 1 else sizes
        scale = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], dim=-1)  # (W, H, W, H)
        return box_convert(pred_boxes, "cxcywh", "xyxy") * scale


class VLCoAttnForQuestionAnswering(_VLCoAttnTaskModel):
    """Fused [CLS] -> :class:`AnswerHead` -> answer logits (answer_vocab)."""

    has_answers = True
    output_class = VLCoAttnQuestionAnsweringOutput


class VLCoAttnForGrounding(_VLCoAttnTaskModel):
    """One box per referring expression from token ``heads_config.grounding_token_index`` (:class:`BoxHead`)."""

    has_boxes = True
    output_class = VLCoAttnGroundingOutput


class VLCoAttnForMultitask(_VLCoAttnTaskModel):
    """VQA and grounding in one model: :class:`AnswerHead` on the fused [CLS] and :class:`BoxHead` on
    the grounding token; a batch may mix both tasks (loss = VQA loss on VQA rows + box loss on box rows)."""

    has_answers = True
    has_boxes = True
    output_class = VLCoAttnMultitaskOutput
