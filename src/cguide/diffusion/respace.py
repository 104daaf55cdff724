"""Respacing: sample on K of the T training steps. The kept steps keep their alphabar, so
beta'_i = 1 - alphabar_{tau_i} / alphabar_{tau_{i-1}}, and networks still get the ORIGINAL index tau_i."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedule import Schedule

SPACINGS = ("uniform", "leading")


def respaced_timesteps(T: int, K: int, spacing: str = "uniform") -> torch.Tensor:
    """Ascending original indices of the K kept steps.

    uniform: round(linspace(0, T-1, K)) -- keeps the first and the last step (only the last when K = 1).
    leading: 0, T//K, 2T//K, ... (diffusers' DDIM default), so the noisiest step kept is < T-1.
    """
    if not 1 <= K <= T:
        raise ValueError(f"sampling steps must be in [1, T={T}], got {K}; set sampler.steps accordingly")
    if spacing == "uniform" and K == 1:
        ts = torch.tensor([T - 1])  # one step: straight from the noisiest level to x_0
    elif spacing == "uniform":
        ts = torch.linspace(0, T - 1, K, dtype=torch.float64).round().long()
    elif spacing == "leading":
        ts = torch.arange(K, dtype=torch.long) * (T // K)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; known: {', '.join(SPACINGS)}")
    return ts


@dataclass(frozen=True, eq=False)
class Plan:
    """The steps a sampler visits: original indices tau_0 < ... < tau_{K-1} and their alphabars."""

    schedule: Schedule
    timesteps: torch.Tensor  # int64 [K], ascending, original indices

    def __post_init__(self):
        ts = self.timesteps.long()
        if ts.ndim != 1 or len(ts) == 0 or bool((ts[1:] <= ts[:-1]).any()):
            raise ValueError("plan timesteps must be strictly increasing")
        if int(ts[0]) < 0 or int(ts[-1]) >= self.schedule.T:
            raise ValueError(f"plan timesteps must lie in [0, {self.schedule.T - 1}]")
        object.__setattr__(self, "timesteps", ts)

    @property
    def K(self) -> int:
        return len(self.timesteps)

    @property
    def alphabar(self) -> torch.Tensor:
        return self.schedule.alphabar[self.timesteps]

    @property
    def alphabar_prev(self) -> torch.Tensor:
        """alphabar at the previous KEPT step (1 before the first one)."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphabar[:-1]])

    @property
    def betas(self) -> torch.Tensor:
        return 1 - self.alphabar / self.alphabar_prev

    def table(self, values: torch.Tensor) -> torch.Tensor:
        """Scatter per-kept-step values into a length-T table indexed by original t (NaN elsewhere),
        so functions of t alone (guidance scales) can look up respaced quantities."""
        out = torch.full((self.schedule.T,), float("nan"), dtype=values.dtype)
        out[self.timesteps] = values
        return out


def make_plan(schedule: Schedule, steps: int | None = None, spacing: str = "uniform") -> Plan:
    """All T steps when ``steps`` is None or T, else K respaced steps."""
    T = schedule.T
    if steps is None or steps == T:
        return Plan(schedule, torch.arange(T))
    return Plan(schedule, respaced_timesteps(T, steps, spacing))
