"""The guidance signal g = grad_{x_t} log p_phi(y | x_t, t), the entropy-aware factor, and the x0-space
gradient grad_{x_t} log p_psi(y | x0_hat(x_t))."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def classifier_log_prob_grad(classifier, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                             return_logits: bool = False):
    """Return (g, log p(y | x_t, t)) for each sample, and with ``return_logits`` also the forward's logits
    (detached, at least fp32: what ``entropy_factor`` needs, without a second forward).

    x_t is detached, so no graph reaches the sampler or the eps-model; summing the per-sample
    log-probs gives each sample its own gradient because the classifier treats samples independently
    (eval mode, per-sample normalisation)."""
    x = x_t.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = classifier(x, t)
        if logits.dtype in (torch.float16, torch.bfloat16):  # softmax in fp32 under autocast
            logits = logits.float()
        logp = F.log_softmax(logits, dim=-1).gather(1, y.view(-1, 1)).squeeze(1)
        (g,) = torch.autograd.grad(logp.sum(), x)
    return (g, logp.detach(), logits.detach()) if return_logits else (g, logp.detach())


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_c p_c log p_c of p = softmax(logits) per row (0 log 0 = 0)."""
    logq = F.log_softmax(logits, dim=-1)
    p = logq.exp()
    return -torch.where(p > 0, p * logq, 0.0).sum(-1)


def entropy_factor(logits: torch.Tensor, cap) -> torch.Tensor:
    """ED-DPM's entropy-aware scale (Zheng et al., ECCV 2022, arXiv 2206.11474; their released code multiplies
    s per sample by log C / H(p(. | x_t))): f = min(cap, log C / H), H = softmax_entropy(logits), C classes.

    log C / H >= 1 always (H <= log C), so f is clamped to [1, cap]: the lower end only removes rounding
    (uniform logits give exactly 1), the cap keeps a collapsed entropy (H -> 0) from giving an infinite scale.
    f is finite even for NaN logits (that row's gradient is non-finite too, handled by ``combine``).
    cap: a float or one per row."""
    H = softmax_entropy(logits)
    f = torch.nan_to_num(math.log(logits.shape[-1]) / H, nan=1.0, posinf=math.inf, neginf=math.inf)  # H=-0: cap
    cap = torch.as_tensor(cap, dtype=f.dtype, device=f.device)
    return torch.minimum(f.clamp(min=1.0), cap)


def x0_space_grad(eps_fn, clean_classifier, x_t: torch.Tensor, t: torch.Tensor, alphabar_t, y: torch.Tensor,
                  return_logits: bool = False):
    """x0-space guidance: g = grad_{x_t} log p_psi(y | x0_hat(x_t)), with
    x0_hat = (x_t - sqrt(1 - alphabar_t) eps_theta(x_t, t)) / sqrt(alphabar_t)
    and the gradient taken THROUGH eps_theta (so g = J^T grad_{x0} log p_psi, J = d x0_hat / d x_t), as in
    guidance by a classifier of clean images on the denoised estimate (e.g. Bansal et al. 2023, "Universal
    Guidance", arXiv 2302.07121, forward guidance). clean_classifier(x0) -> logits sees clean images only.

    alphabar_t: [B] or broadcastable to x_t. Only input gradients are taken (autograd.grad on x_t), so no
    parameter's .grad is touched. Returns (g, log p_psi(y | x0_hat)), both detached, and with
    ``return_logits`` also p_psi's logits (detached, at least fp32), as ``classifier_log_prob_grad``."""
    x = x_t.detach().requires_grad_(True)
    ab = torch.as_tensor(alphabar_t, dtype=x.dtype, device=x.device)
    if ab.ndim == 1:
        ab = ab.view(-1, *[1] * (x.ndim - 1))
    with torch.enable_grad():
        x0 = (x - (1 - ab).sqrt() * eps_fn(x, t)) / ab.sqrt()
        logits = clean_classifier(x0)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        logp = F.log_softmax(logits, dim=-1).gather(1, y.view(-1, 1)).squeeze(1)
        (g,) = torch.autograd.grad(logp.sum(), x)
    return (g, logp.detach(), logits.detach()) if return_logits else (g, logp.detach())
