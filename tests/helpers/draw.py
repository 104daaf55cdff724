"""draw() with plain keyword arguments, built into the specs the runtime takes."""

from __future__ import annotations

from cguide.diffusion import SamplerSpec
from cguide.guidance import GuidanceSpec
from cguide.runtime.draw import Models, RunOptions, draw, draw_sharded


def draw_kw(eps, clf, *, y, seeds, scale=0.0, variant="score", interval=(0.0, 1.0), nonfinite="zero",
            method="classifier", cond=None, sampler: SamplerSpec | str = "ddim", batch_size=256, device=None,
            progress=False, speed=None, sharded=False, **sampler_options):
    """draw(Models(eps, cond, clf), ...) from plain values: eps is the unconditional model, cond the conditional.
    sampler: a SamplerSpec, or a registered name with ``sampler_options`` (any SamplerSpec field: steps, eta,
    clip_x0, ...; the spec's own defaults otherwise)."""
    seeds = list(seeds)
    spec = GuidanceSpec.of(y, scale, variant, interval, nonfinite, n=len(seeds), method=method)
    smp = sampler if isinstance(sampler, SamplerSpec) else SamplerSpec(sampler, **sampler_options)
    fn = draw_sharded if sharded else draw
    return fn(Models(eps, cond, clf), spec, smp, seeds, RunOptions(batch_size, device, progress, speed))
