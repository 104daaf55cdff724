"""The noisy classifier p_phi(y | x_t, t): the UNet's downsampling half + middle block + a pool.

ADM's EncoderUNetModel. The trunk comes from ``layers.build_down_path`` / ``layers.MiddleBlock``,
the same code the UNet uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from .layers import TrunkConfig, TrunkNet, build_trunk, heads_for, normalization

POOLS = ("attention", "avg", "spatial", "spatial_v2")
POOL_ALIASES = {"adaptive": "avg"}  # guided-diffusion's name for the global-average pool
SPATIAL_HIDDEN = 2048  # the hidden width of guided-diffusion's spatial pools


@dataclass
class EncoderConfig(TrunkConfig):
    """Classifier hyperparameters (plain fields). num_classes has no default on purpose.

    pool="attention": ADM's AttentionPool2d (learned positional embedding, the mean token
    attends to all pixels); pool="avg" (ADM's "adaptive", accepted as an alias): global average +
    linear; pool="spatial" / "spatial_v2" (ADM): the spatial means of every down-path block and of
    the middle block, concatenated, through Linear-ReLU-Linear / Linear-GroupNorm-SiLU-Linear
    (hidden width 2048), without the final norm the other pools have.

    attention_order, norm_groups, stem_channels and fractional channel_mult: as in UNetConfig
    (the options that express guided-diffusion's EncoderUNetModel; see nets/adm.py).
    """

    num_classes: int = field(kw_only=True)
    pool: str = "attention"

    def __post_init__(self):
        super().__post_init__()
        self.pool = POOL_ALIASES.get(self.pool, self.pool)
        if self.pool not in POOLS:
            raise ValueError(f"EncoderConfig: pool={self.pool!r}; expected one of {POOLS} "
                             f"(or ADM's name 'adaptive' = 'avg')")
        if self.num_classes < 2:
            raise ValueError(f"EncoderConfig: num_classes={self.num_classes}; need at least 2")
        self.check_options_and_trunk()


class AttentionPool2d(nn.Module):
    """Attention pooling from CLIP/ADM: the mean token, plus learned positions, attends to all pixels.

    Only the mean token's query is computed (ADM computes all and keeps the first: same output).
    """

    def __init__(self, spatial: int, channels: int, num_heads: int, out_dim: int):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(spatial * spatial + 1, channels) / channels**0.5)
        self.num_heads = num_heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.c_proj = nn.Linear(channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        tok = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        tok = torch.cat([tok.mean(1, keepdim=True), tok], dim=1) + self.pos
        q, k, v = self.qkv(tok).reshape(b, -1, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        h = nn.functional.scaled_dot_product_attention(q[:, :, :1], k, v)  # [B, heads, 1, hd]
        return self.c_proj(h.reshape(b, c))


def spatial_pool(kind: str, features: int, num_classes: int, norm_groups: Optional[int] = None) -> nn.Sequential:
    """ADM's spatial pool heads on the concatenated spatial means (module indices as in ADM's ``out``)."""
    if kind == "spatial":
        return nn.Sequential(nn.Linear(features, SPATIAL_HIDDEN), nn.ReLU(), nn.Linear(SPATIAL_HIDDEN, num_classes))
    return nn.Sequential(nn.Linear(features, SPATIAL_HIDDEN), normalization(SPATIAL_HIDDEN, norm_groups), nn.SiLU(),
                         nn.Linear(SPATIAL_HIDDEN, num_classes))


class EncoderClassifier(TrunkNet):
    """forward(x [B,C,H,W], t int64 [B]) -> logits [B, num_classes]."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        self.input_blocks, widths, ch, self.middle_block = build_trunk(cfg, self.emb_channels)
        self.spatial = cfg.pool.startswith("spatial")
        if self.spatial:
            self.out_norm = nn.Identity()
            self.pool = spatial_pool(cfg.pool, sum(widths) + ch, cfg.num_classes, cfg.norm_groups)
            return
        self.out_norm = nn.Sequential(normalization(ch, cfg.norm_groups), nn.SiLU())
        if cfg.pool == "attention":
            spatial = cfg.image_size // 2 ** (len(cfg.channel_mult) - 1)
            heads = heads_for(ch, cfg.num_heads, cfg.num_head_channels)
            self.pool = AttentionPool2d(spatial, ch, heads, cfg.num_classes)
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, cfg.num_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.embed_t(x, t)
        h = x
        means = []
        for blk in self.input_blocks:
            h = blk(h, emb)
            if self.spatial:
                means.append(h.mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if self.spatial:
            return self.pool(torch.cat([*means, h.mean(dim=(2, 3))], dim=-1))
        return self.pool(self.out_norm(h))
