"""draw() with plain keyword arguments, built into the specs the runtime takes."""

from __future__ import annotations

from cguide.diffusion import SamplerSpec
from cguide.guidance import GuidanceSpec
from cguide.runtime.draw import Models, RunOptions, draw, draw_sharded


def draw_kw(eps, clf, *, y, scale=0.0, variant="score", interval=(0.0, 1.0), nonfinite="zero", seeds,
            sampler="ddim", steps=None, eta=0.0, var_type="fixed_small", clip_x0=False, spacing="uniform",
            batch_size=256, device=None, progress=False, speed=None, sharded=False, method="classifier", cond=None):
    """draw(Models(eps, cond, clf), ...) from plain values: eps is the unconditional model, cond the conditional."""
    seeds = list(seeds)
    spec = GuidanceSpec.of(y, scale, variant, interval, nonfinite, n=len(seeds), method=method)
    smp = SamplerSpec(sampler, steps, spacing, eta, var_type, clip_x0)
    fn = draw_sharded if sharded else draw
    return fn(Models(eps, cond, clf), spec, smp, seeds, RunOptions(batch_size, device, progress, speed))
