"""Noise schedules in the seed's notation: t in {0..T-1}, beta_t, alpha_t = 1 - beta_t,
alphabar_t = prod_{i<=t} alpha_i. Kept in float64; samplers cast at use."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

SCHEDULE_KINDS = ("linear", "cosine")


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. (2020): betas evenly spaced from beta_start to beta_end."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_alphabar(u: torch.Tensor | float, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal (2021) eq. 17 before normalisation: f(u) = cos^2((u + s)/(1 + s) * pi/2), u in [0,1]."""
    u = torch.as_tensor(u, dtype=torch.float64)
    return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = 1 - f((t+1)/T) / f(t/T), clipped at max_beta so the last step stays finite.
    Unclipped, alphabar_t = f((t+1)/T) / f(0)."""
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = cosine_alphabar(u, s)
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete forward process q(x_t | x_0) = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I)."""

    betas: torch.Tensor  # float64 [T]
    kind: str = "custom"

    def __post_init__(self):
        b = self.betas
        if b.ndim != 1 or len(b) == 0 or not bool(((b > 0) & (b <= 1)).all()):
            raise ValueError("betas must be a non-empty 1-D tensor with values in (0, 1]")
        object.__setattr__(self, "betas", b.to(torch.float64))

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> torch.Tensor:
        return 1 - self.betas

    @property
    def alphabar(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, 0)

    @property
    def alphabar_prev(self) -> torch.Tensor:
        """alphabar_{t-1}, with alphabar_{-1} = 1 (x_{-1} is the clean image)."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphabar[:-1]])

    def fingerprint(self) -> dict:
        """Plain dict identifying the schedule; stored in every checkpoint and compared at load."""
        digest = hashlib.sha256(self.betas.numpy().tobytes()).hexdigest()[:16]
        return {"kind": self.kind, "T": self.T, "betas_sha256": digest}


def make_schedule(kind: str = "linear", T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                  cosine_s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Build a schedule by name; each kind reads only its own parameters."""
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"diffusion.T must be a positive integer, got {T!r}")
    if kind == "linear":
        return Schedule(linear_betas(T, beta_start, beta_end), kind)
    if kind == "cosine":
        return Schedule(cosine_betas(T, cosine_s, max_beta), kind)
    raise ValueError(f"unknown schedule kind {kind!r}; known: {', '.join(SCHEDULE_KINDS)}")


def schedule_fingerprint(**schedule_cfg) -> dict:
    """Fingerprint straight from config values (e.g. ``schedule_fingerprint(**cfg.diffusion)``)."""
    return make_schedule(**schedule_cfg).fingerprint()
