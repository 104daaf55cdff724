"""Classifier guidance as a wrapper: eps_hat(x_t, t) = eps_theta(x_t, t) - s * w(t) * f * c_t * g.

The wrapper is itself an ``eps_fn(x_t, t)``, so DDPM, DDIM, every respacing and the CUDA-graph
step get guidance for free. What guides each row (y, s, variant, schedule w, intervals, entropy factor f,
gradient location) is a ``GuidanceSpec``."""

from __future__ import annotations

from typing import Callable

import torch

from ..diffusion.process import posterior, x0_from_eps
from ..diffusion.respace import Plan
from .gradient import classifier_log_prob_grad, entropy_factor
from .schedules import schedule_weight
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
        grad_at='posterior_mean' rows take g at mu_theta(x_t) = posterior mean of q(x_prev | x_t, x0_hat),
        x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t) from the UNCLIPPED x0_hat (the wrapper does not see
        the sampler's clipping), ab_prev at the previous kept step: the point of Dhariwal & Nichol's
        Taylor expansion of log p(y | x_prev) around mu. The classifier sees mu at the previous kept step's
        original index (mu estimates x_prev; at the last step mu = x0_hat, seen at t = 0).
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
        ts = plan.timesteps
        self._t_prev = torch.zeros(self._T, dtype=torch.long)  # previous kept original index (0 before tau_0)
        self._t_prev[ts[1:]] = ts[:-1]
        self.nonfinite_steps: torch.Tensor | None = None
        self.classifier_calls = 0
        self.static = static
        self._static_cache: tuple | None = None
        self._table_cache: dict = {}

    def active_at(self, t: int) -> bool:
        """Host-side: does any row get guided at original step t? (lets a caller skip the classifier)"""
        return self.spec.active_at(t, self._T, self._ab)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.static:
            return self._static_call(x, t)
        dev = x.device
        with torch.no_grad():
            eps = self.eps_fn(x.detach(), t)
        if self.nonfinite_steps is None:
            self.nonfinite_steps = torch.zeros(x.shape[0], dtype=torch.long, device=dev)
        rows = self.spec.active(t, self._T, self._ab).nonzero().squeeze(1)
        if len(rows) == 0:  # s = 0 or outside the interval: exactly the unguided eps
            return eps
        rows_cpu = rows.cpu()
        idx, tr = rows_cpu.tolist(), t[rows].cpu()
        pm = torch.tensor([self.spec.grad_at[i] == "posterior_mean" for i in idx])
        ent = self.spec.entropy[rows_cpu]
        point, t_clf = x[rows], t[rows]
        if bool(pm.any()):
            point, t_clf = self._grad_point(point, eps[rows], t_clf, pm.to(dev), *self._tables(dev, x.dtype), True)
        g, _, logits = classifier_log_prob_grad(self.classifier, point, t_clf, self.spec.y[rows_cpu].to(dev), True)
        self.classifier_calls += 1
        c = variant_factor([self.spec.variant[i] for i in idx], self._ab[tr], self._ab_prev[tr])
        s = (self.spec.scale[rows_cpu] * schedule_weight([self.spec.schedule[i] for i in idx], tr, self._T))
        s = self._entropy(s.to(dev, x.dtype), logits, ent.to(dev), self.spec.entropy_cap[rows_cpu], bool(ent.any()))
        guided, bad = combine(eps[rows], g, s, c.to(dev, x.dtype), self.spec.nonfinite, self.spec.grad_limit)
        if bool(bad.any()):
            if self.spec.nonfinite == "raise":
                raise FloatingPointError(nonfinite_message(int(bad.sum())))
            self.nonfinite_steps[rows[bad]] += 1
        eps = eps.clone()
        eps[rows] = guided
        return eps

    def _tables(self, dev, dtype) -> tuple:
        """alphabar, alphabar at the previous kept step, previous kept index: [T] each, by original t."""
        key = (dev, dtype)
        if key not in self._table_cache:
            self._table_cache[key] = (self._ab.to(dev, dtype), self._ab_prev.to(dev, dtype), self._t_prev.to(dev))
        return self._table_cache[key]

    @staticmethod
    def _grad_point(x, eps, t, pm, ab, ab_prev, t_prev, any_pm: bool):
        """Where each row's g is taken: (x_t, t), or (mu_theta(x_t), previous kept t) where pm. ab, ab_prev,
        t_prev: [T] tables by original t on x's device. any_pm is host-known, so graph-safe."""
        if not any_pm:
            return x, t
        shape = (-1,) + (1,) * (x.ndim - 1)
        a_t, a_p = ab[t].view(shape), ab_prev[t].view(shape)
        mu, _ = posterior(x0_from_eps(x, eps, a_t), x, a_t, a_p)
        return torch.where(pm.view(shape), mu, x), torch.where(pm, t_prev[t], t)

    @staticmethod
    def _entropy(s, logits, ent, cap, any_ent: bool):
        """s * f with f = entropy_factor where ent (else 1, s unchanged)."""
        if not any_ent:
            return s
        f = entropy_factor(logits, cap.to(logits.device, logits.dtype))
        return s * torch.where(ent, f, torch.ones_like(f)).to(s.dtype)

    def _prepare_static(self, B: int, dtype, dev) -> dict:
        """Per-sample tensors made once, before any capture: a captured step launches kernels but never
        copies from the host. c_t is a [variant, original t] table and s * w(t) a [original t, row] table,
        gathered per row at each step."""
        key = (B, dtype, dev)
        if self._static_cache is None or self._static_cache[0] != key:
            if B != len(self.spec):
                raise ValueError(f"the guidance spec has {len(self.spec)} rows, the batch {B}")
            sp = self.spec
            order = list(dict.fromkeys(sp.variant))
            vidx = torch.tensor([order.index(n) for n in sp.variant], device=dev)
            # the same float64 formulas as the eager path, so c and s match it bit for bit
            table = torch.stack([variant_factor(n, self._ab, self._ab_prev) for n in order]).to(dev, dtype)
            steps = torch.arange(self._T)
            names = list(dict.fromkeys(sp.schedule))
            sidx = torch.tensor([names.index(n) for n in sp.schedule])
            w = torch.stack([schedule_weight(n, steps, self._T) for n in names])[sidx].T  # [T, B]
            # [T, B]: is row b guided at original step t? (s != 0 and t inside its intervals)
            active = torch.stack([sp.active(torch.full((B,), int(t)), self._T, self._ab) for t in steps]).to(dev)
            pm = torch.tensor([a == "posterior_mean" for a in sp.grad_at])
            self._static_cache = (key, dict(
                s=(sp.scale * w).to(dev, dtype), y=sp.y.to(dev), vidx=vidx, table=table, active=active,
                rows=torch.arange(B, device=dev), pm=pm.to(dev), any_pm=bool(pm.any()),
                tables=self._tables(dev, dtype),
                ent=sp.entropy.to(dev), cap=sp.entropy_cap.to(dev), any_ent=bool(sp.entropy.any())))
            self.nonfinite_steps = torch.zeros(B, dtype=torch.long, device=dev)
        return self._static_cache[1]

    def _static_call(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            eps = self.eps_fn(x.detach(), t)
        k = self._prepare_static(x.shape[0], x.dtype, x.device)
        active = k["active"][t, k["rows"]]
        point, t_clf = self._grad_point(x, eps, t, k["pm"], *k["tables"], k["any_pm"])
        g, _, logits = classifier_log_prob_grad(self.classifier, point, t_clf, k["y"], True)
        self.classifier_calls += 1
        s = self._entropy(k["s"][t, k["rows"]], logits, k["ent"], k["cap"], k["any_ent"])
        guided, bad = combine(eps, g, s, k["table"][k["vidx"], t], self.spec.nonfinite, self.spec.grad_limit)
        self.nonfinite_steps += bad & active
        return torch.where(active.view((-1,) + (1,) * (x.ndim - 1)), guided, eps)

    def raise_if_nonfinite(self) -> None:
        """Static mode's deferred 'raise' (one host sync, after sampling)."""
        if self.spec.nonfinite == "raise" and self.nonfinite_steps is not None:
            n = int((self.nonfinite_steps > 0).sum())
            if n:
                raise FloatingPointError(nonfinite_message(n))
