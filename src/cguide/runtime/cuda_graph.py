"""The sampling loop with each (guided) step captured as a CUDA graph and replayed.

There is one loop, ``cguide.diffusion.sample``; this module gives it a runner. A sampler keeps the values that
change from step to step (original timesteps, coefficients, the noise draw index) in device buffers that it
refills before each step and its state (x, a multistep history) in tensors it updates in place, and the noise
is ``seeded_normal`` (pure tensor ops, capturable): so one captured step serves every step of the same shape.
A graph is captured per (sampler kind of the step, which of its evaluations are guided): a step whose
evaluations guide no row (s = 0, outside the interval) replays a plain body, so the classifier is still skipped
there, and Heun's last (single-evaluation) step has its own graph. The result is the same computation as
``diffusion.sample`` with a static-mode ``ClassifierGuidance``; with ``capture=False`` the same step bodies run
eagerly (how the CPU tests check it)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..diffusion import Sampler, SamplerSpec, sample
from ..diffusion.respace import Plan
from ..guidance import ClassifierGuidance


class GraphRunner:
    """A ``runner`` of ``diffusion.sample``: step i's evaluations get the guided eps function where a row is
    guided at that evaluation's original t (``guide.active_at``), else the plain one; with capture, each such
    combination is captured once (after a warm-up on a side stream, the sampler's state restored) and replayed."""

    def __init__(self, plain: Callable, guide: ClassifierGuidance | None, capture: bool, warmup: int):
        self.plain, self.guide, self.capture, self.warmup = plain, guide, capture, warmup
        self.graphs: dict = {}

    def __call__(self, smp: Sampler, i: int, eps_fn: Callable) -> None:
        active = tuple(self.guide is not None and self.guide.active_at(t) for t in smp.eval_steps_at(i))
        fns = [self.guide if a else self.plain for a in active]

        def body() -> None:
            with torch.no_grad():
                smp.step(fns)

        if not self.capture:
            body()
            return
        key = (smp.kind(i), active)
        if key not in self.graphs:
            self.graphs[key] = self._capture(body, smp)
        self.graphs[key].replay()
        if self.guide is not None:
            self.guide.classifier_calls += sum(active)

    def _capture(self, body: Callable, smp: Sampler) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream (cuDNN/cuBLAS choices, autograd, compile), restore the sampler's state and
        the guide's counters, then capture (a separate memory pool per graph: replay order is data-dependent)."""
        saved = [s.clone() for s in smp.state()]
        guide = self.guide
        calls = guide.classifier_calls if guide is not None else 0
        bad = None if guide is None or guide.nonfinite_steps is None else guide.nonfinite_steps.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                body()
        torch.cuda.current_stream().wait_stream(side)
        for s, v in zip(smp.state(), saved):
            s.copy_(v)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            body()
        for s, v in zip(smp.state(), saved):  # capture runs nothing, but keep the state exactly as it was
            s.copy_(v)
        if guide is not None:
            guide.classifier_calls = calls
            if guide.nonfinite_steps is not None:
                guide.nonfinite_steps.copy_(bad) if bad is not None else guide.nonfinite_steps.zero_()
        return g


def sample_static(eps_fn: Callable, guide: ClassifierGuidance | None, shape: Sequence[int], plan: Plan,
                  seeds: Sequence[int], *, sampler: SamplerSpec | str = "ddim", device=None, dtype=torch.float32,
                  capture: bool = True, warmup: int = 2) -> torch.Tensor:
    """``diffusion.sample(guide or eps_fn, ...)`` with every step captured as a CUDA graph (``GraphRunner``).
    guide must be built with static=True; every registered sampler runs here."""
    if guide is not None and not guide.static:
        raise ValueError("sample_static needs ClassifierGuidance(..., static=True)")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if capture and device.type != "cuda":
        raise ValueError(f"CUDA-graph capture needs a CUDA device, got {device.type}; set capture=False")
    runner = GraphRunner(eps_fn, guide, capture, warmup)
    x = sample(guide or eps_fn, shape, plan, seeds, sampler, device=device, dtype=dtype, progress=False,
               runner=runner)
    if guide is not None:
        guide.raise_if_nonfinite()
    return x
