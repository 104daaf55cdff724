"""Classifier guidance as a wrapper: eps_hat(x_t, t) = eps_theta(x_t, t) - s * c_t * g.

The wrapper is itself an ``eps_fn(x_t, t)``, so DDPM, DDIM and every respacing get guidance for
free. s, y (and the variant) are per sample, so one batch can hold many sweep points."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..diffusion.respace import Plan
from .gradient import classifier_log_prob_grad
from .variants import check_variant, variant_factor

NONFINITE_MODES = ("zero", "clamp", "raise")


def _per_sample(v, B: int, dtype, device, name: str) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=dtype, device=device)
    if v.ndim == 0:
        return v.expand(B)
    if v.shape != (B,):
        raise ValueError(f"{name} must be a scalar or have shape [{B}], got {tuple(v.shape)}")
    return v


class ClassifierGuidance:
    """Guided eps function.

    eps_fn: the unconditional eps_theta(x_t, t), called on a detached x_t under no_grad.
    classifier: p_phi(y | x_t, t) -> logits; put in eval mode with frozen parameters, so only the
        input gradient is computed. It receives x_t itself at the ORIGINAL timestep index.
    plan: the steps the sampler visits (c_t of the mean_shift variants needs the previous kept step).
    y, scale: target classes and guidance scales s >= 0, scalars or per-sample [B].
    variant: a name from ``VARIANTS`` or one per sample.
    interval: (t_lo, t_hi) as fractions of T; the classifier runs only where t_lo <= t/T <= t_hi.
    nonfinite: what to do with a sample whose gradient has NaN/inf: 'zero' it (that step goes
        unguided), 'clamp' it to +-grad_limit, or 'raise'. Counts land in ``nonfinite_steps``.
    static: graph-friendly mode (for CUDA-graph capture): no host syncs, no data-dependent shapes.
        The classifier runs on every row and torch.where keeps eps itself where s = 0 or t is outside
        the interval (so those rows stay bitwise unguided even if their gradient is NaN); 'clamp'
        acts on the non-finite rows only, and 'raise' is deferred to ``raise_if_nonfinite()``.
        The caller skips the classifier at steps where ``active_at(t)`` is False.
    """

    def __init__(self, eps_fn: Callable, classifier: torch.nn.Module, plan: Plan, y, scale=1.0,
                 variant: str | Sequence[str] = "score", interval: tuple[float, float] = (0.0, 1.0),
                 nonfinite: str = "zero", grad_limit: float = 1e4, num_classes: int | None = None,
                 static: bool = False):
        t_lo, t_hi = interval
        if not 0 <= t_lo <= t_hi <= 1:
            raise ValueError(f"guidance interval needs 0 <= t_lo <= t_hi <= 1, got t_lo={t_lo}, t_hi={t_hi}")
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"unknown nonfinite mode {nonfinite!r}; known: {', '.join(NONFINITE_MODES)}")
        for name in [variant] if isinstance(variant, str) else variant:
            check_variant(name)
        scale_t = torch.as_tensor(scale, dtype=torch.float64)
        if bool((scale_t < 0).any()) or not bool(torch.isfinite(scale_t).all()):
            raise ValueError(f"guidance scale must be finite and >= 0 (s = 0 is unguided), got {scale_t.tolist()}")
        num_classes = num_classes or getattr(classifier, "num_classes", None)
        y_t = torch.as_tensor(y, dtype=torch.long)
        if num_classes is not None and bool(((y_t < 0) | (y_t >= num_classes)).any()):
            raise ValueError(f"target class out of range: got {y_t.unique().tolist()}, the classifier knows "
                             f"classes 0..{num_classes - 1}")
        self.eps_fn, self.classifier, self.plan = eps_fn, classifier.eval().requires_grad_(False), plan
        self.y, self.scale, self.variant, self.interval = y, scale, variant, (t_lo, t_hi)
        self.nonfinite, self.grad_limit = nonfinite, grad_limit
        T = plan.schedule.T
        self._ab = plan.schedule.alphabar
        self._ab_prev = plan.table(plan.alphabar_prev)  # indexed by original t
        self._T = T
        self.nonfinite_steps: torch.Tensor | None = None
        self.classifier_calls = 0
        self.static, self._any_scale = static, bool((scale_t != 0).any())
        self._static_cache: tuple | None = None

    def _active(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        frac = t.double() / self._T
        return (s != 0) & (frac >= self.interval[0]) & (frac <= self.interval[1])

    def active_at(self, t: int) -> bool:
        """Host-side: does any row get guided at original step t? (lets a caller skip the classifier)"""
        return self._any_scale and self.interval[0] <= t / self._T <= self.interval[1]

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.static:
            return self._static_call(x, t)
        B, dev = x.shape[0], x.device
        with torch.no_grad():
            eps = self.eps_fn(x.detach(), t)
        s = _per_sample(self.scale, B, x.dtype, dev, "guidance scale")
        if self.nonfinite_steps is None:
            self.nonfinite_steps = torch.zeros(B, dtype=torch.long, device=dev)
        rows = self._active(s, t).nonzero().squeeze(1)
        if len(rows) == 0:  # s = 0 or outside the interval: exactly the unguided eps
            return eps
        y = _per_sample(self.y, B, torch.long, dev, "target class")[rows]
        g, _ = classifier_log_prob_grad(self.classifier, x[rows], t[rows], y)
        self.classifier_calls += 1
        g = self._contain(g, rows)
        tr = t[rows].cpu()
        variant = self.variant if isinstance(self.variant, str) else [self.variant[i] for i in rows.tolist()]
        c = variant_factor(variant, self._ab[tr], self._ab_prev[tr]).to(dev, x.dtype)
        shape = (-1,) + (1,) * (x.ndim - 1)
        eps = eps.clone()
        eps[rows] = eps[rows] - (s[rows] * c).view(shape) * g.to(x.dtype)
        return eps

    def _contain(self, g: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(g).flatten(1).all(1)
        if not bool(bad.any()):
            return g
        if self.nonfinite == "raise":
            raise FloatingPointError(f"non-finite classifier gradient for {int(bad.sum())} sample(s); "
                                     "lower the guidance scale or set guidance.nonfinite=zero")
        self.nonfinite_steps[rows[bad]] += 1
        if self.nonfinite == "zero":
            return torch.where(bad.view(-1, *[1] * (g.ndim - 1)), torch.zeros_like(g), g)
        lim = self.grad_limit
        return torch.nan_to_num(g, nan=0.0, posinf=lim, neginf=-lim).clamp(-lim, lim)

    def _prepare_static(self, B: int, dtype, dev) -> tuple:
        """Per-sample tensors made once, before any capture: a captured step launches kernels but never
        copies from the host. c_t is a [variant, original t] table, gathered per row at each step."""
        key = (B, dtype, dev)
        if self._static_cache is None or self._static_cache[0] != key:
            s = _per_sample(self.scale, B, dtype, dev, "guidance scale").clone()
            y = _per_sample(self.y, B, torch.long, dev, "target class").clone()
            names = [self.variant] * B if isinstance(self.variant, str) else list(self.variant)
            if len(names) != B:
                raise ValueError(f"variant must be one name or one per sample ({B}), got {len(names)}")
            order = list(dict.fromkeys(names))
            vidx = torch.tensor([order.index(n) for n in names], device=dev)
            # the same float64 formulas as the eager path, so c matches it bit for bit
            table = torch.stack([variant_factor(n, self._ab, self._ab_prev) for n in order]).to(dev, dtype)
            frac = torch.arange(self._T, dtype=torch.float64) / self._T
            in_interval = ((frac >= self.interval[0]) & (frac <= self.interval[1])).to(dev)
            self._static_cache = (key, s, y, vidx, table, in_interval)
            self.nonfinite_steps = torch.zeros(B, dtype=torch.long, device=dev)
        return self._static_cache[1:]

    def _static_call(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            eps = self.eps_fn(x.detach(), t)
        s, y, vidx, table, in_interval = self._prepare_static(x.shape[0], x.dtype, x.device)
        shape = (-1,) + (1,) * (x.ndim - 1)
        active = (s != 0) & in_interval[t]
        g, _ = classifier_log_prob_grad(self.classifier, x, t, y)
        self.classifier_calls += 1
        bad = ~torch.isfinite(g).flatten(1).all(1) & active
        self.nonfinite_steps += bad
        if self.nonfinite == "clamp":
            lim = self.grad_limit
            g = torch.where(bad.view(shape), torch.nan_to_num(g, nan=0.0, posinf=lim, neginf=-lim).clamp(-lim, lim), g)
        else:  # zero (and raise, which is checked after sampling): the step goes unguided
            g = torch.where(bad.view(shape), torch.zeros_like(g), g)
        c = table[vidx, t]
        guided = eps - (s * c).view(shape) * g.to(x.dtype)
        return torch.where(active.view(shape), guided, eps)

    def raise_if_nonfinite(self) -> None:
        """Static mode's deferred 'raise' (one host sync, after sampling)."""
        if self.nonfinite == "raise" and self.nonfinite_steps is not None:
            n = int((self.nonfinite_steps > 0).sum())
            if n:
                raise FloatingPointError(f"non-finite classifier gradient for {n} sample(s); "
                                         "lower the guidance scale or set guidance.nonfinite=zero")
