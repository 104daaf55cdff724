"""Image preprocessing on tensors: fit to image_size (resize or pad), set channels, scale to [-1, 1].

Works on one image [C,H,W] or a batch [N,C,H,W]; inputs are uint8 (0..255) or float in [0, 1].
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma, the weights PIL uses for RGB -> "L".
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def fit_size(x: torch.Tensor, image_size: int, mode: str) -> torch.Tensor:
    """Float [N,C,H,W] in [0,1] -> [N,C,image_size,image_size]."""
    h, w = x.shape[-2:]
    if mode == "pad":
        if h > image_size or w > image_size:
            raise ValueError(f"resize='pad' needs image_size >= the image size {h}x{w}, got {image_size}; use resize='resize'")
        top, left = (image_size - h) // 2, (image_size - w) // 2
        # Pad with 0 in [0,1] space = black, which becomes -1 after scaling.
        return F.pad(x, (left, image_size - w - left, top, image_size - h - top), value=0.0)
    if mode != "resize":
        raise ValueError(f"unknown resize mode {mode!r}; use 'resize' or 'pad'")
    if (h, w) == (image_size, image_size):
        return x
    # Shorter side to image_size, then centre crop: identical to a plain resize for square images.
    scale = image_size / min(h, w)
    nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    return x[..., top : top + image_size, left : left + image_size].clamp(0.0, 1.0)


def match_channels(x: torch.Tensor, channels: Optional[int]) -> torch.Tensor:
    """[N,C,H,W] -> [N,channels,H,W]: grey is repeated to RGB, RGB is reduced to luma."""
    c = x.shape[1]
    if channels is None or channels == c:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        return (x * _LUMA.to(x).view(1, 3, 1, 1)).sum(1, keepdim=True)
    raise ValueError(f"cannot convert {c} channels to {channels}")


def preprocess(x: torch.Tensor, image_size: int, mode: str, channels: Optional[int] = None) -> torch.Tensor:
    """uint8 or [0,1] float images -> float32 in [-1, 1], shape [..., C, image_size, image_size]."""
    single = x.dim() == 3
    if single:
        x = x.unsqueeze(0)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    x = fit_size(match_channels(x, channels), image_size, mode)
    x = x * 2.0 - 1.0
    return x[0] if single else x


class ImageTransform:
    """Picklable per-item transform (DataLoader workers may pickle it)."""

    def __init__(self, image_size: int, mode: str, channels: Optional[int] = None):
        self.image_size, self.mode, self.channels = image_size, mode, channels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return preprocess(x, self.image_size, self.mode, self.channels)
