"""The DDPM and DDIM updates and the x0 corrections every sampler shares (clipping, dynamic thresholding).

Pure functions of tensors: coefficient arguments (alphabar_t, alphabar_prev) are tensors broadcastable to x."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .learned_variance import LEARNED, learned_log_var, split_eps
from .process import eps_from_x0, posterior, x0_from_eps
from .schedule import Schedule

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
