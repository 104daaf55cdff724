"""Guided drawing from checkpoints: the one helper the sample and sweep entry points share.

What guides each sample is a ``GuidanceSpec`` row (so one call, and one batch, can hold many sweep
points); each sample depends on its own seed alone, whatever shares its batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..diffusion import SamplerSpec, make_schedule, sample
from ..guidance import ClassifierGuidance, GuidanceSpec, MethodEps
from ..io.adm_checkpoints import adm_preset, load_adm
from ..io.checkpoints import Loaded, check_compatible, load_net
from .cuda_graph import sample_static
from .distributed import gather_rows, rank_world, shard
from .learned_sigma import check_learned_variance, eps_net
from .speed import SpeedOptions, fast_net


def resolve_device(name: str | torch.device | None) -> torch.device:
    """'auto' (or None) -> cuda when available, else cpu."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(name: str | torch.device | None) -> torch.device:
    """resolve_device, refusing a device this machine does not have (one line naming the fix)."""
    try:
        device = resolve_device(name)
    except RuntimeError:  # torch's own message lists every backend it knows
        raise ValueError(f"unknown device {str(name)!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {str(name)!r} is not available here (no CUDA GPU); use device=cpu or auto")
        if device.index is not None and device.index >= n:
            raise ValueError(f"device {str(name)!r} is not available here ({n} CUDA GPU(s): cuda:0..cuda:{n - 1}); "
                             "use one of those, or device=cuda or auto")
    elif device.type != "cpu" and not (device.type == "mps" and torch.backends.mps.is_available()):
        raise ValueError(f"unknown device {str(name)!r}; use auto, cpu, cuda or cuda:N")
    return device


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


@dataclass(frozen=True)
class Models:
    """The networks a draw may use: the unconditional eps-model, the class-conditional one (with a null
    label when trained with label dropout), the noisy classifier, the clean guide (x0-space guidance).
    Which are needed follows from the rows' methods (cguide.guidance.METHODS) and gradient spaces."""

    eps: Loaded | None = None
    cond: Loaded | None = None
    classifier: Loaded | None = None
    guide: Loaded | None = None

    @property
    def base(self) -> Loaded:
        """The eps-model that fixes the image shape, classes and schedule."""
        return self.eps or self.cond


def check_models(models: Models, guidance: GuidanceSpec) -> None:
    """What the spec asks of the checkpoints: the networks its methods and gradient spaces need, targets in
    their class range, and every pair on the same schedule (the clean guide has none), image shape and classes."""
    needs = guidance.needs
    if "u" in needs and models.eps is None:
        raise ValueError("method classifier needs an unconditional eps-model: set eps_ckpt=<path>")
    if needs & {"c", "null"} and models.cond is None:
        raise ValueError("methods cond, cfg and cond_classifier need a class-conditional eps-model: set "
                         "cond_ckpt=<path> (train one with cguide.train task=diffusion model.cond=true)")
    if "null" in needs and adm_preset(models.cond):
        raise ValueError(f"cfg needs the null-label eps, but the ADM model {models.cond.path} "
                         f"({adm_preset(models.cond)}) has no null label (guided-diffusion trained it without label "
                         "dropout); use method cond or cond_classifier")
    if "null" in needs and not models.cond.p_uncond:
        raise ValueError(f"cfg needs the null-label eps, but {models.cond.path} was trained without label dropout "
                         "(model.p_uncond=0); retrain it with model.p_uncond > 0 (e.g. 0.1), or use method cond")
    base = models.base
    y = guidance.y
    if bool(((y < 0) | (y >= base.num_classes)).any()):
        raise ValueError(f"target class out of range: got {sorted(set(y.tolist()))}, the eps-model's data has "
                         f"classes 0..{base.num_classes - 1}")
    if guidance.guided_x_t and models.classifier is None:
        raise ValueError("guidance scale > 0 needs a noisy classifier: set classifier_ckpt=<path>, or use scale 0")
    if guidance.guided_x0 and models.guide is None:
        raise ValueError("guidance.grad_space=x0 with scale > 0 needs a clean guide classifier: set guide_ckpt=<path> "
                         "(train one with cguide.train task=guide), or use guidance.grad_space=x_t")
    for other in (models.cond, models.classifier):
        if other is not None and other is not base:
            check_compatible(base, other)
    if models.guide is not None:
        check_compatible(base, models.guide, same_schedule=False)


def check_speed(guidance: GuidanceSpec, opts: SpeedOptions) -> None:
    """Speed options the spec cannot use: the CUDA-graph step does not capture x0-space guidance."""
    if opts.cuda_graph and guidance.guided_x0:
        raise ValueError("guidance.grad_space=x0 is not supported by the CUDA-graph step (speed.cuda_graph=true): "
                         "its gradient through the eps-model is not captured; drop speed.cuda_graph, or use "
                         "guidance.grad_space=x_t")


def load_models(eps_ckpt: str | None, cond_ckpt: str | None, classifier_ckpt: str | None,
                guidance: GuidanceSpec, presets: dict | None = None, guide_ckpt: str | None = None) -> Models:
    """The checkpoints the spec's methods need (others are not read), each checked for its kind and
    conditioning, then together (check_models). presets: {'eps' | 'cond' | 'classifier': ADM preset or
    flags}; a file with a preset is a guided-diffusion (ADM) checkpoint (cguide.io.adm_checkpoints).
    guide_ckpt: the clean guide classifier (task=guide), read only when a row guides in x0 space."""
    needs, presets = guidance.needs, presets or {}

    def load(path, role, kind, conditional=None):
        if presets.get(role):
            return load_adm(path, presets[role], role)
        return load_net(path, kind, conditional=conditional)

    eps = load(eps_ckpt, "eps", "eps_model", False) if "u" in needs and eps_ckpt else None
    cond = load(cond_ckpt, "cond", "eps_model", True) if needs & {"c", "null"} and cond_ckpt else None
    clf = load(classifier_ckpt, "classifier", "noisy_classifier") if classifier_ckpt else None
    guide = load_net(guide_ckpt, "guide_classifier") if guidance.guided_x0 and guide_ckpt else None
    models = Models(eps, cond, clf, guide)
    check_models(models, guidance)
    return models


def draw(models: Models, guidance: GuidanceSpec, sampler: SamplerSpec, seeds: Sequence[int],
         run: RunOptions = RunOptions()) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw len(seeds) samples, sample i guided by row i of ``guidance`` (its method, scale, target).

    Where no row has a classifier term no classifier is needed, and rows of method classifier at
    s = 0 are exactly unguided sampling. Rows with grad_space='x0' take g from the clean guide through
    the unclipped base eps of their method (MethodEps.rows_eps). Returns (x [N,C,H,W] on cpu,
    nonfinite_steps [N]: steps at which a sample's classifier gradient was non-finite and contained)."""
    seeds = torch.as_tensor(list(seeds), dtype=torch.long)
    n = len(seeds)
    if n == 0:
        raise ValueError("nothing to draw: no seeds given; ask for at least one sample")
    if len(guidance) != n:
        raise ValueError(f"the guidance spec has {len(guidance)} rows for {n} seeds; give one per seed")
    check_models(models, guidance)
    check_learned_variance((models.eps, models.cond), sampler.var_type)
    device = resolve_device(run.device)
    opts = run.speed
    opts.check(device)
    check_speed(guidance, opts)
    base = models.base
    schedule = make_schedule(**base.schedule)
    guidance.check_against(schedule, sampler)
    plan = sampler.plan(schedule)
    uncond = (eps_net(fast_net(models.eps.net.eval(), opts, device), models.eps.net, sampler.var_type)
              if "u" in guidance.needs else None)
    cond = (eps_net(fast_net(models.cond.net.eval(), opts, device), models.cond.net, sampler.var_type)
            if guidance.needs & {"c", "null"} else None)
    clf = fast_net(models.classifier.net, opts, device) if guidance.guided_x_t else None
    guide = fast_net(models.guide.net, opts, device) if guidance.guided_x0 else None
    xs, bad = [], []
    for i in tqdm(range(0, n, run.batch_size), desc="drawing", unit="batch", disable=not run.progress, leave=False):
        sl = slice(i, i + run.batch_size)
        spec = guidance.rows(sl)
        if spec.needs == {"u"}:  # classifier guidance alone: the unconditional model, as it always ran
            eps_fn = lambda x, t: uncond(x, t)  # noqa: E731
            eps_grad = lambda x, t, rows: uncond(x, t)  # noqa: E731
        else:
            eps_fn = MethodEps(uncond, cond, spec, models.cond.net.null_label if cond is not None else None, schedule)
            eps_grad = eps_fn.rows_eps
        eps_fn = sampler.base_eps(eps_fn, schedule)  # x0-space g goes through the unclipped eps_grad
        fn, nonfinite_steps = None, torch.zeros(len(seeds[sl]), dtype=torch.long)
        if spec.guided:  # a batch without a classifier term stays exactly unguided
            fn = ClassifierGuidance(eps_fn, clf, plan, spec, static=opts.cuda_graph, guide=guide, eps_grad=eps_grad)
        if opts.cuda_graph:
            x = sample_static(eps_fn, fn, base.image_shape, plan, seeds[sl].tolist(), device=device,
                              **sampler.options)
        else:
            x = sample(fn or eps_fn, base.image_shape, plan, seeds[sl].tolist(), progress=False, device=device,
                       **sampler.options)
        if fn is not None and fn.nonfinite_steps is not None:
            nonfinite_steps = fn.nonfinite_steps.cpu()
        xs.append(x.cpu())
        bad.append(nonfinite_steps)
    return torch.cat(xs), torch.cat(bad)


def draw_sharded(models: Models, guidance: GuidanceSpec, sampler: SamplerSpec, seeds: Sequence[int],
                 run: RunOptions = RunOptions()) -> tuple[torch.Tensor, torch.Tensor]:
    """``draw`` split over the ranks of a process group (runtime.distributed): each rank draws its
    contiguous share of the samples and every rank gets all of them back in order, the same samples
    one process draws from the same seeds. Without a process group it is ``draw``."""
    seeds = list(seeds)
    n = len(seeds)
    if rank_world()[1] == 1:
        return draw(models, guidance, sampler, seeds, run)
    sl = shard(n)
    if sl.stop > sl.start:
        x, bad = draw(models, guidance.rows(sl), sampler, seeds[sl], run)
    else:  # more ranks than samples
        x, bad = torch.empty((0, *models.base.image_shape)), torch.empty(0, dtype=torch.long)
    return gather_rows(x, n), gather_rows(bad, n)
