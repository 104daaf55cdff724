"""The noisy classifier p_phi(y | x_t, t): the UNet's downsampling half + middle block + a pool.

ADM's EncoderUNetModel. The trunk comes from ``layers.build_down_path`` / ``layers.MiddleBlock``,
the same code the UNet uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .layers import (ConfigDict, MiddleBlock, TimeEmbedding, build_down_path, check_input, check_trunk,
                     expand_t, heads_for, int_tuple, normalization)

POOLS = ("attention", "avg")


@dataclass
class EncoderConfig(ConfigDict):
    """Classifier hyperparameters (plain fields). num_classes has no default on purpose.

    pool="attention": ADM's AttentionPool2d (learned positional embedding, the mean token
    attends to all pixels); pool="avg": global average + linear.
    """

    image_size: int
    in_channels: int
    num_classes: int
    model_channels: int = 64
    channel_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = ()
    dropout: float = 0.0
    num_head_channels: int = 32
    num_heads: int = 1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    pool: str = "attention"

    def __post_init__(self):
        self.channel_mult = int_tuple(self.channel_mult)
        self.attention_resolutions = int_tuple(self.attention_resolutions)
        if self.pool not in POOLS:
            raise ValueError(f"EncoderConfig: pool={self.pool!r}; expected one of {POOLS}")
        if self.num_classes < 2:
            raise ValueError(f"EncoderConfig: num_classes={self.num_classes}; need at least 2")
        check_trunk("EncoderConfig", self.image_size, self.channel_mult, self.attention_resolutions,
                    self.model_channels, self.num_heads, self.num_head_channels)


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


class EncoderClassifier(nn.Module):
    """forward(x [B,C,H,W], t int64 [B]) -> logits [B, num_classes]."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        emb_ch = 4 * mc
        self.time_embed = TimeEmbedding(mc, emb_ch)
        attn = dict(num_heads=cfg.num_heads, num_head_channels=cfg.num_head_channels)
        block = dict(dropout=cfg.dropout, use_scale_shift_norm=cfg.use_scale_shift_norm)
        self.input_blocks, _, ch = build_down_path(
            cfg.in_channels, mc, cfg.channel_mult, cfg.num_res_blocks, cfg.attention_resolutions,
            cfg.image_size, emb_ch, **block, **attn, resblock_updown=cfg.resblock_updown)
        self.middle_block = MiddleBlock(ch, emb_ch, **block, **attn)
        self.out_norm = nn.Sequential(normalization(ch), nn.SiLU())
        if cfg.pool == "attention":
            spatial = cfg.image_size // 2 ** (len(cfg.channel_mult) - 1)
            self.pool = AttentionPool2d(spatial, ch, heads_for(ch, **attn), cfg.num_classes)
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, cfg.num_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_input("EncoderClassifier", x, self.cfg.image_size, self.cfg.in_channels)
        emb = self.time_embed(expand_t(t, x.shape[0]).to(x.device))
        h = x
        for blk in self.input_blocks:
            h = blk(h, emb)
        h = self.middle_block(h, emb)
        return self.pool(self.out_norm(h))
