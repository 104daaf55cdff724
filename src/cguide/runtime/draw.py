"""Guided drawing from checkpoints: the one helper the sample and sweep entry points share.

What guides each sample is a ``GuidanceSpec`` row (so one call, and one batch, can hold many sweep
points); each sample depends on its own seed alone, whatever shares its batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..diffusion import SamplerSpec, make_schedule, sample
from ..guidance import ClassifierGuidance, GuidanceSpec
from ..io.checkpoints import Loaded, check_compatible
from .cuda_graph import sample_static
from .distributed import gather_rows, rank_world, shard
from .speed import SpeedOptions, fast_net


def resolve_device(name: str | torch.device | None) -> torch.device:
    """'auto' (or None) -> cuda when available, else cpu."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class RunOptions:
    """Where and how fast to draw: samples per network call, device, progress bar, speed options."""

    batch_size: int = 256
    device: str | torch.device | None = None
    progress: bool = True
    speed: SpeedOptions = SpeedOptions()

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        object.__setattr__(self, "speed", SpeedOptions.from_config(self.speed))


def check_models(eps: Loaded, clf: Loaded | None, guidance: GuidanceSpec) -> None:
    """What the spec asks of the checkpoints: targets in their class range, a compatible classifier
    wherever a sample is guided."""
    y = guidance.y
    if bool(((y < 0) | (y >= eps.num_classes)).any()):
        raise ValueError(f"target class out of range: got {sorted(set(y.tolist()))}, the eps-model's data has "
                         f"classes 0..{eps.num_classes - 1}")
    if guidance.guided and clf is None:
        raise ValueError("guidance scale > 0 needs a noisy classifier: set classifier_ckpt=<path>, or use scale 0")
    if clf is not None:
        check_compatible(eps, clf)


def draw(eps: Loaded, clf: Loaded | None, guidance: GuidanceSpec, sampler: SamplerSpec, seeds: Sequence[int],
         run: RunOptions = RunOptions()) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw len(seeds) samples from ``eps``, sample i guided by row i of ``guidance``.

    Where every scale is 0 no classifier is needed (clf may be None) and the result is exactly
    unguided sampling. Returns (x [N,C,H,W] on cpu, nonfinite_steps [N]: steps at which a sample's
    classifier gradient was non-finite and contained)."""
    seeds = torch.as_tensor(list(seeds), dtype=torch.long)
    n = len(seeds)
    if n == 0:
        raise ValueError("nothing to draw: no seeds given; ask for at least one sample")
    if len(guidance) != n:
        raise ValueError(f"the guidance spec has {len(guidance)} rows for {n} seeds; give one per seed")
    check_models(eps, clf, guidance)
    device = resolve_device(run.device)
    opts = run.speed
    opts.check(device)
    plan = sampler.plan(make_schedule(**eps.schedule))
    net = fast_net(eps.net.eval(), opts, device)
    guide = fast_net(clf.net, opts, device) if guidance.guided else None
    eps_fn = lambda x, t: net(x, t)  # noqa: E731
    xs, bad = [], []
    for i in tqdm(range(0, n, run.batch_size), desc="drawing", unit="batch", disable=not run.progress, leave=False):
        sl = slice(i, i + run.batch_size)
        spec = guidance.rows(sl)
        fn, nonfinite_steps = None, torch.zeros(len(seeds[sl]), dtype=torch.long)
        if guide is not None and spec.guided:  # an all-s=0 batch stays exactly unguided
            fn = ClassifierGuidance(eps_fn, guide, plan, spec, static=opts.cuda_graph)
        if opts.cuda_graph:
            x = sample_static(eps_fn, fn, eps.image_shape, plan, seeds[sl].tolist(), device=device, **sampler.options)
        else:
            x = sample(fn or eps_fn, eps.image_shape, plan, seeds[sl].tolist(), progress=False, device=device,
                       **sampler.options)
        if fn is not None and fn.nonfinite_steps is not None:
            nonfinite_steps = fn.nonfinite_steps.cpu()
        xs.append(x.cpu())
        bad.append(nonfinite_steps)
    return torch.cat(xs), torch.cat(bad)


def draw_sharded(eps: Loaded, clf: Loaded | None, guidance: GuidanceSpec, sampler: SamplerSpec,
                 seeds: Sequence[int], run: RunOptions = RunOptions()) -> tuple[torch.Tensor, torch.Tensor]:
    """``draw`` split over the ranks of a process group (runtime.distributed): each rank draws its
    contiguous share of the samples and every rank gets all of them back in order, the same samples
    one process draws from the same seeds. Without a process group it is ``draw``."""
    seeds = list(seeds)
    n = len(seeds)
    if rank_world()[1] == 1:
        return draw(eps, clf, guidance, sampler, seeds, run)
    sl = shard(n)
    if sl.stop > sl.start:
        x, bad = draw(eps, clf, guidance.rows(sl), sampler, seeds[sl], run)
    else:  # more ranks than samples
        x, bad = torch.empty((0, *eps.image_shape)), torch.empty(0, dtype=torch.long)
    return gather_rows(x, n), gather_rows(bad, n)
