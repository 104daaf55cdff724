"""Forward process and its Gaussian posteriors, written with per-sample coefficients.

Coefficient arguments (alphabar_t, alphabar_prev) are tensors broadcastable to x, e.g. [B,1,1,1],
so one batch can mix timesteps."""

from __future__ import annotations

import torch

from .schedule import Schedule


def gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] reshaped to [B,1,...,1] in like's dtype and device."""
    out = values.to(like.device)[t.to(like.device)].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps."""
    ab = gather(schedule.alphabar, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alphabar_t: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)."""
    return (x_t - (1 - alphabar_t).sqrt() * eps) / alphabar_t.sqrt()


def sigma_of(alphabar_t: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - alphabar_t) / alphabar_t): the noise level of x_t / sqrt(alphabar_t) = x_0 + sigma_t eps
    (the EDM / variance-exploding view of the same process; Karras et al. 2022)."""
    return ((1 - alphabar_t) / alphabar_t).sqrt()


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alphabar_t: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(alphabar_t) x_0) / sqrt(1 - alphabar_t)."""
    return (x_t - alphabar_t.sqrt() * x0) / (1 - alphabar_t).sqrt()


def posterior(x0: torch.Tensor, x_t: torch.Tensor, alphabar_t: torch.Tensor, alphabar_prev: torch.Tensor):
    """q(x_{t-1} | x_t, x_0) = N(mean, var) with beta_t = 1 - alphabar_t / alphabar_{t-1}:
    mean = sqrt(alphabar_{t-1}) beta_t / (1 - alphabar_t) x_0 + sqrt(alpha_t) (1 - alphabar_{t-1}) / (1 - alphabar_t) x_t,
    var  = beta_t (1 - alphabar_{t-1}) / (1 - alphabar_t)."""
    alpha_t = alphabar_t / alphabar_prev
    beta_t = 1 - alpha_t
    mean = (alphabar_prev.sqrt() * beta_t * x0 + alpha_t.sqrt() * (1 - alphabar_prev) * x_t) / (1 - alphabar_t)
    var = beta_t * (1 - alphabar_prev) / (1 - alphabar_t)
    return mean, var
