"""The sampling loop with the whole (guided) step captured as a CUDA graph and replayed at every step.

The step's shapes never change, so one capture serves all steps: the step's inputs (t, alphabar_t,
alphabar_prev, the noise draw index, a learned variance's log range) live in static device tensors that are
refilled before each replay, and the noise is ``seeded_normal`` (pure tensor ops, capturable). The result is the same
computation as ``cguide.diffusion.sample`` with a static-mode ``ClassifierGuidance``; with
``capture=False`` the same step body runs eagerly (how the CPU tests check it)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..diffusion import learned_log_var_range, seeded_normal, step
from ..diffusion.respace import Plan
from ..guidance import ClassifierGuidance


def sample_static(eps_fn: Callable, guide: ClassifierGuidance | None, shape: Sequence[int], plan: Plan,
                  seeds: Sequence[int], *, sampler: str = "ddim", eta: float = 0.0, var_type: str = "fixed_small",
                  clip_x0: bool = False, dynamic_threshold: float | None = None, device=None, dtype=torch.float32,
                  capture: bool = True, warmup: int = 2) -> torch.Tensor:
    """Like ``diffusion.sample(guide or eps_fn, ...)``. Two step bodies are captured, guided and plain;
    a step where no row is guided (s = 0, outside the interval) replays the plain one, so the classifier
    is still skipped there. guide must be built with static=True."""
    if guide is not None and not guide.static:
        raise ValueError("sample_static needs ClassifierGuidance(..., static=True)")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if capture and device.type != "cuda":
        raise ValueError(f"CUDA-graph capture needs a CUDA device, got {device.type}; set capture=False")
    seeds = torch.as_tensor(list(seeds), dtype=torch.long, device=device)
    x = seeded_normal(seeds, 0, shape, device, dtype)
    B = x.shape[0]
    coef_shape = (B,) + (1,) * (x.ndim - 1)
    t_buf = torch.zeros(B, dtype=torch.long, device=device)
    a_t, a_p = torch.ones(coef_shape, dtype=dtype, device=device), torch.ones(coef_shape, dtype=dtype, device=device)
    draw = torch.zeros(1, dtype=torch.long, device=device)
    # a learned variance's (min_log, max_log) of the step, refilled like alphabar
    lv = learned_log_var_range(plan) if var_type == "learned" else None
    lv_buf = None if lv is None else tuple(torch.zeros(coef_shape, dtype=dtype, device=device) for _ in lv)
    stochastic = sampler == "ddpm" or eta > 0
    steps = list(range(plan.K - 1, -1, -1))
    guided_at = {i: guide is not None and guide.active_at(int(plan.timesteps[i])) for i in steps}

    def body(guided: bool) -> None:
        fn = guide if guided else eps_fn
        with torch.no_grad():
            eps = fn(x, t_buf)
            # at the last step the update multiplies the noise by 0, as diffusion.sample's zeros give
            z = seeded_normal(seeds, draw, shape, device, dtype) if stochastic else torch.zeros_like(x)
            new, _ = step(sampler, x, eps, a_t, a_p, z, eta=eta, var_type=var_type, clip_x0=clip_x0,
                          dynamic_threshold=dynamic_threshold, log_var_range=lv_buf)
            x.copy_(new)

    def set_step(i: int) -> None:
        t_buf.fill_(int(plan.timesteps[i]))
        a_t.fill_(float(plan.alphabar[i]))
        a_p.fill_(float(plan.alphabar_prev[i]))
        draw.fill_(i + 1)
        for buf, b in zip(lv_buf or (), lv or ()):
            buf.fill_(float(b[i]))

    graphs: dict[bool, torch.cuda.CUDAGraph] = {}
    if capture:
        graphs = _capture(body, set_step, x, guide, sorted(set(guided_at.values())), steps[0], warmup)
    for i in steps:
        set_step(i)
        if capture:
            graphs[guided_at[i]].replay()
            if guide is not None and guided_at[i]:
                guide.classifier_calls += 1
        else:
            body(guided_at[i])
    if guide is not None:
        guide.raise_if_nonfinite()
    return x


def _capture(body, set_step, x, guide, modes, first_step, warmup) -> dict:
    """Warm up on a side stream (cuDNN/cuBLAS choices, autograd, compile), restore x, then capture
    each needed body into its own graph (separate memory pools: replay order is data-dependent)."""
    x0 = x.clone()
    set_step(first_step)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            for guided in modes:
                body(guided)
    torch.cuda.current_stream().wait_stream(side)
    graphs = {}
    for guided in modes:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            body(guided)
        graphs[guided] = g
    x.copy_(x0)  # warm-up steps moved x; capture itself runs nothing
    if guide is not None:
        guide.classifier_calls = 0
        if guide.nonfinite_steps is not None:
            guide.nonfinite_steps.zero_()
    return graphs
