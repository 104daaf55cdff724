"""Classifier guidance as a wrapper: eps_hat(x_t, t) = eps_theta(x_t, t) - s * c_t * g.

The wrapper is itself an ``eps_fn(x_t, t)``, so DDPM, DDIM, every respacing and the CUDA-graph
step get guidance for free. What guides each row (y, s, variant, interval) is a ``GuidanceSpec``."""

from __future__ import annotations

from typing import Callable

import torch

from ..diffusion.respace import Plan
from .gradient import classifier_log_prob_grad
from .spec import GuidanceSpec
from .variants import variant_factor


def nonfinite_message(n: int) -> str:
    return (f"non-finite classifier gradient for {n} sample(s); lower the guidance scale or set "
            "guidance.nonfinite=zero")


def combine(eps: torch.Tensor, g: torch.Tensor, s: torch.Tensor, c: torch.Tensor, nonfinite: str,
            grad_limit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """eps - s * c_t * g per row, with each row whose g has a NaN/inf contained first: 'zero' drops
    its g (the step goes unguided), 'clamp' maps it into [-grad_limit, grad_limit]; 'raise' is the
    caller's (it gets the rows back). Graph-safe: no host syncs. Returns (eps_hat, bad rows [B])."""
    shape = (-1,) + (1,) * (g.ndim - 1)
    bad = ~torch.isfinite(g).flatten(1).all(1)
    if nonfinite == "clamp":
        fixed = torch.nan_to_num(g, nan=0.0, posinf=grad_limit, neginf=-grad_limit).clamp(-grad_limit, grad_limit)
    else:
        fixed = torch.zeros_like(g)
    g = torch.where(bad.view(shape), fixed, g)
    return eps - (s * c).view(shape) * g.to(eps.dtype), bad


class ClassifierGuidance:
    """Guided eps function.

    eps_fn: the unconditional eps_theta(x_t, t), called on a detached x_t under no_grad.
    classifier: p_phi(y | x_t, t) -> logits; put in eval mode with frozen parameters, so only the
        input gradient is computed. It receives x_t itself at the ORIGINAL timestep index.
    plan: the steps the sampler visits (c_t of the mean_shift variants needs the previous kept step).
    spec: the batch's guidance, one row per sample. Rows outside their interval or with s = 0 return
        eps_theta exactly. Non-finite gradients are counted per sample in ``nonfinite_steps``.
    static: graph-friendly mode (for CUDA-graph capture): no host syncs, no data-dependent shapes.
        The classifier runs on every row and torch.where keeps eps itself where a row is inactive
        (so those rows stay bitwise unguided even if their gradient is NaN), and 'raise' is deferred
        to ``raise_if_nonfinite()``. The caller skips the classifier where ``active_at(t)`` is False.
    """

    def __init__(self, eps_fn: Callable, classifier: torch.nn.Module, plan: Plan, spec: GuidanceSpec,
                 static: bool = False):
        self.eps_fn, self.classifier, self.plan, self.spec = eps_fn, classifier.eval().requires_grad_(False), plan, spec
        self._T = plan.schedule.T
        self._ab = plan.schedule.alphabar
        self._ab_prev = plan.table(plan.alphabar_prev)  # indexed by original t
        self.nonfinite_steps: torch.Tensor | None = None
        self.classifier_calls = 0
        self.static = static
        self._static_cache: tuple | None = None

    def active_at(self, t: int) -> bool:
        """Host-side: does any row get guided at original step t? (lets a caller skip the classifier)"""
        return self.spec.active_at(t, self._T)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.static:
            return self._static_call(x, t)
        dev = x.device
        with torch.no_grad():
            eps = self.eps_fn(x.detach(), t)
        if self.nonfinite_steps is None:
            self.nonfinite_steps = torch.zeros(x.shape[0], dtype=torch.long, device=dev)
        rows = self.spec.active(t, self._T).nonzero().squeeze(1)
        if len(rows) == 0:  # s = 0 or outside the interval: exactly the unguided eps
            return eps
        rows_cpu = rows.cpu()
        g, _ = classifier_log_prob_grad(self.classifier, x[rows], t[rows], self.spec.y[rows_cpu].to(dev))
        self.classifier_calls += 1
        tr = t[rows].cpu()
        c = variant_factor([self.spec.variant[i] for i in rows_cpu.tolist()], self._ab[tr], self._ab_prev[tr])
        s = self.spec.scale[rows_cpu].to(dev, x.dtype)
        guided, bad = combine(eps[rows], g, s, c.to(dev, x.dtype), self.spec.nonfinite, self.spec.grad_limit)
        if bool(bad.any()):
            if self.spec.nonfinite == "raise":
                raise FloatingPointError(nonfinite_message(int(bad.sum())))
            self.nonfinite_steps[rows[bad]] += 1
        eps = eps.clone()
        eps[rows] = guided
        return eps

    def _prepare_static(self, B: int, dtype, dev) -> tuple:
        """Per-sample tensors made once, before any capture: a captured step launches kernels but never
        copies from the host. c_t is a [variant, original t] table, gathered per row at each step."""
        key = (B, dtype, dev)
        if self._static_cache is None or self._static_cache[0] != key:
            if B != len(self.spec):
                raise ValueError(f"the guidance spec has {len(self.spec)} rows, the batch {B}")
            order = list(dict.fromkeys(self.spec.variant))
            vidx = torch.tensor([order.index(n) for n in self.spec.variant], device=dev)
            # the same float64 formulas as the eager path, so c matches it bit for bit
            table = torch.stack([variant_factor(n, self._ab, self._ab_prev) for n in order]).to(dev, dtype)
            steps = torch.arange(self._T)
            # [T, B]: is row b guided at original step t? (s != 0 and t inside its interval)
            active = torch.stack([self.spec.active(torch.full((B,), int(t)), self._T) for t in steps]).to(dev)
            s, y = self.spec.scale.to(dev, dtype), self.spec.y.to(dev)
            self._static_cache = (key, s, y, vidx, table, active)
            self.nonfinite_steps = torch.zeros(B, dtype=torch.long, device=dev)
        return self._static_cache[1:]

    def _static_call(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            eps = self.eps_fn(x.detach(), t)
        s, y, vidx, table, active_table = self._prepare_static(x.shape[0], x.dtype, x.device)
        active = active_table[t, torch.arange(x.shape[0], device=x.device)]
        g, _ = classifier_log_prob_grad(self.classifier, x, t, y)
        self.classifier_calls += 1
        guided, bad = combine(eps, g, s, table[vidx, t], self.spec.nonfinite, self.spec.grad_limit)
        self.nonfinite_steps += bad & active
        return torch.where(active.view((-1,) + (1,) * (x.ndim - 1)), guided, eps)

    def raise_if_nonfinite(self) -> None:
        """Static mode's deferred 'raise' (one host sync, after sampling)."""
        if self.spec.nonfinite == "raise" and self.nonfinite_steps is not None:
            n = int((self.nonfinite_steps > 0).sum())
            if n:
                raise FloatingPointError(nonfinite_message(n))
