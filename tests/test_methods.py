"""Guidance methods (classifier, cond, cfg, cfg_w, cond_classifier) as wrappers around eps functions:
the exact end points of cfg, cond_classifier at s = 0, the batched cond/null forward, per-row methods."""

import pytest
import torch

from cguide.diffusion import make_plan, make_schedule, sample
from cguide.guidance import ClassifierGuidance, GuidanceSetting, GuidanceSpec, MethodEps
from cguide.nets import build_unet
from helpers.nets import TinyClassifier, eps_model, randomise

C = 3  # classes; label C is the null label


def _cond_net():
    return randomise(build_unet("tiny", 1, 8, num_classes=C, null_class=True), 0)


def _x(n=4):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([90, 50, 20, 3][:n])


def test_cfg_end_points_are_the_conditional_and_the_null_eps_bit_for_bit():
    net = _cond_net()
    x, t = _x()
    y = torch.tensor([0, 1, 2, 1])
    # MethodEps runs cond and null in one 8-row forward: bit-exact only against that same forward
    # (a 4-row forward differs in the last bits on some CPUs, e.g. AMD EPYC)
    cond, null = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, C)])).chunk(2)
    torch.testing.assert_close(cond, net(x, t, y), rtol=1e-5, atol=1e-6)
    for gamma, want in [(1.0, cond), (0.0, null)]:
        got = MethodEps(None, net, GuidanceSpec.of(y, gamma, method="cfg"), null=C)(x, t)
        assert torch.equal(got, want), gamma  # torch.lerp hits its end points exactly
    # Ho & Salimans' w: gamma = 1 + w
    w = MethodEps(None, net, GuidanceSpec.of(y, 0.0, method="cfg_w"), null=C)(x, t)
    assert torch.equal(w, cond)
    mid = MethodEps(None, net, GuidanceSpec.of(y, 2.5, method="cfg"), null=C)(x, t)
    torch.testing.assert_close(mid, null + 2.5 * (cond - null), rtol=1e-5, atol=1e-6)


def test_the_batched_cond_null_forward_equals_two_separate_forwards():
    net = _cond_net()
    x, t = _x()
    y = torch.tensor([2, 0, 1, 1])
    both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, C)]))
    torch.testing.assert_close(both[:4], net(x, t, y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[4:], net(x, t, torch.full_like(y, C)), rtol=1e-5, atol=1e-6)


def test_cond_classifier_at_scale_zero_is_cond_bit_for_bit_and_guides_above():
    net = _cond_net()
    plan = make_plan(make_schedule("linear", 100), 6)
    clf = TinyClassifier(dim=64, classes=C, dtype=torch.float32)
    y, seeds = torch.tensor([0, 1, 2]), [7, 8, 9]

    def draw(method, s):
        spec = GuidanceSpec.of(y, s, method=method)
        fn = MethodEps(None, net, spec, null=C)
        if spec.guided:
            fn = ClassifierGuidance(fn, clf, plan, spec)
        return sample(fn, (1, 8, 8), plan, seeds, sampler="ddpm", progress=False)

    cond = draw("cond", 0.0)
    assert torch.equal(draw("cond_classifier", 0.0), cond)
    assert not torch.allclose(draw("cond_classifier", 4.0), cond)


def test_rows_of_one_batch_may_use_different_methods():
    net = _cond_net()
    x, t = _x(3)
    y = torch.tensor([0, 1, 2])
    settings = [GuidanceSetting(0.0, method="classifier"), GuidanceSetting(method="cond"),
                GuidanceSetting(3.0, method="cfg")]
    spec = GuidanceSpec.from_settings(settings, y)
    uncond = lambda a, b: eps_model(a, b)  # noqa: E731
    got = MethodEps(uncond, net, spec, null=C)(x, t)
    assert torch.equal(got[0], uncond(x, t)[0])  # the same 3-row forward
    # the cond row comes from the batched 6-row cond/null forward: bit-exact only against that same forward
    batched = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, C)]))
    assert torch.equal(got[1], batched[1])
    torch.testing.assert_close(got[1], net(x, t, y)[1], rtol=1e-5, atol=1e-6)  # 3-row forward: other kernels' rounding
    alone = MethodEps(None, net, GuidanceSpec.of(y[2:], 3.0, method="cfg"), null=C)(x[2:], t[2:])
    torch.testing.assert_close(got[2:], alone, rtol=1e-5, atol=1e-6)
    assert spec.needs == {"u", "c", "null"} and not spec.guided  # classifier row at s = 0: no classifier


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="cgf"), "unknown guidance method 'cgf'; known: classifier, cond, cfg, cfg_w, cond_classifier"),
    (dict(method="cfg", scale=-0.5), r"cfg's gamma must be finite and >= 0 \(gamma = 1 \+ w; 1 is the conditional"),
    (dict(method="cfg_w", scale=-2.0), r"cfg_w's w must be finite and >= -1"),
])
def test_method_settings_are_checked_where_they_are_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GuidanceSetting(**kwargs)


def test_settings_without_a_classifier_term_keep_no_variant_and_cfg_keeps_its_interval():
    """Equal terms (#26): cfg / cfg_w keep the interval, sigma interval and schedule (they act on gamma), and
    drop the classifier term's own options (the variant); cond, with no scale, keeps none of them."""
    a = GuidanceSetting(2.0, "seed_literal", (0.2, 0.4), method="cfg", schedule="linear", sigma_interval=(0.1, 5))
    assert (a.variant, a.interval, a.schedule, a.sigma_interval) == ("score", (0.2, 0.4), "linear", (0.1, 5.0))
    assert a != GuidanceSetting(2.0, method="cfg")
    assert GuidanceSetting(2.0, "seed_literal", method="cfg") == GuidanceSetting(2.0, method="cfg")
    assert GuidanceSetting(1.0, interval=(0.3, 0.6), method="cfg_w").interval == (0.3, 0.6)
    c = GuidanceSetting(5.0, "unit", (0.2, 0.4), method="cond", schedule="cosine", sigma_interval=(0.1, 5))
    assert c == GuidanceSetting(method="cond") and c.scale == 0.0  # cond has no scale, so nothing to time
