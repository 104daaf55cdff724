"""sigma_t variants: the factor c_t in eps_hat = eps_theta(x_t, t) - s * c_t * grad_x log p(y | x_t, t).

Each variant is a function of (alphabar_t, alphabar_prev), where alphabar_prev is alphabar at the
previous step the sampler actually visits (the respaced one). Adding a variant is one entry here."""

from __future__ import annotations

from typing import Callable

import torch

from .registry import registrar

VariantFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
VARIANTS: dict[str, VariantFn] = {}
register_variant = registrar(VARIANTS)  # @register_variant(name) over a VariantFn


@register_variant("score")
def score(ab, ab_prev):
    """c_t = sqrt(1 - alphabar_t): Bayes' rule on scores, eps = -sqrt(1 - alphabar_t) * score
    (Dhariwal & Nichol Alg. 2). With s = 1 this samples p(x | y) exactly in the continuous limit."""
    return (1 - ab).sqrt()


@register_variant("seed_literal")
def seed_literal(ab, ab_prev):
    """c_t = 1 - alphabar_t: the formula as printed in the seed text. Smaller than `score` by a factor
    sqrt(1 - alphabar_t), so it guides less and less towards t = 0."""
    return 1 - ab


@register_variant("mean_shift")
def mean_shift(ab, ab_prev):
    """c_t = sqrt(alpha_t) (1 - alphabar_{t-1}) / sqrt(1 - alphabar_t): the eps-form of Alg. 1
    (mu + s * Sigma * g, Sigma the posterior variance), equal to it in DDPM when x_0 is not clipped. With a
    learned variance (an eps function giving [eps, v]) ClassifierGuidance uses ``mean_shift_of_variance`` instead."""
    alpha = ab / ab_prev
    return alpha.sqrt() * (1 - ab_prev) / (1 - ab).sqrt()


@register_variant("mean_shift_large")
def mean_shift_large(ab, ab_prev):
    """c_t = sqrt(alpha_t) sqrt(1 - alphabar_t): Alg. 1 with Sigma = beta_t (fixed_large variance)."""
    return (ab / ab_prev).sqrt() * (1 - ab).sqrt()


def mean_shift_of_variance(var, ab, ab_prev):
    """c_t of Alg. 1 for any variance Sigma (e.g. a learned one, per pixel): c_t = Sigma sqrt(alpha_t)
    sqrt(1 - alphabar_t) / beta_t, since d mu / d eps = -beta_t / (sqrt(alpha_t) sqrt(1 - alphabar_t)), so
    mu(x0_hat(eps - s c_t g)) = mu(x0_hat(eps)) + s Sigma g. Sigma = the posterior variance gives `mean_shift`,
    Sigma = beta_t `mean_shift_large`."""
    alpha = ab / ab_prev
    return var * alpha.sqrt() * (1 - ab).sqrt() / (1 - alpha)


@register_variant("unit")
def unit(ab, ab_prev):
    """c_t = 1: no noise-level scaling."""
    return torch.ones_like(ab)


def check_variant(name: str) -> str:
    if name not in VARIANTS:
        raise ValueError(f"unknown guidance variant {name!r}; known: {', '.join(VARIANTS)}")
    return name


def variant_factor(names: str | list[str], ab: torch.Tensor, ab_prev: torch.Tensor) -> torch.Tensor:
    """c_t per sample; ``names`` is one variant or one per sample (a batch may mix sweep points)."""
    if isinstance(names, str):
        return VARIANTS[check_variant(names)](ab, ab_prev)
    out = torch.empty_like(ab)
    for name in set(names):
        rows = torch.tensor([n == name for n in names], device=ab.device)
        out[rows] = VARIANTS[check_variant(name)](ab[rows], ab_prev[rows])
    return out
