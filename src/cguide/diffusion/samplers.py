"""The sampler spec and the one sampling loop that every sampler (``solvers.SAMPLERS``) and every guidance
method share.

All samplers take an ``eps_fn(x_t, t) -> eps`` with t the ORIGINAL timestep index (int64 [B]);
classifier guidance is a wrapper around that function (``cguide.guidance``), never a branch here, and a
sampler that evaluates the model several times per step (Heun) or keeps a history (DPM-Solver++, UniPC)
calls that one function at each evaluation, so the guidance acts at every one.

Learned variances (var_type='learned', a learn_sigma network such as guided-diffusion's): the eps function
returns 2C channels [eps, v] instead of C, and every wrapper (``ClippedEps``, ``ClassifierGuidance``,
``MethodEps``) acts on the eps half and passes v through (the guidance's ``mean_shift`` reads v: Alg. 1 with the
learned Sigma). The rule is one-to-one: 2C channels if and only if var_type is 'learned', checked at every step
(``split_eps``: one clear error either way). DDPM's variance is then the learned one on the respaced schedule
(``cguide.diffusion.learned_variance``); DDIM ignores v; the ODE solvers refuse 'learned'."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .learned_variance import LEARNED
from .noise import seeded_normal
from .respace import SPACINGS, Plan, make_plan
from .schedule import Schedule
from .solvers import SAMPLERS, Sampler, register_sampler, sampler_class
from .steps import ClippedEps, ddim_step, ddpm_step, predict_x0, threshold_x0

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
VAR_TYPES = ("fixed_small", "fixed_large", LEARNED)
# clip_then_guide: guided-diffusion's order (p_mean_variance clips x0_hat, then condition_score /
# condition_mean guide from the clipped prediction); guide_then_clip: clip the x0_hat of the guided eps.
CLIP_ORDERS = ("clip_then_guide", "guide_then_clip")
__all__ = ["SAMPLERS", "Sampler", "register_sampler", "sampler_class", "ClippedEps", "ddim_step", "ddpm_step",
           "predict_x0", "threshold_x0", "SamplerSpec", "sample", "run_eager", "VAR_TYPES", "CLIP_ORDERS"]


# the config keys named in the fix of each message, by where the setting came from
KEYS = {"sampler": {"name": "sampler.name", "steps": "sampler.steps"},
        "sweep": {"name": "sweep.samplers", "steps": "sweep.steps"}}


@dataclass(frozen=True)
class SamplerSpec:
    """How x_T becomes x_0: the schema of the sampler's settings (``cguide.config.SamplerConfig`` is made from
    these fields and defaults, and conf/sampler/*.yaml set only what differs), checked once where it is made.

    name: a registered sampler (``SAMPLERS``: ddpm, ddim, euler, heun, dpmpp_2m, unipc).
    steps: respaced steps (None = all T); a solver of order p needs at least p.
    spacing: uniform | leading (``respaced_timesteps``).
    eta: DDIM's noise (0 = deterministic); only ddim takes it.
    var_type: DDPM's variance fixed_small | fixed_large | learned (a learn_sigma net's [eps, v]; DDIM drops v;
        the ODE solvers refuse 'learned').
    clip_x0: clamp x0_hat to [-1, 1] at every model evaluation (eps re-derived from it where the sampler needs eps).
    dynamic_threshold: Imagen's dynamic thresholding at percentile p in (0, 1] (``threshold_x0``), or None;
        when set it supersedes clip_x0.
    clip_order: where the clip acts when guidance is on (CLIP_ORDERS; clip_then_guide, guided-diffusion's, moves
        it into the base eps: ``base_eps``).
    source names the config section in error messages (not a setting)."""

    name: str = "ddim"
    steps: int | None = None
    spacing: str = "uniform"
    eta: float = 0.0
    var_type: str = "fixed_small"
    clip_x0: bool = False
    source: str = field(default="sampler", compare=False, repr=False)
    dynamic_threshold: float | None = None
    clip_order: str = "clip_then_guide"

    def __post_init__(self):
        keys = KEYS[self.source]
        cls = sampler_class(self.name, keys["name"])
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ValueError(f"sampling steps must be >= 1 (or null for all T), got {self.steps}; fix {keys['steps']}")
        if self.steps is not None and self.steps < cls.order:
            raise ValueError(f"sampler {self.name} is a solver of order {cls.order}: it needs at least {cls.order} "
                             f"steps, got {self.steps}; raise {keys['steps']} (or use ddim)")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown sampler.spacing {self.spacing!r}; known: {', '.join(SPACINGS)}")
        if not (isinstance(self.eta, (int, float)) and math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"sampler.eta must be finite and >= 0, got {self.eta}")
        if self.eta > 0 and "eta" not in cls.takes:
            raise ValueError(f"sampler {self.name} does not take sampler.eta (DDIM's noise), got {self.eta:g}; set "
                             f"sampler.eta=0, or use ddim")
        if self.var_type not in VAR_TYPES:
            raise ValueError(f"unknown sampler.var_type {self.var_type!r}; known: {', '.join(VAR_TYPES)}")
        if self.var_type == LEARNED and "learned" not in cls.takes:
            raise ValueError(f"sampler {self.name} is an ODE solver and does not take sampler.var_type=learned (a "
                             "learned variance is DDPM's); set sampler.var_type=fixed_small (a learn_sigma model's "
                             "variance output is then dropped), or use ddpm")
        p = self.dynamic_threshold
        if p is not None:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
                raise ValueError(f"sampler.dynamic_threshold must be a percentile p in (0, 1] (or null for none), "
                                 f"got {p}; fix sampler.dynamic_threshold")
            object.__setattr__(self, "dynamic_threshold", float(p))
        if self.clip_order not in CLIP_ORDERS:
            raise ValueError(f"unknown sampler.clip_order {self.clip_order!r}; known: {', '.join(CLIP_ORDERS)}")

    @classmethod
    def from_config(cls, node, name: str | None = None, steps: int | None | str = "config",
                    source: str = "sampler") -> "SamplerSpec":
        """From a sampler/ config node (any subset of the fields; the rest keep their defaults here); a sweep
        passes its point's name and steps."""
        get = node.get if hasattr(node, "get") else lambda k, d: getattr(node, k, d)
        missing = object()
        values = {f.name: v for f in dataclasses.fields(cls) if f.name != "source"
                  and (v := get(f.name, missing)) is not missing}
        if name:
            values["name"] = name
        if steps != "config":
            values["steps"] = steps
        if "eta" in values:
            values["eta"] = float(values["eta"])
        if "clip_x0" in values:
            values["clip_x0"] = bool(values["clip_x0"])
        return cls(**values, source=source)

    @property
    def sampler(self) -> type[Sampler]:
        """The registered class."""
        return SAMPLERS[self.name]

    def plan(self, schedule: Schedule) -> Plan:
        return make_plan(schedule, self.steps, self.spacing)

    def make(self, plan: Plan, x: torch.Tensor, seeds: torch.Tensor) -> Sampler:
        """The sampler's instance for one batch (x = x_T, advanced in place)."""
        return self.sampler(self, plan, x, seeds)

    @property
    def clips_first(self) -> bool:
        """Is x0_hat clipped (or thresholded) before guidance, in the base eps (``ClippedEps``)?"""
        return self.clip_order == "clip_then_guide" and (self.clip_x0 or self.dynamic_threshold is not None)

    def base_eps(self, eps_fn: EpsFn, schedule: Schedule) -> EpsFn:
        """The eps function guidance wraps: clipped first under clip_then_guide, else eps_fn itself.
        Unguided rows go through it too, so a row at s = 0 stays bit for bit an unguided draw."""
        return ClippedEps(eps_fn, schedule, self.clip_x0, self.dynamic_threshold) if self.clips_first else eps_fn

    @property
    def stepping(self) -> "SamplerSpec":
        """The spec the sampler steps with for an eps from ``base_eps``: no clip in the step when the base eps
        was clipped already."""
        if not self.clips_first:
            return self
        return dataclasses.replace(self, clip_x0=False, dynamic_threshold=None)

    @property
    def options(self) -> dict:
        """The keyword arguments of ``sample`` / ``sample_static`` for an eps from ``base_eps``."""
        return {"sampler": self.stepping}


def run_eager(smp: Sampler, i: int, eps_fn: EpsFn) -> None:
    """Run step i of ``smp`` with ``eps_fn`` at each of its evaluations (its buffers loaded)."""
    with torch.no_grad():
        smp.step([eps_fn] * len(smp.eval_steps_at(i)))


def sample(eps_fn: EpsFn, shape: Sequence[int], plan: Plan, seeds: Sequence[int],
           sampler: SamplerSpec | str = "ddim", *, device=None, dtype=torch.float32, progress: bool = True,
           desc: str = "sampling", runner: Callable[[Sampler, int, EpsFn], None] = run_eager) -> torch.Tensor:
    """Draw len(seeds) samples of shape [C,H,W] by running plan's steps from the noisiest to t = tau_0 with
    ``sampler`` (a SamplerSpec, or a registered name with default settings).

    x_T is draw 0 of each sample's seed and step i's noise is draw i + 1 (``seeded_normal``), so a
    sample is reproducible from its seed alone, whatever else shares its batch. The loop knows no sampler:
    it loads step i's buffers and hands the step to ``runner`` (``run_eager``, or the CUDA-graph runner that
    captures and replays the same step code, ``cguide.runtime.cuda_graph``)."""
    spec = sampler if isinstance(sampler, SamplerSpec) else SamplerSpec(sampler)
    seeds = torch.as_tensor(seeds, dtype=torch.long, device=device)
    x = seeded_normal(seeds, 0, shape, device, dtype)
    smp = spec.make(plan, x, seeds)
    for i in tqdm(range(plan.K - 1, -1, -1), desc=desc, disable=not progress, leave=False):
        smp.load(i)
        runner(smp, i, eps_fn)
    return smp.x
