"""The sweep grid: points (sampler, steps, interval, variant, scale), their stable keys, and how
points are packed into shared drawing calls."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..diffusion import SAMPLERS
from ..guidance import check_variant

AXES = {"scales": "scale", "variants": "variant", "samplers": "sampler", "steps": "steps", "intervals": "interval"}


@dataclass(frozen=True)
class Point:
    sampler: str
    steps: int | None  # None = all T steps
    interval: tuple[float, float]
    variant: str
    scale: float

    @property
    def key(self) -> str:
        """Stable id: the row's name in results and the point's grid file name."""
        lo, hi = self.interval
        return f"{self.sampler}-{self.steps or 'T'}-t{lo:g}_{hi:g}-{self.variant}-s{self.scale:g}"

    @property
    def batch_key(self) -> tuple:
        """Points agreeing here run the same sampling loop, so they can share batches (per-sample s, variant)."""
        return (self.sampler, self.steps, self.interval)

    def settings(self) -> dict:
        return {"point": self.key, "sampler": self.sampler, "steps": self.steps, "t_lo": self.interval[0],
                "t_hi": self.interval[1], "variant": self.variant, "scale": self.scale}


def build_grid(scales: Sequence[float], variants: Sequence[str], samplers: Sequence[str],
               steps: Sequence[int | None], intervals: Sequence[Sequence[float]]) -> list[Point]:
    """Cartesian product in a fixed order, duplicates dropped; every value checked before any work."""
    axes = {"scales": scales, "variants": variants, "samplers": samplers, "steps": steps, "intervals": intervals}
    for name, values in axes.items():
        if len(values) == 0:
            raise ValueError(f"empty grid: sweep.{name} is empty; give it at least one value "
                             f"(or drop the override to use {AXES[name]} alone)")
    for s in scales:
        if not (math.isfinite(s) and s >= 0):
            raise ValueError(f"guidance scale must be finite and >= 0 (s = 0 is unguided), got {s}; fix sweep.scales")
    for v in variants:
        check_variant(v)
    for smp in samplers:
        if smp not in SAMPLERS:
            raise ValueError(f"unknown sampler {smp!r} in sweep.samplers; known: {', '.join(SAMPLERS)}")
    for k in steps:
        if k is not None and k < 1:
            raise ValueError(f"sampling steps must be >= 1 (or null for all T), got {k}; fix sweep.steps")
    ivals = []
    for iv in intervals:
        if len(iv) != 2 or not 0 <= iv[0] <= iv[1] <= 1:
            raise ValueError(f"guidance interval needs [t_lo, t_hi] with 0 <= t_lo <= t_hi <= 1, got {list(iv)}; "
                             "fix sweep.intervals")
        ivals.append((float(iv[0]), float(iv[1])))
    points = [Point(smp, k, iv, v, float(s))
              for smp, k, iv, v, s in itertools.product(samplers, steps, ivals, variants, scales)]
    return list(dict.fromkeys(points))


def pack(points: Sequence[Point], points_per_call: int) -> list[list[Point]]:
    """Groups of up to points_per_call points sharing a batch_key; s = 0 points first, so the unguided
    draw that all variants share lands in the first call."""
    by_key: dict[tuple, list[Point]] = {}
    for p in sorted(points, key=lambda p: p.scale != 0):  # stable: grid order otherwise
        by_key.setdefault(p.batch_key, []).append(p)
    k = max(1, points_per_call)
    return [group[i:i + k] for group in by_key.values() for i in range(0, len(group), k)]


def balanced_targets(n: int, num_classes: int) -> torch.Tensor:
    """Sample i targets class i % num_classes: every class gets n // num_classes or one more."""
    if n < num_classes:
        raise ValueError(f"sweep.n_per_point={n} is fewer than the {num_classes} classes; set sweep.n_per_point >= "
                         f"{num_classes} so every class is drawn")
    return torch.arange(n) % num_classes
