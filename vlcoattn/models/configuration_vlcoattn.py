"""VLCoAttnConfig: a composite of the text (CooBERT), vision (timm), fusion (SMCA) and heads configs.

Each option lives in one sub-config, which checks it; ``VLCoAttnConfig`` checks only what spans two of
them (the fusion width from the text, one scale multiplier per image level, the grounding token inside
the text). ``config.json`` nests them as transformers' composite configs do (``text_config``,
``vision_config``, ``coattention_config``, ``heads_config``). A flat ``config.json`` of the earlier one-level
config (vlcoattn 0.1.0) is converted on load (:func:`convert_flat_config`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..fusion.config import CoAttentionConfig
from ..text.configuration_coobert import CooBertConfig
from ..utils.checks import check_choice, check_positive, reject_unknown_keys
from ..vision.backbone import VisionConfig

__all__ = ["ANSWER_LOSSES", "ANSWER_POOLINGS", "HeadsConfig", "VLCoAttnConfig", "convert_flat_config"]

ANSWER_LOSSES = ("bce", "ce")
ANSWER_POOLINGS = ("cls+gated", "cls")


@strict
class HeadsConfig(PreTrainedConfig):
    r"""The task heads on the fused tokens.

    answer_vocab (`list[str]`): VQA answers (sets the model config's ``id2label``).
    answer_loss (`str`): ``"bce"`` (soft scores, VQA v2) or ``"ce"`` (one answer per question).
    answer_pooling (`str`): what the answer head reads: ``"cls+gated"`` (the fused [CLS] plus a
        question-gated sum over the image cells, which keeps counts; see ``GatedImagePooling``) or ``"cls"``
        (the fused [CLS] alone).
    box_l1_weight / box_giou_weight (`float`): grounding loss weights (DETR/MDETR: 5 and 2), >= 0.
    grounding_token_index (`int`): the text token whose fused state and attention give the box (0 = [CLS]).
    """

    model_type = "vlcoattn_heads"
    base_config_key = "heads_config"

    answer_vocab: list[str] | None = None
    answer_loss: str = "bce"
    answer_pooling: str = "cls+gated"
    box_l1_weight: float | int = 5.0
    box_giou_weight: float | int = 2.0
    grounding_token_index: int = 0

    def __post_init__(self, **kwargs):
        reject_unknown_keys(type(self).__name__, kwargs, [f.name for f in dataclasses.fields(self)])
        super().__post_init__(**kwargs)
        check_choice("answer_loss", self.answer_loss, ANSWER_LOSSES)
        check_choice("answer_pooling", self.answer_pooling, ANSWER_POOLINGS)
        if self.answer_vocab is not None:
            self.answer_vocab = [str(a) for a in self.answer_vocab]
            if len(set(self.answer_vocab)) != len(self.answer_vocab):
                raise ValueError("answer_vocab has duplicate answers")
        check_positive("box_l1_weight", self.box_l1_weight, allow_zero=True)
        check_positive("box_giou_weight", self.box_giou_weight, allow_zero=True)


@strict
class VLCoAttnConfig(PreTrainedConfig):
    r"""Configuration of a VLCoAttn vision-language model (docs/design.md §1, §3; docs/models.md has a table
    per sub-config).

    text_config (`CooBertConfig` or dict): the text encoder (e.g. a converted MiniLM's config).
    vision_config (`VisionConfig` or dict): the timm backbone, its feature levels and image size.
    coattention_config (`CoAttentionConfig` or dict): the SMCA fusion stack and its spatial prior; its width
        and heads default to the text encoder's. (Not ``fusion_config``: transformers' ``from_pretrained``
        reads that attribute for its own kernel fusion.)
    heads_config (`HeadsConfig` or dict): the answer and box heads.
    freeze_text_layers (`int`): freeze the text encoder's embeddings and its first N layers (no gradients,
        dropout off); -1 = the whole encoder. Frozen layers need no backward pass: the text encoder's
        forward + backward is ~45% of a demo-size step on a CPU. (A choice of this model about its text
        encoder, so not a ``CooBertConfig`` field, which text-only models share.)
    initializer_range (`float`): std of the fusion's and heads' initial weights.
    """

    model_type = "vlcoattn"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=CooBertConfig),
        "vision_config": SubConfigSpec(config_class=VisionConfig),
        "coattention_config": SubConfigSpec(config_class=CoAttentionConfig),
        "heads_config": SubConfigSpec(config_class=HeadsConfig),
    }

    text_config: dict | CooBertConfig | None = None
    vision_config: dict | VisionConfig | None = None
    coattention_config: dict | CoAttentionConfig | None = None
    heads_config: dict | HeadsConfig | None = None
    freeze_text_layers: int = 0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        _reject_flat_keys(kwargs)
        reject_unknown_keys(type(self).__name__, kwargs, [f.name for f in dataclasses.fields(self)])
        super().__post_init__(**kwargs)  # builds the sub-configs from dicts / None
        text, vision, fusion, heads = self.text_config, self.vision_config, self.coattention_config, self.heads_config
        if not -1 <= self.freeze_text_layers <= text.num_hidden_layers:
            raise ValueError(f"freeze_text_layers must be in [-1, {text.num_hidden_layers}] (the text encoder's "
                             f"layers; -1 = all), got {self.freeze_text_layers}")
        fusion.inherit_text_width(text.hidden_size, text.num_attention_heads)
        multipliers = fusion.level_scale_multipliers
        if multipliers is not None and len(multipliers) != vision.num_levels:
            raise ValueError(f"coattention_config.level_scale_multipliers must be {vision.num_levels} numbers (one per "
                             f"vision_config.out_indices level), got {multipliers}")
        if fusion.keys_only_levels is not None:
            fusion.keys_only_levels = fusion.keys_only_level_indices(vision.num_levels)
        if not 0 <= heads.grounding_token_index < text.max_position_embeddings:
            raise ValueError(f"heads_config.grounding_token_index must be in [0, {text.max_position_embeddings}) "
                             f"(the text's positions), got {heads.grounding_token_index}")
        if heads.answer_vocab is not None:
            self.id2label = dict(enumerate(heads.answer_vocab))
            self.label2id = {a: i for i, a in enumerate(heads.answer_vocab)}

    @property
    def answer_vocab(self) -> list[str] | None:
        """``heads_config.answer_vocab``, read-only: where code that takes any model config (trainer,
        evaluation) finds a model's answers."""
        return self.heads_config.answer_vocab

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> VLCoAttnConfig:
        """transformers' ``from_dict`` (what ``from_pretrained`` reads ``config.json`` with), converting the
        flat dict of the earlier one-level config first."""
        return super().from_dict(convert_flat_config(config_dict), **kwargs)


# --------------------------------------------------------------------------- the earlier flat config

# where each key of the flat config (vlcoattn 0.1.0, commit f7f4e4b) lives now
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "backbone": ("vision_config", "backbone"),
    "backbone_out_indices": ("vision_config", "out_indices"),
    "backbone_kwargs": ("vision_config", "model_kwargs"),
    "freeze_backbone": ("vision_config", "freeze"),
    "backbone_channels_last": ("vision_config", "channels_last"),
    "image_size": ("vision_config", "image_size"),
    "fusion_hidden_size": ("coattention_config", "hidden_size"),
    "fusion_num_layers": ("coattention_config", "num_layers"),
    "fusion_num_heads": ("coattention_config", "num_attention_heads"),
    "fusion_intermediate_size": ("coattention_config", "intermediate_size"),
    "fusion_shared_key_dim": ("coattention_config", "shared_key_dim"),
    "fusion_dropout": ("coattention_config", "hidden_dropout_prob"),
    "fusion_attention_dropout": ("coattention_config", "attention_probs_dropout_prob"),
    "hidden_act": ("coattention_config", "hidden_act"),
    "layer_norm_eps": ("coattention_config", "layer_norm_eps"),
    "two_way": ("coattention_config", "two_way"),
    "spatial_prior": ("coattention_config", "spatial_prior"),
    "smca_beta": ("coattention_config", "beta"),
    "prior_sharing": ("coattention_config", "prior_sharing"),
    "level_scale_multipliers": ("coattention_config", "level_scale_multipliers"),
    "answer_vocab": ("heads_config", "answer_vocab"),
    "vqa_loss": ("heads_config", "answer_loss"),
    "vqa_pooling": ("heads_config", "answer_pooling"),
    "box_l1_weight": ("heads_config", "box_l1_weight"),
    "box_giou_weight": ("heads_config", "box_giou_weight"),
    "grounding_token_index": ("heads_config", "grounding_token_index"),
}
# flat options that are gone, with the one value the model now always behaves as (docs/results.md)
REMOVED_FLAT_OPTIONS: dict[str, Any] = {"prior_offset_mode": "logit", "center_from": "attention",
                                        "fusion_position_in_values": True}
# flat defaults that have changed: a flat config.json without the key meant these
FLAT_DEFAULTS: dict[str, Any] = {"prior_sharing": "per_head", "vqa_pooling": "cls", "two_way": False}
_FLAT_VERSION = "the flat model config of vlcoattn 0.1.0 (commit f7f4e4b)"


def _flat_keys_in(config: dict[str, Any]) -> list[str]:
    return [k for k in config if k in FLAT_KEYS or k in REMOVED_FLAT_OPTIONS]


def _reject_flat_keys(kwargs: dict[str, Any]) -> None:
    """A flat key passed to the grouped config: one line saying where the option lives now."""
    for key in _flat_keys_in(kwargs):
        if key in REMOVED_FLAT_OPTIONS:
            raise ValueError(f"VLCoAttnConfig: {key!r} was removed with {_FLAT_VERSION}; the model always "
                             f"behaves as {key}={REMOVED_FLAT_OPTIONS[key]!r}")
        sub, name = FLAT_KEYS[key]
        raise ValueError(f"VLCoAttnConfig: {key!r} is {sub}.{name} since the grouped model config "
                         f"({_FLAT_VERSION} was flat)")


def convert_flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """The nested dict of a flat ``config.json`` (the earlier one-level config); a nested dict is returned
    as it is. Keys that the flat config's defaults left out get those defaults; a removed option with any
    value but the one the model now always has raises ``ValueError`` naming the version."""
    if not _flat_keys_in(config):
        return config
    nested: dict[str, Any] = {k: v for k, v in config.items() if k not in FLAT_KEYS and k not in REMOVED_FLAT_OPTIONS}
    flat = {**FLAT_DEFAULTS, **config}
    for key, kept in REMOVED_FLAT_OPTIONS.items():
        if key in flat and flat[key] != kept:
            raise ValueError(f"config.json sets {key}={flat[key]!r}, an option of {_FLAT_VERSION} that was removed "
                             f"(measured no gain, docs/results.md); load it with that version")
    if flat["vqa_pooling"] not in ANSWER_POOLINGS:
        raise ValueError(f"config.json sets vqa_pooling={flat['vqa_pooling']!r}, an answer head of {_FLAT_VERSION} "
                         f"that was removed (measured no gain, docs/results.md); load it with that version")
    for key, (sub, name) in FLAT_KEYS.items():
        if key in flat:
            nested.setdefault(sub, {})[name] = flat[key]
    return nested
