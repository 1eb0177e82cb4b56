"""How the ranks hold the model: replicated (DDP) or sharded (FSDP2), and the state both checkpoint.

``run.parallel: ddp`` keeps a full copy of the weights, gradients and optimizer state on every rank and
all-reduces the gradients. ``run.parallel: fsdp`` applies PyTorch's own ``fully_shard`` (FSDP2): every
parameter becomes a DTensor sharded over the ranks; each *unit* (a text or fusion transformer layer, a
stage or block of the timm backbone, then the rest at the root) is all-gathered just before it runs and
freed after, and gradients are reduce-scattered, so weights + gradients + AdamW state cost 1/N per rank.

Sharded checkpoints go through ``torch.distributed.checkpoint`` (DCP): every rank writes its shards in
parallel and reads back whatever shards its new placement needs, so a checkpoint of N ranks resumes on M.
The ``model/`` dir of a checkpoint stays a full ``save_pretrained`` dir (gathered on rank 0, on the CPU),
so evaluation and inference never need to know how the run was sharded.

``run.compile: true`` compiles each unit with ``torch.compile`` (torchtitan's per-block compile: identical
layers share one compiled graph and the Python glue between them stays eager).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import fully_shard
from transformers.modeling_layers import GradientCheckpointingLayer

__all__ = ["apply_fsdp", "compile_units", "full_state_dict", "grad_norm_value",
           "has_sharded", "load_sharded", "model_units", "save_sharded"]

SHARDED_DIR = "sharded"  # a checkpoint's DCP dir (model + optimizer shards)


def _backbone_units(model: nn.Module) -> list[nn.Module]:
    """The stages / blocks of every timm feature extractor inside ``model``: ``blocks`` or ``stages``
    (EfficientNet, ViT, ConvNeXt's model), or the ``layerN`` / ``stages_N`` children of a feature list net."""
    from ..vision.backbone import VisionBackbone

    units: list[nn.Module] = []
    for backbone in (m for m in model.modules() if isinstance(m, VisionBackbone)):
        net = backbone.model
        net = getattr(net, "model", net)  # timm's FeatureGetterNet wraps the ViT
        seq = next((getattr(net, name) for name in ("blocks", "stages")
                    if isinstance(getattr(net, name, None), (nn.Sequential, nn.ModuleList))), None)
        units += list(seq) if seq is not None else \
            [m for name, m in net.named_children() if name.startswith(("layer", "stages_", "blocks_"))]
    return units


def model_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded (and compiled) one by one: every transformer layer (CooBERT's and the SMCA
    fusion's, transformers' ``GradientCheckpointingLayer``) and the backbone's stages, in forward order."""
    return _backbone_units(model) + [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def apply_fsdp(model: nn.Module) -> None:
    """``fully_shard`` every unit, then the root (embeddings, heads, norms), in place, over the default
    process group. Parameters that do not train (a frozen backbone or text encoder) are sharded too:
    FSDP2 shards per parameter, so frozen and trained ones may share a unit."""
    for unit in model_units(model):
        fully_shard(unit)
    fully_shard(model)


def compile_units(model: nn.Module) -> None:
    """``torch.compile`` every unit in place (parameter names unchanged, so checkpoints are unaffected)."""
    for unit in model_units(model):
        unit.compile(dynamic=False)


def grad_norm_value(norm: torch.Tensor) -> float:
    """``clip_grad_norm_``'s result as a float (under FSDP it is a replicated DTensor)."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights, gathered on rank 0's CPU (empty on the other ranks). A collective: every
    rank calls it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the weights and the optimizer state to ``path / "sharded"`` (DCP)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(path / SHARDED_DIR))


def has_sharded(path: Path) -> bool:
    return (Path(path) / SHARDED_DIR).is_dir()


def load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load :func:`save_sharded`'s state into the live sharded ``model`` and ``optimizer`` (any world size:
    DCP reads the pieces of every saved shard that this rank's shards cover)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(Path(path) / SHARDED_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
