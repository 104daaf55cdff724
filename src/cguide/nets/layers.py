"""Building blocks shared by the UNet eps-model and the noisy classifier (ADM style), and the configs and the
head that the nets share.

Plain torch. The UNet and the encoder both build their downsampling half with
``build_down_path`` and their bottleneck with ``MiddleBlock``, so the classifier trunk is the
same code as the UNet's encoder half, not a copy of it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------- configs


class ConfigDict:
    """to_dict/from_dict for the net config dataclasses.

    to_dict gives plain ints/floats/strs/lists/None only, so a checkpoint that stores it loads
    with ``torch.load(weights_only=True)``; from_dict refuses unknown keys rather than dropping
    them, since a silently ignored field would build a different net than the one trained.
    """

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, (tuple, list)) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown keys {unknown}; known: {sorted(names)}")
        return cls(**d)


def int_tuple(v: Sequence[int] | None) -> tuple[int, ...]:
    """Lists, tuples and OmegaConf ListConfigs all become a tuple of ints."""
    return tuple(int(x) for x in (v or ()))


def mult_tuple(v: Sequence[float] | None) -> tuple[int | float, ...]:
    """channel_mult: ints stay ints; a fractional multiplier (ADM 512x512: 0.5) stays a float."""
    return tuple(int(x) if float(x).is_integer() else float(x) for x in (v or ()))


def level_channels(model_channels: int, mult: float) -> int:
    """Width of a level: model_channels * mult, which must be a whole number (as ADM's int(mult * mc))."""
    return int(mult * model_channels)


ATTENTION_ORDERS = ("new", "legacy")


def check_options(name: str, attention_order: str, norm_groups: int | None, stem_channels: int | None) -> None:
    """Validation of the ADM-compatibility options shared by UNetConfig and EncoderConfig."""
    if attention_order not in ATTENTION_ORDERS:
        raise ValueError(f"{name}: attention_order={attention_order!r}; expected one of {ATTENTION_ORDERS} "
                         "('new' = ADM's QKVAttention, 'legacy' = QKVAttentionLegacy)")
    if norm_groups is not None and norm_groups < 1:
        raise ValueError(f"{name}: norm_groups={norm_groups}; use a positive group count (ADM: 32) or None "
                         "(the project's rule, norm_groups(channels))")
    if stem_channels is not None and stem_channels < 1:
        raise ValueError(f"{name}: stem_channels={stem_channels}; use a positive width or None (= model_channels)")


def check_trunk(name: str, image_size: int, channel_mult: Sequence[float],
                attention_resolutions: Sequence[int], model_channels: int,
                num_heads: int, num_head_channels: int, *, num_heads_upsample: int | None = None,
                norm_groups: int | None = None, stem_channels: int | None = None) -> None:
    """Validation shared by UNetConfig and EncoderConfig: one-line messages that name the fix.

    num_heads_upsample (UNet only): the heads of the decoder's attention (checked where it has some).
    norm_groups: a fixed GroupNorm group count must divide every width.
    """
    bad = [m for m in channel_mult if m <= 0 or not float(m * model_channels).is_integer()]
    if not channel_mult or bad:
        raise ValueError(f"{name}: channel_mult={list(channel_mult)} with model_channels={model_channels}: every "
                         f"level needs a positive whole width model_channels * mult (bad: {bad or 'no levels'})")
    factor = 2 ** (len(channel_mult) - 1)
    if image_size % factor:
        raise ValueError(
            f"{name}: image_size={image_size} is not divisible by the downsampling factor {factor} "
            f"(2**(len(channel_mult)-1), channel_mult={list(channel_mult)}); use an image_size that "
            f"is a multiple of {factor} or fewer channel_mult levels")
    resolutions = [image_size // 2**i for i in range(len(channel_mult))]
    missing = [r for r in attention_resolutions if r not in resolutions]
    if missing:
        # A resolution that never occurs would silently give a net without that attention.
        raise ValueError(f"{name}: attention_resolutions {missing} never occur; the resolutions of "
                         f"this net are {resolutions} (pixels)")
    # Levels with attention, and the lowest one (middle block, attention pool), need whole heads.
    for level, m in enumerate(channel_mult):
        ch = level_channels(model_channels, m)
        if resolutions[level] in attention_resolutions or level == len(channel_mult) - 1:
            try:
                heads_for(ch, num_heads, num_head_channels)
                if num_heads_upsample is not None and resolutions[level] in attention_resolutions:
                    heads_for(ch, num_heads if num_heads_upsample == -1 else num_heads_upsample, num_head_channels)
            except ValueError as e:
                raise ValueError(f"{name}: at resolution {resolutions[level]}: {e}") from None
        if norm_groups is not None and ch % norm_groups:
            raise ValueError(f"{name}: norm_groups={norm_groups} does not divide the {ch} channels at resolution "
                             f"{resolutions[level]}; use a group count that divides every width, or None")
    if norm_groups is not None and stem_channels is not None and stem_channels % norm_groups:
        raise ValueError(f"{name}: norm_groups={norm_groups} does not divide stem_channels={stem_channels}")


@dataclasses.dataclass
class TrunkConfig(ConfigDict):
    """The fields of the trunk that UNetConfig and EncoderConfig share (build_down_path, MiddleBlock), with their
    normalisation and checks; each config adds its own fields (listed after these by to_dict)."""

    image_size: int
    in_channels: int
    model_channels: int = 64
    channel_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = ()
    dropout: float = 0.0
    num_head_channels: int = 32
    num_heads: int = 1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    attention_order: str = "new"
    norm_groups: int | None = None
    stem_channels: int | None = None

    def __post_init__(self):
        self.channel_mult = mult_tuple(self.channel_mult)
        self.attention_resolutions = int_tuple(self.attention_resolutions)

    def attention_kwargs(self) -> dict[str, Any]:
        return dict(num_heads=self.num_heads, num_head_channels=self.num_head_channels,
                    attention_order=self.attention_order)

    def block_kwargs(self) -> dict[str, Any]:
        return dict(dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm)

    def check_options_and_trunk(self, num_heads_upsample: int | None = None) -> None:
        """check_options and check_trunk on these fields (each config calls it after its own checks)."""
        name = type(self).__name__
        check_options(name, self.attention_order, self.norm_groups, self.stem_channels)
        check_trunk(name, self.image_size, self.channel_mult, self.attention_resolutions, self.model_channels,
                    self.num_heads, self.num_head_channels, num_heads_upsample=num_heads_upsample,
                    norm_groups=self.norm_groups, stem_channels=self.stem_channels)


@dataclasses.dataclass
class StagedClassifierConfig(ConfigDict):
    """The fields the two judges' configs share (JudgeConfig, JudgeCNNConfig): stage s has width * stage_mult[s]
    channels; each adds its blocks per stage (listed after these by to_dict)."""

    image_size: int
    in_channels: int
    num_classes: int
    width: int = 32
    stage_mult: Sequence[int] = (1, 2, 4)
    dropout: float = 0.0

    def __post_init__(self):
        self.stage_mult = int_tuple(self.stage_mult)
        if self.num_classes < 2:
            raise ValueError(f"{type(self).__name__}: num_classes={self.num_classes}; need at least 2")


class FeatureClassifier(nn.Module):
    """What the two judges share: forward(x) = head(dropout(features(x))); each net defines features(x) and calls
    add_head with its feature width."""

    def add_head(self, channels: int, cfg: StagedClassifierConfig) -> None:
        self.feature_dim = channels
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(channels, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def heads_for(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Head count: channels // num_head_channels, or num_heads when num_head_channels == -1."""
    if num_head_channels == -1:
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide channels={channels}")
        return num_heads
    if num_head_channels < 1 or channels % num_head_channels:
        raise ValueError(f"num_head_channels={num_head_channels} must divide channels={channels} "
                         f"(or set num_head_channels=-1 and use num_heads)")
    return channels // num_head_channels


# ----------------------------------------------------------------------------- small pieces


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """ADM sinusoidal embedding: cat[cos(t f), sin(t f)], f_i = exp(-ln(max_period) i / half).

    t: [B] timestep indices (any dtype); returns float32 [B, dim] (zero-padded when dim is odd).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t through a 2-layer MLP: [B] -> [B, 4 * model_channels] in ADM."""

    def __init__(self, model_channels: int, emb_channels: int):
        super().__init__()
        self.model_channels = model_channels
        self.mlp = nn.Sequential(nn.Linear(model_channels, emb_channels), nn.SiLU(),
                                 nn.Linear(emb_channels, emb_channels))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # the features are float32; a float64 net (the guided-diffusion parity tests) takes them in its dtype
        return self.mlp(timestep_embedding(t, self.model_channels).to(self.mlp[0].weight.dtype))


def norm_groups(channels: int) -> int:
    """GroupNorm groups: at most 32, at least 2 channels per group, dividing channels.

    Gives ADM's 32 groups for every multiple of 64 channels; narrower nets keep 2+ channels per
    group so the norm does not degenerate into an InstanceNorm (1 channel per group).
    """
    return math.gcd(32, channels // 2) if channels >= 2 else 1


def normalization(channels: int, groups: int | None = None) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, or the project's rule ``norm_groups(channels)`` when None
    (ADM always uses 32: pass groups=32 for its nets)."""
    return nn.GroupNorm(norm_groups(channels) if groups is None else groups, channels)


def zero_module(m: nn.Module) -> nn.Module:
    """Zero-init a residual branch's last layer (ADM): every block starts as the identity."""
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


def check_input(name: str, x: torch.Tensor, image_size: int, in_channels: int) -> None:
    if x.ndim != 4 or x.shape[1] != in_channels or x.shape[-2:] != (image_size, image_size):
        raise ValueError(f"{name}: expected x of shape [B, {in_channels}, {image_size}, {image_size}], "
                         f"got {list(x.shape)}")


def expand_t(t: torch.Tensor, batch: int) -> torch.Tensor:
    """A scalar t broadcasts over the batch; a [B] t is used as is."""
    t = torch.as_tensor(t)
    return t.expand(batch) if t.ndim == 0 else t


# ----------------------------------------------------------------------------- blocks


class EmbedBlock(nn.Module):
    """Marker: a block whose forward takes (x, emb)."""


class EmbedSequential(nn.Sequential):
    """Sequential that hands the time embedding to the blocks that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, EmbedBlock) else layer(x)
        return x


class ResBlock(EmbedBlock):
    """GroupNorm-SiLU-conv, + time embedding (scale-shift or additive), GroupNorm-SiLU-dropout-conv.

    updown="up"/"down" resamples x2 inside the block (ADM's resblock_updown): nearest / average
    pooling on both branches, between the first norm-SiLU and the first conv.
    """

    def __init__(self, in_channels: int, emb_channels: int, out_channels: int | None = None,
                 dropout: float = 0.0, use_scale_shift_norm: bool = True, updown: str | None = None,
                 norm_groups: int | None = None):
        super().__init__()
        out_channels = out_channels or in_channels
        self.use_scale_shift_norm = use_scale_shift_norm
        resamplers = {None: nn.Identity, "up": lambda: nn.Upsample(scale_factor=2, mode="nearest"),
                      "down": lambda: nn.AvgPool2d(2)}
        if updown not in resamplers:
            raise ValueError(f"ResBlock: updown={updown!r}; expected None, 'up' or 'down'")
        self.resample = resamplers[updown]()
        self.in_norm = nn.Sequential(normalization(in_channels, norm_groups), nn.SiLU())
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_norm = normalization(out_channels, norm_groups)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout),
                                        zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_conv(self.resample(self.in_norm(x)))
        x = self.resample(x)
        e = self.emb_layers(emb)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels, residual, zero-initialised output projection.

    attention_order says how the 3C channels of the qkv conv split: 'new' (ADM's QKVAttention,
    use_new_attention_order=True) = [q | k | v], heads contiguous inside each; 'legacy' (ADM's
    QKVAttentionLegacy, its default) = one [q | k | v] block per head, heads outermost.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 attention_order: str = "new", norm_groups: int | None = None):
        super().__init__()
        if attention_order not in ATTENTION_ORDERS:
            raise ValueError(f"AttentionBlock: attention_order={attention_order!r}; expected one of {ATTENTION_ORDERS}")
        self.num_heads = heads_for(channels, num_heads, num_head_channels)
        self.legacy_order = attention_order == "legacy"
        self.norm = normalization(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        hd = c // self.num_heads
        qkv = self.qkv(self.norm(x))
        if self.legacy_order:
            q, k, v = qkv.reshape(b, self.num_heads, 3, hd, hgt * wid).transpose(-1, -2).unbind(2)
        else:
            q, k, v = qkv.reshape(b, 3, self.num_heads, hd, hgt * wid).transpose(-1, -2).unbind(1)
        # each [B, heads, HW, head_dim]
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(b, c, hgt, wid)
        return x + self.proj(h)


class Downsample(nn.Module):
    """Stride-2 3x3 conv."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (no checkerboard artefacts of transposed convs)."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def resample_block(kind: str, channels: int, emb_channels: int, dropout: float, use_scale_shift_norm: bool,
                   resblock_updown: bool, norm_groups: int | None = None) -> nn.Module:
    """The x2 up/down step between levels: a resampling ResBlock (ADM) or a plain conv layer."""
    if resblock_updown:
        return ResBlock(channels, emb_channels, channels, dropout, use_scale_shift_norm, updown=kind,
                        norm_groups=norm_groups)
    return Downsample(channels) if kind == "down" else Upsample(channels)


class MiddleBlock(EmbedSequential):
    """Bottleneck: ResBlock, attention, ResBlock (attention always on at the lowest resolution)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, use_scale_shift_norm: bool,
                 num_heads: int, num_head_channels: int, attention_order: str = "new",
                 norm_groups: int | None = None):
        super().__init__(
            ResBlock(channels, emb_channels, channels, dropout, use_scale_shift_norm, norm_groups=norm_groups),
            AttentionBlock(channels, num_heads, num_head_channels, attention_order, norm_groups),
            ResBlock(channels, emb_channels, channels, dropout, use_scale_shift_norm, norm_groups=norm_groups),
        )


def build_down_path(in_channels: int, model_channels: int, channel_mult: Sequence[float],
                    num_res_blocks: int, attention_resolutions: Sequence[int], image_size: int,
                    emb_channels: int, dropout: float, use_scale_shift_norm: bool,
                    num_heads: int, num_head_channels: int,
                    resblock_updown: bool = False, attention_order: str = "new",
                    norm_groups: int | None = None,
                    stem_channels: int | None = None) -> tuple[nn.ModuleList, list[int], int]:
    """The encoder half of the UNet: conv_in, then per level ResBlocks(+attention) and a Downsample.

    stem_channels: conv_in's width (None = model_channels; ADM uses channel_mult[0] * model_channels).
    Returns (blocks, skip_channels, out_channels): every block's output is a UNet skip
    connection and skip_channels lists their widths in order.
    """
    stem = stem_channels or model_channels
    blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, stem, 3, padding=1))])
    skips = [stem]
    ch, res = stem, image_size
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            out = level_channels(model_channels, mult)
            layers: list[nn.Module] = [ResBlock(ch, emb_channels, out, dropout, use_scale_shift_norm,
                                                norm_groups=norm_groups)]
            ch = out
            if res in attention_resolutions:
                layers.append(AttentionBlock(ch, num_heads, num_head_channels, attention_order, norm_groups))
            blocks.append(EmbedSequential(*layers))
            skips.append(ch)
        if level != len(channel_mult) - 1:
            blocks.append(EmbedSequential(resample_block("down", ch, emb_channels, dropout,
                                                         use_scale_shift_norm, resblock_updown, norm_groups)))
            skips.append(ch)
            res //= 2
    return blocks, skips, ch


def build_trunk(cfg: TrunkConfig, emb_channels: int) -> tuple[nn.ModuleList, list[int], int, MiddleBlock]:
    """The trunk the UNet and the noisy classifier share, from cfg's fields: (the down path's blocks, the widths
    build_down_path returns, the channels at the bottom, the middle block)."""
    block, attn = cfg.block_kwargs(), cfg.attention_kwargs()
    blocks, widths, ch = build_down_path(
        cfg.in_channels, cfg.model_channels, cfg.channel_mult, cfg.num_res_blocks, cfg.attention_resolutions,
        cfg.image_size, emb_channels, **block, **attn, resblock_updown=cfg.resblock_updown,
        norm_groups=cfg.norm_groups, stem_channels=cfg.stem_channels)
    return blocks, widths, ch, MiddleBlock(ch, emb_channels, **block, **attn, norm_groups=cfg.norm_groups)


class TrunkNet(nn.Module):
    """What the UNet and the noisy classifier share around their trunk: the config, the timestep embedding
    (emb_channels = 4 * model_channels wide), and checking the input and embedding t at the start of forward."""

    def __init__(self, cfg: TrunkConfig):
        super().__init__()
        self.cfg = cfg
        self.emb_channels = 4 * cfg.model_channels
        self.time_embed = TimeEmbedding(cfg.model_channels, self.emb_channels)

    def embed_t(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x checked against the config (named by the net's class); t's embedding [B, emb_channels]."""
        check_input(type(self).__name__, x, self.cfg.image_size, self.cfg.in_channels)
        return self.time_embed(expand_t(t, x.shape[0]).to(x.device))
