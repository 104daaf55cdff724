"""What a guidance row costs: network evaluations per sample over a whole draw (eager path), so sweep rows can
carry it beside their wall-clock time."""

from __future__ import annotations

import torch

from ..diffusion.respace import Plan
from ..diffusion.solvers import SAMPLERS
from .methods import METHODS
from .spec import GuidanceSpec


def network_evals(spec: GuidanceSpec, plan: Plan, sampler: str | object = "ddim") -> dict[str, torch.Tensor]:
    """Per row ([B] int64 each), over the plan's K steps with ``sampler`` (a registered name or a SamplerSpec),
    which evaluates the guided eps function at the original timesteps ``SAMPLERS[name].eval_steps(plan)``
    (K for DDPM, DDIM, Euler, DPM-Solver++(2M), UniPC; 2K - 1 for Heun):

    eps_evals: eps-model forward passes: 1 per evaluation per network the row's method needs ('u' or 'c': 1;
        cfg's c and null: 2, one batched forward of 2B), plus 1 at each x0-guided evaluation (the
        differentiable pass g goes through);
    eps_grads: backward passes through the eps-model (one per x0-guided evaluation, grad_space='x0');
    clf_grads: classifier forward + backward passes (the noisy classifier at an x_t-guided evaluation, the
        clean guide at an x0-guided one).
    An evaluation is guided for a row where ``spec.active`` says so at its t (a classifier method, s != 0,
    inside its intervals). The CUDA-graph step runs the classifier on every row of an evaluation where any row
    is guided."""
    name = sampler if isinstance(sampler, str) else sampler.name
    evals = [t for step in SAMPLERS[name].eval_steps(plan) for t in step]
    T, ab = plan.schedule.T, plan.schedule.alphabar
    guided = torch.zeros(len(spec), dtype=torch.long)
    for t in evals:
        guided += spec.active(torch.full((len(spec),), t, dtype=torch.long), T, ab).long()
    base = torch.tensor([len(METHODS[m].needs) for m in spec.method], dtype=torch.long)
    x0 = guided * spec.x0_space.long()
    return {"eps_evals": base * len(evals) + x0, "eps_grads": x0, "clf_grads": guided}
