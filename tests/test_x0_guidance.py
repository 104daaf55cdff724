"""x0-space guidance (#14 item 4): g = grad_{x_t} log p_psi(y | x0_hat(x_t)) from a clean guide classifier
(task=guide), one switch of the guidance setting (guidance.grad_space=x0). The wrapper's g against central
differences, the formula with the other options, s = 0 bit for bit unguided through draw, the cost counts,
the guide's training and checkpoint kind (never the judge), named option sets in the sweep, the pipeline stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from cguide.diffusion import SamplerSpec, make_plan, make_schedule, sample
from cguide.guidance import (ClassifierGuidance, GuidanceSetting, GuidanceSpec, MethodEps, entropy_factor,
                             network_evals, variant_factor, x0_space_grad)
from cguide.io.checkpoints import Loaded, load_net
from cguide.nets import build_judge
from cguide.runtime.draw import Models, RunOptions, check_models, check_speed, draw
from cguide.runtime.speed import SpeedOptions
from helpers.config import compose_cfg
from helpers.nets import TinyClassifier, randomise, tiny_pair


class TinyEps(nn.Module):
    """A smooth eps_theta(x, t) in float64 whose Jacobian is far from the identity."""

    def __init__(self, seed=3):
        super().__init__()
        torch.manual_seed(seed)
        self.lin, self.temb = nn.Linear(4, 4, dtype=torch.float64), nn.Embedding(1000, 4, dtype=torch.float64)

    def forward(self, x, t):
        return torch.tanh(self.lin(x.flatten(1)) + self.temb(t)).view_as(x)


class CleanClassifier(nn.Module):
    """p_psi(y | x0): no time input."""

    def __init__(self, seed=4):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b = nn.Linear(4, 8, dtype=torch.float64), nn.Linear(8, 3, dtype=torch.float64)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x.flatten(1))))


def _x(n, seed=0):
    return torch.randn(n, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_the_wrappers_x0_gradient_equals_central_differences_through_the_eps_model():
    plan = make_plan(make_schedule("linear", 1000), 10)
    eps, clean = TinyEps(), CleanClassifier()
    x, y, s = _x(3), torch.tensor([2, 0, 1]), 1.5
    t = torch.full((3,), int(plan.timesteps[6]))
    ab = plan.schedule.alphabar[t].view(-1, 1, 1, 1)
    got = ClassifierGuidance(eps, None, plan, GuidanceSpec.of(y, s, grad_space="x0"), guide=clean)(x, t)
    g = (eps(x, t) - got).detach() / (s * (1 - ab).sqrt())  # score variant: c_t = sqrt(1 - ab)

    def logp(z):
        x0 = (z - (1 - ab).sqrt() * eps(z, t)) / ab.sqrt()
        return torch.log_softmax(clean(x0), -1).gather(1, y[:, None]).squeeze(1)

    h, fd = 1e-6, torch.zeros_like(x)
    with torch.no_grad():
        for k in range(4):
            e = torch.zeros_like(x).flatten(1)
            e[:, k] = h
            fd.flatten(1)[:, k] = (logp(x + e.view_as(x)) - logp(x - e.view_as(x))) / (2 * h)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-9)
    assert g.abs().max() > 1e-3
    assert all(p.grad is None for p in [*eps.parameters(), *clean.parameters()])


def test_x0_rows_take_the_whole_formula_and_x_t_rows_beside_them_are_unchanged():
    """eps_hat = eps - s * w(t) * f * c_t * g, with f from the guide's logits on x0_hat, in a batch that mixes
    x0 rows with noisy-classifier rows (which must be what they are alone)."""
    plan = make_plan(make_schedule("linear", 1000), 20)
    eps, clean, noisy = TinyEps(), CleanClassifier(), TinyClassifier(dim=4)
    rows = [GuidanceSetting(2.0, "seed_literal", schedule="linear", grad_space="x0", entropy_scale=True,
                            entropy_cap=3.0),
            GuidanceSetting(1.0, "score", grad_space="x_t"),
            GuidanceSetting(3.0, "mean_shift", grad_space="x0"),
            GuidanceSetting(0.5, "unit", schedule="cosine", entropy_scale=True)]
    y = torch.tensor([0, 1, 2, 1])
    spec = GuidanceSpec.from_settings(rows, y)
    wrapper = ClassifierGuidance(eps, noisy, plan, spec, guide=clean)
    ab, ab_prev = plan.schedule.alphabar, plan.table(plan.alphabar_prev)
    for i in [15, 4]:
        x, t = _x(4, i), torch.full((4,), int(plan.timesteps[i]))
        got = wrapper(x, t)
        u = int(t[0]) / 999
        g0, _, lg0 = x0_space_grad(eps, clean, x[[0, 2]], t[[0, 2]], ab[t[[0, 2]]], y[[0, 2]], return_logits=True)
        c = [float(variant_factor(v, ab[t[:1]], ab_prev[t[:1]])) for v in ("seed_literal", "mean_shift")]
        want0 = eps(x[:1], t[:1]) - 2.0 * (1 - u) * entropy_factor(lg0[:1], 3.0) * c[0] * g0[:1]
        want2 = eps(x[2:3], t[:1]) - 3.0 * c[1] * g0[1:]
        torch.testing.assert_close(got[:1], want0.detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got[2:3], want2.detach(), rtol=1e-12, atol=1e-14)
        # the x_t rows: what they are with the x0 rows unguided beside them
        alone = [GuidanceSetting(0.0), rows[1], GuidanceSetting(0.0), rows[3]]
        want = ClassifierGuidance(eps, noisy, plan, GuidanceSpec.from_settings(alone, y))(x, t)
        assert torch.equal(got[[1, 3]], want[[1, 3]])
    assert wrapper.x0_calls == 2 and wrapper.classifier_calls == 2


def test_x0_gradient_goes_through_the_rows_own_base_eps():
    """cond_classifier rows take x0_hat from the conditional model with their label (MethodEps.rows_eps)."""
    plan = make_plan(make_schedule("linear", 1000), 10)
    uncond, clean = TinyEps(3), CleanClassifier()
    cond_net = TinyEps(5)
    cond = lambda x, t, y: cond_net(x, t) + 0.1 * y.to(x.dtype).view(-1, 1, 1, 1)  # noqa: E731
    y = torch.tensor([1, 2])
    spec = GuidanceSpec.from_settings([GuidanceSetting(2.0, method="classifier", grad_space="x0"),
                                       GuidanceSetting(2.0, method="cond_classifier", grad_space="x0")], y)
    base = MethodEps(uncond, cond, spec)
    x, t = _x(2, 7), torch.full((2,), int(plan.timesteps[5]))
    got = ClassifierGuidance(base, None, plan, spec, guide=clean, eps_grad=base.rows_eps)(x, t)
    ab = plan.schedule.alphabar[t]
    g_u, _ = x0_space_grad(uncond, clean, x[:1], t[:1], ab[:1], y[:1])
    g_c, _ = x0_space_grad(lambda z, tt: cond(z, tt, y[1:]), clean, x[1:], t[1:], ab[1:], y[1:])
    c = (1 - ab).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(got, torch.cat([uncond(x[:1], t[:1]) - 2.0 * c[:1] * g_u,
                                               cond(x[1:], t[1:], y[1:]) - 2.0 * c[1:] * g_c]).detach())
    # rows_eps is the base eps itself, with autograd on
    with torch.no_grad():
        plain = base(x, t)
    assert torch.equal(base.rows_eps(x, t, torch.arange(2)).detach(), plain)
    assert base.rows_eps(x.requires_grad_(True), t, torch.tensor([1])).requires_grad


def _judge_like(kind="guide_classifier", seed=2):
    return Loaded(randomise(build_judge("tiny", 1, 8, 10), seed), kind, Path(kind), (1, 8, 8), 10, None, None)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_x0_guidance_at_scale_zero_is_bitwise_unguided_through_draw(sampler):
    eps, clf = tiny_pair()
    guide = _judge_like()
    seeds, y = [5, 6, 7, 8], torch.tensor([0, 3, 5, 9])
    smp = SamplerSpec(sampler, 6, clip_x0=True)
    run = RunOptions(4, "cpu", False)
    plain, _ = draw(Models(eps), GuidanceSpec.of(y, 0.0), smp, seeds, run)
    for opts in [{}, dict(schedule="linear"), dict(entropy_scale=True), dict(sigma_interval=(0.1, 5.0))]:
        spec = GuidanceSpec.of(y, 0.0, grad_space="x0", **opts)
        assert not spec.guided_x0
        got, _ = draw(Models(eps), spec, smp, seeds, run)  # no guide needed at s = 0
        assert torch.equal(got, plain), opts
    # in one batch with guided rows (x0 and x_t), the s = 0 rows stay unguided bit for bit
    rows = [GuidanceSetting(0.0, grad_space="x0"), GuidanceSetting(4.0, grad_space="x0"),
            GuidanceSetting(0.0), GuidanceSetting(4.0)]
    mixed, _ = draw(Models(eps, None, clf, guide), GuidanceSpec.from_settings(rows, y), smp, seeds, run)
    assert torch.equal(mixed[[0, 2]], plain[[0, 2]]) and not torch.equal(mixed[1], plain[1])
    x0_alone, _ = draw(Models(eps, None, None, guide), GuidanceSpec.of(y[1:2], 4.0, grad_space="x0"), smp, [6], run)
    torch.testing.assert_close(mixed[1:2], x0_alone, rtol=1e-4, atol=1e-5)  # its own row alone (up to rounding)


def test_network_evaluations_per_sample_and_the_wrappers_counts():
    plan = make_plan(make_schedule("linear", 1000), 10)
    K = 10
    rows = [GuidanceSetting(0.0, grad_space="x0"), GuidanceSetting(2.0), GuidanceSetting(2.0, grad_space="x0"),
            GuidanceSetting(2.0, interval=(0.5, 1.0), grad_space="x0"), GuidanceSetting(3.0, method="cfg")]
    cost = network_evals(GuidanceSpec.from_settings(rows, torch.zeros(5, dtype=torch.long)), plan)
    half = int((plan.timesteps.double() / 1000 >= 0.5).sum())
    assert cost["eps_evals"].tolist() == [K, K, 2 * K, K + half, 2 * K]
    assert cost["eps_grads"].tolist() == [0, 0, K, half, 0]
    assert cost["clf_grads"].tolist() == [0, K, K, half, 0]
    # the eager wrapper's counters agree: one x0 call per guided step
    spec = GuidanceSpec.from_settings([rows[3]], [0])
    wrapper = ClassifierGuidance(TinyEps(), None, plan, spec, guide=CleanClassifier())
    sample(wrapper, (1, 2, 2), plan, [0], dtype=torch.float64, progress=False)
    assert wrapper.x0_calls == half and wrapper.classifier_calls == 0


def test_what_x0_guidance_refuses():
    plan = make_plan(make_schedule("linear", 1000), 5)
    spec = GuidanceSpec.of([0], 1.0, grad_space="x0")
    msg = ("guidance.grad_space=x0 is not supported by the CUDA-graph step (speed.cuda_graph=true): its gradient "
           "through the eps-model is not captured; drop speed.cuda_graph, or use guidance.grad_space=x_t")
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        ClassifierGuidance(TinyEps(), None, plan, spec, static=True, guide=CleanClassifier())
    with pytest.raises(ValueError, match="not supported by the CUDA-graph step"):
        check_speed(spec, SpeedOptions(cuda_graph=True))
    check_speed(GuidanceSpec.of([0], 0.0, grad_space="x0"), SpeedOptions(cuda_graph=True))  # s = 0: nothing to refuse
    with pytest.raises(ValueError, match="unknown guidance.grad_space 'x1'; known: x_t, x0; fix guidance.grad_space"):
        GuidanceSetting(1.0, grad_space="x1")
    with pytest.raises(ValueError, match="grad_space=x0 takes g through x0_hat"):
        GuidanceSetting(1.0, grad_space="x0", grad_at="posterior_mean")
    # without a classifier term there is nothing to move: the option is dropped, as the others are
    assert GuidanceSetting(2.0, method="cfg", grad_space="x0") == GuidanceSetting(2.0, method="cfg")
    eps, clf = tiny_pair()
    with pytest.raises(ValueError, match="needs a clean guide classifier: set guide_ckpt="):
        check_models(Models(eps, None, clf), spec)
    check_models(Models(eps, None, None, _judge_like()), spec)  # no noisy classifier needed for x0 rows alone


def test_the_guide_trains_apart_from_the_judge_and_they_refuse_each_others_place(tiny_ckpts, tiny_guide_ckpt):
    guide = load_net(tiny_guide_ckpt, "guide_classifier")
    judge = load_net(tiny_ckpts["judge"], "judge")
    assert type(guide.net) is type(judge.net) and guide.net.cfg == judge.net.cfg  # the judge's architecture
    assert "test_acc" in guide.extra
    gw, jw = guide.net.state_dict(), judge.net.state_dict()
    assert not torch.equal(gw["head.weight"], jw["head.weight"])  # its own seed: not the judge's twin
    with pytest.raises(ValueError, match=r"holds a judge classifier \(task=judge\), but a clean guide classifier "
                                         r"\(task=guide\) is expected here \(guide_ckpt\)"):
        load_net(tiny_ckpts["judge"], "guide_classifier")
    with pytest.raises(ValueError, match=r"holds a clean guide classifier \(task=guide\), but a judge classifier "
                                         r"\(task=judge\) is expected here \(judge_ckpt\)"):
        load_net(tiny_guide_ckpt, "judge")


def test_a_sweep_compares_both_gradient_spaces_on_the_same_seeds(cfg_sweep, tiny_guide_ckpt):
    from cguide.grid.runner import run_sweep

    out = run_sweep(cfg_sweep(f"guide_ckpt={tiny_guide_ckpt}", "metrics.names=[accuracy]", "sweep.scales=[0,2]",
                              "+sweep.settings.noisy={}", "+sweep.settings.x0.grad_space=x0",
                              "+sweep.settings.x0.scales=[4]"))
    rows = {r["point"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(rows) == ["ddim-2-t0_1-score-s0", "ddim-2-t0_1-score-s2", "ddim-2-t0_1-score-s4-x0"]
    assert [rows[k]["grad_space"] for k in sorted(rows)] == ["x_t", "x_t", "x0"]
    assert [(rows[k]["eps_evals"], rows[k]["eps_grads"], rows[k]["clf_grads"]) for k in sorted(rows)] == [
        (2, 0, 0), (2, 0, 2), (4, 2, 2)]
    manifest = json.loads((out / "sweep.json").read_text())
    assert "guide_ckpt" in manifest["defines"]
    # the same seeds: the s = 0 point is the unguided draw both spaces start from; the two guided points differ
    grids = {k: (out / "grids" / f"{k}.png").read_bytes() for k in rows}
    assert len(set(grids.values())) == 3


@pytest.mark.parametrize("sets,message", [
    ({"a": {"grad_spaces": "x0"}}, r"sweep.settings.a sets unknown key\(s\) \['grad_spaces'\]; known: scales, "
                                   "schedule, sigma_interval, entropy_scale, entropy_cap, grad_at, grad_space"),
    ({"a": {"scales": []}}, r"sweep.settings.a.scales must be a non-empty list of scales, got \[\]"),
    ({"a": {"grad_space": "x1"}}, "unknown guidance.grad_space 'x1'; known: x_t, x0; fix guidance.grad_space"),
])
def test_named_option_sets_are_checked_where_the_grid_is_made(sets, message, tmp_path):
    from omegaconf import open_dict

    from cguide.grid.points import build_grid

    cfg = compose_cfg("sweep", ["judge_ckpt=j"], tmp_path)
    with open_dict(cfg):
        cfg.sweep.settings = sets
    with pytest.raises(ValueError, match=message):
        build_grid(cfg.sweep, cfg.sampler, cfg.guidance)


def test_named_option_sets_make_one_grid_with_each_sets_scales(tmp_path):
    from omegaconf import open_dict

    from cguide.grid.points import build_grid

    cfg = compose_cfg("sweep", ["judge_ckpt=j", "sweep.scales=[0,2]", "guidance.schedule=cosine"], tmp_path)
    # without named sets the grid is what it was
    plain = [p.key for p in build_grid(cfg.sweep, cfg.sampler, cfg.guidance)]
    assert plain == ["ddim-50-t0_1-score-s0-cosine", "ddim-50-t0_1-score-s2-cosine"]
    with open_dict(cfg):
        cfg.sweep.settings = {"base": None, "ent": {"entropy_scale": True, "scales": [2]},
                              "x0": {"grad_space": "x0", "schedule": "constant"}}
    keys = [p.key for p in build_grid(cfg.sweep, cfg.sampler, cfg.guidance)]
    assert keys == ["ddim-50-t0_1-score-s0-cosine", "ddim-50-t0_1-score-s2-cosine",
                    "ddim-50-t0_1-score-s2-cosine-ent10", "ddim-50-t0_1-score-s0-x0", "ddim-50-t0_1-score-s2-x0"]


def test_the_pipeline_trains_the_guide_only_for_x0_guidance(tmp_path):
    from cguide.pipeline.stages import stages

    base = compose_cfg("pipeline", [f"out_dir={tmp_path}"], tmp_path / "hydra")
    assert "guide" not in stages(base)
    assert "guide" not in stages(compose_cfg("pipeline", [f"out_dir={tmp_path}", "guidance.grad_space=x0",
                                                          "sweep.scales=[0]"], tmp_path / "hydra"))
    assert stages(compose_cfg("pipeline", [f"out_dir={tmp_path}", "guidance.grad_space=x0"],
                              tmp_path / "hydra"))[-1] == "guide"
    exp = compose_cfg("pipeline", ["experiment=mnist5k_guidance_options"], tmp_path / "hydra")
    assert stages(exp) == ["diffusion", "classifier", "judge", "judge2", "guide"]
    assert exp.out_dir == "outputs/pipeline/mnist5k_quick" and exp.sweep.n_per_point == 250
    assert exp.workers == 2 and exp.model.precision == "bf16-mixed"  # the quick profile's networks, reused
    assert exp.guide.seed_offset != 0 and exp.guide.size == exp.judge.size


def test_the_guidance_options_experiment_runs_end_to_end_on_tiny_settings(cfg_pipeline, capsys):
    """The experiment's config with the debug settings (tiny nets, a few steps, few samples)."""
    from cguide.pipeline import run_pipeline

    sweep_dir = run_pipeline(cfg_pipeline(
        "experiment=mnist5k_guidance_options", "debug=default", "model.max_steps=4", "classifier.max_steps=4",
        "judge.max_steps=4", "guide.max_steps=4", "sweep.n_per_point=10", "sweep.steps=[2]", "sweep.batch_size=200",
        "metrics.names=[accuracy,guide_confidence]"))
    out = capsys.readouterr().out
    assert out.count("no checkpoint yet: training") == 5 and "[guide]" in out  # and the second judge
    rows = [json.loads(line) for line in (sweep_dir / "results.jsonl").read_text().splitlines()]
    assert {r["grad_space"] for r in rows} == {"x_t", "x0"}
    assert any(r.get("entropy_cap") for r in rows) and any(r["schedule"] != "constant" for r in rows)
    assert any(r["sigma_lo"] is not None for r in rows) and "options" in out
