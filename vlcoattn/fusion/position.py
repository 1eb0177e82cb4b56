"""2D sine position encoding of an image feature grid (DETR's ``PositionEmbeddingSine``)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine2D", "sine_position_encoding_2d"]


def sine_position_encoding_2d(
    height: int,
    width: int,
    dim: int,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Sine/cosine encoding of cell (i, j): first dim/2 channels encode y, the rest x.

    normalize: map positions to (0, scale] over the grid (resolution independent), as DETR.
    Returns (1, H*W, dim).
    """
    if dim % 4:
        raise ValueError(f"sine position encoding needs dim divisible by 4, got {dim}")
    m = torch.ones(1, height, width, dtype=torch.float32, device=device)
    y = m.cumsum(1)  # (1, H, W): 1..H down each column
    x = m.cumsum(2)  # (1, H, W): 1..W along each row
    if normalize:
        eps = 1e-6
        y = (y - 0.5) / (y[:, -1:, :] + eps) * scale
        x = (x - 0.5) / (x[:, :, -1:] + eps) * scale
    n = dim // 2  # channels per axis
    dim_t = torch.arange(n, dtype=torch.float32, device=m.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / n)  # (n,)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t  # (1, H, W, n)
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)  # interleave sin/cos
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    pos = torch.cat((py, px), dim=3)  # (1, H, W, dim)
    return pos.flatten(1, 2).to(dtype)  # (1, H*W, dim)


class PositionEmbeddingSine2D(nn.Module):
    """Module form of :func:`sine_position_encoding_2d` (no parameters, no buffers)."""

    def __init__(self, dim: int, temperature: float = 10000.0, normalize: bool = True) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"sine position encoding needs dim divisible by 4, got {dim}")
        self.dim, self.temperature, self.normalize = dim, temperature, normalize

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """feature (B, C, H, W) -> (1, H*W, dim) in feature's dtype."""
        H, W = feature.shape[-2:]
        return sine_position_encoding_2d(
            H, W, self.dim, self.temperature, self.normalize, device=feature.device, dtype=feature.dtype
        )
