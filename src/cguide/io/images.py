"""Image grids: [-1,1] tensors to PNG files (atomic), one row per class where labels are given."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from .atomic import atomic_write


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1,1] -> [0,1]; non-finite pixels show as black rather than breaking the grid."""
    return torch.nan_to_num((x.detach().float().cpu() + 1) / 2, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None, upscale: int = 2) -> Path:
    nrow = nrow or max(1, math.ceil(math.sqrt(len(x))))
    img = to_unit(x)
    if upscale > 1:
        img = torch.nn.functional.interpolate(img, scale_factor=upscale, mode="nearest")
    grid = make_grid(img, nrow=nrow, padding=2, pad_value=1.0)
    return atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))
