"""Guidance beyond a constant scale (#14): scale schedules, the sigma interval, the entropy-aware factor, the
gradient location, dynamic thresholding and the x0-space gradient. s = 0 stays bitwise unguided, `constant`
alone is today's guidance, every formula against its closed form, the static path against eager."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from cguide.diffusion import SamplerSpec, ddim_step, ddpm_step, make_plan, make_schedule, posterior, sample, x0_from_eps
from cguide.diffusion.process import eps_from_x0, sigma_of
from cguide.diffusion.samplers import threshold_x0
from cguide.guidance import (SCHEDULES, VARIANTS, ClassifierGuidance, GuidanceSetting, GuidanceSpec,
                             classifier_log_prob_grad, entropy_factor, variant_factor, x0_space_grad)
from cguide.runtime.cuda_graph import sample_static
from helpers.nets import RecordingClassifier, TinyClassifier, eps_model


class ExplodingClassifier(nn.Module):
    num_classes = 3

    def forward(self, x, t):
        raise AssertionError("the classifier must not run at s = 0")


OPTIONS = [dict(schedule=n) for n in SCHEDULES] + [
    dict(sigma_interval=(0.1, 5.0)), dict(entropy_scale=True, entropy_cap=3.0), dict(grad_at="posterior_mean")]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_every_option_at_scale_zero_is_bitwise_unguided(sampler):
    plan = make_plan(make_schedule("linear", 1000), 12)
    seeds = [3, 1, 4]
    for threshold in [None, 0.9]:
        smp = SamplerSpec(sampler, dynamic_threshold=threshold)
        plain = sample(eps_model, (1, 2, 2), plan, seeds, smp, progress=False)
        for opt in OPTIONS:
            for static in [False, True]:
                guide = ClassifierGuidance(eps_model, ExplodingClassifier(), plan,
                                           GuidanceSpec.of([0, 1, 2], 0.0, **opt), static=static)
                if static and threshold is None:
                    got = sample_static(eps_model, guide, (1, 2, 2), plan, seeds, sampler=sampler, capture=False)
                elif not static:
                    got = sample(guide, (1, 2, 2), plan, seeds, smp, progress=False)
                else:
                    continue
                assert torch.equal(got, plain), (opt, static, threshold)
                assert guide.classifier_calls == 0


def _step_inputs(plan, i, n=3, dtype=torch.float64):
    x = torch.randn(n, 1, 2, 2, dtype=dtype, generator=torch.Generator().manual_seed(i))
    return x, torch.full((n,), int(plan.timesteps[i]))


def test_constant_alone_is_todays_guidance_bit_for_bit():
    plan = make_plan(make_schedule("linear", 1000), 20)
    clf, y, s = TinyClassifier(dim=4, dtype=torch.float32), torch.tensor([0, 1, 2]), torch.tensor([0.5, 2.0, 7.0])
    assert GuidanceSetting(2.0) == GuidanceSetting(2.0, schedule="constant", sigma_interval=None, entropy_scale=False,
                                                   grad_at="x_t")
    for variant in VARIANTS:
        guide = ClassifierGuidance(eps_model, clf, plan, GuidanceSpec.of(y, s, variant, schedule="constant"))
        for i in [19, 8, 0]:
            x, t = _step_inputs(plan, i, dtype=torch.float32)
            g, _ = classifier_log_prob_grad(clf, x, t, y)
            c = variant_factor(variant, plan.schedule.alphabar[t], plan.table(plan.alphabar_prev)[t])
            want = eps_model(x, t) - (s.float() * c.float()).view(-1, 1, 1, 1) * g  # the formula as it was
            assert torch.equal(guide(x, t), want), (variant, i)


def _closed_form(name, t, T):
    u = t / (T - 1)
    return {"constant": 1.0, "linear": 1 - u, "cosine": math.cos(math.pi * u / 2) ** 2,
            "linear_rev": u, "cosine_rev": math.sin(math.pi * u / 2) ** 2}[name]


def test_schedules_against_their_closed_forms_with_every_variant_and_method():
    plan = make_plan(make_schedule("cosine", 1000), 25)
    clf, y, s = TinyClassifier(dim=4), torch.tensor([2, 0, 1]), 1.7
    ab, ab_prev = plan.schedule.alphabar, plan.table(plan.alphabar_prev)
    for i in [24, 16, 6, 0]:
        x, t = _step_inputs(plan, i)
        g, _ = classifier_log_prob_grad(clf, x, t, y)
        tt = int(t[0])
        for name in SCHEDULES:
            w = _closed_form(name, tt, 1000)
            for variant in VARIANTS:
                c = float(variant_factor(variant, ab[tt:tt + 1], ab_prev[tt:tt + 1]))
                for method in ["classifier", "cond_classifier"]:
                    spec = GuidanceSpec.of(y, s, variant, schedule=name, method=method)
                    got = ClassifierGuidance(eps_model, clf, plan, spec)(x, t)
                    torch.testing.assert_close(got, eps_model(x, t) - s * w * c * g, rtol=1e-12, atol=1e-14)
    assert _closed_form("linear", 999, 1000) == 0 and _closed_form("cosine", 0, 1000) == 1
    # each ramp averages 1/2 over the visited steps (w + w_rev = 1 on a symmetric grid)
    full = make_plan(make_schedule("linear", 1000))
    for name in ["linear", "cosine", "linear_rev", "cosine_rev"]:
        w = torch.tensor([_closed_form(name, int(t), 1000) for t in full.timesteps], dtype=torch.float64)
        assert abs(float(w.mean()) - 0.5) < 1e-12 and 0 <= float(w.min()) and float(w.max()) <= 1


def test_entropy_factor_against_a_hand_computation():
    C = 3
    uniform = torch.zeros(2, C, dtype=torch.float64)
    torch.testing.assert_close(entropy_factor(uniform, 10.0), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-15)
    # p = (1/2, 1/4, 1/4): H = 1.5 log 2, f = log 3 / (1.5 log 2)
    mid = torch.tensor([[math.log(2.0), 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(entropy_factor(mid, 10.0), torch.tensor([math.log(3) / (1.5 * math.log(2))],
                                                                       dtype=torch.float64))
    # peaked (H -> 0) and fully collapsed (H = 0 exactly): the cap, never inf
    peaked = torch.tensor([[30.0, 0.0, 0.0], [1000.0, 0.0, 0.0]], dtype=torch.float64)
    assert entropy_factor(peaked, 4.0).tolist() == [4.0, 4.0]
    assert entropy_factor(peaked, torch.tensor([4.0, 7.0])).tolist() == [4.0, 7.0]
    assert torch.isfinite(entropy_factor(torch.full((1, C), float("nan")), 4.0)).all()


def test_entropy_scaling_multiplies_s_per_sample():
    plan = make_plan(make_schedule("linear", 1000), 10)
    clf, y, s = TinyClassifier(dim=4), torch.tensor([0, 1, 2]), 2.0
    for i in [9, 2]:
        x, t = _step_inputs(plan, i)
        g, _, logits = classifier_log_prob_grad(clf, x, t, y, return_logits=True)
        f = entropy_factor(logits, 3.0)
        assert float(f.min()) >= 1
        c = (1 - plan.schedule.alphabar[t]).sqrt()
        got = ClassifierGuidance(eps_model, clf, plan, GuidanceSpec.of(y, s, entropy_scale=True, entropy_cap=3.0))(x, t)
        torch.testing.assert_close(got, eps_model(x, t) - (s * f * c).view(-1, 1, 1, 1) * g, rtol=1e-12, atol=1e-14)


class TinyEps(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin, self.temb = nn.Linear(4, 4, dtype=torch.float64), nn.Embedding(1000, 4, dtype=torch.float64)

    def forward(self, x, t):
        return torch.tanh(self.lin(x.flatten(1)) + self.temb(t)).view_as(x)


class CleanClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.a, self.b = nn.Linear(4, 8, dtype=torch.float64), nn.Linear(8, 3, dtype=torch.float64)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x.flatten(1))))


def test_x0_space_gradient_equals_central_differences_through_the_eps_model():
    eps, clf = TinyEps(), CleanClassifier()
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    t, y = torch.tensor([100, 700]), torch.tensor([2, 0])
    ab = make_schedule("linear", 1000).alphabar[t]
    g, logp = x0_space_grad(eps, clf, x, t, ab, y)

    def logp_of(z):
        x0 = (z - (1 - ab).sqrt().view(-1, 1, 1, 1) * eps(z, t)) / ab.sqrt().view(-1, 1, 1, 1)
        return torch.log_softmax(clf(x0), -1).gather(1, y[:, None]).squeeze(1)

    h, fd = 1e-6, torch.zeros_like(x)
    with torch.no_grad():
        torch.testing.assert_close(logp, logp_of(x))
        for k in range(4):
            e = torch.zeros_like(x).flatten(1)
            e[:, k] = h
            e = e.view_as(x)
            fd.flatten(1)[:, k] = (logp_of(x + e) - logp_of(x - e)) / (2 * h)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-9)
    # through eps: differs from the gradient with eps held fixed (J = (I - sqrt(1-ab) d eps/dx) / sqrt(ab))
    g_fixed, _ = x0_space_grad(lambda z, tt: eps(x, tt), clf, x, t, ab, y)
    assert not torch.allclose(g, g_fixed) and g.abs().max() > 1e-3
    assert all(p.grad is None for p in [*eps.parameters(), *clf.parameters()])


@pytest.mark.parametrize("p", [0.5, 0.9, 0.995, 1.0])
def test_dynamic_thresholding_against_numpy(p):
    x0 = torch.randn(4, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.5
    x0[3] *= 0.1  # a sample inside [-1, 1]: s = 1, left as it is
    ref = []
    for row in x0.numpy():
        s = max(1.0, float(np.quantile(np.abs(row), p)))
        ref.append(np.clip(row, -s, s) / s)
    got = threshold_x0(x0, p)
    torch.testing.assert_close(got, torch.from_numpy(np.stack(ref)), rtol=1e-12, atol=1e-14)
    assert torch.equal(got[3], x0[3]) and float(got.abs().max()) <= 1


def test_samplers_use_the_thresholded_x0_and_ddim_re_derives_eps():
    plan = make_plan(make_schedule("linear", 1000), 10)
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    eps = torch.randn_like(x)
    c = lambda v: torch.full((2, 1, 1, 1), float(v), dtype=torch.float64)  # noqa: E731
    ab, abp, z = c(plan.alphabar[6]), c(plan.alphabar_prev[6]), torch.randn_like(x)
    x0 = threshold_x0(x0_from_eps(x, eps, ab), 0.8)
    for clip in [False, True]:  # the threshold supersedes clip_x0
        got, got_x0 = ddim_step(x, eps, ab, abp, clip_x0=clip, threshold=0.8)
        want = abp.sqrt() * x0 + (1 - abp).sqrt() * eps_from_x0(x, x0, ab)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert torch.equal(got_x0, x0)
        got, _ = ddpm_step(x, eps, ab, abp, z, clip_x0=clip, threshold=0.8)
        mean, var = posterior(x0, x, ab, abp)
        torch.testing.assert_close(got, mean + var.sqrt() * z, rtol=1e-12, atol=1e-12)
    late = SamplerSpec("ddpm", dynamic_threshold=0.99, clip_order="guide_then_clip")
    assert late.options["sampler"].dynamic_threshold == 0.99 and late.base_eps(eps_model, None) is eps_model
    first = SamplerSpec("ddpm", dynamic_threshold=0.99)  # clip_then_guide: thresholded in the base eps
    assert first.options["sampler"].dynamic_threshold is None and not first.options["sampler"].clip_x0
    assert first.base_eps(eps_model, make_schedule("linear", 1000)).threshold == 0.99
    assert SamplerSpec("ddpm").options["sampler"] == SamplerSpec("ddpm")  # nothing moved: the spec itself


def test_sigma_interval_selects_the_right_original_steps_under_respacing():
    schedule = make_schedule("linear", 1000)
    plan = make_plan(schedule, 17)
    sig = sigma_of(schedule.alphabar)
    lo, hi = 0.5, 3.0
    for t_iv in [(0.0, 1.0), (0.0, 0.3)]:
        rec = RecordingClassifier()
        spec = GuidanceSpec.of(0, 1.0, interval=t_iv, sigma_interval=(lo, hi), n=2)
        sample(ClassifierGuidance(eps_model, rec, plan, spec), (1, 2, 2), plan, [0, 1], sampler="ddpm", progress=False)
        want = [t for t in plan.timesteps.flip(0).tolist() if lo <= sig[t] <= hi and t / 1000 <= t_iv[1]]
        assert [int(t[0]) for t in rec.seen] == want and 0 < len(want) < plan.K


def test_check_against_refuses_what_needs_the_schedule_or_the_sampler():
    schedule = make_schedule("linear", 1000)  # sigma from 0.01 (t = 0) to 157.4 (t = 999)
    for iv in [(500.0, 1000.0), (0.0, 0.005)]:
        for check in [GuidanceSetting(1.0, sigma_interval=iv).check_against,
                      GuidanceSpec.of(0, 1.0, sigma_interval=iv, n=2).check_against]:
            with pytest.raises(ValueError, match=r"guidance.sigma_interval \[.*\] holds no step of the schedule: its "
                               r"sigma = sqrt\(\(1 - alphabar\) / alphabar\) runs from 0.01 \(t = 0\) to 157.4 "
                               r"\(t = 999\); fix guidance.sigma_interval to overlap that range"):
                check(schedule)
    GuidanceSpec.of(0, 1.0, sigma_interval=(100.0, math.inf), n=1).check_against(schedule)
    GuidanceSpec.of(0, 1.0, sigma_interval=(500.0, 1000.0), n=1, method="cond").check_against(schedule)  # no scale
    for method in ["cfg", "cfg_w"]:  # their sigma interval acts on gamma (#26), so it is checked as well
        with pytest.raises(ValueError, match=r"guidance.sigma_interval \[500, 1000\] holds no step of the schedule"):
            GuidanceSpec.of(0, 2.0, sigma_interval=(500.0, 1000.0), n=1, method=method).check_against(schedule)
    pm = GuidanceSetting(1.0, grad_at="posterior_mean")
    pm.check_against(schedule, SamplerSpec("ddpm"))
    for check in [pm.check_against, GuidanceSpec.from_settings([pm], [0]).check_against]:
        with pytest.raises(ValueError, match="guidance.grad_at=posterior_mean needs sampler.name=ddpm, got ddim: "
                                             "its deterministic update \\(DDIM, the ODE solvers\\) draws from no posterior"):
            check(schedule, SamplerSpec("ddim", eta=1.0))


def test_gradient_at_the_posterior_mean_in_ddpm():
    plan = make_plan(make_schedule("linear", 1000), 20)
    clf, y, s = TinyClassifier(dim=4), torch.tensor([1, 2, 0]), 3.0
    guide = ClassifierGuidance(eps_model, clf, plan, GuidanceSpec.of(y, s, "mean_shift", grad_at="posterior_mean"))
    for i in [19, 7, 0]:
        x, t = _step_inputs(plan, i)
        ab = torch.full((3, 1, 1, 1), float(plan.alphabar[i]), dtype=torch.float64)
        abp = torch.full_like(ab, float(plan.alphabar_prev[i]))
        eps = eps_model(x, t)
        mu, var = posterior(x0_from_eps(x, eps, ab), x, ab, abp)
        t_prev = torch.full_like(t, int(plan.timesteps[i - 1]) if i else 0)
        g, _ = classifier_log_prob_grad(clf, mu, t_prev, y)
        c = variant_factor("mean_shift", plan.alphabar[i:i + 1], plan.alphabar_prev[i:i + 1])
        torch.testing.assert_close(guide(x, t), eps - s * float(c) * g, rtol=1e-12, atol=1e-14)
    rec = RecordingClassifier()
    sample(ClassifierGuidance(eps_model, rec, plan, GuidanceSpec.of(0, 1.0, grad_at="posterior_mean", n=1)),
           (1, 2, 2), plan, [0], sampler="ddpm", progress=False)
    assert [int(t[0]) for t in rec.seen] == plan.timesteps.flip(0).tolist()[1:] + [0]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_static_path_samples_what_eager_samples_with_the_new_options(sampler):
    plan = make_plan(make_schedule("linear", 1000), 12)
    clf = TinyClassifier(dim=4, dtype=torch.float32)
    rows = [GuidanceSetting(0.0, schedule="linear"), GuidanceSetting(2.0, "score", schedule="cosine"),
            GuidanceSetting(3.0, "mean_shift", schedule="linear_rev", sigma_interval=(0.3, 4.0)),
            GuidanceSetting(1.5, "seed_literal", entropy_scale=True, entropy_cap=3.0),
            GuidanceSetting(2.5, "unit", (0.1, 0.8), schedule="cosine_rev", entropy_scale=True)]
    if sampler == "ddpm":
        rows.append(GuidanceSetting(2.0, "score", grad_at="posterior_mean", entropy_scale=True))
    spec = GuidanceSpec.from_settings(rows, torch.arange(len(rows)) % 3)
    seeds = list(range(5, 5 + len(rows)))
    eager = ClassifierGuidance(eps_model, clf, plan, spec)
    ref = sample(eager, (1, 2, 2), plan, seeds, sampler=sampler, progress=False)
    static = ClassifierGuidance(eps_model, clf, plan, spec, static=True)
    got = sample_static(eps_model, static, (1, 2, 2), plan, seeds, sampler=sampler, capture=False)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert static.classifier_calls == eager.classifier_calls > 0
    plain = sample(eps_model, (1, 2, 2), plan, seeds, sampler=sampler, progress=False)
    assert torch.equal(got[0], plain[0]) and not torch.allclose(got[1:], plain[1:])


@pytest.mark.parametrize("kwargs,message", [
    (dict(schedule="ramp"), "unknown guidance schedule 'ramp'; known: constant, linear, cosine, linear_rev, "
                            "cosine_rev; fix guidance.schedule"),
    (dict(sigma_interval=(3.0, 1.0)), r"guidance.sigma_interval needs \[sigma_lo, sigma_hi\] with 0 <= sigma_lo <= "
                                      r"sigma_hi \(sigma_hi may be inf\), got \[3.0, 1.0\]; fix "
                                      r"guidance.sigma_interval, or null for no sigma limit"),
    (dict(sigma_interval=(-1.0, 1.0)), r"got \[-1.0, 1.0\]"),
    (dict(sigma_interval=(1.0,)), r"got \[1.0\]"),
    (dict(entropy_scale="yes"), "guidance.entropy_scale must be true or false, got 'yes'; fix guidance.entropy_scale"),
    (dict(entropy_cap=0.5), r"guidance.entropy_cap must be finite and >= 1 \(it caps the factor log C / H >= 1\), "
                            "got 0.5; fix guidance.entropy_cap"),
    (dict(entropy_cap=float("inf")), "got inf; fix guidance.entropy_cap"),
    (dict(grad_at="x0"), "unknown guidance.grad_at 'x0'; known: x_t, posterior_mean; fix guidance.grad_at"),
])
def test_new_settings_are_checked_where_they_are_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GuidanceSetting(1.0, **kwargs)
    with pytest.raises(ValueError, match=message):
        GuidanceSpec.of([0, 1], 1.0, **kwargs)


@pytest.mark.parametrize("p", [0.0, 1.5, -0.1, True, "high"])
def test_dynamic_threshold_is_checked_where_the_sampler_is_made(p):
    with pytest.raises(ValueError, match=r"sampler.dynamic_threshold must be a percentile p in \(0, 1\] \(or null "
                                         rf"for none\), got {p}; fix sampler.dynamic_threshold"):
        SamplerSpec("ddpm", dynamic_threshold=p)


def test_settings_without_a_classifier_term_keep_none_of_its_own_options():
    """cfg keeps the schedule and the sigma interval (they act on gamma, #26), not the classifier term's own
    options; cond keeps neither."""
    g = GuidanceSetting(3.0, method="cfg", schedule="linear", sigma_interval=(0.1, 2.0), entropy_scale=True,
                        grad_at="posterior_mean", grad_space="x0")
    assert (g.schedule, g.sigma_interval, g.entropy_scale, g.grad_at, g.grad_space) == \
        ("linear", (0.1, 2.0), False, "x_t", "x_t")
    c = GuidanceSetting(3.0, method="cond", schedule="linear", sigma_interval=(0.1, 2.0), entropy_scale=True)
    assert (c.schedule, c.sigma_interval, c.entropy_scale) == ("constant", None, False)
    assert GuidanceSetting(1.0, entropy_cap=4.0) == GuidanceSetting(1.0)  # the cap only matters when on
