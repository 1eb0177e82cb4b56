"""VLCoAttnConfig: CooBERT text config + timm backbone + SMCA fusion + task heads."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..fusion.smca import CENTER_SOURCES, OFFSET_MODES, PRIOR_SHARING, SPATIAL_PRIORS
from ..text.configuration_coobert import CooBertConfig
from ..utils.checks import check_choice, check_multiple, check_positive
from ..vision.backbone import check_backbone_name

__all__ = ["VQA_LOSSES", "VQA_POOLINGS", "VLCoAttnConfig"]

VQA_LOSSES = ("bce", "ce")
VQA_POOLINGS = ("cls", "cls+gated", "cls+gated+centroids", "cls+gated+tokens")


@strict
class VLCoAttnConfig(PreTrainedConfig):
    r"""Configuration of a VLCoAttn vision-language model (docs/design.md §1, §3).

    text_config (`CooBertConfig` or dict): the text encoder (e.g. a converted MiniLM's config).
    backbone (`str`): timm model name. backbone_out_indices (`list[int]`): feature levels fed to the
        fusion (default ``[-1]``, the last stage; two or more = multi-scale SMCA).
    backbone_kwargs (`dict`): extra ``timm.create_model`` kwargs (e.g. ``{"img_size": 224}`` for ViTs).
    freeze_backbone (`bool`): no gradients into the backbone, norm statistics fixed.
    freeze_text_layers (`int`): freeze the text encoder's embeddings and its first N layers (no
        gradients, dropout off); -1 = the whole encoder. Frozen layers need no backward pass: the text
        encoder's forward + backward is ~45% of a demo-size step on a CPU.
    backbone_channels_last (`bool`): run the backbone on NHWC images (faster convolutions on CPU and
        GPU; same values up to float rounding).
    image_size (`list[int]`): (H, W) the preprocessing resizes to; None = the backbone's default.
    fusion_hidden_size / fusion_num_layers / fusion_num_heads / fusion_intermediate_size: the SMCA
        fusion stack (width and heads default to the text encoder's, FFN to 4x width).
    fusion_shared_key_dim (`int`): D~k of the fusion layers' collaborative self-attention (None = width).
    spatial_prior (`str`): ``"gaussian"`` (SMCA) or ``"none"`` (plain cross-attention ablation).
    smca_beta (`float`): β of log G = -((x - c_x)^2 s_x^2 + (y - c_y)^2 s_y^2) / β, > 0.
    prior_sharing (`str`): ``"per_head"``, ``"shared_scales"`` or ``"shared"`` (SMCA's head-shared ablation).
    prior_offset_mode (`str`): ``"logit"``: head center sigmoid(logit(c_t) + Δ_k), inside the image;
        ``"additive"``: c_t + Δ_k, the paper's literal form (docs/design.md §3) (see ``vlcoattn.fusion.smca``).
    level_scale_multipliers (`list[float]`): per-level precision factors; None = stride_l / max stride,
        i.e. the same Gaussian width in pixels on every level.
    two_way (`bool`): image tokens also attend to the text (co-attention both ways).
    fusion_position_in_values (`bool`): add the 2D sine positions to the cross-attention values too, so
        fused text tokens carry where they looked (False = DETR's keys-only convention).
    answer_vocab (`list[str]`): VQA answers (sets ``id2label``). vqa_loss: ``"bce"`` (soft scores, VQA
        v2) or ``"ce"`` (single answer). vqa_pooling: what the answer head reads: ``"cls"`` (the fused
        [CLS]), ``"cls+gated"`` (plus a question-gated sum over the image cells, which keeps counts;
        see ``GatedImagePooling``), ``"cls+gated+centroids"`` (plus where each gate head's cells are) or
        ``"cls+gated+tokens"`` (plus where two question-chosen words looked; see ``TokenCenterPooling``).
    box_l1_weight / box_giou_weight: grounding loss weights (DETR/MDETR: 5 and 2).
    grounding_token_index (`int`): the text token whose prior gives the box (0 = [CLS]).
    center_from (`str`): where the Gaussian centers of fusion layers > 0 and the box's base center
        come from: ``"attention"`` (the centroid of where the token attended in the previous / last
        layer) or ``"text"`` (the first layer's MLP of the text, no image information; docs/design.md §3).
    """

    model_type = "vlcoattn"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=CooBertConfig)}

    text_config: dict | CooBertConfig | None = None
    backbone: str = "tf_efficientnet_lite0"
    backbone_out_indices: list[int] | None = None
    backbone_kwargs: dict | None = None
    freeze_backbone: bool = False
    freeze_text_layers: int = 0
    backbone_channels_last: bool = True
    image_size: list[int] | None = None
    fusion_hidden_size: int | None = None
    fusion_num_layers: int = 2
    fusion_num_heads: int | None = None
    fusion_intermediate_size: int | None = None
    fusion_shared_key_dim: int | None = None
    spatial_prior: str = "gaussian"
    smca_beta: float | int = 8.0
    prior_sharing: str = "per_head"
    prior_offset_mode: str = "logit"
    level_scale_multipliers: list[float | int] | None = None
    two_way: bool = False
    fusion_position_in_values: bool = True
    fusion_dropout: float | int = 0.1
    fusion_attention_dropout: float | int = 0.1
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    answer_vocab: list[str] | None = None
    vqa_loss: str = "bce"
    vqa_pooling: str = "cls"
    box_l1_weight: float | int = 5.0
    box_giou_weight: float | int = 2.0
    grounding_token_index: int = 0
    center_from: str = "attention"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)  # builds text_config (CooBertConfig) from a dict / None
        text = self.text_config
        check_backbone_name(self.backbone)
        if self.backbone_out_indices is None:
            self.backbone_out_indices = [-1]
        self.backbone_out_indices = [int(i) for i in self.backbone_out_indices]
        if not self.backbone_out_indices:
            raise ValueError("backbone_out_indices must name at least one feature level")
        if len(set(self.backbone_out_indices)) != len(self.backbone_out_indices):
            raise ValueError(f"backbone_out_indices has duplicates: {self.backbone_out_indices}")
        if self.image_size is not None:
            self.image_size = [int(s) for s in self.image_size]
            if len(self.image_size) != 2 or min(self.image_size) <= 0:
                raise ValueError(f"image_size must be (H, W) of positive ints, got {self.image_size}")
        if not -1 <= self.freeze_text_layers <= text.num_hidden_layers:
            raise ValueError(f"freeze_text_layers must be in [-1, {text.num_hidden_layers}] (the text encoder's "
                             f"layers; -1 = all), got {self.freeze_text_layers}")
        if self.fusion_hidden_size is None:
            self.fusion_hidden_size = text.hidden_size
        if self.fusion_num_heads is None:
            self.fusion_num_heads = text.num_attention_heads
        if self.fusion_intermediate_size is None:
            self.fusion_intermediate_size = 4 * self.fusion_hidden_size
        d, h = self.fusion_hidden_size, self.fusion_num_heads
        for name in ("fusion_hidden_size", "fusion_num_layers", "fusion_num_heads", "fusion_intermediate_size"):
            check_positive(name, getattr(self, name))
        check_multiple("fusion_hidden_size", d, h, "one slice per fusion_num_heads head")
        check_multiple("fusion_hidden_size", d, 4, "2D sine position encoding")
        if self.fusion_shared_key_dim is not None:
            check_positive("fusion_shared_key_dim", self.fusion_shared_key_dim)
        check_choice("spatial_prior", self.spatial_prior, SPATIAL_PRIORS)
        check_positive("smca_beta", self.smca_beta)
        check_choice("prior_sharing", self.prior_sharing, PRIOR_SHARING)
        check_choice("prior_offset_mode", self.prior_offset_mode, OFFSET_MODES)
        check_choice("center_from", self.center_from, CENTER_SOURCES)
        if self.level_scale_multipliers is not None:
            m = [float(x) for x in self.level_scale_multipliers]
            if len(m) != len(self.backbone_out_indices) or min(m) <= 0:
                raise ValueError(f"level_scale_multipliers must be {len(self.backbone_out_indices)} numbers > 0 "
                                 f"(one per backbone level), got {m}")
            self.level_scale_multipliers = m
        check_choice("vqa_loss", self.vqa_loss, VQA_LOSSES)
        check_choice("vqa_pooling", self.vqa_pooling, VQA_POOLINGS)
        if self.answer_vocab is not None:
            vocab = [str(a) for a in self.answer_vocab]
            if len(set(vocab)) != len(vocab):
                raise ValueError("answer_vocab has duplicate answers")
            self.answer_vocab = vocab
            self.id2label = dict(enumerate(vocab))
            self.label2id = {a: i for i, a in enumerate(vocab)}
        check_positive("box_l1_weight", self.box_l1_weight, allow_zero=True)
        check_positive("box_giou_weight", self.box_giou_weight, allow_zero=True)
        if not 0 <= self.grounding_token_index < text.max_position_embeddings:
            raise ValueError(f"grounding_token_index out of range: {self.grounding_token_index}")

    @property
    def num_levels(self) -> int:
        """Number of backbone feature levels fed to the fusion (> 1: multi-scale SMCA)."""
        return len(self.backbone_out_indices)
