"""CoAttentionConfig: the SMCA fusion stack and its spatial prior, the one place their options are checked."""

from __future__ import annotations

import dataclasses

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ..text.configuration_coobert import CooBertConfig
from ..utils.checks import check_choice, check_indices, check_multiple, check_positive, reject_unknown_keys
from .smca import PRIOR_SHARING, SPATIAL_PRIORS

__all__ = ["BLOCK_FIELDS", "CoAttentionConfig", "fusion_block_config"]

# the fields a fusion layer's CooBERT blocks (self-attention, FFN) read, under CooBERT's own names
BLOCK_FIELDS = (
    "hidden_size", "num_attention_heads", "intermediate_size", "shared_key_dim", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "hidden_act", "layer_norm_eps",
)


@strict
class CoAttentionConfig(PreTrainedConfig):
    r"""The SMCA fusion stack (``SMCAFusionEncoder``) and its Gaussian spatial prior.

    hidden_size / num_attention_heads (`int`): width and heads; None = the text encoder's (filled in by
        ``VLCoAttnConfig``, see :meth:`inherit_text_width`). intermediate_size (`int`): the FFN's; None = 4x width.
    num_layers (`int`): fusion layers.
    shared_key_dim (`int`): D~k of the layers' collaborative self-attention (None = width).
    hidden_dropout_prob / attention_probs_dropout_prob (`float`): dropout after each sub-block / on the
        attention probabilities. hidden_act (`str`), layer_norm_eps (`float`): the blocks' activation and norm.
    two_way (`bool`): image tokens also attend to the text (co-attention both ways).
    keys_only_levels (`list[int]`): the keys-only levels: positions in ``vision_config.out_indices`` (negative
        from the end) whose cells the fusion only reads. They are keys and values of the text -> image SMCA
        attention (own Gaussian multiplier, part of the scale selection) but the image stream never updates
        them: no image -> text attention, no image FFN; they leave the stack as they entered it. What it saves:
        a fine level's cells are most of the image stream's work. Every level keys-only leaves the image
        stream with nothing to update: no layer then has image -> text attention or an image FFN, whatever
        ``two_way`` says. None = every level updated. (``VLCoAttnConfig`` checks the positions and stores them
        sorted, from 0.)
    spatial_prior (`str`): ``"gaussian"`` (SMCA) or ``"none"`` (plain co-attention).
    beta (`float`): β of log G = -((x - c_x)^2 s_x^2 + (y - c_y)^2 s_y^2) / β, > 0.
    prior_sharing (`str`): ``"shared_scales"`` (per-head offsets, one scale pair per token shared by the
        heads), ``"per_head"`` (every head its own offset and scales) or ``"shared"`` (one Gaussian per
        token for all heads: SMCA's head-shared ablation).
    level_scale_multipliers (`list[float]`): per-level precision factors (one per backbone level, > 0);
        None = stride_l / max stride, the same Gaussian width in pixels on every level.
    prior_supervision_weight (`float`): weight of the prior supervision loss (>= 0; 0 = off): every token of a
        phrase whose box is known has its Gaussians' centers and widths pulled onto the box, at every layer
        (``vlcoattn.fusion.supervision``; needs ``spatial_prior="gaussian"``).
    attention_supervision_weight (`float`): weight of the attention-mass loss (>= 0; 0 = off): -log of the
        share of such a token's cross-attention that falls on its phrase's box, at every layer; plain
        co-attention's matching signal (allowed with the prior too).
    supervise_grounding_token (`bool`): with a supervision weight on, a grounding row's box-head token (the
        [CLS] by default) is supervised too, by the row's target box: the query the box is read from learns
        where to look at every layer, as DETR's auxiliary decoding losses teach its object queries.
    supervision_layers (`list[int]`): the fusion layers both supervision losses read (indices, negative from the
        end); None = every layer. Layer 0's centers come from the text alone, so in scenes whose objects are
        placed at random ``[1, ...]`` leaves it out and teaches its attention through layer 1's centers.
    """

    model_type = "vlcoattn_coattention"
    base_config_key = "coattention_config"

    hidden_size: int | None = None
    num_layers: int = 2
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    shared_key_dim: int | None = None
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    two_way: bool = True
    keys_only_levels: list[int] | None = None
    spatial_prior: str = "gaussian"
    beta: float | int = 8.0
    prior_sharing: str = "shared_scales"
    level_scale_multipliers: list[float | int] | None = None
    prior_supervision_weight: float | int = 0.0
    attention_supervision_weight: float | int = 0.0
    supervise_grounding_token: bool = False
    supervision_layers: list[int] | None = None

    def __post_init__(self, **kwargs):
        reject_unknown_keys(type(self).__name__, kwargs, [f.name for f in dataclasses.fields(self)])
        super().__post_init__(**kwargs)
        for name in ("hidden_size", "num_layers", "num_attention_heads", "intermediate_size", "shared_key_dim"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        self.hidden_dropout_prob = float(self.hidden_dropout_prob)
        self.attention_probs_dropout_prob = float(self.attention_probs_dropout_prob)
        check_choice("spatial_prior", self.spatial_prior, SPATIAL_PRIORS)
        check_positive("beta", self.beta)
        check_choice("prior_sharing", self.prior_sharing, PRIOR_SHARING)
        if self.level_scale_multipliers is not None:
            self.level_scale_multipliers = [float(m) for m in self.level_scale_multipliers]
            if not self.level_scale_multipliers or min(self.level_scale_multipliers) <= 0:
                raise ValueError(f"level_scale_multipliers must be numbers > 0, got {self.level_scale_multipliers}")
        levels = self.keys_only_levels
        if levels is not None and any(isinstance(i, bool) or not isinstance(i, int) for i in levels):
            raise ValueError(f"keys_only_levels must be integer positions in vision_config.out_indices, got {levels}")
        self._check_supervision()
        self._fill_and_check_width()

    def _check_supervision(self) -> None:
        """The supervision weights: numbers >= 0; the prior's needs a prior to supervise."""
        for name in ("prior_supervision_weight", "attention_supervision_weight"):
            check_positive(name, getattr(self, name), allow_zero=True)
            setattr(self, name, float(getattr(self, name)))
        if self.prior_supervision_weight > 0 and self.spatial_prior != "gaussian":
            raise ValueError("prior_supervision_weight > 0 needs spatial_prior='gaussian' (plain co-attention has "
                             "no prior to supervise; its matching signal is attention_supervision_weight)")
        if self.supervision_layers is not None:
            self.supervision_layers = check_indices("supervision_layers", self.supervision_layers, self.num_layers,
                                                    "fusion layer indices", allow_empty=False)

    def keys_only_level_indices(self, num_levels: int) -> list[int]:
        """``keys_only_levels`` as sorted positions 0 .. num_levels - 1, duplicates merged ([] when None);
        ValueError naming the option for a position outside the ``num_levels`` image levels."""
        if self.keys_only_levels is None:
            return []
        return check_indices("coattention_config.keys_only_levels", self.keys_only_levels, num_levels,
                             f"positions in vision_config.out_indices (its {num_levels} level(s))")

    def updated_levels(self, num_levels: int) -> list[int]:
        """The positions of the image levels the image stream updates: all but the keys-only levels."""
        keys_only = self.keys_only_level_indices(num_levels)
        return [lvl for lvl in range(num_levels) if lvl not in keys_only]

    def supervised_layer_indices(self) -> list[int]:
        """The fusion layers the supervision losses read, in order: ``supervision_layers`` or every layer."""
        return self.supervision_layers if self.supervision_layers is not None else list(range(self.num_layers))

    @property
    def supervised(self) -> bool:
        """Whether a supervision loss is on: the model then reads the phrases' tokens and boxes."""
        return self.prior_supervision_weight > 0 or self.attention_supervision_weight > 0

    def inherit_text_width(self, hidden_size: int, num_attention_heads: int) -> None:
        """Width and heads left None take the text encoder's; then the FFN size and the width are checked."""
        if self.hidden_size is None:
            self.hidden_size = hidden_size
        if self.num_attention_heads is None:
            self.num_attention_heads = num_attention_heads
        self._fill_and_check_width()

    def _fill_and_check_width(self) -> None:
        """Once width and heads are known: the FFN defaults to 4x width, and the width must split into heads
        and into the 2D sine encoding's four parts."""
        if self.hidden_size is None or self.num_attention_heads is None:
            return
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        check_multiple("hidden_size", self.hidden_size, self.num_attention_heads, "one slice per head")
        check_multiple("hidden_size", self.hidden_size, 4, "2D sine position encoding")


def fusion_block_config(config: CoAttentionConfig) -> CooBertConfig:
    """The CooBERT block config of a fusion layer: the :data:`BLOCK_FIELDS` of ``config``, same names."""
    if config.hidden_size is None or config.num_attention_heads is None:
        raise ValueError("CoAttentionConfig needs hidden_size and num_attention_heads "
                         "(VLCoAttnConfig takes the text encoder's)")
    return CooBertConfig(**{name: getattr(config, name) for name in BLOCK_FIELDS})
