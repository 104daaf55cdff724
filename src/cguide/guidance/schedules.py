"""Scale schedules: the classifier term's scale at original step t is s(t) = s * w(u), u = t / (T - 1); cfg's
guidance strength likewise, gamma(t) = 1 + (gamma - 1) * w(u) (cfg_w: w * w(u); ``cguide.guidance.methods.cfg``).

u is the fraction of the ORIGINAL timestep (1 at the noisiest step T - 1, 0 at t = 0; u = 0 when T = 1),
so a respaced sampler sees w at the original steps it visits. Every w lies in [0, 1]. The ramps and their
reverses pair up, w + w_rev = 1, so on a step grid symmetric in u (all T steps; uniform respacing up to
rounding) each ramp averages 1/2: a ramp at 2s spends the same total guidance as `constant` at s. Increasing
schedules (guidance growing as t falls) follow Wang et al. 2024, "Analysis of Classifier-Free Guidance
Weight Schedulers" (arXiv 2404.13040), who schedule CFG's weight; here they act on the classifier term and on
CFG alike. Adding one is one entry here."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .registry import registrar

ScheduleFn = Callable[[torch.Tensor], torch.Tensor]  # u (float64) -> w (float64)
SCHEDULES: dict[str, ScheduleFn] = {}
register_schedule = registrar(SCHEDULES)  # @register_schedule(name) over a ScheduleFn


@register_schedule("constant")
def constant(u):
    """w = 1: the same s at every step (the default; bit for bit the unscheduled guidance)."""
    return torch.ones_like(u)


@register_schedule("linear")
def linear(u):
    """w = 1 - u: 0 at the noisiest step, rising linearly to 1 at t = 0."""
    return 1 - u


@register_schedule("cosine")
def cosine(u):
    """w = cos^2(pi u / 2): 0 at the noisiest step, 1 at t = 0, flat at both ends."""
    return torch.cos(math.pi * u / 2) ** 2


@register_schedule("linear_rev")
def linear_rev(u):
    """w = u: 1 at the noisiest step, falling linearly to 0 at t = 0 (= 1 - linear)."""
    return u.clone()


@register_schedule("cosine_rev")
def cosine_rev(u):
    """w = sin^2(pi u / 2): 1 at the noisiest step, 0 at t = 0 (= 1 - cosine)."""
    return torch.sin(math.pi * u / 2) ** 2


def check_schedule(name: str, key: str = "guidance.schedule") -> str:
    if name not in SCHEDULES:
        raise ValueError(f"unknown guidance schedule {name!r}; known: {', '.join(SCHEDULES)}; fix {key}")
    return name


def schedule_weight(names: str | list[str], t: torch.Tensor, T: int) -> torch.Tensor:
    """w(t / (T - 1)) in float64 per sample; ``names`` is one schedule or one per sample (as t)."""
    u = t.detach().cpu().double() / max(T - 1, 1)
    if isinstance(names, str):
        return SCHEDULES[check_schedule(names)](u)
    out = torch.empty_like(u)
    for name in set(names):
        rows = torch.tensor([n == name for n in names], dtype=torch.bool)
        out[rows] = SCHEDULES[check_schedule(name)](u[rows])
    return out
