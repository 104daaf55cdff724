"""Guidance methods: how a row's eps is formed, one registry entry each (formula in the docstring).

Every method turns the same eps functions into one guided ``eps_fn(x_t, t)``, so every sampler,
respacing, the CUDA-graph step and the distributed sweep serve all of them. A method names the
network evaluations its base eps needs ('u': the unconditional eps-model; 'c': the conditional one
with the row's label; 'null': the conditional one with the null label) and whether the classifier
term - s * c_t * g (``ClassifierGuidance``) is added on top.

Equal terms: the guidance interval (t interval and sigma interval) and the scale schedule act on every method's
guidance strength. For classifier methods that is the classifier term (s(t) = s * w(t) inside the intervals, 0
outside; ``ClassifierGuidance``); for cfg / cfg_w it is the CFG weight (``Method.neutral``, ``MethodEps``):
gamma(t) = 1 + (gamma - 1) * w(t) inside the intervals and gamma(t) = 1 (the conditional eps) outside, as
Kynkaanniemi et al. 2024 (arXiv 2404.07724) disable CFG outside their interval."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..diffusion.learned_variance import split_eps

Evals = dict[str, torch.Tensor]  # 'u' / 'c' / 'null' -> eps [B, ...]


@dataclass(frozen=True)
class Method:
    name: str
    needs: frozenset[str]  # network evaluations of the base eps
    classifier: bool  # adds - s * c_t * g (the row's scale is then s)
    scale: str | None  # what the row's scale means: 's', 'gamma', 'w', or None (unused)
    base: Callable[[Evals, torch.Tensor], torch.Tensor]  # (evals, per-row scale [B,1,..]) -> eps

    @property
    def guides_base(self) -> bool:
        """Does the row's scale guide the base eps itself (cfg, cfg_w)? Then the guidance interval and the
        scale schedule act on that scale (``neutral`` outside the interval; ``MethodEps``)."""
        return not self.classifier and self.scale is not None

    @property
    def neutral(self) -> float | None:
        """The scale at which the method does not guide: s = 0 (no classifier term), gamma = 1 and w = 0 (the
        conditional eps); None for a method without a scale (cond)."""
        return {"s": 0.0, "gamma": 1.0, "w": 0.0}.get(self.scale)

    @property
    def family(self) -> str:
        """Methods of one family need the same networks, so they share batches."""
        return "+".join(sorted(self.needs))


METHODS: dict[str, Method] = {}


def register_method(name: str, needs: set[str], classifier: bool, scale: str | None):
    def deco(fn):
        METHODS[name] = Method(name, frozenset(needs), classifier, scale, fn)
        return fn
    return deco


@register_method("classifier", {"u"}, classifier=True, scale="s")
def classifier(e: Evals, scale):
    """Classifier guidance of an unconditional model (Dhariwal & Nichol Alg. 1/2):
    eps_hat = eps_theta(x_t) - s * c_t * grad log p_phi(y | x_t)."""
    return e["u"]


@register_method("cond", {"c"}, classifier=False, scale=None)
def cond(e: Evals, scale):
    """The class-conditional model alone: eps_hat = eps_theta(x_t, y)."""
    return e["c"]


@register_method("cfg", {"c", "null"}, classifier=False, scale="gamma")
def cfg(e: Evals, gamma):
    """Classifier-free guidance (Ho & Salimans 2022): eps_hat = eps_u + gamma_t * (eps_c - eps_u), eps_c and
    eps_u = eps_theta(x_t, null) from one batched forward. gamma = 1 + w of Ho & Salimans' w; gamma = 1 is
    the conditional model, gamma = 0 the null-label model (both exact: torch.lerp hits its end points).

    Interval and schedule (as classifier guidance's s(t) = s * w(t)): the guidance strength gamma - 1 follows
    the row's scale schedule w(t) and is 0 outside its intervals,
        gamma_t = 1 + (gamma - 1) * w(t)   if t_lo <= t / T <= t_hi and sigma_lo <= sigma_t <= sigma_hi,
        gamma_t = 1                        otherwise (eps_hat = eps_c exactly: Kynkaanniemi et al. 2024),
    at the original step t, u = t / (T - 1) in w (``cguide.guidance.schedules``). Where w(t) = 1 (constant, the
    default) gamma_t is gamma itself, bit for bit. ``MethodEps`` forms gamma_t; this function gets it."""
    return torch.lerp(e["null"], e["c"], gamma)


@register_method("cfg_w", {"c", "null"}, classifier=False, scale="w")
def cfg_w(e: Evals, w):
    """Classifier-free guidance with Ho & Salimans' w: eps_hat = (1 + w_t) eps_c - w_t eps_u (= cfg, gamma = 1 + w),
    with w_t = w * w(t) inside the row's intervals and w_t = 0 (eps_hat = eps_c exactly) outside, w(t) the scale
    schedule: the same guidance as cfg's gamma_t. ``MethodEps`` forms w_t; this function gets it."""
    return torch.lerp(e["null"], e["c"], 1 + w)


@register_method("cond_classifier", {"c"}, classifier=True, scale="s")
def cond_classifier(e: Evals, scale):
    """ADM-G (Dhariwal & Nichol, Table 4): the conditional model plus classifier guidance,
    eps_hat = eps_theta(x_t, y) - s * c_t * grad log p_phi(y | x_t)."""
    return e["c"]


def check_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown guidance method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def split_evals(e: Evals, x: torch.Tensor) -> tuple[Evals, Evals | None]:
    """Evaluations of learn_sigma networks ([eps, v], 2C channels) split into their eps and their v;
    (e, None) when every evaluation is eps alone."""
    parts = {k: split_eps(o, x) for k, o in e.items()}
    learned = {k for k, (_, v) in parts.items() if v is not None}
    if not learned:
        return e, None
    if learned != set(e):
        raise ValueError(f"the eps-models disagree: {', '.join(sorted(learned))} return [eps, v] (learned variance), "
                         f"{', '.join(sorted(set(e) - learned))} eps alone; use networks of one kind")
    return {k: p[0] for k, p in parts.items()}, {k: p[1] for k, p in parts.items()}


class MethodEps:
    """The base eps of every row (before any classifier term), as an ``eps_fn(x_t, t)``.

    uncond(x, t) and cond(x, t, y) are the networks; null is the conditional model's null label.
    Each network evaluation a row's method needs runs once per call on the whole batch, and rows
    take their method's result by torch.where (graph-safe: no data-dependent shapes). A batch of one
    method costs exactly its own evaluations. Networks returning [eps, v] (learned variance): the method acts
    on eps, and v is the conditional evaluation's where the method has one (as GLIDE's CFG), else the
    unconditional one's.

    schedule (a ``cguide.diffusion`` Schedule: T and alphabar) is needed where a cfg / cfg_w row has an interval,
    a sigma interval or a scale schedule: that row's scale at original step t is then
    neutral + (scale - neutral) * w(t) inside its intervals and neutral outside (``GuidanceSpec.base_scale_table``;
    gamma_t of ``cfg``), gathered per row from a [T, B] table made once on the device, so the step stays
    graph-safe. Rows without these options take their scale as it is, with no table."""

    def __init__(self, uncond: Callable | None, cond: Callable | None, spec, null: int | None = None,
                 schedule=None):
        self.uncond, self.cond, self.spec, self.null = uncond, cond, spec, null
        self.methods = list(dict.fromkeys(spec.method))
        self._masks: dict = {}
        self._cache: dict = {}
        self.schedule = schedule
        if spec.timed_base and schedule is None:
            raise ValueError("cfg / cfg_w rows with a guidance interval, sigma interval or scale schedule need the "
                             "diffusion schedule (T, alphabar) to place t: pass schedule to MethodEps")

    def _evals(self, needs: set[str], x, t, y=None) -> Evals:
        if y is None:  # the batch's targets, copied to the device once (a captured step copies nothing from the host)
            if ("y", x.device) not in self._cache:
                self._cache[("y", x.device)] = self.spec.y.to(x.device)
            y = self._cache[("y", x.device)]
        y = y.to(x.device)
        e: Evals = {}
        if "u" in needs:
            e["u"] = self.uncond(x, t)
        if "null" in needs:  # the conditional and the null-label eps in one batched forward
            both = self.cond(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.null)]))
            e["c"], e["null"] = both.chunk(2)
        elif "c" in needs:
            e["c"] = self.cond(x, t, y)
        return e

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        needs = set().union(*(METHODS[m].needs for m in self.methods))
        with torch.no_grad():
            e, v = split_evals(self._evals(needs, x.detach(), t), x)
            shape = (-1,) + (1,) * (x.ndim - 1)
            scale = self._scale_at(t, None, x).view(shape)
            out = None
            for name in self.methods:
                base = METHODS[name].base(e, scale)
                if v is not None:
                    base = torch.cat([base, v["c" if "c" in METHODS[name].needs else "u"]], 1)
                out = base if out is None else torch.where(self._mask(name, x.device).view(shape), base, out)
        return out

    def rows_eps(self, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The base eps of batch rows ``rows`` ([k] indices) at x [k], t [k], with autograd ON: x0-space
        guidance takes its gradient through it (ClassifierGuidance's eps_grad). Only the networks those
        rows' methods need run, on those rows only."""
        idx = rows.tolist()
        methods = [self.spec.method[i] for i in idx]
        names = list(dict.fromkeys(methods))
        e = self._evals(set().union(*(METHODS[m].needs for m in names)), x, t, self.spec.y[rows.cpu()])
        shape = (-1,) + (1,) * (x.ndim - 1)
        scale = self._scale_at(t, rows, x).view(shape)
        out = None
        for name in names:
            base = METHODS[name].base(e, scale)
            mask = torch.tensor([m == name for m in methods], device=x.device).view(shape)
            out = base if out is None else torch.where(mask, base, out)
        return out

    def _scale_at(self, t: torch.Tensor, rows: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """Each row's scale at original steps t [k] ([B] rows, or the batch rows ``rows``), in x's dtype: the
        spec's scale, or where a cfg / cfg_w row has an interval or schedule, its entry of the [T, B] table
        (the same float64 values cast once; made once per device and dtype, before any capture)."""
        key = (x.device, x.dtype)
        if key not in self._cache:
            if self.spec.timed_base:
                table = self.spec.base_scale_table(self.schedule.T, self.schedule.alphabar)
                self._cache[key] = (table.to(x.device, x.dtype),
                                     torch.arange(len(self.spec), device=x.device))
            else:
                self._cache[key] = (self.spec.scale.to(x.device, x.dtype), None)
        values, every = self._cache[key]
        if every is None:  # no row's scale depends on t
            return values if rows is None else values[rows.to(x.device)]
        return values[t.to(x.device), every if rows is None else rows.to(x.device)]

    def _mask(self, name: str, device) -> torch.Tensor:
        key = (name, device)
        if key not in self._masks:  # made once, before any capture
            self._masks[key] = torch.tensor([m == name for m in self.spec.method], device=device)
        return self._masks[key]
