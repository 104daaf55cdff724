"""Guidance on a two-class 1-D Gaussian mixture, where the optimal eps-model and the exact noisy
classifier p(y | x_t) are closed-form, so guided sampling can be checked against p(x | y).

x_0 | y ~ N(mu_y, SD^2), mu = (-1, +1), p(y) = 1/2. Then x_t | y ~ N(sqrt(ab) mu_y, ab SD^2 + 1 - ab),
p(y | x_t) is a softmax of those Gaussian log-likelihoods, and the optimal eps is -sqrt(1 - ab) times
the mixture's score.

What `seed_literal` (c_t = 1 - alphabar_t) does at s = 1, measured by this test's setting
(T = 1000 linear, DDPM on 200 respaced steps, 20k samples): it under-guides. Its factor is sqrt(1 - alphabar_t) times
that of `score`, so near t = 0, where the classes separate, it pushes far less; the target-class
share under the exact classifier lands between unguided (0.5) and `score` at s = 1 (0.76 against
0.85 here), its class mean is 0.77 instead of 1 and its std 0.95 instead of 0.8: the samples are
not drawn from p(x | y). Tolerances below allow for the bias of 200 discrete DDPM steps (the std
comes out about 0.02 low)."""

import pytest
import torch

from cguide.diffusion import make_plan, make_schedule, sample
from cguide.guidance import ClassifierGuidance, GuidanceSpec, MethodEps

MU, SD, N = torch.tensor([-1.0, 1.0], dtype=torch.float64), 0.8, 20_000
SCHED = make_schedule("linear", 1000)


def _loglik(x, t):
    """log N(x_t; sqrt(ab) mu_y, ab SD^2 + 1 - ab) for both classes, [B, 2]."""
    ab = SCHED.alphabar.to(x.device)[t].view(-1, 1)
    var = ab * SD**2 + 1 - ab
    return -0.5 * (x.view(-1, 1) - ab.sqrt() * MU) ** 2 / var - 0.5 * var.log()


class ExactClassifier(torch.nn.Module):
    num_classes = 2

    def forward(self, x, t):
        return _loglik(x, t)


def optimal_eps(x, t):
    ab = SCHED.alphabar[t].view(-1, 1)
    var = ab * SD**2 + 1 - ab
    w = torch.softmax(_loglik(x, t), -1)
    score = (w * -(x.view(-1, 1) - ab.sqrt() * MU) / var).sum(1, keepdim=True)
    return -(1 - ab).sqrt() * score


def _draw(scale, variant="score", y=1):
    plan = make_plan(SCHED, 200)  # respaced DDPM: 200 of the 1000 steps
    guided = ClassifierGuidance(optimal_eps, ExactClassifier(), plan, GuidanceSpec.of(y, scale, variant, n=N))
    return sample(guided, (1,), plan, range(N), sampler="ddpm", dtype=torch.float64, progress=False)


def _target_share(x0, y=1):
    return torch.softmax(_loglik(x0, torch.zeros(len(x0), dtype=torch.long)), -1)[:, y].mean().item()


@pytest.fixture(scope="module")
def draws():
    return {(s, v): _draw(s, v) for s, v in [(0.0, "score"), (1.0, "score"), (2.0, "score"), (4.0, "score"),
                                            (1.0, "seed_literal")]}


def test_unguided_draws_the_mixture(draws):
    x = draws[(0.0, "score")]
    assert abs(x.mean().item()) < 0.03
    assert abs(x.var().item() - (SD**2 + 1)) < 0.1


def test_score_at_scale_one_draws_the_class_conditional(draws):
    x = draws[(1.0, "score")]
    assert abs(x.mean().item() - MU[1].item()) < 0.03
    assert abs(x.std().item() - SD) < 0.04


def test_target_share_rises_with_scale(draws):
    shares = [_target_share(draws[(s, "score")]) for s in (0.0, 1.0, 2.0, 4.0)]
    assert abs(shares[0] - 0.5) < 0.02
    assert shares[0] < shares[1] < shares[2] < shares[3]
    assert shares[3] > 0.95


def test_seed_literal_under_guides_at_scale_one(draws):
    literal, score = _target_share(draws[(1.0, "seed_literal")]), _target_share(draws[(1.0, "score")])
    assert 0.5 < literal < score
    assert draws[(1.0, "seed_literal")].mean().item() < MU[1].item() - 0.05


# ---------------------------------------------------------------- methods with a class-conditional model

NULL = 2  # the null label of the exact conditional model


def exact_cond_eps(x, t, y):
    """The optimal class-conditional eps -sqrt(1 - ab) * score of N(sqrt(ab) mu_y, ab SD^2 + 1 - ab); the null
    label gives the mixture's (unconditional) eps, as label dropout teaches a real model."""
    ab = SCHED.alphabar[t].view(-1, 1)
    var = ab * SD**2 + 1 - ab
    mu = MU[y.clamp(max=1)].view(-1, 1)
    eps = (1 - ab).sqrt() * (x.view(-1, 1) - ab.sqrt() * mu) / var
    return torch.where((y == NULL).view(-1, 1), optimal_eps(x, t), eps.view_as(x))


def _draw_method(method, scale, y=1):
    plan = make_plan(SCHED, 200)
    spec = GuidanceSpec.of(y, scale, method=method, n=N)
    fn = MethodEps(optimal_eps, exact_cond_eps, spec, null=NULL)
    if spec.guided:
        fn = ClassifierGuidance(fn, ExactClassifier(), plan, spec)
    return sample(fn, (1,), plan, range(N), sampler="ddpm", dtype=torch.float64, progress=False)


@pytest.fixture(scope="module")
def method_draws():
    return {"cfg1": _draw_method("cfg", 1.0), "cond": _draw_method("cond", 0.0),
            "cond_classifier0": _draw_method("cond_classifier", 0.0), "cfg0": _draw_method("cfg", 0.0)}


def test_cfg_at_gamma_one_and_cond_classifier_at_zero_draw_the_class_conditional(method_draws):
    for key in ("cfg1", "cond", "cond_classifier0"):
        x = method_draws[key]
        assert abs(x.mean().item() - MU[1].item()) < 0.03, key
        assert abs(x.std().item() - SD) < 0.04, key
    # gamma = 1 is the conditional eps exactly (torch.lerp's end point, bit-compared in test_methods.py), but cfg
    # takes it from one forward of 2N rows (cond and null labels) and cond from one of N rows: other batch shapes,
    # so close, not bitwise. These float64 ops are elementwise per row, so any difference is a last-bit rounding
    # (~1e-16 per step) that the DDPM steps grow at most by 1 / sqrt(alphabar_T) ~ 160: under 200 * 160 * 1e-16
    # ~ 3e-12. 1e-9 leaves a margin and is still 1e9 times below what gamma = 0 moves (class means 2 apart).
    torch.testing.assert_close(method_draws["cfg1"], method_draws["cond"], rtol=1e-9, atol=1e-9)
    assert torch.equal(method_draws["cond_classifier0"], method_draws["cond"])  # both: one N-row cond forward


def test_cfg_at_gamma_zero_draws_the_mixture(method_draws):
    x = method_draws["cfg0"]
    assert abs(x.mean().item()) < 0.03 and abs(x.var().item() - (SD**2 + 1)) < 0.1


def test_classifier_guidance_at_one_draws_what_cfg_at_one_draws(draws, method_draws):
    """Bayes: eps_u - sqrt(1 - ab) grad log p(y | x_t) = eps_c, so both sample p(x | y) (up to discretisation)."""
    a, b = draws[(1.0, "score")], method_draws["cfg1"]
    assert abs(a.mean().item() - b.mean().item()) < 0.03
    assert abs(a.std().item() - b.std().item()) < 0.03
