"""The sweep grid: points (a sampler and a guidance setting), their stable keys, and how points are
packed into shared drawing calls. Every value is checked by the spec it becomes, before any work."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Sequence

import torch

from ..diffusion import SamplerSpec, sampler_class
from ..guidance import METHODS, GuidanceSetting

AXES = {"methods": "method", "scales": "scale", "variants": "variant", "samplers": "sampler", "steps": "steps",
        "intervals": "interval"}
# what a named option set (sweep.settings.<name>) may set besides its scales: the classifier term's options
SET_OPTIONS = ("schedule", "sigma_interval", "entropy_scale", "entropy_cap", "grad_at", "grad_space")


@dataclass(frozen=True)
class Point:
    sampler: SamplerSpec
    guidance: GuidanceSetting

    @property
    def method(self):
        return METHODS[self.guidance.method]

    @property
    def key(self) -> str:
        """Stable id: the row's name in results and the point's grid file name (classifier guidance
        points keep the names they had before methods existed; cfg / cfg_w points name their interval and
        options only where they differ from the defaults, so points without them keep their old keys)."""
        g, m, smp = self.guidance, self.method, f"{self.sampler.name}-{self.sampler.steps or 'T'}"
        lo, hi = g.interval
        if m.classifier:
            prefix = "" if m.name == "classifier" else f"{m.name}-"
            return f"{smp}-{prefix}t{lo:g}_{hi:g}-{g.variant}-s{g.scale:g}" + options_suffix(g)
        if not m.scale:
            return f"{smp}-{m.name}"
        iv = "" if (lo, hi) == (0.0, 1.0) else f"-t{lo:g}_{hi:g}"
        return f"{smp}-{m.name}{iv}-{m.scale}{g.scale:g}" + options_suffix(g)

    @property
    def batch_key(self) -> tuple:
        """Points agreeing here run the same sampling loop on the same networks, so they share batches
        (per-sample method, scale and variant)."""
        return (self.sampler, self.guidance.interval, self.method.family)

    @property
    def draw_key(self) -> tuple:
        """Points with equal draw keys draw the same samples: a classifier term at s = 0 adds nothing, so
        classifier at s = 0 is unguided whatever the variant, and cond_classifier at s = 0 is cond."""
        g, m = self.guidance, self.method
        if m.classifier and g.scale == 0:
            return (m.family, None, 0.0, "", "")
        if not m.classifier and (not m.scale or g.scale == m.neutral):  # cfg at gamma = 1: eps_c at every t
            return (m.family, m.scale, g.scale, "", "")
        if not m.classifier:  # cfg / cfg_w: the interval and schedule shape gamma_t
            return (m.family, m.scale, g.scale, g.interval, options_suffix(g))
        return (m.family, m.scale, g.scale, g.variant, options_suffix(g))

    def settings(self) -> dict:
        g = self.guidance
        sig = g.sigma_interval or (None, None)
        return {"point": self.key, "method": g.method, "sampler": self.sampler.name, "steps": self.sampler.steps,
                "t_lo": g.interval[0], "t_hi": g.interval[1], "variant": g.variant, "scale": g.scale,
                "schedule": g.schedule, "sigma_lo": sig[0], "sigma_hi": sig[1],
                "entropy_cap": g.entropy_cap if g.entropy_scale else None, "grad_at": g.grad_at,
                "grad_space": g.grad_space}


def options_suffix(g: GuidanceSetting) -> str:
    """The classifier term's options that differ from their defaults, as a key suffix (none: no suffix,
    so points keep the keys they had before these options existed)."""
    parts = [g.schedule] if g.schedule != "constant" else []
    if g.sigma_interval is not None:
        parts.append(f"sig{g.sigma_interval[0]:g}_{g.sigma_interval[1]:g}")
    if g.entropy_scale:
        parts.append(f"ent{g.entropy_cap:g}")
    if g.grad_at != "x_t":
        parts.append(g.grad_at)
    if g.grad_space != "x_t":
        parts.append(g.grad_space)
    return "".join(f"-{p}" for p in parts)


def build_grid(sweep, sampler, guidance) -> list[Point]:
    """Cartesian product of the sweep's axes (sweep.methods, .scales or a method's own .method_scales,
    .variants, .samplers x .steps or the (sampler, steps) pairs of .sampler_steps, .intervals) in a fixed
    order, duplicates dropped (settings without a classifier term ignore the variant; cond ignores the
    interval too); each value becomes a SamplerSpec /
    GuidanceSetting, with the rest of guidance (nonfinite, schedule, sigma_interval, entropy, grad_at,
    grad_space) from the guidance node. sweep.settings, when given, names option sets: the grid is the union
    over them of that product, each set's options (SET_OPTIONS) over the guidance node's and its own `scales`
    (if given) for every method."""
    axes = {name: list(sweep[name]) for name in AXES}
    pairs = sampler_pairs(sweep.get("sampler_steps"))  # None: sweep.samplers x sweep.steps
    for name, values in axes.items():
        if len(values) == 0 and not (pairs and name in ("samplers", "steps")):
            raise ValueError(f"empty grid: sweep.{name} is empty; give it at least one value "
                             f"(or drop the override to use {AXES[name]} alone)")
    own = dict(sweep.get("method_scales") or {})
    stray = sorted(set(own) - set(axes["methods"]))
    if stray:
        raise ValueError(f"sweep.method_scales names method(s) {stray} that are not in sweep.methods "
                         f"{axes['methods']}; add them to sweep.methods or drop their scales")
    samplers = [SamplerSpec.from_config(sampler, name=smp, steps=k, source="sweep")
                for smp, k in pairs or itertools.product(axes["samplers"], axes["steps"])]
    rest = dict(nonfinite=guidance.nonfinite, schedule=guidance.schedule, entropy_scale=guidance.entropy_scale,
                entropy_cap=guidance.entropy_cap, grad_at=guidance.grad_at,
                grad_space=getattr(guidance, "grad_space", "x_t"), sigma_interval=guidance.sigma_interval)
    settings = []
    for name, opts in option_sets(sweep).items():
        scales = opts.pop("scales", None)
        opts = {**rest, **opts}
        sig = opts["sigma_interval"]
        opts["sigma_interval"] = None if sig is None else tuple(sig)
        settings += [GuidanceSetting(s, v, tuple(iv), source="sweep", method=m, **opts)
                     for m in axes["methods"]
                     for iv, v, s in itertools.product(axes["intervals"], axes["variants"],
                                                       list(own.get(m, axes["scales"]) if scales is None else scales))]
    return list(dict.fromkeys(Point(smp, g) for smp, g in itertools.product(samplers, settings)))


def sampler_pairs(own) -> list[tuple[str, int | None]] | None:
    """sweep.sampler_steps (sampler -> its step counts) as (sampler, steps) pairs in the given order, checked;
    None when empty or absent (the grid is then sweep.samplers x sweep.steps)."""
    if not own:
        return None
    pairs = []
    for name, steps in dict(own).items():
        cls = sampler_class(str(name), "sweep.sampler_steps")  # an unknown name: the registry's line
        if isinstance(steps, (str, bytes, Mapping)) or not isinstance(steps, Sequence) or len(steps) == 0 or any(
                k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1) for k in steps):
            shown = list(steps) if isinstance(steps, Sequence) and not isinstance(steps, (str, bytes)) else steps
            raise ValueError(f"sweep.sampler_steps.{name} must be a non-empty list of step counts >= 1 (or null "
                             f"for all T), got {shown!r}; fix it or drop {name} from sweep.sampler_steps")
        for k in steps:
            if k is not None and k < cls.order:
                raise ValueError(f"sampler {name} is a solver of order {cls.order}: it needs at least {cls.order} "
                                 f"steps, got {k}; raise sweep.sampler_steps.{name} (or use ddim)")
            pairs.append((str(name), k))
    return list(dict.fromkeys(pairs))


def option_sets(sweep) -> dict[str, dict]:
    """sweep.settings as plain dicts (name -> {scales, options}), checked; {'': {}} when none are named."""
    sets = {str(k): dict(v or {}) for k, v in dict(sweep.get("settings") or {}).items()}
    for name, opts in sets.items():
        unknown = sorted(set(opts) - {"scales", *SET_OPTIONS})
        if unknown:
            raise ValueError(f"sweep.settings.{name} sets unknown key(s) {unknown}; known: scales, "
                             f"{', '.join(SET_OPTIONS)}")
        if "scales" in opts and (isinstance(opts["scales"], (str, bytes)) or not hasattr(opts["scales"], "__len__")
                                 or len(opts["scales"]) == 0):
            raise ValueError(f"sweep.settings.{name}.scales must be a non-empty list of scales, got "
                             f"{opts['scales']!r}; fix it or drop it (then sweep.scales is used)")
    return sets or {"": {}}


def pack(points: Sequence[Point], points_per_call: int) -> list[list[Point]]:
    """Groups of up to points_per_call points sharing a batch_key, s = 0 points first; points that draw the
    same samples (equal draw_key: s = 0 of every variant) always share one call, even past points_per_call,
    so each draw happens once (a call holds one set of samples per draw, not per point)."""
    by_key: dict[tuple, list[Point]] = {}
    for p in sorted(points, key=lambda p: p.guidance.scale != 0):  # stable: grid order otherwise
        by_key.setdefault(p.batch_key, []).append(p)
    k, calls = max(1, points_per_call), []
    for group in by_key.values():
        draws: dict[tuple, list[Point]] = {}
        for p in group:
            draws.setdefault(p.draw_key, []).append(p)
        call: list[Point] = []
        for same in draws.values():
            if call and len(call) + len(same) > k:
                calls.append(call)
                call = []
            call += same
        calls.append(call)
    return calls


def balanced_targets(n: int, num_classes: int) -> torch.Tensor:
    """Sample i targets class i % num_classes: every class gets n // num_classes or one more."""
    if n < num_classes:
        raise ValueError(f"sweep.n_per_point={n} is fewer than the {num_classes} classes; set sweep.n_per_point >= "
                         f"{num_classes} so every class is drawn")
    return torch.arange(n) % num_classes
