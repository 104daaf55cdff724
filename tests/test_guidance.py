"""Classifier guidance: the gradient, the variants against Dhariwal & Nichol's algorithms, s = 0,
batch independence, respacing and bad input."""

import pytest
import torch
import torch.nn as nn

from cguide.diffusion import ddim_step, ddpm_step, make_plan, make_schedule, posterior, sample, x0_from_eps
from cguide.guidance import VARIANTS, ClassifierGuidance, classifier_log_prob_grad


class TinyClassifier(nn.Module):
    """A small smooth time-conditioned classifier on flattened inputs."""

    def __init__(self, dim=8, classes=3, dtype=torch.float64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.num_classes = classes
        self.inp, self.temb = nn.Linear(dim, 16, dtype=dtype), nn.Embedding(1000, 16, dtype=dtype)
        self.out = nn.Linear(16, classes, dtype=dtype)

    def forward(self, x, t):
        return self.out(torch.tanh(self.inp(x.flatten(1)) + self.temb(t)))


def eps_model(x, t):
    return 0.3 * x + 0.01 * torch.sin(t.to(x.dtype)).view(-1, *[1] * (x.ndim - 1))


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
    return ClassifierGuidance(eps_model, clf, plan, y=y, scale=s, variant=variant)


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
    guided = ClassifierGuidance(eps_model, ExplodingClassifier(), plan, y=[0, 1, 2], scale=0.0)
    assert torch.equal(sample(guided, (1, 2, 2), plan, seeds, sampler=sampler, progress=False), plain)
    assert guided.classifier_calls == 0


def test_batch_independence_with_per_sample_scale_and_class():
    plan = make_plan(make_schedule("linear", 1000), 15)
    clf = TinyClassifier(dim=4, dtype=torch.float32)
    seeds, s, y = [10, 20, 30], torch.tensor([0.0, 2.0, 5.0]), torch.tensor([2, 0, 1])
    variants = ["score", "seed_literal", "mean_shift"]
    batch = sample(ClassifierGuidance(eps_model, clf, plan, y=y, scale=s, variant=variants),
                   (1, 2, 2), plan, seeds, sampler="ddpm", progress=False)
    for i in range(3):
        alone = sample(ClassifierGuidance(eps_model, clf, plan, y=y[i:i + 1], scale=s[i:i + 1], variant=variants[i]),
                       (1, 2, 2), plan, seeds[i:i + 1], sampler="ddpm", progress=False)
        torch.testing.assert_close(batch[i:i + 1], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batch[1], sample(eps_model, (1, 2, 2), plan, [20], sampler="ddpm", progress=False)[0])


class RecordingClassifier(nn.Module):
    num_classes = 2

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.seen = []

    def forward(self, x, t):
        self.seen.append(t.clone())
        return torch.stack([x.flatten(1).sum(1), -x.flatten(1).sum(1)], 1) * self.w


def test_respaced_sampling_hands_classifier_original_indices():
    plan = make_plan(make_schedule("linear", 1000), 10)
    rec = RecordingClassifier()
    sample(ClassifierGuidance(eps_model, rec, plan, y=1, scale=1.0), (1, 2, 2), plan, [0, 1], progress=False)
    assert [int(t[0]) for t in rec.seen] == plan.timesteps.flip(0).tolist()
    assert not rec.w.requires_grad  # frozen: only the input gradient is computed


def test_interval_skips_classifier_outside():
    plan = make_plan(make_schedule("linear", 1000), 10)
    rec = RecordingClassifier()
    sample(ClassifierGuidance(eps_model, rec, plan, y=0, scale=1.0, interval=(0.0, 0.5)), (1, 2, 2), plan, [0],
           progress=False)
    seen = [int(t[0]) for t in rec.seen]
    assert seen and all(t <= 500 for t in seen)
    assert seen == [t for t in plan.timesteps.flip(0).tolist() if t <= 500]


def test_every_variant_has_a_formula_docstring():
    assert set(VARIANTS) >= {"score", "seed_literal", "mean_shift", "mean_shift_large", "unit"}
    assert all("c_t" in fn.__doc__ for fn in VARIANTS.values())


class NaNClassifier(RecordingClassifier):
    def forward(self, x, t):
        out = super().forward(x, t)
        return out * torch.tensor([float("nan"), 1.0]).view(-1, 1)[: len(out)] if len(out) == 2 else out


@pytest.mark.parametrize("mode", ["zero", "clamp"])
def test_nonfinite_gradients_are_contained_per_sample(mode):
    plan = make_plan(make_schedule("linear", 1000), 5)
    guided = ClassifierGuidance(eps_model, NaNClassifier(), plan, y=0, scale=1.0, nonfinite=mode)
    out = sample(guided, (1, 2, 2), plan, [0, 1], progress=False)
    assert torch.isfinite(out).all()
    assert guided.nonfinite_steps.tolist() == [5, 0]
    with pytest.raises(FloatingPointError, match="non-finite classifier gradient"):
        sample(ClassifierGuidance(eps_model, NaNClassifier(), plan, y=0, scale=1.0, nonfinite="raise"),
               (1, 2, 2), plan, [0, 1], progress=False)


@pytest.mark.parametrize("kwargs,message", [
    (dict(scale=-1.0), "guidance scale must be finite and >= 0"),
    (dict(variant="sqrt"), "unknown guidance variant 'sqrt'; known: score, seed_literal, mean_shift, mean_shift_large, unit"),
    (dict(y=3), r"target class out of range: got \[3\], the classifier knows classes 0..2"),
    (dict(interval=(0.8, 0.2)), "guidance interval needs 0 <= t_lo <= t_hi <= 1"),
])
def test_bad_input_messages(kwargs, message):
    plan = make_plan(make_schedule("linear", 100), 5)
    args = dict(y=0, scale=1.0) | kwargs
    with pytest.raises(ValueError, match=message):
        ClassifierGuidance(eps_model, TinyClassifier(dim=4), plan, **args)
