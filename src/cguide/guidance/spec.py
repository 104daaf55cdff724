"""What defines guidance, made and checked once where it comes from config.

``GuidanceSetting`` is one point's setting (method, scale, sigma_t variant, scale schedule, intervals in t and
in sigma, entropy-aware factor, gradient location and space, non-finite mode), validated in its constructor:
the only place a guidance setting is checked. What needs the schedule or the sampler is checked by ``check_against``,
which the runtime calls before drawing. ``GuidanceSpec`` is a batch: one row per sample built from valid
settings, passed whole from the entry point to the guided-eps wrapper."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import torch

from ..diffusion.process import sigma_of
from .methods import METHODS, check_method
from .schedules import check_schedule, schedule_weight
from .variants import check_variant

NONFINITE_MODES = ("zero", "clamp", "raise")
GRAD_AT = ("x_t", "posterior_mean")
GRAD_SPACES = ("x_t", "x0")  # g from the noisy classifier at x_t, or from the clean guide at x0_hat(x_t)
# the config keys named in the fix of each message, by where the setting came from (else guidance.<field>)
KEYS = {"guidance": {"scale": "guidance.scale", "interval": "guidance.interval"},
        "sweep": {"scale": "sweep.scales", "interval": "sweep.intervals"}}


def _key(source: str, name: str) -> str:
    return KEYS[source].get(name, f"guidance.{name}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_sigma_interval(lo: float, hi: float, schedule, key: str = "guidance.sigma_interval") -> None:
    """Refuse a sigma interval that holds no original step of ``schedule`` (it would never guide)."""
    sig = sigma_of(schedule.alphabar)
    if not bool(((sig >= lo) & (sig <= hi)).any()):
        raise ValueError(f"{key} [{lo:g}, {hi:g}] holds no step of the schedule: its sigma = sqrt((1 - alphabar) / "
                         f"alphabar) runs from {float(sig[0]):.4g} (t = 0) to {float(sig[-1]):.4g} "
                         f"(t = {schedule.T - 1}); fix {key} to overlap that range")


def check_grad_at(grad_at: str, sampler) -> None:
    """grad_at=posterior_mean is defined for DDPM only (sampler: a SamplerSpec, or anything with .name)."""
    if grad_at == "posterior_mean" and sampler.name != "ddpm":
        raise ValueError(f"guidance.grad_at=posterior_mean needs sampler.name=ddpm, got {sampler.name}: its "
                         "deterministic update (DDIM, the ODE solvers) draws from no posterior N(mu_theta(x_t), "
                         "Sigma), so it has no posterior mean of the same meaning; fix guidance.grad_at=x_t or "
                         "sampler.name=ddpm")


@dataclass(frozen=True)
class GuidanceSetting:
    """One point's guidance. method (cguide.guidance.METHODS) forms the base eps; with a classifier method
    eps_hat = base - s * w(t) * f * c_t * g on original steps t with t_lo <= t / T <= t_hi (and, with
    sigma_interval, sigma_lo <= sigma_t <= sigma_hi). scale is the method's own (s for classifier methods,
    gamma for cfg, w for cfg_w, unused by cond).

    Equal terms: cfg and cfg_w keep the interval, the sigma interval and the schedule, which act on their
    guidance strength as on s: gamma_t = 1 + (gamma - 1) * w(t) inside the intervals, 1 (the conditional eps)
    outside (w_t = w * w(t), or 0, for cfg_w; ``cguide.guidance.methods.cfg``).

    schedule: w(t) (cguide.guidance.SCHEDULES; 'constant' is w = 1).
    sigma_interval: (sigma_lo, sigma_hi) on sigma_t = sqrt((1 - alphabar_t) / alphabar_t) at the ORIGINAL t
        (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval ...", arXiv 2404.07724; they use
        (lo, hi], here both ends are closed); sigma_hi may be inf. None: no sigma limit. Combines with
        ``interval`` (both must hold).
    entropy_scale, entropy_cap: f = min(cap, log C / H(p_phi(. | x_t))) per sample and step (ED-DPM;
        ``entropy_factor``); f = 1 when off.
    grad_at: where g is taken: 'x_t' (Dhariwal & Nichol) or 'posterior_mean' (g at mu_theta(x_t), DDPM only).
    grad_space: which classifier gives g: 'x_t', the noisy p_phi(y | x_t, t); or 'x0', x0-space guidance:
        g = grad_{x_t} log p_psi(y | x0_hat(x_t)) of a classifier p_psi of CLEAN images (the guide, never the
        judge), x0_hat = (x_t - sqrt(1 - ab_t) eps(x_t, t)) / sqrt(ab_t), the gradient taken through the
        eps-model of the row's base eps (``gradient.x0_space_grad``; Bansal et al. 2023, arXiv 2302.07121,
        forward guidance; EluCD, Ma et al. 2023, arXiv 2310.11311). It costs one more eps-model forward and
        backward per guided step; with 'x0' grad_at must be 'x_t' (g goes through x0_hat(x_t) itself).
    nonfinite: what a NaN/inf classifier gradient becomes: 'zero' (that step goes unguided),
    'clamp' (to +-grad_limit) or 'raise'. source names the config section in error messages.
    Settings without a classifier term keep none of the classifier term's own options (variant, entropy_scale,
    grad_at, grad_space: they would change nothing); cond (no scale) keeps no interval or schedule either."""

    scale: float = 0.0
    variant: str = "score"
    interval: tuple[float, float] = (0.0, 1.0)
    nonfinite: str = "zero"
    source: str = field(default="guidance", compare=False, repr=False)
    method: str = "classifier"
    schedule: str = "constant"
    sigma_interval: tuple[float, float] | None = None
    entropy_scale: bool = False
    entropy_cap: float = 10.0
    grad_at: str = "x_t"
    grad_space: str = "x_t"

    def __post_init__(self):
        keys = KEYS[self.source]
        m = check_method(self.method)
        s = self.scale
        lowest = -1.0 if m.scale == "w" else 0.0  # cfg_w: w >= -1 is gamma >= 0
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (math.isfinite(s) and s >= lowest):
            what = {"s": "guidance scale", "gamma": "cfg's gamma", "w": "cfg_w's w"}.get(m.scale, "guidance scale")
            rule = "(s = 0 is unguided)" if m.scale in ("s", None) else "(gamma = 1 + w; 1 is the conditional model)"
            raise ValueError(f"{what} must be finite and >= {lowest:g} {rule}, got {s}; fix {keys['scale']}")
        check_variant(self.variant)
        iv = list(self.interval)
        if len(iv) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in iv) \
                or not 0 <= iv[0] <= iv[1] <= 1:
            raise ValueError(f"guidance interval needs [t_lo, t_hi] with 0 <= t_lo <= t_hi <= 1, got {iv}; "
                             f"fix {keys['interval']}")
        if self.nonfinite not in NONFINITE_MODES:
            raise ValueError(f"unknown guidance.nonfinite {self.nonfinite!r}; known: {', '.join(NONFINITE_MODES)}")
        check_schedule(self.schedule, _key(self.source, "schedule"))
        sig = self.sigma_interval
        if sig is not None:
            sig = list(sig)
            if len(sig) != 2 or not all(_number(v) for v in sig) or not (math.isfinite(sig[0])
                                                                        and 0 <= sig[0] <= sig[1]):
                key = _key(self.source, "sigma_interval")
                raise ValueError(f"{key} needs [sigma_lo, sigma_hi] with 0 <= sigma_lo <= sigma_hi (sigma_hi may be "
                                 f"inf), got {sig}; fix {key}, or null for no sigma limit")
        if not isinstance(self.entropy_scale, bool):
            raise ValueError(f"guidance.entropy_scale must be true or false, got {self.entropy_scale!r}; "
                             f"fix {_key(self.source, 'entropy_scale')}")
        cap = self.entropy_cap
        if not (_number(cap) and math.isfinite(cap) and cap >= 1):
            raise ValueError(f"guidance.entropy_cap must be finite and >= 1 (it caps the factor log C / H >= 1), "
                             f"got {cap}; fix {_key(self.source, 'entropy_cap')}")
        if self.grad_at not in GRAD_AT:
            raise ValueError(f"unknown guidance.grad_at {self.grad_at!r}; known: {', '.join(GRAD_AT)}; "
                             f"fix {_key(self.source, 'grad_at')}")
        if self.grad_space not in GRAD_SPACES:
            raise ValueError(f"unknown guidance.grad_space {self.grad_space!r}; known: {', '.join(GRAD_SPACES)}; "
                             f"fix {_key(self.source, 'grad_space')}")
        if self.grad_space == "x0" and self.grad_at != "x_t" and m.classifier:
            raise ValueError("guidance.grad_space=x0 takes g through x0_hat(x_t), so it does not combine with "
                             f"guidance.grad_at={self.grad_at}; fix guidance.grad_at=x_t or guidance.grad_space=x_t")
        timed = m.classifier or m.guides_base  # the interval and the schedule act on its guidance strength
        object.__setattr__(self, "scale", float(s) if m.scale else 0.0)
        object.__setattr__(self, "interval", (float(iv[0]), float(iv[1])) if timed else (0.0, 1.0))
        object.__setattr__(self, "sigma_interval", (float(sig[0]), float(sig[1])) if sig and timed else None)
        on = self.entropy_scale and m.classifier
        object.__setattr__(self, "entropy_scale", on)
        object.__setattr__(self, "entropy_cap", float(cap) if on else 10.0)  # unused when off: one setting
        if not timed:
            object.__setattr__(self, "schedule", "constant")
        if not m.classifier:
            object.__setattr__(self, "variant", "score")
            object.__setattr__(self, "grad_at", "x_t")
            object.__setattr__(self, "grad_space", "x_t")

    def check_against(self, schedule, sampler=None) -> None:
        """What needs the schedule (a Schedule) or the sampler (a SamplerSpec): a sigma interval must hold
        a step of the schedule; grad_at=posterior_mean needs DDPM. The runtime calls this before drawing."""
        if self.sigma_interval is not None:
            check_sigma_interval(*self.sigma_interval, schedule, _key(self.source, "sigma_interval"))
        if sampler is not None:
            check_grad_at(self.grad_at, sampler)

    @classmethod
    def from_config(cls, node, source: str = "guidance") -> "GuidanceSetting":
        """From a guidance/ config node (any subset of the fields: the rest keep their defaults here, the one
        definition of each; ``cguide.config.GuidanceConfig`` is made from these fields)."""
        get = node.get if hasattr(node, "get") else lambda k, d: getattr(node, k, d)
        missing = object()
        values = {f.name: v for f in dataclasses.fields(cls) if f.name != "source"
                  and (v := get(f.name, missing)) is not missing}
        for k in ("interval", "sigma_interval"):  # config lists become the spec's tuples
            if values.get(k) is not None:
                values[k] = tuple(values[k])
        return cls(**values, source=source)


@dataclass(frozen=True, eq=False)
class GuidanceSpec:
    """Guidance of a batch of B samples, one row each: target y [B] (int64), method (B names), the
    method's scale [B] (float64), variant (B names), interval bounds t_lo, t_hi [B] (float64, fractions of
    T), schedule (B names), sigma bounds sigma_lo, sigma_hi [B] (float64; 0 and inf: no sigma limit),
    entropy [B] (bool) with entropy_cap [B] (float64), grad_at (B names), grad_space (B names: 'x_t' or
    'x0'). One non-finite mode per batch.
    Rows come from GuidanceSettings, so nothing here is checked again; fields left None take the defaults."""

    y: torch.Tensor
    scale: torch.Tensor
    variant: tuple[str, ...]
    t_lo: torch.Tensor
    t_hi: torch.Tensor
    nonfinite: str = "zero"
    grad_limit: float = 1e4  # |g| bound of nonfinite='clamp'
    method: tuple[str, ...] | None = None  # None: every row 'classifier'
    schedule: tuple[str, ...] | None = None
    sigma_lo: torch.Tensor | None = None
    sigma_hi: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    entropy_cap: torch.Tensor | None = None
    grad_at: tuple[str, ...] | None = None
    grad_space: tuple[str, ...] | None = None

    @classmethod
    def from_settings(cls, settings: Sequence[GuidanceSetting], y) -> "GuidanceSpec":
        """One setting per sample (a batch may mix sweep points); they must share the non-finite mode."""
        y = torch.as_tensor(y, dtype=torch.long).reshape(-1)
        if len(settings) != len(y):
            raise ValueError(f"{len(settings)} guidance settings for {len(y)} targets; give one per sample")
        modes = {g.nonfinite for g in settings}
        if len(modes) > 1:
            raise ValueError(f"one batch mixes non-finite modes {sorted(modes)}; draw them separately")

        def f64(get):
            return torch.tensor([get(g) for g in settings], dtype=torch.float64)
        sig = [g.sigma_interval or (0.0, math.inf) for g in settings]
        return cls(y, f64(lambda g: g.scale), tuple(g.variant for g in settings), f64(lambda g: g.interval[0]),
                   f64(lambda g: g.interval[1]), modes.pop() if modes else "zero",
                   method=tuple(g.method for g in settings), schedule=tuple(g.schedule for g in settings),
                   sigma_lo=torch.tensor([v[0] for v in sig], dtype=torch.float64),
                   sigma_hi=torch.tensor([v[1] for v in sig], dtype=torch.float64),
                   entropy=torch.tensor([g.entropy_scale for g in settings], dtype=torch.bool),
                   entropy_cap=f64(lambda g: g.entropy_cap), grad_at=tuple(g.grad_at for g in settings),
                   grad_space=tuple(g.grad_space for g in settings))

    @classmethod
    def of(cls, y, scale=1.0, variant: str | Sequence[str] = "score", interval=(0.0, 1.0),
           nonfinite: str = "zero", n: int | None = None, method: str = "classifier", **options) -> "GuidanceSpec":
        """From per-sample values; scalars (y, scale, one variant name) broadcast to n samples, or to the
        length of the per-sample ones. options: the other GuidanceSetting fields (schedule, sigma_interval,
        entropy_scale, entropy_cap, grad_at, grad_space), one value for all rows. Each distinct setting is a
        GuidanceSetting (its checks)."""
        y = torch.as_tensor(y, dtype=torch.long)
        s = torch.as_tensor(scale, dtype=torch.float64)
        lengths = {len(v) for v in (y, s) if v.ndim} | ({len(variant)} if not isinstance(variant, str) else set())
        n = n if n is not None else (lengths.pop() if len(lengths) == 1 else None)
        if n is None or any(k != n for k in lengths):
            raise ValueError(f"y, scale and variant must be scalars or one per sample; got lengths {sorted(lengths)}"
                             + ("" if lengths else " (all scalars: pass n)"))
        y, s = (v.expand(n) if v.ndim == 0 else v.reshape(-1) for v in (y, s))
        names = [variant] * n if isinstance(variant, str) else list(variant)
        made: dict[tuple, GuidanceSetting] = {}
        rows = [made.setdefault((v, name), GuidanceSetting(v, name, tuple(interval), nonfinite, method=method,
                                                           **options))
                for v, name in zip(s.tolist(), names)]
        return cls.from_settings(rows, y)

    def __len__(self) -> int:
        return len(self.y)

    def __post_init__(self):
        B = len(self.y)
        defaults = {"method": ("classifier",) * B, "schedule": ("constant",) * B,
                    "sigma_lo": torch.zeros(B, dtype=torch.float64),
                    "sigma_hi": torch.full((B,), math.inf, dtype=torch.float64),
                    "entropy": torch.zeros(B, dtype=torch.bool),
                    "entropy_cap": torch.full((B,), 10.0, dtype=torch.float64),
                    "grad_at": ("x_t",) * B, "grad_space": ("x_t",) * B}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    def rows(self, sl: slice) -> "GuidanceSpec":
        """The spec of samples sl (a batch or a rank's share)."""
        return GuidanceSpec(self.y[sl], self.scale[sl], self.variant[sl], self.t_lo[sl], self.t_hi[sl],
                            self.nonfinite, self.grad_limit, self.method[sl], self.schedule[sl], self.sigma_lo[sl],
                            self.sigma_hi[sl], self.entropy[sl], self.entropy_cap[sl], self.grad_at[sl],
                            self.grad_space[sl])

    def check_against(self, schedule, sampler=None) -> None:
        """What needs the schedule (a Schedule) or the sampler (a SamplerSpec): a sigma interval (of a row with
        a classifier term, or a cfg / cfg_w row) must hold a step of the schedule; grad_at=posterior_mean (of a
        row with a classifier term) needs DDPM. The runtime calls this before drawing (as
        GuidanceSetting.check_against for one setting)."""
        timed = self.with_classifier | self.guides_base
        for lo, hi in dict.fromkeys(zip(self.sigma_lo[timed].tolist(), self.sigma_hi[timed].tolist())):
            if (lo, hi) != (0.0, math.inf):
                check_sigma_interval(lo, hi, schedule)
        rows = self.with_classifier
        if sampler is not None:
            for g in set(a for a, c in zip(self.grad_at, rows.tolist()) if c):
                check_grad_at(g, sampler)

    @cached_property
    def with_classifier(self) -> torch.Tensor:
        """[B] bool: rows whose method adds the classifier term."""
        return torch.tensor([METHODS[m].classifier for m in self.method], dtype=torch.bool)

    @cached_property
    def guides_base(self) -> torch.Tensor:
        """[B] bool: rows whose scale guides the base eps (cfg, cfg_w; ``Method.guides_base``)."""
        return torch.tensor([METHODS[m].guides_base for m in self.method], dtype=torch.bool)

    @cached_property
    def timed_base(self) -> bool:
        """Does any cfg / cfg_w row have an interval, a sigma interval or a schedule (so its scale depends on t)?"""
        rows = self.guides_base
        default = ((self.t_lo == 0) & (self.t_hi == 1) & (self.sigma_lo == 0) & (self.sigma_hi == math.inf)
                   & torch.tensor([s == "constant" for s in self.schedule], dtype=torch.bool))
        return bool((rows & ~default).any())

    def in_interval(self, t: torch.Tensor, T: int, alphabar: torch.Tensor | None = None) -> torch.Tensor:
        """[B] bool: rows whose intervals hold original steps t [B] (or [T', 1]: a [T', B] table): t_lo <= t / T
        <= t_hi and (with a sigma interval) sigma_lo <= sigma_t <= sigma_hi. alphabar: the schedule's [T]
        alphabar, needed when a row has a sigma interval. Says nothing of the method or the scale (``active``
        does)."""
        dev = t.device
        frac = t.double() / T
        on = (frac >= self.t_lo.to(dev)) & (frac <= self.t_hi.to(dev))
        if self.has_sigma_interval:
            if alphabar is None:
                raise ValueError("a sigma interval needs the schedule's alphabar: pass alphabar")
            sig = sigma_of(alphabar.to(dev, torch.float64)[t])
            on = on & (sig >= self.sigma_lo.to(dev)) & (sig <= self.sigma_hi.to(dev))
        return on

    def base_scale_table(self, T: int, alphabar: torch.Tensor | None = None) -> torch.Tensor:
        """[T, B] float64: each row's scale of its base eps at every original step t (``MethodEps``). A cfg / cfg_w
        row (``Method.guides_base``) gets neutral + (scale - neutral) * w(t) where its intervals hold t and
        neutral elsewhere (cfg: gamma_t = 1 + (gamma - 1) * w(t), or 1; cfg_w: w_t = w * w(t), or 0), with
        w(t) its scale schedule; where w(t) = 1 the row's scale itself, bit for bit. Other rows keep their scale
        at every t (a classifier term's s(t) is ``ClassifierGuidance``'s)."""
        steps = torch.arange(T)
        inside = self.in_interval(steps.view(-1, 1), T, alphabar)  # [T, B]: the comparisons of active(), broadcast
        names = list(dict.fromkeys(self.schedule))
        idx = torch.tensor([names.index(n) for n in self.schedule])
        w = torch.stack([schedule_weight(n, steps, T) for n in names])[idx].T  # [T, B]
        neutral = torch.tensor([METHODS[m].neutral or 0.0 for m in self.method], dtype=torch.float64)
        timed = neutral + (self.scale - neutral) * w
        timed = torch.where(w == 1, self.scale, timed)  # constant (and a ramp's end at 1): the scale exactly
        timed = torch.where(inside, timed, neutral)
        return torch.where(self.guides_base, timed, self.scale)

    @cached_property
    def x0_space(self) -> torch.Tensor:
        """[B] bool: rows whose g comes from the clean guide at x0_hat(x_t) (grad_space='x0')."""
        return torch.tensor([s == "x0" for s in self.grad_space], dtype=torch.bool)

    @cached_property
    def has_sigma_interval(self) -> bool:
        return bool(((self.sigma_lo > 0) | (self.sigma_hi < math.inf)).any())

    @property
    def guided(self) -> bool:
        """Does any row get a classifier term (a classifier method with s > 0)? If not, no classifier is needed."""
        return bool(((self.scale > 0) & self.with_classifier).any())

    @property
    def guided_x_t(self) -> bool:
        """Does any row get g from the noisy classifier (then a classifier_ckpt is needed)?"""
        return bool(((self.scale > 0) & self.with_classifier & ~self.x0_space).any())

    @property
    def guided_x0(self) -> bool:
        """Does any row get g from the clean guide at x0_hat (then a guide_ckpt is needed)?"""
        return bool(((self.scale > 0) & self.with_classifier & self.x0_space).any())

    @property
    def needs(self) -> set[str]:
        """The network evaluations of the rows' base eps ('u', 'c', 'null'; cguide.guidance.methods)."""
        return set().union(*(METHODS[m].needs for m in set(self.method)))

    def active(self, t: torch.Tensor, T: int, alphabar: torch.Tensor | None = None) -> torch.Tensor:
        """[B] bool: rows with a classifier term at original steps t [B] (a classifier method, s != 0,
        t / T inside the row's interval and sigma_t inside its sigma interval: ``in_interval``). alphabar: the
        schedule's [T] alphabar, needed when a row has a sigma interval."""
        dev = t.device
        return (self.scale.to(dev) != 0) & self.with_classifier.to(dev) & self.in_interval(t, T, alphabar)

    def active_at(self, t: int, T: int, alphabar: torch.Tensor | None = None) -> bool:
        """Host-side: does any row get guided at original step t? (lets a caller skip the classifier)"""
        return bool(self.active(torch.full((len(self),), t, dtype=torch.long), T, alphabar).any())
