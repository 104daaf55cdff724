"""The sweep grid: points (a sampler and a guidance setting), their stable keys, and how points are
packed into shared drawing calls. Every value is checked by the spec it becomes, before any work."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import torch

from ..diffusion import SamplerSpec
from ..guidance import GuidanceSetting

AXES = {"scales": "scale", "variants": "variant", "samplers": "sampler", "steps": "steps", "intervals": "interval"}


@dataclass(frozen=True)
class Point:
    sampler: SamplerSpec
    guidance: GuidanceSetting

    @property
    def key(self) -> str:
        """Stable id: the row's name in results and the point's grid file name."""
        lo, hi = self.guidance.interval
        return (f"{self.sampler.name}-{self.sampler.steps or 'T'}-t{lo:g}_{hi:g}-{self.guidance.variant}"
                f"-s{self.guidance.scale:g}")

    @property
    def batch_key(self) -> tuple:
        """Points agreeing here run the same sampling loop, so they can share batches (per-sample s, variant)."""
        return (self.sampler, self.guidance.interval)

    @property
    def draw_key(self) -> tuple:
        """Points with equal draw keys draw the same samples: at s = 0 the variant makes no difference."""
        g = self.guidance
        return (g.scale, g.variant if g.scale else "")

    def settings(self) -> dict:
        g = self.guidance
        return {"point": self.key, "sampler": self.sampler.name, "steps": self.sampler.steps, "t_lo": g.interval[0],
                "t_hi": g.interval[1], "variant": g.variant, "scale": g.scale}


def build_grid(sweep, sampler, nonfinite: str) -> list[Point]:
    """Cartesian product of the sweep's axes (sweep.scales, .variants, .samplers, .steps, .intervals) in
    a fixed order, duplicates dropped; each value becomes a SamplerSpec / GuidanceSetting (its check)."""
    axes = {name: list(sweep[name]) for name in AXES}
    for name, values in axes.items():
        if len(values) == 0:
            raise ValueError(f"empty grid: sweep.{name} is empty; give it at least one value "
                             f"(or drop the override to use {AXES[name]} alone)")
    samplers = [SamplerSpec.from_config(sampler, name=smp, steps=k, source="sweep")
                for smp, k in itertools.product(axes["samplers"], axes["steps"])]
    settings = [GuidanceSetting(float(s), v, tuple(iv), nonfinite, source="sweep")
                for iv, v, s in itertools.product(axes["intervals"], axes["variants"], axes["scales"])]
    return list(dict.fromkeys(Point(smp, g) for smp, g in itertools.product(samplers, settings)))


def pack(points: Sequence[Point], points_per_call: int) -> list[list[Point]]:
    """Groups of up to points_per_call points sharing a batch_key; s = 0 points first, so the unguided
    draw that all variants share lands in the first call."""
    by_key: dict[tuple, list[Point]] = {}
    for p in sorted(points, key=lambda p: p.guidance.scale != 0):  # stable: grid order otherwise
        by_key.setdefault(p.batch_key, []).append(p)
    k = max(1, points_per_call)
    return [group[i:i + k] for group in by_key.values() for i in range(0, len(group), k)]


def balanced_targets(n: int, num_classes: int) -> torch.Tensor:
    """Sample i targets class i % num_classes: every class gets n // num_classes or one more."""
    if n < num_classes:
        raise ValueError(f"sweep.n_per_point={n} is fewer than the {num_classes} classes; set sweep.n_per_point >= "
                         f"{num_classes} so every class is drawn")
    return torch.arange(n) % num_classes
