"""Learned variances (improved DDPM, Nichol & Dhariwal 2021 eq. 15; guided-diffusion's LEARNED_RANGE).

A learn_sigma network returns [eps, v] (2C channels); the step's log-variance interpolates, per pixel,
between the log posterior variance and log beta_t of the RESPACED schedule:
log Sigma = v' log beta_t + (1 - v') log beta~_t,  v' = (v + 1) / 2,  beta~_t = beta_t (1 - ab_prev) / (1 - ab_t).
beta~ is 0 at the last kept step, so its log is clipped as guided-diffusion does: the first entry takes the
second's value (with one kept step there is no second: log beta_t is used)."""

from __future__ import annotations

import torch

from .respace import Plan

LEARNED = "learned"


def learned_log_var_range(plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """(min_log, max_log) [K] float64 by kept step: the clipped log posterior variance and log beta_t."""
    ab, ab_prev = plan.alphabar, plan.alphabar_prev
    beta = 1 - ab / ab_prev
    post = beta * (1 - ab_prev) / (1 - ab)
    lo = torch.cat([post[1:2], post[1:]]) if plan.K > 1 else beta
    return lo.log(), beta.log()


def learned_log_var(v: torch.Tensor, min_log: torch.Tensor, max_log: torch.Tensor) -> torch.Tensor:
    """log Sigma = v' max_log + (1 - v') min_log, v' = (v + 1) / 2 (v = -1: posterior variance, +1: beta_t)."""
    frac = (v + 1) / 2
    return frac * max_log + (1 - frac) * min_log


def split_eps(out: torch.Tensor, x: torch.Tensor, var_type: str | None = None):
    """(eps, v) from an eps function's output for x [B, C, ...]: C channels are eps alone (v None), 2C are
    [eps, v]. With var_type given the rule is checked: 2C if and only if var_type is 'learned'."""
    C, n = x.shape[1], out.shape[1]
    if n not in (C, 2 * C):
        raise ValueError(f"the eps function returns {n} channels for a {C}-channel x_t; it must return {C} (eps) "
                         f"or {2 * C} ([eps, v] of a learn_sigma network, with sampler.var_type=learned)")
    if var_type == LEARNED and n == C:
        raise ValueError(f"sampler.var_type=learned needs an eps function returning [eps, v] ({2 * C} channels, a "
                         f"learn_sigma network), got {C} channels; use a learn_sigma model or set "
                         "sampler.var_type=fixed_small")
    if var_type is not None and var_type != LEARNED and n == 2 * C:
        raise ValueError(f"the eps function returns [eps, v] ({2 * C} channels, a learn_sigma network) but "
                         f"sampler.var_type={var_type}; set sampler.var_type=learned (guided-diffusion samples "
                         f"such networks with their learned variance) or pass only its first {C} channels")
    return (out, None) if n == C else out.split(C, dim=1)
