"""Forward process and posterior against direct Gaussian computations."""

import torch

from cguide.diffusion import make_schedule, posterior, q_sample, x0_from_eps, eps_from_x0


def test_q_sample_moments():
    s = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7, dtype=torch.float64)
    t = torch.full((200_000,), 300)
    xt = q_sample(s, x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    ab = s.alphabar[300]
    assert abs(xt.mean() - ab.sqrt() * 0.7) < 4 * (1 / 200_000) ** 0.5
    assert abs(xt.var() - (1 - ab)) < 0.01


def test_eps_x0_roundtrip():
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    ab = torch.tensor([[0.9], [0.5], [0.1], [0.01]], dtype=torch.float64)
    torch.testing.assert_close(eps_from_x0(x, x0_from_eps(x, eps, ab), ab), eps)


def test_posterior_equals_bayes_product_of_gaussians():
    """q(x_{t-1}|x_t,x_0) ∝ N(x_{t-1}; sqrt(ab_prev) x0, 1-ab_prev) · N(x_t; sqrt(alpha_t) x_{t-1}, beta_t)."""
    s = make_schedule("cosine", 100)
    x0 = torch.tensor([[0.3], [-0.8]], dtype=torch.float64)
    xt = torch.tensor([[1.1], [0.2]], dtype=torch.float64)
    for t in [1, 40, 99]:
        ab, abp, beta = s.alphabar[t], s.alphabar_prev[t], s.betas[t]
        prec = 1 / (1 - abp) + (1 - beta) / beta
        var = 1 / prec
        mean = var * (abp.sqrt() * x0 / (1 - abp) + (1 - beta).sqrt() * xt / beta)
        m, v = posterior(x0, xt, ab.reshape(1, 1), abp.reshape(1, 1))
        torch.testing.assert_close(m, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(v.squeeze(), var, rtol=1e-10, atol=1e-12)
