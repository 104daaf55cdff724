"""What defines guidance, made and checked once where it comes from config.

``GuidanceSetting`` is one point's setting (method, scale, sigma_t variant, interval, non-finite mode),
validated in its constructor: the only place a guidance setting is checked. ``GuidanceSpec`` is a
batch: one row per sample (target y, s, variant, interval) built from valid settings, passed whole
from the entry point to the guided-eps wrapper."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import torch

from .methods import METHODS, check_method
from .variants import check_variant

NONFINITE_MODES = ("zero", "clamp", "raise")
# the config keys named in the fix of each message, by where the setting came from
KEYS = {"guidance": {"scale": "guidance.scale", "interval": "guidance.interval"},
        "sweep": {"scale": "sweep.scales", "interval": "sweep.intervals"}}


@dataclass(frozen=True)
class GuidanceSetting:
    """One point's guidance. method (cguide.guidance.METHODS) forms the base eps; with a classifier method
    eps_hat = base - s * c_t * g on original steps t with t_lo <= t / T <= t_hi. scale is the method's own
    (s for classifier methods, gamma for cfg, w for cfg_w, unused by cond).

    nonfinite: what a NaN/inf classifier gradient becomes: 'zero' (that step goes unguided),
    'clamp' (to +-grad_limit) or 'raise'. source names the config section in error messages.
    Settings without a classifier term keep no variant or interval (they would change nothing)."""

    scale: float = 0.0
    variant: str = "score"
    interval: tuple[float, float] = (0.0, 1.0)
    nonfinite: str = "zero"
    source: str = field(default="guidance", compare=False, repr=False)
    method: str = "classifier"

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
        object.__setattr__(self, "scale", float(s) if m.scale else 0.0)
        object.__setattr__(self, "interval", (float(iv[0]), float(iv[1])) if m.classifier else (0.0, 1.0))
        if not m.classifier:
            object.__setattr__(self, "variant", "score")

    @classmethod
    def from_config(cls, node, source: str = "guidance") -> "GuidanceSetting":
        return cls(node.scale, node.variant, tuple(node.interval), node.nonfinite, source, node.method)


@dataclass(frozen=True, eq=False)
class GuidanceSpec:
    """Guidance of a batch of B samples, one row each: target y [B] (int64), method (B names), the
    method's scale [B] (float64), variant (B names), interval bounds t_lo, t_hi [B] (float64, fractions of
    T). One non-finite mode per batch. Rows come from GuidanceSettings, so nothing here is checked again."""

    y: torch.Tensor
    scale: torch.Tensor
    variant: tuple[str, ...]
    t_lo: torch.Tensor
    t_hi: torch.Tensor
    nonfinite: str = "zero"
    grad_limit: float = 1e4  # |g| bound of nonfinite='clamp'
    method: tuple[str, ...] | None = None  # None: every row 'classifier'

    @classmethod
    def from_settings(cls, settings: Sequence[GuidanceSetting], y) -> "GuidanceSpec":
        """One setting per sample (a batch may mix sweep points); they must share the non-finite mode."""
        y = torch.as_tensor(y, dtype=torch.long).reshape(-1)
        if len(settings) != len(y):
            raise ValueError(f"{len(settings)} guidance settings for {len(y)} targets; give one per sample")
        modes = {g.nonfinite for g in settings}
        if len(modes) > 1:
            raise ValueError(f"one batch mixes non-finite modes {sorted(modes)}; draw them separately")
        f64 = dict(dtype=torch.float64)
        return cls(y, torch.tensor([g.scale for g in settings], **f64), tuple(g.variant for g in settings),
                   torch.tensor([g.interval[0] for g in settings], **f64),
                   torch.tensor([g.interval[1] for g in settings], **f64), modes.pop() if modes else "zero",
                   method=tuple(g.method for g in settings))

    @classmethod
    def of(cls, y, scale=1.0, variant: str | Sequence[str] = "score", interval=(0.0, 1.0),
           nonfinite: str = "zero", n: int | None = None, method: str = "classifier") -> "GuidanceSpec":
        """From per-sample values; scalars (y, scale, one variant name) broadcast to n samples, or to the
        length of the per-sample ones. Each distinct setting is a GuidanceSetting (its checks)."""
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
        rows = [made.setdefault((v, name), GuidanceSetting(v, name, tuple(interval), nonfinite, method=method))
                for v, name in zip(s.tolist(), names)]
        return cls.from_settings(rows, y)

    def __len__(self) -> int:
        return len(self.y)

    def __post_init__(self):
        if self.method is None:
            object.__setattr__(self, "method", ("classifier",) * len(self.y))

    def rows(self, sl: slice) -> "GuidanceSpec":
        """The spec of samples sl (a batch or a rank's share)."""
        return GuidanceSpec(self.y[sl], self.scale[sl], self.variant[sl], self.t_lo[sl], self.t_hi[sl],
                            self.nonfinite, self.grad_limit, self.method[sl])

    @cached_property
    def with_classifier(self) -> torch.Tensor:
        """[B] bool: rows whose method adds the classifier term."""
        return torch.tensor([METHODS[m].classifier for m in self.method], dtype=torch.bool)

    @property
    def guided(self) -> bool:
        """Does any row get a classifier term (a classifier method with s > 0)? If not, no classifier is needed."""
        return bool(((self.scale > 0) & self.with_classifier).any())

    @property
    def needs(self) -> set[str]:
        """The network evaluations of the rows' base eps ('u', 'c', 'null'; cguide.guidance.methods)."""
        return set().union(*(METHODS[m].needs for m in set(self.method)))

    def active(self, t: torch.Tensor, T: int) -> torch.Tensor:
        """[B] bool: rows with a classifier term at original steps t [B] (a classifier method, s != 0 and
        t / T inside the row's interval)."""
        dev = t.device
        frac = t.double() / T
        return ((self.scale.to(dev) != 0) & self.with_classifier.to(dev) & (frac >= self.t_lo.to(dev))
                & (frac <= self.t_hi.to(dev)))

    def active_at(self, t: int, T: int) -> bool:
        """Host-side: does any row get guided at original step t? (lets a caller skip the classifier)"""
        return bool(self.active(torch.full((len(self),), t, dtype=torch.long), T).any())
