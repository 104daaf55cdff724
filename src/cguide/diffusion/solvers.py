"""The sampler registry: one class per sampling method, driven by the one loop in ``samplers.sample``.

A sampler holds what its method needs between steps (the sample x, a multistep history) in tensors that are
allocated once, and the values that change from step to step (original timesteps, coefficients, the noise
draw index) in buffers that ``load(i)`` refills before step i. ``step(fns)`` then advances x in place
reading only those tensors, so the eager loop and a captured CUDA graph (``cguide.runtime.cuda_graph``) run
the same code: steps of one ``kind`` replay one graph. A step may call the (guided) eps function several
times: ``fns`` holds one eps function per evaluation, at the original timesteps ``eval_steps(plan)[j]``.

Steps are numbered by the plan's index i = K-1 (noisiest) .. 0; step i goes from tau_i to tau_{i-1} (to x_0
at i = 0). Noise: x_T is draw 0 of each sample's seed, step i's noise is draw i + 1 (``seeded_normal``).

The ODE solvers (Euler, Heun, DPM-Solver++(2M), UniPC) integrate the probability-flow ODE on the plan's
timesteps in the EDM view (Karras et al. 2022): x~ = x / sqrt(alphabar) = x_0 + sigma eps with
sigma = sqrt((1 - alphabar) / alphabar), so dx~/dsigma = eps(x, t); their last step goes to sigma = 0 (x_0).
Each applies the spec's x0 correction (clip_x0, dynamic_threshold) to every model evaluation: x0_hat is
corrected and eps re-derived from it (``ClippedEps`` does the same in front of guidance under clip_then_guide).

Adding a sampler: subclass ``Sampler``, decorate it with ``@register_sampler``, give it a test."""

from __future__ import annotations

import math
from typing import Callable, ClassVar, Sequence

import torch

from .learned_variance import LEARNED, learned_log_var_range, split_eps
from .noise import seeded_normal
from .process import eps_from_x0, x0_from_eps
from .respace import Plan
from .steps import ddim_step, ddpm_step, predict_x0

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SAMPLERS: dict[str, type["Sampler"]] = {}


def register_sampler(cls: type["Sampler"]) -> type["Sampler"]:
    """Class decorator: SAMPLERS[cls.name] = cls."""
    if not cls.name or cls.name in SAMPLERS:
        raise ValueError(f"sampler name {cls.name!r} is empty or taken")
    SAMPLERS[cls.name] = cls
    return cls


def sampler_class(name: str, key: str = "sampler.name") -> type["Sampler"]:
    """The registered class of ``name``; an unknown name is one line listing the registered ones."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r} in {key}; registered: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def edm_sigmas(plan: Plan) -> list[float]:
    """sigma_j = sqrt((1 - ab) / ab) at the plan's steps, noisiest first, then 0 (x_0): K + 1 values (float64)."""
    ab = plan.alphabar.flip(0)
    return [*((1 - ab) / ab).sqrt().tolist(), 0.0]


class Sampler:
    """One sampling method. Class attributes: name (registry key), order (the fewest steps it needs; a
    2nd-order solver needs 2), takes (the SamplerSpec options it uses beyond the x0 correction: 'eta',
    'learned' = var_type learned), ode (deterministic probability-flow solver), reference (paper).

    spec: a SamplerSpec (x0 correction, eta, var_type); plan: the steps; x: x_T [B, ...], advanced in place;
    seeds: [B] int64 on x's device (the noise of step i is draw i + 1)."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 1
    takes: ClassVar[frozenset] = frozenset()
    ode: ClassVar[bool] = True
    reference: ClassVar[str] = ""

    def __init__(self, spec, plan: Plan, x: torch.Tensor, seeds: torch.Tensor):
        if plan.K < self.order:
            raise ValueError(f"sampler {self.name} is a solver of order {self.order} and needs at least "
                             f"{self.order} steps, the plan has {plan.K}; raise sampler.steps")
        self.spec, self.plan, self.x, self.seeds = spec, plan, x, seeds
        dev, B = x.device, x.shape[0]
        self.coef_shape = (B,) + (1,) * (x.ndim - 1)
        n = max(len(e) for e in self.eval_steps(plan))  # evaluations in the busiest step
        self.t = [torch.zeros(B, dtype=torch.long, device=dev) for _ in range(n)]  # original t of each evaluation
        self._scalars: dict[str, torch.Tensor] = {}
        self._sigmas = edm_sigmas(plan)
        self._evals = self.eval_steps(plan)

    # ---- what the loop and the cost count read
    @classmethod
    def eval_steps(cls, plan: Plan) -> list[list[int]]:
        """The original timesteps of the eps evaluations of each step, step K-1 first (default: one, at tau_i)."""
        return [[int(plan.timesteps[i])] for i in range(plan.K - 1, -1, -1)]

    def kind(self, i: int):
        """Steps of one kind run the same code (one captured graph); default: every step alike."""
        return None

    def state(self) -> list[torch.Tensor]:
        """The tensors a step changes (restored after a CUDA graph's warm-up)."""
        return [self.x]

    # ---- per step
    def load(self, i: int) -> None:
        """Refill step i's buffers (no computation on x)."""
        for buf, t in zip(self.t, self.eval_steps_at(i)):
            buf.fill_(t)

    def eval_steps_at(self, i: int) -> list[int]:
        """The original timesteps of step i's evaluations (one eps function each in ``step(fns)``)."""
        return self._evals[self.plan.K - 1 - i]

    def step(self, fns: Sequence[EpsFn]) -> None:
        raise NotImplementedError

    # ---- helpers
    def scalar(self, name: str) -> torch.Tensor:
        """A per-step coefficient buffer (shape [1, ..., 1], x's dtype), made on first use."""
        if name not in self._scalars:
            self._scalars[name] = torch.zeros((1,) * self.x.ndim, dtype=self.x.dtype, device=self.x.device)
        return self._scalars[name]

    def set(self, **values: float) -> None:
        for k, v in values.items():
            self.scalar(k).fill_(float(v))

    def buffer(self) -> torch.Tensor:
        """A state tensor like x (zeros: finite, so a zero coefficient times it is exactly 0)."""
        return torch.zeros_like(self.x)

    def denoise(self, fn: EpsFn, x: torch.Tensor, k: int, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0_hat) of evaluation k at x, ab = alphabar there; with the spec's x0 correction (clip_x0 or
        dynamic_threshold), x0_hat is corrected and eps re-derived from it."""
        eps, _ = split_eps(fn(x, self.t[k]), x, self.spec.var_type)
        if self.spec.clip_x0 or self.spec.dynamic_threshold is not None:
            x0 = predict_x0(x, eps, ab, self.spec.clip_x0, self.spec.dynamic_threshold)
            return eps_from_x0(x, x0, ab), x0
        return eps, x0_from_eps(x, eps, ab)

    def sigma(self, j: int) -> float:
        """EDM sigma at solver position j = 0 (noisiest) .. K (0: x_0)."""
        return self._sigmas[j]

    @staticmethod
    def alphabar_of(sigma: float) -> float:
        return 1.0 / (1.0 + sigma * sigma)


# ---------------------------------------------------------------- the ancestral and DDIM samplers


class _Discrete(Sampler):
    """DDPM / DDIM: the step's alphabar_t and alphabar_prev as [B, 1, ...] buffers (bit for bit the values
    of the loop before the registry), the noise draw index as a device tensor."""

    def __init__(self, spec, plan, x, seeds):
        super().__init__(spec, plan, x, seeds)
        dev, dt = x.device, x.dtype
        self.a_t, self.a_p = torch.ones(self.coef_shape, dtype=dt, device=dev), torch.ones(self.coef_shape, dtype=dt,
                                                                                          device=dev)
        self.draw = torch.zeros(1, dtype=torch.long, device=dev)

    def load(self, i: int) -> None:
        super().load(i)
        self.a_t.fill_(float(self.plan.alphabar[i]))
        self.a_p.fill_(float(self.plan.alphabar_prev[i]))
        self.draw.fill_(i + 1)

    def noise(self) -> torch.Tensor:
        return seeded_normal(self.seeds, self.draw, self.x.shape[1:], self.x.device, self.x.dtype)


@register_sampler
class DDPM(_Discrete):
    """Ancestral sampling (Ho et al. 2020) on the plan's steps: x_{t-1} ~ N(mu(x_t, x0_hat), var), var by
    var_type (``ddpm_step``); no noise on the last step (its variance is 0)."""

    name = "ddpm"
    takes = frozenset({"learned"})
    ode = False
    reference = "Ho et al. 2020, arXiv 2006.11239"

    def __init__(self, spec, plan, x, seeds):
        super().__init__(spec, plan, x, seeds)
        self.lv = learned_log_var_range(plan) if spec.var_type == LEARNED else None
        self.lv_buf = None if self.lv is None else tuple(torch.zeros(self.coef_shape, dtype=x.dtype, device=x.device)
                                                         for _ in self.lv)

    def load(self, i: int) -> None:
        super().load(i)
        for buf, b in zip(self.lv_buf or (), self.lv or ()):
            buf.fill_(float(b[i]))

    def step(self, fns):
        eps = fns[0](self.x, self.t[0])
        s = self.spec
        new, _ = ddpm_step(self.x, eps, self.a_t, self.a_p, self.noise(), s.var_type, s.clip_x0, s.dynamic_threshold,
                           self.lv_buf)
        self.x.copy_(new)


@register_sampler
class DDIM(_Discrete):
    """DDIM (Song et al. 2021, eq. 12) with noise eta (``ddim_step``); a learned variance's v is dropped. At
    eta = 0 it is Euler's method on the probability-flow ODE in sigma (the ``euler`` sampler, up to rounding)."""

    name = "ddim"
    takes = frozenset({"eta", "learned"})
    reference = "Song et al. 2021, arXiv 2010.02502"

    def step(self, fns):
        s = self.spec
        eps, _ = split_eps(fns[0](self.x, self.t[0]), self.x, s.var_type)
        noise = self.noise() if s.eta > 0 else None
        new, _ = ddim_step(self.x, eps, self.a_t, self.a_p, noise, s.eta, s.clip_x0, s.dynamic_threshold)
        self.x.copy_(new)


# ---------------------------------------------------------------- probability-flow ODE solvers


class _ODE(Sampler):
    """Coefficients of the step from solver position j (sigma_j) to j + 1, in x = sqrt(ab) x~:
    x_{j+1} = A x_j + B d for the EDM step x~_{j+1} = x~_j + (sigma_{j+1} - sigma_j) d, so
    A = sqrt(ab_{j+1} / ab_j), B = sqrt(ab_{j+1}) (sigma_{j+1} - sigma_j)."""

    def j(self, i: int) -> int:
        return self.plan.K - 1 - i

    def euler_coefs(self, j: int) -> tuple[float, float]:
        s, s_next = self.sigma(j), self.sigma(j + 1)
        ab, ab_next = self.alphabar_of(s), self.alphabar_of(s_next)
        return math.sqrt(ab_next / ab), math.sqrt(ab_next) * (s_next - s)

    def load(self, i: int) -> None:
        super().load(i)
        j = self.j(i)
        A, B = self.euler_coefs(j)
        self.set(ab=self.plan.alphabar[i], A=A, B=B)


@register_sampler
class Euler(_ODE):
    """Euler's method on dx~/dsigma = eps (Karras et al. 2022, Alg. 1 without its 2nd-order correction), one
    evaluation per step: x~_{j+1} = x~_j + (sigma_{j+1} - sigma_j) eps(x_j). Mathematically DDIM at eta = 0."""

    name = "euler"
    reference = "Karras et al. 2022 (EDM), arXiv 2206.00364, Alg. 1"

    def step(self, fns):
        d, _ = self.denoise(fns[0], self.x, 0, self.scalar("ab"))
        self.x.copy_(self.scalar("A") * self.x + self.scalar("B") * d)


@register_sampler
class Heun(_ODE):
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1, no churn): d = eps(x_j, t_j), the Euler point
    x' = A x_j + B d, d' = eps(x', t_{j+1}), x_{j+1} = A x_j + B (d + d') / 2; the last step (to sigma = 0)
    is an Euler step. 2K - 1 evaluations, the guidance applied at each."""

    name = "heun"
    order = 2
    reference = "Karras et al. 2022 (EDM), arXiv 2206.00364, Alg. 1"

    @classmethod
    def eval_steps(cls, plan):
        ts = plan.timesteps.tolist()
        return [[ts[i], ts[i - 1]] if i > 0 else [ts[0]] for i in range(plan.K - 1, -1, -1)]

    def kind(self, i):
        return "euler" if i == 0 else "heun"

    def load(self, i):
        super().load(i)
        if i > 0:
            self.set(ab_next=self.plan.alphabar[i - 1])

    def step(self, fns):
        A, B = self.scalar("A"), self.scalar("B")
        d, _ = self.denoise(fns[0], self.x, 0, self.scalar("ab"))
        if len(fns) == 1:  # the last step
            self.x.copy_(A * self.x + B * d)
            return
        x_next = A * self.x + B * d
        d2, _ = self.denoise(fns[1], x_next, 1, self.scalar("ab_next"))
        self.x.copy_(A * self.x + B * ((d + d2) / 2))


class _DataPrediction(_ODE):
    """Multistep solvers in data prediction x0_hat (Lu et al. 2022): lambda = log(alpha / sigma_vp) = -log sigma
    (EDM sigma), h_j = lambda_{j+1} - lambda_j, and the exact linear part of a step from j to j + 1 is
    x_{j+1} = (sigma_vp_{j+1} / sigma_vp_j) x_j + alpha_{j+1} (1 - e^{-h}) x0_hat, e^{-h} = sigma_{j+1} / sigma_j.
    Previous model outputs are kept in state tensors; a step reads its coefficients from buffers."""

    def lam(self, j: int) -> float:
        return -math.log(self.sigma(j))

    def first_order(self, j: int) -> tuple[float, float]:
        """(A, B) of x_{j+1} = A x_j + B m_j (DPM-Solver++ 1 = DDIM in data prediction); to sigma = 0: (0, 1)."""
        s, s_next = self.sigma(j), self.sigma(j + 1)
        ab, ab_next = self.alphabar_of(s), self.alphabar_of(s_next)
        return math.sqrt((1 - ab_next) / (1 - ab)), math.sqrt(ab_next) * (1 - s_next / s)


@register_sampler
class DPMSolverPP2M(_DataPrediction):
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2), data prediction m_j = x0_hat(x_j) (the spec's
    clip or dynamic threshold is its x0 correction): with r = h_{j-1} / h_j,
    x_{j+1} = A x_j + B ((1 + 1/(2r)) m_j - 1/(2r) m_{j-1}), (A, B) the first-order coefficients; the first step
    and the last (to sigma = 0, where it returns m_j) are first order, as diffusers' DPMSolverMultistepScheduler
    (solver_order=2, final_sigmas_type='zero'). One evaluation per step."""

    name = "dpmpp_2m"
    order = 2
    reference = "Lu et al. 2022 (DPM-Solver++), arXiv 2211.01095, Alg. 2"

    def __init__(self, spec, plan, x, seeds):
        super().__init__(spec, plan, x, seeds)
        self.m_prev = self.buffer()

    def state(self):
        return [self.x, self.m_prev]

    def load(self, i):
        super().load(i)
        j, K = self.j(i), self.plan.K
        A, B = self.first_order(j)
        C = 0.0
        if 0 < j < K - 1:
            r = (self.lam(j) - self.lam(j - 1)) / (self.lam(j + 1) - self.lam(j))
            B, C = B * (1 + 1 / (2 * r)), -B / (2 * r)
        self.set(A=A, B=B, C=C)

    def step(self, fns):
        _, m = self.denoise(fns[0], self.x, 0, self.scalar("ab"))
        self.x.copy_(self.scalar("A") * self.x + self.scalar("B") * m + self.scalar("C") * self.m_prev)
        self.m_prev.copy_(m)


@register_sampler
class UniPC(_DataPrediction):
    """UniPC with B(h) = e^{h} - 1 ('bh2'), order 2, data prediction (Zhao et al. 2023, arXiv 2302.04867), as
    diffusers' UniPCMultistepScheduler(solver_order=2, solver_type='bh2', lower_order_final=True): at step j the
    model output m_j at the predicted x_j first corrects x_j (UniC, from x_{j-1}, m_{j-1}, m_j and, after a
    2nd-order prediction, m_{j-2}; not at j = 0), then UniP predicts x_{j+1} from the corrected x_j (order 1
    at the first and the last step, else 2 = DPM-Solver++(2M)'s update). The corrector reuses m_j, so one
    evaluation per step; no correction after the last step. Each update is a fixed linear combination of
    x_j, x_{j-1}, m_j, m_{j-1}, m_{j-2} with per-step coefficients."""

    name = "unipc"
    order = 2
    reference = "Zhao et al. 2023 (UniPC), arXiv 2302.04867"

    def __init__(self, spec, plan, x, seeds):
        super().__init__(spec, plan, x, seeds)
        self.x_last, self.m1, self.m2 = self.buffer(), self.buffer(), self.buffer()

    def state(self):
        return [self.x, self.x_last, self.m1, self.m2]

    def predictor_order(self, j: int) -> int:
        return 1 if j == 0 or j == self.plan.K - 1 else 2

    def corrector(self, j: int) -> tuple[float, float, float, float, float]:
        """(w, a, c0, c1, c2): x_j^c = w x_j + a x_{j-1} + c0 m_j + c1 m_{j-1} + c2 m_{j-2}."""
        if j == 0:
            return 1.0, 0.0, 0.0, 0.0, 0.0
        p = self.predictor_order(j - 1)
        a, _ = self.first_order(j - 1)
        alpha = math.sqrt(self.alphabar_of(self.sigma(j)))
        hh = -(self.lam(j) - self.lam(j - 1))
        phi1 = math.expm1(hh)  # h phi_1 = B(h) for bh2
        if p == 1:
            rho = [0.5]
            rk = None
        else:
            rk = (self.lam(j - 2) - self.lam(j - 1)) / -hh
            hk = phi1 / hh - 1
            b1 = hk / phi1
            hk = hk / hh - 0.5
            b2 = hk * 2 / phi1
            det = 1 - rk  # R = [[1, 1], [rk, 1]]
            rho = [(b1 - b2) / det, (b2 - rk * b1) / det]
        c0 = -alpha * phi1 * rho[-1]  # the D1_t = m_j - m_{j-1} term
        c1 = -alpha * phi1 + alpha * phi1 * rho[-1]
        c2 = 0.0
        if p == 2:  # rho_0 (m_{j-2} - m_{j-1}) / rk
            c2 = -alpha * phi1 * rho[0] / rk
            c1 += alpha * phi1 * rho[0] / rk
        return 0.0, a, c0, c1, c2

    def predictor(self, j: int) -> tuple[float, float, float]:
        """(A, B, C): x_{j+1} = A x_j^c + B m_j + C m_{j-1}."""
        A, B = self.first_order(j)
        if self.predictor_order(j) == 1:
            return A, B, 0.0
        # bh2, rho_p = 1/2: x = A x - alpha phi1 (m_j + (m_{j-1} - m_j) / (2 rk)), rk = (lam_{j-1} - lam_j) / h
        rk = (self.lam(j - 1) - self.lam(j)) / (self.lam(j + 1) - self.lam(j))
        return A, B * (1 - 1 / (2 * rk)), B / (2 * rk)

    def load(self, i):
        super().load(i)
        j = self.j(i)
        w, a, c0, c1, c2 = self.corrector(j)
        A, B, C = self.predictor(j)
        self.set(w=w, a=a, c0=c0, c1=c1, c2=c2, A=A, B=B, C=C)

    def step(self, fns):
        _, m = self.denoise(fns[0], self.x, 0, self.scalar("ab"))
        g = self.scalar
        xc = g("w") * self.x + g("a") * self.x_last + g("c0") * m + g("c1") * self.m1 + g("c2") * self.m2
        self.x_last.copy_(xc)
        self.x.copy_(g("A") * xc + g("B") * m + g("C") * self.m1)
        self.m2.copy_(self.m1)
        self.m1.copy_(m)
