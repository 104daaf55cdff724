"""Classifier guidance: the gradient, the variants against Dhariwal & Nichol's algorithms, s = 0,
batch independence, respacing and bad input."""

import pytest
import torch
import torch.nn as nn

from cguide.diffusion import ddim_step, ddpm_step, make_plan, make_schedule, posterior, sample, x0_from_eps
from cguide.guidance import ClassifierGuidance, GuidanceSetting, GuidanceSpec, classifier_log_prob_grad
from helpers.nets import NaNClassifier, RecordingClassifier, TinyClassifier, eps_model


def test_gradient_equals_central_differences_float64():
    clf = TinyClassifier()
    x = torch.randn(2, 2, 2, 2, dtype=torch.float64)
    t, y = torch.tensor([5, 900]), torch.tensor([2, 0])
    g, logp = classifier_log_prob_grad(clf, x, t, y)
    h = 1e-6
    fd = torch.zeros_like(x)
    for i in range(x[0].numel()):
        e = torch.zeros_like(x).flatten(1)
        e[:, i] = h
        e = e.view_as(x)
        up = torch.log_softmax(clf(x + e, t), -1).gather(1, y[:, None]).squeeze(1)
        dn = torch.log_softmax(clf(x - e, t), -1).gather(1, y[:, None]).squeeze(1)
        fd.flatten(1)[:, i] = (up - dn) / (2 * h)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-9)
    assert g.abs().max() > 1e-3  # not a vacuous comparison of zeros


def _guided(plan, s, variant, clf, y):
    return ClassifierGuidance(eps_model, clf, plan, GuidanceSpec.of(y, s, variant))


def test_mean_shift_in_ddpm_is_algorithm_1():
    """Alg. 1: x_{t-1} ~ N(mu + s * Sigma * g, Sigma), Sigma the posterior variance (no clipping)."""
    plan = make_plan(make_schedule("linear", 1000), 20)
    clf, y, s = TinyClassifier(dim=4), torch.tensor([1, 2]), 3.0
    x, z = torch.randn(2, 1, 2, 2, dtype=torch.float64), torch.randn(2, 1, 2, 2, dtype=torch.float64)
    for i in [19, 7, 1]:
        t = torch.full((2,), int(plan.timesteps[i]))
        ab = torch.full((2, 1, 1, 1), float(plan.alphabar[i]), dtype=torch.float64)
        abp = torch.full_like(ab, float(plan.alphabar_prev[i]))
        mu, var = posterior(x0_from_eps(x, eps_model(x, t), ab), x, ab, abp)
        g, _ = classifier_log_prob_grad(clf, x, t, y)
        expected = mu + s * var * g + var.sqrt() * z
        got, _ = ddpm_step(x, _guided(plan, s, "mean_shift", clf, y)(x, t), ab, abp, z)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
        # mean_shift_large is the same with Sigma = beta_t
        beta = 1 - ab / abp
        got_l, _ = ddpm_step(x, _guided(plan, s, "mean_shift_large", clf, y)(x, t), ab, abp, z)
        mu_l = mu + s * beta * g
        torch.testing.assert_close(got_l - var.sqrt() * z, mu_l, rtol=1e-10, atol=1e-12)


def test_score_in_ddim_is_algorithm_2():
    """Alg. 2: eps_hat = eps - sqrt(1 - ab_t) g; x_{t-1} = sqrt(ab_prev) x0(eps_hat) + sqrt(1 - ab_prev) eps_hat."""
    plan = make_plan(make_schedule("cosine", 1000), 25)
    clf, y, s = TinyClassifier(dim=4), torch.tensor([0, 1]), 2.5
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    for i in [24, 3]:
        t = torch.full((2,), int(plan.timesteps[i]))
        ab, abp = plan.alphabar[i], plan.alphabar_prev[i]
        g, _ = classifier_log_prob_grad(clf, x, t, y)
        eps_hat = eps_model(x, t) - s * (1 - ab).sqrt() * g
        expected = abp.sqrt() * (x - (1 - ab).sqrt() * eps_hat) / ab.sqrt() + (1 - abp).sqrt() * eps_hat
        c = lambda v: torch.full((2, 1, 1, 1), float(v), dtype=torch.float64)
        got, _ = ddim_step(x, _guided(plan, s, "score", clf, y)(x, t), c(ab), c(abp))
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


class ExplodingClassifier(nn.Module):
    num_classes = 3

    def forward(self, x, t):
        raise AssertionError("the classifier must not run at s = 0")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_scale_zero_is_bitwise_unguided_and_skips_classifier(sampler):
    plan = make_plan(make_schedule("linear", 1000), 12)
    seeds = [3, 1, 4]
    plain = sample(eps_model, (1, 2, 2), plan, seeds, sampler=sampler, progress=False)
    guided = ClassifierGuidance(eps_model, ExplodingClassifier(), plan, GuidanceSpec.of([0, 1, 2], 0.0))
    assert torch.equal(sample(guided, (1, 2, 2), plan, seeds, sampler=sampler, progress=False), plain)
    assert guided.classifier_calls == 0


def test_batch_independence_with_per_sample_scale_and_class():
    plan = make_plan(make_schedule("linear", 1000), 15)
    clf = TinyClassifier(dim=4, dtype=torch.float32)
    seeds, s, y = [10, 20, 30], torch.tensor([0.0, 2.0, 5.0]), torch.tensor([2, 0, 1])
    variants = ["score", "seed_literal", "mean_shift"]
    batch = sample(ClassifierGuidance(eps_model, clf, plan, GuidanceSpec.of(y, s, variants)),
                   (1, 2, 2), plan, seeds, sampler="ddpm", progress=False)
    for i in range(3):
        alone = sample(ClassifierGuidance(eps_model, clf, plan, GuidanceSpec.of(y[i:i + 1], s[i:i + 1], variants[i])),
                       (1, 2, 2), plan, seeds[i:i + 1], sampler="ddpm", progress=False)
        torch.testing.assert_close(batch[i:i + 1], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batch[1], sample(eps_model, (1, 2, 2), plan, [20], sampler="ddpm", progress=False)[0])


def test_respaced_sampling_hands_classifier_original_indices():
    plan = make_plan(make_schedule("linear", 1000), 10)
    rec = RecordingClassifier()
    sample(ClassifierGuidance(eps_model, rec, plan, GuidanceSpec.of(1, 1.0, n=2)), (1, 2, 2), plan, [0, 1], progress=False)
    assert [int(t[0]) for t in rec.seen] == plan.timesteps.flip(0).tolist()
    assert not rec.w.requires_grad  # frozen: only the input gradient is computed


def test_interval_skips_classifier_outside():
    plan = make_plan(make_schedule("linear", 1000), 10)
    rec = RecordingClassifier()
    sample(ClassifierGuidance(eps_model, rec, plan, GuidanceSpec.of(0, 1.0, interval=(0.0, 0.5), n=1)), (1, 2, 2), plan, [0],
           progress=False)
    seen = [int(t[0]) for t in rec.seen]
    assert seen and all(t <= 500 for t in seen)
    assert seen == [t for t in plan.timesteps.flip(0).tolist() if t <= 500]


@pytest.mark.parametrize("mode", ["zero", "clamp"])
def test_nonfinite_gradients_are_contained_per_sample(mode):
    plan = make_plan(make_schedule("linear", 1000), 5)
    guided = ClassifierGuidance(eps_model, NaNClassifier(), plan, GuidanceSpec.of(0, 1.0, nonfinite=mode, n=2))
    out = sample(guided, (1, 2, 2), plan, [0, 1], progress=False)
    assert torch.isfinite(out).all()
    assert guided.nonfinite_steps.tolist() == [5, 0]
    with pytest.raises(FloatingPointError, match="non-finite classifier gradient"):
        sample(ClassifierGuidance(eps_model, NaNClassifier(), plan, GuidanceSpec.of(0, 1.0, nonfinite="raise", n=2)),
               (1, 2, 2), plan, [0, 1], progress=False)


@pytest.mark.parametrize("kwargs,message", [
    (dict(scale=-1.0), r"guidance scale must be finite and >= 0 \(s = 0 is unguided\), got -1.0; fix guidance.scale"),
    (dict(scale=float("nan")), r"guidance scale must be finite and >= 0 .*got nan"),
    (dict(variant="sqrt"), "unknown guidance variant 'sqrt'; known: score, seed_literal, mean_shift, mean_shift_large, unit"),
    (dict(interval=(0.8, 0.2)), r"guidance interval needs \[t_lo, t_hi\] with 0 <= t_lo <= t_hi <= 1, got \[0.8, 0.2\]"),
    (dict(interval=(0.5,)), r"guidance interval needs \[t_lo, t_hi\] .*got \[0.5\]; fix guidance.interval"),
    (dict(nonfinite="ignore"), "unknown guidance.nonfinite 'ignore'; known: zero, clamp, raise"),
])
def test_a_guidance_setting_is_checked_where_it_is_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GuidanceSetting(**({"scale": 1.0} | kwargs))
    with pytest.raises(ValueError, match=message):  # per-sample values go through the same check
        GuidanceSpec.of([0, 1], **({"scale": 1.0} | kwargs))


def test_sweep_settings_name_the_sweep_axes_in_the_fix():
    with pytest.raises(ValueError, match="got inf; fix sweep.scales"):
        GuidanceSetting(float("inf"), source="sweep")
    with pytest.raises(ValueError, match=r"got \[0.9, 0.1\]; fix sweep.intervals"):
        GuidanceSetting(1.0, interval=(0.9, 0.1), source="sweep")


def test_spec_rows_follow_their_settings():
    a, b = GuidanceSetting(0.0, "score"), GuidanceSetting(2.0, "unit", (0.2, 0.6))
    spec = GuidanceSpec.from_settings([a, b, b], [3, 1, 4])
    assert spec.scale.tolist() == [0.0, 2.0, 2.0] and spec.variant == ("score", "unit", "unit")
    assert spec.t_lo.tolist() == [0.0, 0.2, 0.2] and spec.t_hi.tolist() == [1.0, 0.6, 0.6]
    # active: s != 0 and t/T inside the row's interval
    assert spec.active(torch.tensor([500, 500, 700]), 1000).tolist() == [False, True, False]
    assert spec.rows(slice(1, 2)).y.tolist() == [1] and spec.guided
    with pytest.raises(ValueError, match="mixes non-finite modes"):
        GuidanceSpec.from_settings([a, GuidanceSetting(1.0, nonfinite="raise")], [0, 1])
