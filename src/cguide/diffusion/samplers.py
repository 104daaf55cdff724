"""DDPM and DDIM steps and the one sampling loop that every sampler and guidance variant share.

All samplers take an ``eps_fn(x_t, t) -> eps`` with t the ORIGINAL timestep index (int64 [B]);
classifier guidance is a wrapper around that function (``cguide.guidance``), never a branch here.

Learned variances (var_type='learned', a learn_sigma network such as guided-diffusion's): the eps function
returns 2C channels [eps, v] instead of C, and every wrapper (``ClippedEps``, ``ClassifierGuidance``,
``MethodEps``) acts on the eps half and passes v through (the guidance's ``mean_shift`` reads v: Alg. 1 with the
learned Sigma). The rule is one-to-one: 2C channels if and only if var_type is 'learned', checked at every step
(``split_eps``: one clear error either way). DDPM's variance is then the learned one on the respaced schedule
(``cguide.diffusion.learned_variance``); DDIM ignores v."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .process import posterior, x0_from_eps, eps_from_x0
from .noise import seeded_normal
from .learned_variance import LEARNED, learned_log_var, learned_log_var_range, split_eps
from .respace import SPACINGS, Plan, make_plan
from .schedule import Schedule

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SAMPLERS = ("ddpm", "ddim")
VAR_TYPES = ("fixed_small", "fixed_large", LEARNED)
# clip_then_guide: guided-diffusion's order (p_mean_variance clips x0_hat, then condition_score /
# condition_mean guide from the clipped prediction); guide_then_clip: clip the x0_hat of the guided eps.
CLIP_ORDERS = ("clip_then_guide", "guide_then_clip")


def threshold_x0(x0: torch.Tensor, p: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, arXiv 2205.11487, Sec. 2.3), per sample:
    s = max(1, quantile_p(|x0|)), x0 <- clamp(x0, -s, s) / s. The quantile interpolates linearly between
    order statistics (numpy's default), from a sort: graph-safe, and free of torch.quantile's size limit."""
    a = x0.abs().flatten(1).sort(dim=1).values
    pos = p * (a.shape[1] - 1)
    lo = int(math.floor(pos))
    q = torch.lerp(a[:, lo], a[:, min(lo + 1, a.shape[1] - 1)], pos - lo)
    s = q.clamp(min=1).view(-1, *[1] * (x0.ndim - 1))
    return x0.clamp(-s, s) / s


def predict_x0(x_t, eps, alphabar_t, clip_x0: bool, threshold: float | None = None):
    """x0_hat from eps; with ``threshold`` (a percentile p) dynamically thresholded, else clipped to [-1, 1]
    with clip_x0 (the thresholded x0 lies in [-1, 1] already, so the threshold supersedes clip_x0)."""
    x0 = x0_from_eps(x_t, eps, alphabar_t)
    if threshold is not None:
        return threshold_x0(x0, threshold)
    return x0.clamp(-1, 1) if clip_x0 else x0


def ddpm_step(x_t, eps, alphabar_t, alphabar_prev, noise, var_type="fixed_small", clip_x0=False, threshold=None,
              log_var_range=None):
    """Ancestral step x_{t-1} ~ N(mu(x_t, x0_hat), var); no noise on the final step (alphabar_prev = 1).
    fixed_small: var = posterior variance beta_t (1 - alphabar_{t-1}) / (1 - alphabar_t); fixed_large: var = beta_t;
    learned: eps is [eps, v] and log var = ``learned_log_var(v, *log_var_range)``, log_var_range the step's
    (min_log, max_log) from ``learned_log_var_range(plan)``, broadcastable to x_t."""
    eps, v = split_eps(eps, x_t, var_type)
    x0 = predict_x0(x_t, eps, alphabar_t, clip_x0, threshold)
    mean, var = posterior(x0, x_t, alphabar_t, alphabar_prev)
    if var_type == "fixed_large":
        var = 1 - alphabar_t / alphabar_prev
    last = (alphabar_prev >= 1).to(x_t.dtype)
    if var_type == LEARNED:
        if log_var_range is None:
            raise ValueError("var_type='learned' needs the step's log_var_range (from learned_log_var_range(plan))")
        return mean + (1 - last) * (0.5 * learned_log_var(v, *log_var_range)).exp() * noise, x0
    return mean + (1 - last) * var.sqrt() * noise, x0


def ddim_step(x_t, eps, alphabar_t, alphabar_prev, noise=None, eta=0.0, clip_x0=False, threshold=None):
    """Song et al. (2021) eq. 12: x_{t-1} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - ab_prev)/(1 - ab_t)) sqrt(1 - ab_t/ab_prev). With clipping or thresholding, eps is
    re-derived from the clipped / thresholded x0 so the step stays on the same trajectory family."""
    x0 = predict_x0(x_t, eps, alphabar_t, clip_x0, threshold)
    if clip_x0 or threshold is not None:
        eps = eps_from_x0(x_t, x0, alphabar_t)
    sigma = eta * ((1 - alphabar_prev) / (1 - alphabar_t) * (1 - alphabar_t / alphabar_prev)).sqrt()
    x_prev = alphabar_prev.sqrt() * x0 + (1 - alphabar_prev - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0:
        x_prev = x_prev + sigma * noise
    return x_prev, x0


def step(sampler: str, x_t, eps, alphabar_t, alphabar_prev, noise, *, eta=0.0, var_type="fixed_small",
         clip_x0=False, dynamic_threshold=None, log_var_range=None):
    """One step of ``sampler`` from x_t to x_prev: the DDPM/DDIM branch, written once for the eager loop
    and the CUDA-graph step. eps is [eps, v] when var_type is 'learned' (DDIM drops v). Returns (x_prev, x0_hat)."""
    if sampler == "ddpm":
        return ddpm_step(x_t, eps, alphabar_t, alphabar_prev, noise, var_type, clip_x0, dynamic_threshold,
                         log_var_range)
    eps, _ = split_eps(eps, x_t, var_type)
    return ddim_step(x_t, eps, alphabar_t, alphabar_prev, noise, eta, clip_x0, dynamic_threshold)


class ClippedEps:
    """eps_fn whose output is re-derived from the clipped (or dynamically thresholded) x0_hat:
    eps_c = (x_t - sqrt(ab_t) clip(x0_hat)) / sqrt(1 - ab_t). Guiding eps_c and stepping without a second
    clip is guided-diffusion's order: condition_score subtracts sqrt(1 - ab_t) g from eps_c, and
    condition_mean's mu + s Sigma g is the posterior mean of eps_c minus the mean_shift c_t s g
    (the posterior mean is linear in x0_hat). Graph-safe: alphabar is a device table indexed by t.
    An [eps, v] output (learned variance) keeps its v."""

    def __init__(self, eps_fn: EpsFn, schedule: Schedule, clip_x0: bool, threshold: float | None):
        self.eps_fn, self.clip_x0, self.threshold = eps_fn, clip_x0, threshold
        self._ab = schedule.alphabar
        self._tables: dict = {}

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps, v = split_eps(self.eps_fn(x, t), x)
        key = (x.device, x.dtype)
        if key not in self._tables:
            self._tables[key] = self._ab.to(x.device, x.dtype)
        a_t = self._tables[key][t].view((-1,) + (1,) * (x.ndim - 1))
        eps = eps_from_x0(x, predict_x0(x, eps, a_t, self.clip_x0, self.threshold), a_t)
        return eps if v is None else torch.cat([eps, v], 1)


# the config keys named in the fix of each message, by where the setting came from
KEYS = {"sampler": {"name": "sampler.name", "steps": "sampler.steps"},
        "sweep": {"name": "sweep.samplers", "steps": "sweep.steps"}}


@dataclass(frozen=True)
class SamplerSpec:
    """How x_T becomes x_0, checked once where it is made from config: sampler name, respaced steps
    (None = all T), spacing, DDIM eta, DDPM variance, x0 clipping, dynamic thresholding (a percentile p in
    (0, 1], or None; when set it supersedes clip_x0: see ``threshold_x0``; 'learned' needs an eps function
    returning [eps, v], see the module docstring), and where the clip acts when
    guidance is on (CLIP_ORDERS; clip_then_guide, guided-diffusion's, moves it into the base eps: ``base_eps``).
    source names the config section."""

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
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r} in {keys['name']}; known: {', '.join(SAMPLERS)}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ValueError(f"sampling steps must be >= 1 (or null for all T), got {self.steps}; fix {keys['steps']}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown sampler.spacing {self.spacing!r}; known: {', '.join(SPACINGS)}")
        if not (isinstance(self.eta, (int, float)) and math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"sampler.eta must be finite and >= 0, got {self.eta}")
        if self.var_type not in VAR_TYPES:
            raise ValueError(f"unknown sampler.var_type {self.var_type!r}; known: {', '.join(VAR_TYPES)}")
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
        """From a sampler/ config node; a sweep passes its point's name and steps."""
        return cls(name or node.name, node.steps if steps == "config" else steps, node.spacing, float(node.eta),
                   node.var_type, bool(node.clip_x0), source, getattr(node, "dynamic_threshold", None),
                   getattr(node, "clip_order", "clip_then_guide"))

    def plan(self, schedule: Schedule) -> Plan:
        return make_plan(schedule, self.steps, self.spacing)

    @property
    def clips_first(self) -> bool:
        """Is x0_hat clipped (or thresholded) before guidance, in the base eps (``ClippedEps``)?"""
        return self.clip_order == "clip_then_guide" and (self.clip_x0 or self.dynamic_threshold is not None)

    def base_eps(self, eps_fn: EpsFn, schedule: Schedule) -> EpsFn:
        """The eps function guidance wraps: clipped first under clip_then_guide, else eps_fn itself.
        Unguided rows go through it too, so a row at s = 0 stays bit for bit an unguided draw."""
        return ClippedEps(eps_fn, schedule, self.clip_x0, self.dynamic_threshold) if self.clips_first else eps_fn

    @property
    def options(self) -> dict:
        """The keyword arguments of ``sample`` / ``step`` for an eps from ``base_eps`` (dynamic_threshold
        only when set; no clip in the step when the base eps was clipped already)."""
        if self.clips_first:
            return {"sampler": self.name, "eta": self.eta, "var_type": self.var_type, "clip_x0": False}
        out = {"sampler": self.name, "eta": self.eta, "var_type": self.var_type, "clip_x0": self.clip_x0}
        return out | ({"dynamic_threshold": self.dynamic_threshold} if self.dynamic_threshold is not None else {})


def sample(eps_fn: EpsFn, shape: Sequence[int], plan: Plan, seeds: Sequence[int], *, sampler: str = "ddim",
           eta: float = 0.0, var_type: str = "fixed_small", clip_x0: bool = False, dynamic_threshold=None,
           device=None, dtype=torch.float32, progress: bool = True, desc: str = "sampling") -> torch.Tensor:
    """Draw len(seeds) samples of shape [C,H,W] by running plan's steps from the noisiest to t = tau_0.

    x_T is draw 0 of each sample's seed and step i's noise is draw i + 1 (``seeded_normal``), so a
    sample is reproducible from its seed alone, whatever else shares its batch."""
    SamplerSpec(sampler, eta=eta, var_type=var_type, clip_x0=clip_x0,
                dynamic_threshold=dynamic_threshold)  # the checks live there
    seeds = torch.as_tensor(seeds, dtype=torch.long, device=device)
    x = seeded_normal(seeds, 0, shape, device, dtype)
    B = x.shape[0]
    coef_shape = (B,) + (1,) * (x.ndim - 1)
    ab, ab_prev = plan.alphabar, plan.alphabar_prev
    lv = learned_log_var_range(plan) if var_type == LEARNED else None
    stochastic = sampler == "ddpm" or eta > 0
    for i in tqdm(range(plan.K - 1, -1, -1), desc=desc, disable=not progress, leave=False):
        t = torch.full((B,), int(plan.timesteps[i]), dtype=torch.long, device=x.device)
        a_t = torch.full(coef_shape, float(ab[i]), dtype=dtype, device=x.device)
        a_p = torch.full(coef_shape, float(ab_prev[i]), dtype=dtype, device=x.device)
        with torch.no_grad():
            eps = eps_fn(x, t)
            z = seeded_normal(seeds, i + 1, shape, device, dtype) if stochastic and i > 0 else torch.zeros_like(x)
            rng = None if lv is None else tuple(torch.full(coef_shape, float(b[i]), dtype=dtype, device=x.device)
                                                for b in lv)
            x, _ = step(sampler, x, eps, a_t, a_p, z, eta=eta, var_type=var_type, clip_x0=clip_x0,
                        dynamic_threshold=dynamic_threshold, log_var_range=rng)
    return x
