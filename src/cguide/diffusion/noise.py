"""Counter-based Gaussian noise: element i of draw k for seed s is a pure function of (s, k, i).

So a sample's noise does not depend on what else is in its batch, nor on the device, and a whole
batch is drawn with a few vectorised integer ops (no per-sample generator objects, graph-capturable).
Bits come from SplitMix64 (Steele et al. 2014), normals from the Box-Muller transform."""

from __future__ import annotations

from typing import Sequence

import math

import torch


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift on int64 (torch's >> is arithmetic)."""
    return (z >> n) & ((1 << (64 - n)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 finaliser on int64 tensors; multiplication wraps modulo 2^64 as in C."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def seeded_normal(seeds: torch.Tensor, draw: int | torch.Tensor, shape: Sequence[int], device=None,
                  dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise [B, *shape]; row b depends only on (seeds[b], draw).
    One 64-bit hash per pair of normals: two 32-bit uniforms feed Box-Muller's cos and sin branches."""
    seeds = torch.as_tensor(seeds, dtype=torch.long, device=device).reshape(-1, 1)
    n = math.prod(shape)
    # draw may be a device tensor, so a captured CUDA graph can replay one step body for every step
    draw = torch.as_tensor(draw, dtype=torch.long, device=seeds.device).reshape(-1, 1).expand_as(seeds)
    stream = splitmix64(splitmix64(seeds) ^ splitmix64(draw))
    bits = splitmix64(stream + torch.arange((n + 1) // 2, device=seeds.device, dtype=torch.long))
    u1 = (_shr(bits, 32).double() + 1.0) * 2.0**-32  # (0, 1], so log(u1) is finite
    u2 = (bits & 0xFFFFFFFF).double() * 2.0**-32
    r, theta = torch.sqrt(-2.0 * torch.log(u1)), 2.0 * math.pi * u2
    z = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], -1).reshape(len(seeds), -1)[:, :n]
    return z.to(dtype).reshape(len(seeds), *shape)
