"""Classifier guidance as a wrapper: eps_hat(x_t, t) = eps_theta(x_t, t) - s * w(t) * f * c_t * g.

The wrapper is itself an ``eps_fn(x_t, t)``, so DDPM, DDIM, every respacing and the CUDA-graph
step get guidance for free. An eps function returning [eps, v] (2C channels: a learned variance, see
``cguide.diffusion.samplers``) is guided on its eps half, v passes through, and mean_shift rows use the learned
Sigma per pixel (Alg. 1). What guides each row (y, s, variant, schedule w, intervals, entropy factor f,
gradient location, gradient space: noisy classifier at x_t or clean guide at x0_hat) is a ``GuidanceSpec``."""

from __future__ import annotations

from typing import Callable

import torch

from ..diffusion.learned_variance import learned_log_var, learned_log_var_range, split_eps
from ..diffusion.process import posterior, x0_from_eps
from ..diffusion.respace import Plan
from .gradient import classifier_log_prob_grad, entropy_factor, x0_space_grad
from .schedules import schedule_weight
from .spec import GuidanceSpec
from .variants import mean_shift_of_variance, variant_factor


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
    sc = (s * c).view(shape) if c.ndim == 1 else s.view(shape) * c  # c per pixel: a learned variance
    return eps - sc * g.to(eps.dtype), bad


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
        grad_space='x0' rows take g = grad_{x_t} log p_psi(y | x0_hat(x_t)) from ``guide`` (a classifier of
        clean images, guide(x0) -> logits; x0-space / forward guidance, Bansal et al. 2023 arXiv 2302.07121,
        EluCD arXiv 2310.11311), x0_hat from the UNCLIPPED eps of eps_grad, the gradient taken through it
        (``x0_space_grad``); their entropy factor uses the guide's logits. The rest of the formula is the same:
        eps_hat = eps - s * w(t) * f * c_t * g, eps from eps_fn.
    guide: the clean guide classifier, needed by grad_space='x0' rows (frozen, eval mode, like classifier).
    eps_grad(x, t, rows) -> eps: the base eps of batch rows ``rows`` ([k] indices) with autograd on (e.g.
        ``MethodEps.rows_eps``); default eps_fn(x, t), which must then be differentiable. Each call is one
        more eps-model forward + backward on the x0 rows: counted in ``x0_calls`` (noisy classifier forward
        + backward calls in ``classifier_calls``).
    static: graph-friendly mode (for CUDA-graph capture): no host syncs, no data-dependent shapes.
        The classifier runs on every row and torch.where keeps eps itself where a row is inactive
        (so those rows stay bitwise unguided even if their gradient is NaN), and 'raise' is deferred
        to ``raise_if_nonfinite()``. The caller skips the classifier where ``active_at(t)`` is False.
        grad_space='x0' rows are refused there (the gradient through the eps-model is not captured).
    """

    def __init__(self, eps_fn: Callable, classifier: torch.nn.Module | None, plan: Plan, spec: GuidanceSpec,
                 static: bool = False, guide: torch.nn.Module | None = None, eps_grad: Callable | None = None):
        if spec.guided_x_t and classifier is None:
            raise ValueError("rows guided at x_t need the noisy classifier: pass classifier")
        if spec.guided_x0 and guide is None:
            raise ValueError("rows with grad_space='x0' need the clean guide classifier: pass guide")
        if static and spec.guided_x0:
            raise ValueError("guidance.grad_space=x0 is not supported by the CUDA-graph step (speed.cuda_graph=true): "
                             "its gradient through the eps-model is not captured; drop speed.cuda_graph, or use "
                             "guidance.grad_space=x_t")
        self.eps_fn, self.plan, self.spec = eps_fn, plan, spec
        self.classifier = classifier.eval().requires_grad_(False) if classifier is not None else None
        self.guide = guide.eval().requires_grad_(False) if guide is not None else None
        self.eps_grad = eps_grad or (lambda x, t, rows: eps_fn(x, t))
        self._T = plan.schedule.T
        self._ab = plan.schedule.alphabar
        self._ab_prev = plan.table(plan.alphabar_prev)  # indexed by original t
        ts = plan.timesteps
        self._t_prev = torch.zeros(self._T, dtype=torch.long)  # previous kept original index (0 before tau_0)
        self._t_prev[ts[1:]] = ts[:-1]
        self.nonfinite_steps: torch.Tensor | None = None
        self.classifier_calls = 0
        self.x0_calls = 0
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
        eps, v = split_eps(eps, x)
        rows_cpu = rows.cpu()
        idx, tr = rows_cpu.tolist(), t[rows].cpu()
        ent = self.spec.entropy[rows_cpu]
        g, logits = self._grads(x, eps, t, rows, rows_cpu)
        c = variant_factor([self.spec.variant[i] for i in idx], self._ab[tr], self._ab_prev[tr])
        s = (self.spec.scale[rows_cpu] * schedule_weight([self.spec.schedule[i] for i in idx], tr, self._T))
        s = self._entropy(s.to(dev, x.dtype), logits, ent.to(dev), self.spec.entropy_cap[rows_cpu], bool(ent.any()))
        ms = [self.spec.variant[i] == "mean_shift" for i in idx]
        c = self._learned_c(c.to(dev, x.dtype), None if v is None else v[rows], t[rows], torch.tensor(ms, device=dev),
                            any(ms))
        guided, bad = combine(eps[rows], g, s, c, self.spec.nonfinite, self.spec.grad_limit)
        if bool(bad.any()):
            if self.spec.nonfinite == "raise":
                raise FloatingPointError(nonfinite_message(int(bad.sum())))
            self.nonfinite_steps[rows[bad]] += 1
        eps = eps.clone()
        eps[rows] = guided
        return eps if v is None else torch.cat([eps, v], 1)

    def _learned_c(self, c, v, t, ms, any_ms: bool):
        """c_t, per pixel where the row's variant is mean_shift (ms [k] bool, any_ms its host-side any) and the
        eps function gave v: Alg. 1 with the learned Sigma, ``mean_shift_of_variance``. Graph-safe."""
        if v is None or not any_ms:
            return c
        key = ("learned", v.device, v.dtype)
        if key not in self._table_cache:  # made once, before any capture
            lo, hi = (self.plan.table(b) for b in learned_log_var_range(self.plan))
            self._table_cache[key] = tuple(a.to(v.device, v.dtype) for a in (self._ab, self._ab_prev, lo, hi))
        ab, ab_prev, lo, hi = (a[t].view((-1,) + (1,) * (v.ndim - 1)) for a in self._table_cache[key])
        c_ms = mean_shift_of_variance(learned_log_var(v, lo, hi).exp(), ab, ab_prev)
        return torch.where(ms.view(ab.shape), c_ms, c.view(ab.shape))

    def _grads(self, x, eps, t, rows, rows_cpu) -> tuple[torch.Tensor, torch.Tensor]:
        """g and the guiding classifier's logits of the active rows: the noisy classifier's (at x_t or mu)
        for grad_space='x_t' rows, the clean guide's through x0_hat for 'x0' rows."""
        dev = x.device
        x0 = self.spec.x0_space[rows_cpu]
        g = logits = None
        for mask, fn in ((~x0, self._grad_x_t), (x0, self._grad_x0)):
            if not bool(mask.any()):
                continue
            sub = mask.nonzero().squeeze(1)  # positions among the active rows
            r = rows[sub.to(dev)]
            gs, ls = fn(x[r], eps[r], t[r], self.spec.y[rows_cpu[sub]].to(dev), rows_cpu[sub])
            if bool(mask.all()):
                return gs, ls
            if g is None:
                g, logits = torch.empty_like(x[rows]), ls.new_empty(len(rows), ls.shape[1])
            g[sub.to(dev)], logits[sub.to(dev)] = gs.to(g.dtype), ls.to(logits.dtype)
        return g, logits

    def _grad_x_t(self, x, eps, t, y, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy classifier guidance: g at x_t (or at mu_theta(x_t) where grad_at='posterior_mean')."""
        pm = torch.tensor([self.spec.grad_at[i] == "posterior_mean" for i in idx.tolist()])
        point, t_clf = x, t
        if bool(pm.any()):
            point, t_clf = self._grad_point(x, eps, t, pm.to(x.device), *self._tables(x.device, x.dtype), True)
        g, _, logits = classifier_log_prob_grad(self.classifier, point, t_clf, y, True)
        self.classifier_calls += 1
        return g, logits

    def _grad_x0(self, x, eps, t, y, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """x0-space guidance: g = grad_{x_t} log p_psi(y | x0_hat(x_t)) through the rows' base eps-model."""
        ab = self._tables(x.device, x.dtype)[0][t]
        C = x.shape[1]  # a learned-variance net gives [eps, v]: x0_hat takes eps
        g, _, logits = x0_space_grad(lambda z, tt: self.eps_grad(z, tt, idx)[:, :C], self.guide, x, t, ab, y, True)
        self.x0_calls += 1
        return g, logits

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
            eps, v = split_eps(self.eps_fn(x.detach(), t), x)
        k = self._prepare_static(x.shape[0], x.dtype, x.device)
        active = k["active"][t, k["rows"]]
        point, t_clf = self._grad_point(x, eps, t, k["pm"], *k["tables"], k["any_pm"])
        g, _, logits = classifier_log_prob_grad(self.classifier, point, t_clf, k["y"], True)
        self.classifier_calls += 1
        s = self._entropy(k["s"][t, k["rows"]], logits, k["ent"], k["cap"], k["any_ent"])
        c = k["table"][k["vidx"], t]
        if v is not None:
            key = ("mean_shift rows", x.device)
            if key not in self._table_cache:  # made once, before any capture
                self._table_cache[key] = torch.tensor([n == "mean_shift" for n in self.spec.variant], device=x.device)
            c = self._learned_c(c, v, t, self._table_cache[key], "mean_shift" in self.spec.variant)
        guided, bad = combine(eps, g, s, c, self.spec.nonfinite, self.spec.grad_limit)
        self.nonfinite_steps += bad & active
        eps = torch.where(active.view((-1,) + (1,) * (x.ndim - 1)), guided, eps)
        return eps if v is None else torch.cat([eps, v], 1)

    def raise_if_nonfinite(self) -> None:
        """Static mode's deferred 'raise' (one host sync, after sampling)."""
        if self.spec.nonfinite == "raise" and self.nonfinite_steps is not None:
            n = int((self.nonfinite_steps > 0).sum())
            if n:
                raise FloatingPointError(nonfinite_message(n))
