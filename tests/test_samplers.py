"""DDPM/DDIM steps against diffusers' schedulers, determinism and per-seed batch independence."""

import pytest
import torch

from cguide.diffusion import SamplerSpec, ddim_step, ddpm_step, make_plan, make_schedule, sample


def _coef(v, n):
    return torch.full((n, 1, 1, 1), float(v))


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_ddpm_step_matches_diffusers(var_type):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type=var_type, clip_sample=False)
    plan = make_plan(make_schedule("linear", 1000), 20)
    ref.set_timesteps(timesteps=plan.timesteps.flip(0).tolist())
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    for i in [19, 10, 1, 0]:
        t = int(plan.timesteps[i])
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        expected = ref.step(eps, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        got, _ = ddpm_step(x, eps, _coef(plan.alphabar[i], 3), _coef(plan.alphabar_prev[i], 3), z, var_type)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers(eta):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)
    ref.set_timesteps(25)
    plan = make_plan(make_schedule("linear", 1000), 25, spacing="leading")
    assert plan.timesteps.flip(0).tolist() == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
    for i in [24, 12, 0]:
        t = int(plan.timesteps[i])
        expected = ref.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        got, _ = ddim_step(x, eps, _coef(plan.alphabar[i], 2), _coef(plan.alphabar_prev[i], 2), z, eta)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_ddim_eta0_ignores_noise_and_is_deterministic():
    plan = make_plan(make_schedule("cosine", 100), 10)
    x = torch.randn(2, 1, 4, 4)
    eps = torch.randn(2, 1, 4, 4)
    a, b = _coef(plan.alphabar[5], 2), _coef(plan.alphabar_prev[5], 2)
    assert torch.equal(ddim_step(x, eps, a, b, torch.randn_like(x), 0.0)[0], ddim_step(x, eps, a, b, torch.randn_like(x), 0.0)[0])
    fn = lambda x, t: 0.1 * x
    s1 = sample(fn, (1, 4, 4), plan, [3, 4], sampler="ddim", progress=False)
    s2 = sample(fn, (1, 4, 4), plan, [3, 4], sampler="ddim", progress=False)
    assert torch.equal(s1, s2)


def test_clip_bounds_predicted_x0():
    x, eps = torch.full((1, 1, 2, 2), 5.0), torch.zeros(1, 1, 2, 2)
    _, x0 = ddpm_step(x, eps, _coef(0.5, 1), _coef(0.6, 1), torch.zeros_like(x), clip_x0=True)
    assert x0.max() == 1.0
    _, x0 = ddim_step(x, eps, _coef(0.5, 1), _coef(0.6, 1), clip_x0=True)
    assert x0.max() == 1.0


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_sample_depends_only_on_own_seed(sampler, eta):
    plan = make_plan(make_schedule("linear", 200), 15)
    fn = lambda x, t: 0.5 * x + 0.001 * t.view(-1, 1, 1, 1)
    smp = SamplerSpec(sampler, eta=eta)
    batch = sample(fn, (1, 3, 3), plan, [11, 22, 33], smp, progress=False)
    alone = sample(fn, (1, 3, 3), plan, [22], smp, progress=False)
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


def test_sampler_hands_eps_fn_original_timesteps():
    plan = make_plan(make_schedule("linear", 1000), 10)
    seen = []
    sample(lambda x, t: seen.append(t.clone()) or torch.zeros_like(x), (1, 2, 2), plan, [0, 1], progress=False)
    assert [int(t[0]) for t in seen] == plan.timesteps.flip(0).tolist()
    assert all(t.dtype == torch.long and len(t) == 2 for t in seen)
