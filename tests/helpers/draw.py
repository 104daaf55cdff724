"""draw() with plain keyword arguments, built into the specs the runtime takes."""

from __future__ import annotations

from cguide.diffusion import SamplerSpec
from cguide.guidance import GuidanceSpec
from cguide.runtime.draw import RunOptions, draw, draw_sharded


def _specs(y, scale, variant, interval, nonfinite, seeds, sampler, steps, eta, var_type, clip_x0, spacing):
    seeds = list(seeds)
    spec = GuidanceSpec.of(y, scale, variant, interval, nonfinite, n=len(seeds))
    return spec, SamplerSpec(sampler, steps, spacing, eta, var_type, clip_x0), seeds


def draw_kw(eps, clf, *, y, scale=0.0, variant="score", interval=(0.0, 1.0), nonfinite="zero", seeds,
            sampler="ddim", steps=None, eta=0.0, var_type="fixed_small", clip_x0=False, spacing="uniform",
            batch_size=256, device=None, progress=False, speed=None, sharded=False):
    spec, smp, seeds = _specs(y, scale, variant, interval, nonfinite, seeds, sampler, steps, eta, var_type, clip_x0,
                              spacing)
    fn = draw_sharded if sharded else draw
    return fn(eps, clf, spec, smp, seeds, RunOptions(batch_size, device, progress, speed))
