"""Diffusion core: schedules, the forward process, respacing, the sampler registry (DDPM, DDIM, Euler, Heun,
DPM-Solver++(2M), UniPC) and the one sampling loop (plain torch)."""

from .schedule import Schedule, make_schedule, schedule_fingerprint, linear_betas, cosine_betas, SCHEDULE_KINDS
from .respace import Plan, make_plan, respaced_timesteps
from .process import q_sample, x0_from_eps, eps_from_x0, posterior, gather
from .noise import seeded_normal
from .steps import ddpm_step, ddim_step, predict_x0, threshold_x0, ClippedEps
from .solvers import SAMPLERS, Sampler, register_sampler, sampler_class
from .samplers import sample, run_eager, SamplerSpec, VAR_TYPES, CLIP_ORDERS
from .learned_variance import learned_log_var, learned_log_var_range, split_eps

__all__ = [
    "Schedule", "make_schedule", "schedule_fingerprint", "linear_betas", "cosine_betas", "SCHEDULE_KINDS",
    "Plan", "make_plan", "respaced_timesteps", "q_sample", "x0_from_eps", "eps_from_x0", "posterior",
    "gather", "ddpm_step", "ddim_step", "predict_x0", "threshold_x0", "ClippedEps", "sample", "run_eager",
    "SamplerSpec", "seeded_normal", "SAMPLERS", "Sampler", "register_sampler", "sampler_class", "VAR_TYPES",
    "CLIP_ORDERS", "learned_log_var", "learned_log_var_range", "split_eps",
]
