"""sampler.clip_order: guided-diffusion's clip_then_guide (guide from the clipped x0_hat) against
guide_then_clip (clip the guided x0_hat), written out as guided-diffusion's p_sample / ddim_sample do it."""

from __future__ import annotations

import pytest
import torch

from cguide.diffusion import (SamplerSpec, ddim_step, ddpm_step, make_plan, make_schedule, posterior, sample,
                              x0_from_eps)
from cguide.diffusion.process import eps_from_x0
from cguide.guidance import ClassifierGuidance, GuidanceSpec, classifier_log_prob_grad, variant_factor
from cguide.runtime.draw import Models, RunOptions, draw
from helpers.nets import TinyClassifier, eps_model

SHAPE = (1, 2, 2)


def _loud_eps(x, t):
    """eps whose x0_hat leaves [-1, 1] at every step, so clipping always acts."""
    return 3.0 * eps_model(x, t) - 2.0 * x


def _setup(dtype=torch.float64):
    plan = make_plan(make_schedule("linear", 1000), 10)
    clf = TinyClassifier(dim=4, dtype=dtype)
    return plan, clf


def _reference_step(x, t, i, plan, clf, y, s, variant, sampler, z):
    """One step as guided-diffusion writes it: p_mean_variance clips pred_xstart, then condition_score
    re-derives eps from it and subtracts sqrt(1 - ab) s g (DDIM), or condition_mean adds s * var * g to
    the clipped posterior mean (DDPM); the guided prediction is not clipped again."""
    ab = plan.schedule.alphabar[t].view(-1, 1, 1, 1).to(x.dtype)
    ab_prev = torch.full_like(ab, float(plan.alphabar_prev[i]))
    x0c = x0_from_eps(x, _loud_eps(x, t), ab).clamp(-1, 1)
    g, _ = classifier_log_prob_grad(clf, x, t, y)
    if sampler == "ddim":
        eps = eps_from_x0(x, x0c, ab) - (1 - ab).sqrt() * s * g
        return ab_prev.sqrt() * x0_from_eps(x, eps, ab) + (1 - ab_prev).sqrt() * eps
    mean, var = posterior(x0c, x, ab, ab_prev)
    return mean + s * var * g + (0.0 if i == 0 else 1.0) * var.sqrt() * z


@pytest.mark.parametrize("sampler,variant", [("ddim", "score"), ("ddpm", "mean_shift")])
def test_clip_then_guide_is_guided_diffusions_step(sampler, variant):
    plan, clf = _setup()
    y, s = torch.tensor([0, 2]), 4.0
    spec = SamplerSpec(sampler, 10, clip_x0=True, clip_order="clip_then_guide")
    base = spec.base_eps(_loud_eps, plan.schedule)
    guide = ClassifierGuidance(base, clf, plan, GuidanceSpec.of(y, s, variant))
    x = torch.randn(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = torch.randn_like(x)
    for i in [9, 5, 0]:
        t = torch.full((2,), int(plan.timesteps[i]))

        ab = plan.schedule.alphabar[t].view(-1, 1, 1, 1).to(x.dtype)
        ab_prev = torch.full_like(ab, float(plan.alphabar_prev[i]))
        st = spec.options["sampler"]  # what the sampler steps with: the clip moved into the base eps
        assert not st.clip_x0 and st.dynamic_threshold is None
        if sampler == "ddim":
            got, _ = ddim_step(x, guide(x, t), ab, ab_prev, z, st.eta, st.clip_x0, st.dynamic_threshold)
        else:
            got, _ = ddpm_step(x, guide(x, t), ab, ab_prev, z, st.var_type, st.clip_x0, st.dynamic_threshold)
        want = _reference_step(x, t, i, plan, clf, y, s, variant, sampler, z)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_mean_shift_factor_is_the_posterior_variance_in_eps_form():
    """Why condition_mean is exact in eps form: mu(x0_hat(eps - c s g)) = mu(x0_hat(eps)) + s var g."""
    plan, _ = _setup()
    t = torch.tensor([int(plan.timesteps[6])])
    ab, ab_prev = plan.schedule.alphabar[t].view(-1, 1, 1, 1), torch.tensor(float(plan.alphabar_prev[6]), dtype=torch.float64)
    x, eps, g = (torch.randn(1, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
                 for k in range(3))
    c = variant_factor("mean_shift", ab.flatten(), ab_prev.view(1)).view(-1, 1, 1, 1)
    mu, var = posterior(x0_from_eps(x, eps, ab), x, ab, ab_prev)
    mu_g, _ = posterior(x0_from_eps(x, eps - c * 2.0 * g, ab), x, ab, ab_prev)
    torch.testing.assert_close(mu_g, mu + 2.0 * var * g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_guide_then_clip_is_the_previous_behaviour_bit_for_bit(sampler):
    plan, clf = _setup(torch.float32)
    spec = GuidanceSpec.of([0, 1], 3.0)
    guide = ClassifierGuidance(_loud_eps, clf, plan, spec)
    old = sample(guide, SHAPE, plan, [1, 2], SamplerSpec(sampler, clip_x0=True), progress=False)
    smp = SamplerSpec(sampler, 10, clip_x0=True, clip_order="guide_then_clip")
    guide = ClassifierGuidance(smp.base_eps(_loud_eps, plan.schedule), clf, plan, spec)
    assert torch.equal(sample(guide, SHAPE, plan, [1, 2], progress=False, **smp.options), old)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_the_orders_agree_unguided_and_differ_at_strong_guidance(sampler):
    plan, clf = _setup(torch.float32)
    out = {}
    for order in ["clip_then_guide", "guide_then_clip"]:
        smp = SamplerSpec(sampler, 10, clip_x0=True, clip_order=order)
        base = smp.base_eps(_loud_eps, plan.schedule)
        for s in [0.0, 8.0]:
            guide = ClassifierGuidance(base, clf, plan, GuidanceSpec.of([0, 1], s))
            out[order, s] = sample(guide, SHAPE, plan, [1, 2], progress=False, **smp.options)
        # s = 0 takes exactly the unguided path of its own order
        assert torch.equal(out[order, 0.0], sample(base, SHAPE, plan, [1, 2], progress=False, **smp.options))
    torch.testing.assert_close(out["clip_then_guide", 0.0], out["guide_then_clip", 0.0], rtol=1e-5, atol=1e-5)
    assert (out["clip_then_guide", 8.0] - out["guide_then_clip", 8.0]).abs().max() > 1e-2


def test_draw_at_scale_zero_is_bitwise_an_unguided_draw_by_default(tiny_ckpts):
    from cguide.io.checkpoints import load_net
    eps = load_net(tiny_ckpts["eps_model"], "eps_model")
    clf = load_net(tiny_ckpts["noisy_classifier"], "noisy_classifier")
    seeds = [5, 6, 7]
    smp, run = SamplerSpec("ddim", steps=5, clip_x0=True), RunOptions(progress=False)
    plain = draw(Models(eps), GuidanceSpec.of([0, 1, 2], 0.0), smp, seeds, run)[0]
    mixed = draw(Models(eps, classifier=clf), GuidanceSpec.of([0, 1, 2], [0.0, 4.0, 0.0]), smp, seeds, run)[0]
    assert torch.equal(mixed[[0, 2]], plain[[0, 2]]) and not torch.equal(mixed[1], plain[1])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_static_step_samples_what_eager_samples_under_clip_then_guide(sampler):
    from cguide.runtime.cuda_graph import sample_static
    plan, clf = _setup(torch.float32)
    smp = SamplerSpec(sampler, 10, clip_x0=True)
    base = smp.base_eps(_loud_eps, plan.schedule)
    spec = GuidanceSpec.of([0, 1, 2], [0.0, 2.0, 6.0])
    ref = sample(ClassifierGuidance(base, clf, plan, spec), SHAPE, plan, [1, 2, 3], progress=False, **smp.options)
    got = sample_static(base, ClassifierGuidance(base, clf, plan, spec, static=True), SHAPE, plan, [1, 2, 3],
                        capture=False, **smp.options)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_unknown_clip_order_is_one_clear_line():
    with pytest.raises(ValueError, match="unknown sampler.clip_order 'clip_first'; known: clip_then_guide, "
                                         "guide_then_clip"):
        SamplerSpec("ddim", 10, clip_order="clip_first")
