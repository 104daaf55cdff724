"""Diffusion core: schedules, the forward process, respacing and the DDPM/DDIM samplers (plain torch)."""

from .schedule import Schedule, make_schedule, schedule_fingerprint, linear_betas, cosine_betas, SCHEDULE_KINDS
from .respace import Plan, make_plan, respaced_timesteps
from .process import q_sample, x0_from_eps, eps_from_x0, posterior, gather
from .noise import seeded_normal
from .samplers import ddpm_step, ddim_step, step, sample, SamplerSpec, SAMPLERS, VAR_TYPES
from .learned_variance import learned_log_var, learned_log_var_range, split_eps

__all__ = [
    "Schedule", "make_schedule", "schedule_fingerprint", "linear_betas", "cosine_betas", "SCHEDULE_KINDS",
    "Plan", "make_plan", "respaced_timesteps", "q_sample", "x0_from_eps", "eps_from_x0", "posterior",
    "gather", "ddpm_step", "ddim_step", "step", "sample", "SamplerSpec", "seeded_normal", "SAMPLERS", "VAR_TYPES",
    "learned_log_var", "learned_log_var_range", "split_eps",
]
