"""AdamW with per-part learning rates and no weight decay on biases / norms, and the LR schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .job_config import OptimConfig

NO_DECAY_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def _no_decay_names(model: nn.Module) -> set[str]:
    """Parameters exempt from weight decay: biases and every norm layer's parameters."""
    names = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            is_norm = isinstance(module, NO_DECAY_TYPES) or "norm" in type(module).__name__.lower()
            if name.endswith("bias") or is_norm:
                names.add(full)
    return names


def _part(name: str) -> str:
    """Which LR group a parameter belongs to: 'backbone', 'text' (the VL model's CooBERT) or 'head'."""
    if ".backbone." in name or name.startswith("backbone."):
        return "backbone"
    if ".text_encoder." in name or name.startswith("text_encoder."):
        return "text"
    return "head"


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """AdamW groups: (backbone | text | rest) x (decay | no decay); frozen parameters left out."""
    lrs = {"backbone": cfg.backbone_lr or cfg.lr, "text": cfg.text_lr or cfg.lr, "head": cfg.lr}
    no_decay = _no_decay_names(model)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((_part(name), name not in no_decay), []).append(p)
    return [
        {"params": params, "lr": lrs[part], "weight_decay": cfg.weight_decay if decay else 0.0,
         "name": f"{part}{'' if decay else '/no_decay'}"}
        for (part, decay), params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (fused kernels on CUDA)."""
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(param_groups(model, cfg), betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of every group's base LR at ``step`` (0-based): linear warmup over ``warmup_steps``,
    then cosine / linear decay to ``min_lr_ratio`` at ``total``, or constant."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, cfg: OptimConfig):
    """LambdaLR over :func:`lr_factor` (its state is the step count, saved with checkpoints)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, cfg))
