"""Learned variances (improved DDPM's learned range): the DDPM step against a hand computation on a respaced plan,
mean_shift with the learned Sigma against Alg. 1's mean form, how [eps, v] travels through the wrappers, the
CUDA-graph step body, and the errors of an eps function of the wrong kind."""

from __future__ import annotations

import pytest
import torch

from cguide.diffusion import (SamplerSpec, ddim_step, ddpm_step, learned_log_var_range, make_plan, make_schedule,
                              posterior, sample, x0_from_eps)
from cguide.guidance import ClassifierGuidance, GuidanceSpec, MethodEps, classifier_log_prob_grad, variant_factor
from cguide.guidance.variants import mean_shift_of_variance
from helpers.nets import TinyClassifier, eps_model

SHAPE = (2, 2, 2)  # C = 2: [eps, v] has 4 channels
PLAN = make_plan(make_schedule("linear", 1000), 10)


def _rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _hand(i: int) -> tuple[float, float, float, float]:
    """(alphabar_t, alphabar_prev, beta_t, posterior variance) of kept step i, from the schedule's betas alone."""
    betas = PLAN.schedule.betas.tolist()
    ab = [1.0]
    for b in betas:
        ab.append(ab[-1] * (1 - b))  # ab[t + 1] = alphabar_t
    ts = PLAN.timesteps.tolist()
    a_t, a_p = ab[ts[i] + 1], (ab[ts[i - 1] + 1] if i > 0 else 1.0)
    beta = 1 - a_t / a_p
    return a_t, a_p, beta, beta * (1 - a_p) / (1 - a_t)


def _learned_eps(v_value):
    """eps function of a learn_sigma net: [eps_model, v] with v a constant or a fixed per-pixel tensor."""
    def fn(x, t):
        v = torch.full_like(x, v_value) if isinstance(v_value, float) else v_value.expand_as(x)
        return torch.cat([eps_model(x, t), v], 1)
    return fn


@pytest.mark.parametrize("i", [9, 4, 1])
@pytest.mark.parametrize("v,which", [(-1.0, "posterior"), (1.0, "beta"), (0.0, "geometric mean")])
def test_learned_step_interpolates_between_the_posterior_variance_and_beta(i, v, which):
    a_t, a_p, beta, post = _hand(i)
    var = {"posterior": post, "beta": beta, "geometric mean": (post * beta) ** 0.5}[which]
    x, eps, z = _rand(3, *SHAPE, seed=1), _rand(3, *SHAPE, seed=2), _rand(3, *SHAPE, seed=3)
    coef = lambda c: torch.full((3, 1, 1, 1), c, dtype=torch.float64)  # noqa: E731
    lo, hi = learned_log_var_range(PLAN)
    got, _ = ddpm_step(x, torch.cat([eps, torch.full_like(eps, v)], 1), coef(a_t), coef(a_p), z, "learned",
                       log_var_range=(coef(float(lo[i])), coef(float(hi[i]))))
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    mean = (a_p ** 0.5 * beta * x0 + (a_t / a_p) ** 0.5 * (1 - a_p) * x) / (1 - a_t)
    torch.testing.assert_close(got, mean + var ** 0.5 * z, rtol=1e-12, atol=1e-12)


def test_log_variance_range_clips_the_last_step_as_guided_diffusion():
    """beta~ is 0 at the last kept step: its log takes step 1's value; max_log is log beta_t of the respaced steps."""
    lo, hi = learned_log_var_range(PLAN)
    for i in range(PLAN.K):
        a_t, a_p, beta, post = _hand(i)
        assert hi[i].item() == pytest.approx(torch.log(torch.tensor(beta, dtype=torch.float64)).item(), rel=1e-12)
        want = _hand(1)[3] if i == 0 else post
        assert lo[i].item() == pytest.approx(torch.log(torch.tensor(want, dtype=torch.float64)).item(), rel=1e-12)
    lo1, hi1 = learned_log_var_range(make_plan(make_schedule("linear", 1000), 1))  # no step 1 to borrow from
    assert torch.equal(lo1, hi1) and torch.isfinite(lo1).all()


def test_last_step_adds_no_noise_and_ddim_ignores_v():
    x, eps, z = _rand(2, *SHAPE, seed=1), _rand(2, *SHAPE, seed=2), _rand(2, *SHAPE, seed=3)
    a_t, a_p = torch.full((2, 1, 1, 1), float(PLAN.alphabar[0]), dtype=torch.float64), torch.ones(2, 1, 1, 1,
                                                                                                  dtype=torch.float64)
    lv = tuple(torch.full((2, 1, 1, 1), float(b[0]), dtype=torch.float64) for b in learned_log_var_range(PLAN))
    got, x0 = ddpm_step(x, torch.cat([eps, _rand(2, *SHAPE, seed=4)], 1), a_t, a_p, z, "learned", log_var_range=lv)
    assert torch.equal(x0, x0_from_eps(x, eps, a_t))
    torch.testing.assert_close(got, x0, rtol=1e-12, atol=1e-12)  # the posterior mean at ab_prev = 1, no noise
    ddim = SamplerSpec("ddim", var_type="learned").make(PLAN, x.clone(), torch.tensor([0, 1]))  # its last step
    ddim.load(0)
    ddim.step([lambda x, t: torch.cat([eps, _rand(2, *SHAPE, seed=5)], 1)])
    assert torch.equal(ddim.x, ddim_step(x, eps, a_t, a_p, z)[0])


@pytest.mark.parametrize("i", [9, 3, 0])
def test_mean_shift_uses_the_learned_variance_as_alg1(i):
    """Through the guidance wrapper: mu(x0_hat(eps_hat)) = mu(x0_hat(eps)) + s Sigma_learned g per pixel
    (row 0, mean_shift; also at the last step, where Sigma is the clipped one), score unchanged (row 1), v
    passed through."""
    v = _rand(1, *SHAPE, seed=7).clamp(-1.5, 1.5)  # per pixel, also beyond [-1, 1] as a net may give
    clf, y, s = TinyClassifier(dim=8), torch.tensor([0, 2]), 3.0
    guide = ClassifierGuidance(_learned_eps(v), clf, PLAN, GuidanceSpec.of(y, s, ["mean_shift", "score"]))
    x = _rand(2, *SHAPE, seed=8)
    t = torch.full((2,), int(PLAN.timesteps[i]))
    out = guide(x, t)
    eps_hat, v_out = out.split(2, 1)
    assert torch.equal(v_out, v.expand_as(x))
    a_t, a_p, beta, post = _hand(i)
    ab, ab_prev = (torch.full((2, 1, 1, 1), c, dtype=torch.float64) for c in (a_t, a_p))
    g, _ = classifier_log_prob_grad(clf, x, t, y)
    lo = torch.log(torch.tensor(_hand(1)[3] if i == 0 else post, dtype=torch.float64))
    frac = (v + 1) / 2
    sigma = torch.exp(frac * torch.log(torch.tensor(beta, dtype=torch.float64)) + (1 - frac) * lo)
    mu, _ = posterior(x0_from_eps(x, eps_model(x, t), ab), x, ab, ab_prev)
    mu_hat, _ = posterior(x0_from_eps(x, eps_hat, ab), x, ab, ab_prev)
    torch.testing.assert_close(mu_hat[0], mu[0] + s * sigma[0] * g[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(eps_hat[1], eps_model(x, t)[1] - s * (1 - a_t) ** 0.5 * g[1], rtol=1e-12, atol=1e-12)


def test_mean_shift_of_variance_gives_the_fixed_variants():
    ab, ab_prev = PLAN.alphabar, PLAN.alphabar_prev
    beta = 1 - ab / ab_prev
    post = beta * (1 - ab_prev) / (1 - ab)
    torch.testing.assert_close(mean_shift_of_variance(post, ab, ab_prev), variant_factor("mean_shift", ab, ab_prev),
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(mean_shift_of_variance(beta, ab, ab_prev),
                               variant_factor("mean_shift_large", ab, ab_prev), rtol=1e-12, atol=0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clip_then_guide_keeps_v_and_static_step_matches_eager(sampler):
    from cguide.runtime.cuda_graph import sample_static
    v = _rand(1, *SHAPE, seed=9).clamp(-1, 1)
    smp = SamplerSpec(sampler, 10, var_type="learned", clip_x0=True)
    base = smp.base_eps(lambda x, t: torch.cat([3 * eps_model(x, t) - 2 * x, v.expand_as(x)], 1), PLAN.schedule)
    assert torch.equal(base(_rand(1, *SHAPE), torch.tensor([500]))[:, 2:], v)
    clf = TinyClassifier(dim=8)
    spec = GuidanceSpec.of([0, 1, 2], [0.0, 2.0, 6.0], ["mean_shift", "mean_shift", "score"])
    seeds = [1, 2, 3]
    ref = sample(ClassifierGuidance(base, clf, PLAN, spec), SHAPE, PLAN, seeds, progress=False,
                 dtype=torch.float64, **smp.options)
    got = sample_static(base, ClassifierGuidance(base, clf, PLAN, spec, static=True), SHAPE, PLAN, seeds,
                        capture=False, dtype=torch.float64, **smp.options)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    assert torch.equal(ref[0], sample(base, SHAPE, PLAN, seeds, progress=False, dtype=torch.float64,
                                      **smp.options)[0])  # s = 0: unguided, bit for bit


def test_the_learned_variance_changes_ddpm_samples():
    a, b = (sample(_learned_eps(v), SHAPE, PLAN, [1, 2], SamplerSpec("ddpm", var_type="learned"), progress=False,
                   dtype=torch.float64) for v in (-1.0, 1.0))
    small = sample(eps_model, SHAPE, PLAN, [1, 2], SamplerSpec("ddpm"), progress=False,
                   dtype=torch.float64)
    large = sample(eps_model, SHAPE, PLAN, [1, 2], SamplerSpec("ddpm", var_type="fixed_large"), progress=False,
                   dtype=torch.float64)
    # v = -1 is fixed_small except at the last step's (noise-free) variance; v = +1 is fixed_large
    torch.testing.assert_close(a, small, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b, large, rtol=1e-10, atol=1e-10)


def test_method_eps_acts_on_eps_and_takes_the_conditional_v():
    x, t = _rand(2, *SHAPE, seed=1), torch.tensor([300, 300])
    e_c, e_u, v_c, v_u = (_rand(2, *SHAPE, seed=k) for k in range(4))

    def cond(x, t, y):  # the null label (index 3) gives the unconditional half
        null = (y == 3).view(-1, 1, 1, 1)
        return torch.cat([torch.where(null, e_u.repeat(2, 1, 1, 1), e_c.repeat(2, 1, 1, 1)),
                          torch.where(null, v_u.repeat(2, 1, 1, 1), v_c.repeat(2, 1, 1, 1))], 1)[: len(x)]

    out = MethodEps(None, cond, GuidanceSpec.of([0, 1], 3.0, method="cfg"), null=3)(x, t)
    torch.testing.assert_close(out[:, :2], e_u + 3.0 * (e_c - e_u), rtol=1e-12, atol=1e-12)
    assert torch.equal(out[:, 2:], v_c)


@pytest.mark.parametrize("var_type,channels,match", [
    ("learned", 2, "sampler.var_type=learned needs an eps function returning \\[eps, v\\] \\(4 channels"),
    ("fixed_small", 4, "returns \\[eps, v\\] \\(4 channels, a learn_sigma network\\) but sampler.var_type=fixed_small; "
                       "set sampler.var_type=learned"),
    ("learned", 3, "the eps function returns 3 channels for a 2-channel x_t; it must return 2 \\(eps\\) or 4"),
])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_an_eps_function_of_the_wrong_kind_is_one_clear_error(var_type, channels, match, sampler):
    fn = lambda x, t: torch.cat([x] * 2, 1)[:, :channels]  # noqa: E731
    with pytest.raises(ValueError, match=match):
        sample(fn, SHAPE, PLAN, [1], SamplerSpec(sampler, var_type=var_type), progress=False)


def test_unknown_var_type_lists_learned():
    with pytest.raises(ValueError, match="unknown sampler.var_type 'learnt'; known: fixed_small, fixed_large, learned"):
        SamplerSpec("ddpm", 10, var_type="learnt")
