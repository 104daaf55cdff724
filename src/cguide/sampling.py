"""Guided drawing from checkpoints: the one helper the sample and sweep entry points share.

Per-sample seeds, targets, scales and variants, so one call (and one batch) can hold many sweep
points; each sample depends on its own seed alone, whatever shares its batch."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from .checkpoints import Loaded, check_compatible
from .cuda_graph import sample_static
from .distributed import gather_rows, rank_world, shard
from .diffusion import make_plan, make_schedule, sample
from .guidance import ClassifierGuidance, check_variant
from .speed import SpeedOptions, fast_net


def resolve_device(name: str | torch.device | None) -> torch.device:
    """'auto' (or None) -> cuda when available, else cpu."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _per_sample(v, n: int, dtype, name: str) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=dtype)
    if t.ndim == 0:
        return t.expand(n).clone()
    if t.shape != (n,):
        raise ValueError(f"{name} must be a scalar or one value per seed ({n}), got shape {tuple(t.shape)}")
    return t


def draw(eps: Loaded, clf: Loaded | None, *, y, scale=0.0, variant: str | Sequence[str] = "score",
         sampler: str = "ddim", steps: int | None = None, spacing: str = "uniform", eta: float = 0.0,
         var_type: str = "fixed_small", clip_x0: bool = False, interval=(0.0, 1.0), nonfinite: str = "zero",
         seeds: Sequence[int], batch_size: int = 256, device=None, progress: bool = True,
         speed: SpeedOptions | dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw len(seeds) samples from ``eps`` guided by ``clf`` towards targets ``y``.

    y, scale, variant: scalars or one per seed. Where every scale is 0 no classifier is needed (clf may
    be None) and the result is exactly unguided sampling. speed: ``SpeedOptions`` (or its dict; None = eager
    fp32). Returns (x [N,C,H,W] on cpu,
    nonfinite_steps [N]: steps at which a sample's classifier gradient was non-finite and contained)."""
    seeds = torch.as_tensor(list(seeds), dtype=torch.long)
    n = len(seeds)
    if n == 0:
        raise ValueError("nothing to draw: no seeds given; ask for at least one sample")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    y = _per_sample(y, n, torch.long, "target class y")
    s = _per_sample(scale, n, torch.float64, "guidance scale")
    variants = [variant] * n if isinstance(variant, str) else list(variant)
    if len(variants) != n:
        raise ValueError(f"variant must be one name or one per seed ({n}), got {len(variants)}")
    for name in set(variants):
        check_variant(name)
    if bool((s < 0).any()) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"guidance scale must be finite and >= 0 (s = 0 is unguided), got {sorted(set(s.tolist()))}")
    if bool(((y < 0) | (y >= eps.num_classes)).any()):
        raise ValueError(f"target class out of range: got {sorted(set(y.tolist()))}, the eps-model's data has "
                         f"classes 0..{eps.num_classes - 1}")
    t_lo, t_hi = interval
    if not 0 <= t_lo <= t_hi <= 1:  # checked here too: an all-s=0 call never builds the guidance wrapper
        raise ValueError(f"guidance interval needs 0 <= t_lo <= t_hi <= 1, got t_lo={t_lo}, t_hi={t_hi}")
    guided = bool((s > 0).any())
    if guided and clf is None:
        raise ValueError("guidance scale > 0 needs a noisy classifier: set classifier_ckpt=<path>, or use scale 0")
    if clf is not None:
        check_compatible(eps, clf)

    device = resolve_device(device)
    opts = SpeedOptions.from_config(speed)
    opts.check(device)
    plan = make_plan(make_schedule(**eps.schedule), steps, spacing)
    net = fast_net(eps.net.eval(), opts, device)
    guide = fast_net(clf.net, opts, device) if guided else None
    eps_fn = lambda x, t: net(x, t)  # noqa: E731
    xs, bad = [], []
    starts = range(0, n, batch_size)
    for i in tqdm(starts, desc="drawing", unit="batch", disable=not progress, leave=False):
        sl = slice(i, i + batch_size)
        fn, nonfinite_steps = eps_fn, torch.zeros(len(seeds[sl]), dtype=torch.long)
        if guide is not None and bool((s[sl] > 0).any()):  # an all-s=0 batch stays exactly unguided
            fn = ClassifierGuidance(eps_fn, guide, plan, y=y[sl].to(device), scale=s[sl].to(device),
                                    variant=variants[sl], interval=(t_lo, t_hi), nonfinite=nonfinite,
                                    num_classes=clf.num_classes, static=opts.cuda_graph)
        run = dict(sampler=sampler, eta=eta, var_type=var_type, clip_x0=clip_x0, device=device)
        if opts.cuda_graph:
            x = sample_static(eps_fn, fn if fn is not eps_fn else None, eps.image_shape, plan, seeds[sl].tolist(), **run)
        else:
            x = sample(fn, eps.image_shape, plan, seeds[sl].tolist(), progress=False, **run)
        if fn is not eps_fn and fn.nonfinite_steps is not None:
            nonfinite_steps = fn.nonfinite_steps.cpu()
        xs.append(x.cpu())
        bad.append(nonfinite_steps)
    return torch.cat(xs), torch.cat(bad)


def draw_sharded(eps: Loaded, clf: Loaded | None, *, y, scale=0.0, variant: str | Sequence[str] = "score",
                 seeds: Sequence[int], **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``draw`` split over the ranks of a process group (cguide.distributed): each rank draws its
    contiguous share of the samples and every rank gets all of them back in order, the same samples
    one process draws from the same seeds. Without a process group it is ``draw``."""
    seeds = list(seeds)
    n = len(seeds)
    if rank_world()[1] == 1:
        return draw(eps, clf, y=y, scale=scale, variant=variant, seeds=seeds, **kwargs)
    sl = shard(n)
    y_, s_ = _per_sample(y, n, torch.long, "target class y"), _per_sample(scale, n, torch.float64, "guidance scale")
    v_ = [variant] * n if isinstance(variant, str) else list(variant)
    if sl.stop > sl.start:
        x, bad = draw(eps, clf, y=y_[sl], scale=s_[sl], variant=v_[sl], seeds=seeds[sl], **kwargs)
    else:  # more ranks than samples
        x, bad = torch.empty((0, *eps.image_shape)), torch.empty(0, dtype=torch.long)
    return gather_rows(x, n), gather_rows(bad, n)
