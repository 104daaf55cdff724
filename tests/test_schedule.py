"""Schedules and respacing against closed forms and an independent reference (diffusers)."""

import math

import numpy as np
import pytest
import torch

from cguide.diffusion import make_plan, make_schedule, schedule_fingerprint


@pytest.mark.parametrize("T", [10, 1000])
def test_linear_alphabar_closed_form(T):
    s = make_schedule("linear", T)
    betas = np.linspace(1e-4, 0.02, T)
    np.testing.assert_allclose(s.alphabar.numpy(), np.exp(np.cumsum(np.log1p(-betas))), rtol=1e-12)
    assert s.alphabar_prev[0] == 1 and torch.equal(s.alphabar_prev[1:], s.alphabar[:-1])


@pytest.mark.parametrize("T", [50, 1000])
def test_cosine_alphabar_closed_form(T):
    s = make_schedule("cosine", T)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    expected = np.array([f((t + 1) / T) / f(0) for t in range(T)])
    unclipped = s.betas.numpy() < 0.999
    np.testing.assert_allclose(s.alphabar.numpy()[unclipped], expected[unclipped], rtol=1e-10)
    assert s.betas.max() <= 0.999


@pytest.mark.parametrize("kind,name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_betas_match_diffusers(kind, name):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name)
    ours = make_schedule(kind, 1000)
    np.testing.assert_allclose(ours.alphabar.numpy(), ref.alphas_cumprod.double().numpy(), rtol=1e-5, atol=1e-7)


def test_fingerprint_identifies_schedule():
    a = schedule_fingerprint(kind="linear", T=1000)
    assert a == schedule_fingerprint(kind="linear", T=1000, beta_start=1e-4)
    assert a != schedule_fingerprint(kind="linear", T=999)
    assert a != schedule_fingerprint(kind="cosine", T=1000)
    assert a != schedule_fingerprint(kind="linear", T=1000, beta_end=0.03)
    assert set(a) == {"kind", "T", "betas_sha256"}


@pytest.mark.parametrize("spacing", ["uniform", "leading"])
@pytest.mark.parametrize("K", [1, 7, 50, 1000])
def test_respacing_keeps_alphabar(spacing, K):
    s = make_schedule("cosine", 1000)
    p = make_plan(s, K, spacing)
    assert p.K == K
    torch.testing.assert_close(p.alphabar, s.alphabar[p.timesteps])
    # the respaced betas rebuild exactly those alphabars
    torch.testing.assert_close(torch.cumprod(1 - p.betas, 0), p.alphabar, rtol=1e-12, atol=1e-15)
    if spacing == "uniform":
        assert p.timesteps[-1] == 999 and (K == 1 or p.timesteps[0] == 0)


def test_bad_schedule_inputs():
    with pytest.raises(ValueError, match="unknown schedule kind 'cosin'; known: linear, cosine"):
        make_schedule("cosin", 10)
    with pytest.raises(ValueError, match="sampling steps must be in"):
        make_plan(make_schedule("linear", 10), 11)
