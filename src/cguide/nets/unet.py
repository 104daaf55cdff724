"""The eps-model eps_theta(x_t, t[, y]): an ADM-style UNet (Dhariwal & Nichol 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .layers import (AttentionBlock, EmbedSequential, ResBlock, TrunkConfig, TrunkNet, build_trunk, level_channels,
                     normalization, resample_block, zero_module)


@dataclass
class UNetConfig(TrunkConfig):
    """UNet hyperparameters; plain fields only so ``to_dict()`` can live in a checkpoint.

    attention_resolutions are in pixels (16 = the 16x16 feature maps); the middle block always
    has attention. out_channels=None means in_channels (use 2*in_channels for a learned sigma).
    num_head_channels=-1 switches to a fixed num_heads. resblock_updown=True resamples with
    ResBlocks (ADM) instead of a stride-2 conv / nearest+conv. null_class=True adds one label row,
    index num_classes = the null (unconditional) label, so one net also gives the eps of
    classifier-free guidance (Ho & Salimans 2022).

    Options for guided-diffusion (ADM) layouts (nets/adm.py sets them; the defaults keep this
    project's own layout): channel_mult may hold fractions (ADM 512: 0.5) as long as every width
    is whole; num_heads_upsample (-1 = num_heads) sets the decoder's heads when
    num_head_channels == -1; attention_order 'new' (QKVAttention) or 'legacy'
    (QKVAttentionLegacy); norm_groups: a fixed GroupNorm group count (ADM: 32; None = the project's
    rule); stem_channels: conv_in's width (None = model_channels; ADM: channel_mult[0] * model_channels).
    ADM's label embedding has no null row: null_class=False.
    """

    out_channels: Optional[int] = None
    num_classes: Optional[int] = None
    null_class: bool = False
    num_heads_upsample: int = -1

    def __post_init__(self):
        super().__post_init__()
        if self.out_channels is None:
            self.out_channels = self.in_channels
        if self.null_class and self.num_classes is None:
            raise ValueError("UNetConfig: null_class=True needs num_classes (the null label is index num_classes)")
        self.check_options_and_trunk(num_heads_upsample=self.num_heads_upsample)


class UNet(TrunkNet):
    """forward(x [B,C,H,W], t int64 [B] original timestep indices, y [B] or None) -> eps [B,C_out,H,W].

    The output conv is zero-initialised (ADM), so a fresh net predicts eps = 0 exactly.
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__(cfg)
        mc, emb_ch = cfg.model_channels, self.emb_channels
        self.label_emb = (nn.Embedding(cfg.num_classes + int(cfg.null_class), emb_ch)
                          if cfg.num_classes is not None else None)
        groups = cfg.norm_groups
        up_attn = {**cfg.attention_kwargs(),
                   "num_heads": cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample}
        block = cfg.block_kwargs()

        self.input_blocks, skips, ch, self.middle_block = build_trunk(cfg, emb_ch)

        self.output_blocks = nn.ModuleList()
        res = cfg.image_size // 2 ** (len(cfg.channel_mult) - 1)
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                out = level_channels(mc, mult)
                layers: list[nn.Module] = [ResBlock(ch + skips.pop(), emb_ch, out, **block, norm_groups=groups)]
                ch = out
                if res in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, **up_attn, norm_groups=groups))
                if level and i == cfg.num_res_blocks:
                    layers.append(resample_block("up", ch, emb_ch, **block,
                                                 resblock_updown=cfg.resblock_updown, norm_groups=groups))
                    res *= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch, groups), nn.SiLU(),
                                 zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    @property
    def null_label(self) -> Optional[int]:
        """The null (unconditional) label index, or None when the net has no null label."""
        return self.cfg.num_classes if self.cfg.null_class else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        emb = self.embed_t(x, t)
        if self.label_emb is not None:
            if y is None:
                raise ValueError("UNet: built with num_classes, so forward needs y (class indices [B])")
            emb = emb + self.label_emb(y)
        elif y is not None:
            raise ValueError("UNet: got y but the net was built with num_classes=None")

        hs = []
        h = x
        for blk in self.input_blocks:
            h = blk(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for blk in self.output_blocks:
            h = blk(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
