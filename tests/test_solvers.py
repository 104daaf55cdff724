"""The registered ODE solvers (euler, heun, dpmpp_2m, unipc) against diffusers' own schedulers, their
convergence order on a Gaussian toy with a closed-form probability-flow ODE solution, their evaluation counts,
and the guarantees every sampler shares (per-seed noise, reproducibility, the CUDA-graph runner's step code).

How each test fails with its feature broken (run by monkeypatching the class while writing them):
- Heun's update using d alone (its second evaluation ignored): both diffusers comparisons and the order test
  fail; DPM-Solver++ with C = 0 and a first-order B: the same three fail; UniPC's corrector switched off
  (``UniPC.corrector`` returning w = 1): both diffusers comparisons fail (its order test does not: without the
  corrector it is DPM-Solver++(2M), still 2nd order); Heun's second evaluation given the unguided eps
  (guidance at the first evaluation only): the guided diffusers comparison fails;
- the evaluation counts fail when a step calls the eps function a different number of times than
  ``eval_steps`` says (``network_evals`` would then misreport the sweep's rows)."""

from __future__ import annotations

import math

import pytest
import torch

from cguide.diffusion import SAMPLERS, SamplerSpec, make_plan, make_schedule, sample
from cguide.diffusion.solvers import edm_sigmas
from cguide.guidance import ClassifierGuidance, GuidanceSpec
from helpers.nets import TinyClassifier

SHAPE = (1, 2, 2)
SEEDS = [3, 1, 4]
MU, S = 0.3, 0.5  # the toy data distribution N(MU, S^2), per pixel


def toy_eps(schedule):
    """The exact eps of data N(MU, S^2) under q(x_t | x_0): x_t ~ N(sqrt(ab) MU, ab S^2 + 1 - ab), so
    eps(x_t, t) = -sqrt(1 - ab) score = sqrt(1 - ab) (x_t - sqrt(ab) MU) / (ab S^2 + 1 - ab)."""
    ab_all = schedule.alphabar

    def eps(x, t):
        ab = ab_all.to(x.dtype)[t].view(-1, *[1] * (x.ndim - 1))
        return (1 - ab).sqrt() * (x - ab.sqrt() * MU) / (ab * S**2 + 1 - ab)
    return eps


def bent_eps(schedule):
    """The toy eps plus a nonlinear term, so that a solver's order shows in its difference from another."""
    base = toy_eps(schedule)
    return lambda x, t: base(x, t) + 0.2 * torch.tanh(2 * x)


def exact_ode_x0(x_T, schedule, t_T: int):
    """The probability-flow ODE's solution at sigma = 0 for the toy: in x~ = x / sqrt(ab) = x_0 + sigma eps,
    dx~/dsigma = sigma (x~ - MU) / (S^2 + sigma^2), so (x~ - MU) / sqrt(S^2 + sigma^2) is constant and
    x_0 = MU + S (x~_T - MU) / sqrt(S^2 + sigma_T^2)."""
    ab = schedule.alphabar[t_T]
    sigma = math.sqrt((1 - ab) / ab)
    xt = x_T / math.sqrt(ab)
    return MU + S * (xt - MU) / math.sqrt(S**2 + sigma**2)


def guided(fn, plan, scale=3.0):
    clf = TinyClassifier(dim=4, dtype=torch.float64)
    return ClassifierGuidance(fn, clf, plan, GuidanceSpec.of([0, 1, 2], scale, "score"))


# ---------------------------------------------------------------- diffusers as the reference


def _diffusers(name, schedule, plan):
    """diffusers' scheduler for ``name`` on the plan's steps, with the options that make it the same method:
    - custom timesteps = the plan's (descending) instead of its own spacing (UniPC's set_timesteps takes no
      custom timesteps: its timesteps and sigmas are set after set_timesteps(K));
    - final_sigmas_type='zero' (the last step goes to sigma = 0, x_0), as the plan's last step goes to
      alphabar = 1; Heun and Euler always end at 0;
    - DPMSolverMultistepScheduler: algorithm_type='dpmsolver++', solver_order=2, solver_type='midpoint',
      lower_order_final=True (first order at the first and the last step); UniPCMultistepScheduler:
      solver_order=2, solver_type='bh2', predict_x0=True, lower_order_final=True, no disabled corrector;
    - no thresholding, no Karras/exponential sigmas, epsilon prediction;
    - its sigmas replaced by the same values in float64 (diffusers computes alphabar from float32 betas);
      its step still rounds the sample to float32, which is what the 1e-5 relative tolerance allows for."""
    import diffusers

    betas = schedule.betas.numpy()
    common = dict(num_train_timesteps=schedule.T, trained_betas=betas, prediction_type="epsilon")
    ts = plan.timesteps.flip(0).tolist()
    sig = torch.tensor(edm_sigmas(plan), dtype=torch.float64)
    if name == "euler":
        sch = diffusers.EulerDiscreteScheduler(**common, final_sigmas_type="zero")
        sch.set_timesteps(timesteps=ts)
        sch.sigmas = sig
    elif name == "heun":
        sch = diffusers.HeunDiscreteScheduler(**common)
        sch.set_timesteps(timesteps=ts)
        sch.sigmas = torch.cat([sig[:1], sig[1:-1].repeat_interleave(2), sig[-1:]])
    elif name == "dpmpp_2m":
        sch = diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                                    solver_type="midpoint", lower_order_final=True,
                                                    final_sigmas_type="zero")
        sch.set_timesteps(timesteps=ts)
        sch.sigmas = sig
    else:
        sch = diffusers.UniPCMultistepScheduler(**common, solver_order=2, solver_type="bh2", predict_x0=True,
                                                lower_order_final=True, final_sigmas_type="zero")
        sch.set_timesteps(plan.K)
        sch.timesteps = plan.timesteps.flip(0).clone()
        sch.sigmas = sig
    return sch


def diffusers_sample(name, fn, schedule, plan, x_T):
    """diffusers' sampling loop: the scheduler's timesteps, scale_model_input, step; x_T scaled to its
    init_noise_sigma convention (x~_T = x_T / sqrt(ab) for the sigma-space schedulers)."""
    sch = _diffusers(name, schedule, plan)
    sig0 = float(sch.sigmas[0])
    x = x_T * math.sqrt(1 + sig0**2) if name in ("euler", "heun") else x_T.clone()
    for t in sch.timesteps:
        inp = sch.scale_model_input(x, t)
        eps = fn(inp, torch.full((len(x),), int(round(float(t))), dtype=torch.long))
        x = sch.step(eps, t, x).prev_sample
    return x


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "unipc"])
@pytest.mark.parametrize("guide", [False, True])
def test_matches_diffusers_scheduler(name, guide):
    """Ours against diffusers' scheduler of the same method, fed the same eps function (guided: classifier
    guidance at s = 3 through the one ClassifierGuidance wrapper, at every evaluation), float64, <= 1e-5
    relative. 10 uniform steps of a T = 1000 linear schedule (diffusers' options: see ``_diffusers``)."""
    schedule = make_schedule("linear", 1000)
    plan = make_plan(schedule, 10)
    fn = bent_eps(schedule)
    if guide:
        fn = guided(fn, plan)
    got = sample(fn, SHAPE, plan, SEEDS, SamplerSpec(name), dtype=torch.float64, progress=False)
    from cguide.diffusion import seeded_normal
    x_T = seeded_normal(torch.tensor(SEEDS), 0, SHAPE, dtype=torch.float64)
    want = diffusers_sample(name, fn, schedule, plan, x_T)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    if guide:  # the guidance acted: unguided differs by far more than the tolerance
        plain = sample(bent_eps(schedule), SHAPE, plan, SEEDS, SamplerSpec(name), dtype=torch.float64,
                       progress=False)
        assert (plain - got).abs().max() > 1e-2


def test_euler_is_ddim_at_eta_zero():
    """Karras et al. 2022: DDIM is Euler's method on dx~/dsigma = eps (same plan, float64, rounding only)."""
    schedule = make_schedule("linear", 1000)
    plan = make_plan(schedule, 12)
    fn = bent_eps(schedule)
    a = sample(fn, SHAPE, plan, SEEDS, SamplerSpec("euler"), dtype=torch.float64, progress=False)
    b = sample(fn, SHAPE, plan, SEEDS, SamplerSpec("ddim"), dtype=torch.float64, progress=False)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- convergence order


def _errors(name, steps_list, schedule):
    fn = toy_eps(schedule)
    out = []
    for K in steps_list:
        plan = make_plan(schedule, K)
        x = sample(fn, SHAPE, plan, SEEDS, SamplerSpec(name), dtype=torch.float64, progress=False)
        from cguide.diffusion import seeded_normal
        x_T = seeded_normal(torch.tensor(SEEDS), 0, SHAPE, dtype=torch.float64)
        exact = exact_ode_x0(x_T, schedule, int(plan.timesteps[-1]))
        out.append(float((x - exact).abs().max()))
    return out


@pytest.mark.parametrize("name,order", [("ddim", 1), ("euler", 1), ("heun", 2), ("dpmpp_2m", 2), ("unipc", 2)])
def test_convergence_order_on_the_gaussian_toy(name, order):
    """Error against the closed-form ODE solution (``exact_ode_x0``) at 40, 80, 160 steps of a T = 1000 cosine
    schedule (plans keep t = 999 and t = 0): each halving of the step size divides it by ~2 for the 1st-order
    samplers (measured 2.00, 1.99) and by 4 or more for the 2nd-order ones (dpmpp_2m 4.18, 4.20; unipc 4.82,
    4.80; heun 8.0, 10.2: Heun's error here comes from the high-sigma steps, where the toy's solution
    x~ - MU ~ sqrt(S^2 + sigma^2) is nearly linear in sigma, so it falls faster than h^2). The exact solution
    starts from the plan's first timestep, so the only error is the solver's. A 2nd-order solver made 1st
    order (Heun without its second evaluation, DPM-Solver++ with C = 0) gives ~2 and fails."""
    schedule = make_schedule("cosine", 1000)
    errs = _errors(name, [40, 80, 160], schedule)
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    ok = (lambda r: 1.6 < r < 2.6) if order == 1 else (lambda r: r > 3.2)
    assert all(ok(r) for r in ratios), (name, errs, ratios)


# ---------------------------------------------------------------- what every sampler keeps


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_draws_per_seed_and_reproducibly(name):
    """A sample depends on its seed alone (whatever shares its batch), and twice is bit for bit the same."""
    schedule = make_schedule("linear", 200)
    plan = make_plan(schedule, 8)
    fn = bent_eps(schedule)
    spec = SamplerSpec(name)
    batch = sample(fn, SHAPE, plan, [11, 22, 33], spec, progress=False)
    again = sample(fn, SHAPE, plan, [11, 22, 33], spec, progress=False)
    alone = sample(fn, SHAPE, plan, [22], spec, progress=False)
    assert torch.equal(batch, again)
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_eval_steps_say_where_the_eps_function_is_called(name):
    """The eps function is called exactly at ``eval_steps(plan)`` (original t, in order): what the cost
    count and the CUDA-graph runner read. Heun: 2K - 1 calls, the others K."""
    schedule = make_schedule("linear", 1000)
    plan = make_plan(schedule, 6)
    seen = []
    sample(lambda x, t: seen.append(int(t[0])) or 0.1 * x, SHAPE, plan, [0, 1], SamplerSpec(name), progress=False)
    want = [t for step in SAMPLERS[name].eval_steps(plan) for t in step]
    assert seen == want
    assert len(seen) == (2 * plan.K - 1 if name == "heun" else plan.K)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "unipc"])
def test_static_runner_samples_what_eager_samples(name):
    """The CUDA-graph runner (run eagerly here) drives the same step code: guided rows, an interval that
    leaves some evaluations unguided, and an s = 0 row bit for bit the unguided draw."""
    from cguide.runtime.cuda_graph import sample_static
    schedule = make_schedule("linear", 1000)
    plan = make_plan(schedule, 8)
    fn = bent_eps(schedule)
    clf = TinyClassifier(dim=4, dtype=torch.float32)
    spec = GuidanceSpec.of([0, 1, 2], torch.tensor([0.0, 2.0, 4.0]), "score", (0.2, 0.9))
    smp = SamplerSpec(name)
    ref = sample(ClassifierGuidance(fn, clf, plan, spec), SHAPE, plan, SEEDS, smp, progress=False)
    static = ClassifierGuidance(fn, clf, plan, spec, static=True)
    got = sample_static(fn, static, SHAPE, plan, SEEDS, sampler=smp, capture=False)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    plain = sample(fn, SHAPE, plan, SEEDS, smp, progress=False)
    assert torch.equal(got[0], plain[0]) and not torch.allclose(got[1:], plain[1:])


@pytest.mark.parametrize("guide", [False, True])
def test_dpmpp_2m_dynamic_threshold_is_diffusers_thresholding(guide):
    """DPM-Solver++(2M)'s x0 correction is the codebase's dynamic thresholding (``threshold_x0``): diffusers'
    DPMSolverMultistepScheduler(thresholding=True, dynamic_thresholding_ratio=p) with sample_max_value set out
    of reach (diffusers caps s there; threshold_x0 does not). An eps whose x0_hat leaves [-1, 1], so the
    threshold acts (without it the result differs by far more than the tolerance)."""
    import diffusers

    schedule = make_schedule("linear", 1000)
    plan = make_plan(schedule, 10)
    base = bent_eps(schedule)
    fn = lambda x, t: 3 * base(x, t) - 2 * x  # noqa: E731
    if guide:
        fn = guided(fn, plan)
    spec = SamplerSpec("dpmpp_2m", dynamic_threshold=0.9)
    got = sample(fn, SHAPE, plan, SEEDS, spec, dtype=torch.float64, progress=False)
    sch = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, trained_betas=schedule.betas.numpy(),
                                                algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero",
                                                thresholding=True, dynamic_thresholding_ratio=0.9,
                                                sample_max_value=1e9)
    sch.set_timesteps(timesteps=plan.timesteps.flip(0).tolist())
    sch.sigmas = torch.tensor(edm_sigmas(plan), dtype=torch.float64)
    from cguide.diffusion import seeded_normal
    x = seeded_normal(torch.tensor(SEEDS), 0, SHAPE, dtype=torch.float64)
    for t in sch.timesteps:
        x = sch.step(fn(x, torch.full((len(x),), int(t))), t, x).prev_sample
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5 * float(x.abs().max()))
    loose = sample(fn, SHAPE, plan, SEEDS, SamplerSpec("dpmpp_2m"), dtype=torch.float64, progress=False)
    assert (loose - got).abs().max() > 1e-2


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_network_evals_counts_what_the_sampler_runs(name):
    """network_evals (the sweep rows' eps_evals / clf_grads) equals the eps-model forwards and classifier
    gradients a guided draw really makes, with an interval that leaves some evaluations unguided (Heun: its
    second evaluation of a step may be guided where the first is not)."""
    from cguide.guidance import network_evals

    schedule = make_schedule("linear", 1000)
    plan = make_plan(schedule, 7)
    calls = []
    fn = lambda x, t: calls.append(1) or bent_eps(schedule)(x, t)  # noqa: E731
    spec = GuidanceSpec.of([0, 1, 2], torch.tensor([0.0, 2.0, 2.0]), "score", (0.3, 0.8))
    guide = ClassifierGuidance(fn, TinyClassifier(dim=4, dtype=torch.float64), plan, spec)
    sample(guide, SHAPE, plan, SEEDS, SamplerSpec(name), dtype=torch.float64, progress=False)
    cost = network_evals(spec, plan, SamplerSpec(name))
    assert cost["eps_evals"].tolist() == [len(calls)] * 3
    assert cost["clf_grads"].tolist() == [0, guide.classifier_calls, guide.classifier_calls]
    assert 0 < guide.classifier_calls < len(calls)


def test_sweep_samplers_axis_runs_every_sampler_with_its_cost(tiny_ckpts, tmp_path):
    """`cguide.sweep sweep.samplers=[ddim,dpmpp_2m,heun] sweep.steps=[2,4]`: one row per (sampler, steps, scale),
    keyed by sampler, each with its own evaluation counts (Heun 2K - 1 eps forwards, and its classifier gradients
    at every guided evaluation) and finite samples. Fails if the sweep drops or mislabels the samplers axis, or if
    network_evals ignores the sampler (Heun would report K)."""
    import json

    from cguide.grid.runner import run_sweep
    from helpers.config import compose_cfg

    args = [f"eps_ckpt={tiny_ckpts['eps_model']}", f"judge_ckpt={tiny_ckpts['judge']}",
            f"classifier_ckpt={tiny_ckpts['noisy_classifier']}", "data.image_size=8", "sweep.n_per_point=10",
            "sweep.batch_size=40", "progress=false", "logger=none", "metrics.names=[accuracy,nonfinite]",
            "sweep.samplers=[ddim,dpmpp_2m,heun]", "sweep.steps=[2,4]", "sweep.scales=[0,2]"]
    out = tmp_path / "out"
    run_sweep(compose_cfg("sweep", args, out))
    rows = {(r["sampler"], r["steps"], r["scale"]): r for r in
            map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(rows) == sorted((s, k, c) for s in ("ddim", "dpmpp_2m", "heun") for k in (2, 4) for c in (0.0, 2.0))
    for (s, k, c), r in rows.items():
        n = 2 * k - 1 if s == "heun" else k
        assert r["point"].startswith(f"{s}-{k}-") and r["eps_evals"] == n and r["clf_grads"] == (n if c else 0)
        assert r["nonfinite"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a CUDA GPU")
@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "unipc"])
def test_cuda_graph_capture_matches_the_eager_steps(name):
    """Captured and replayed (one graph per step kind and guided evaluations: Heun's last step has its own) the
    samplers give what their eager steps give; the s = 0 row stays bitwise the captured unguided draw."""
    from cguide.runtime.cuda_graph import sample_static
    from helpers.nets import eps_model

    plan = make_plan(make_schedule("linear", 1000), 9)
    clf = TinyClassifier(dim=4, dtype=torch.float32).cuda()
    spec = GuidanceSpec.of([2, 0, 1], torch.tensor([0.0, 2.0, 5.0]), "score", (0.1, 0.8))
    runs = []
    for capture in (False, True):
        guide = ClassifierGuidance(eps_model, clf, plan, spec, static=True)
        runs.append(sample_static(eps_model, guide, SHAPE, plan, SEEDS, sampler=SamplerSpec(name), device="cuda",
                                  capture=capture))
        assert guide.classifier_calls > 0
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-5, atol=1e-6)
    plain = sample_static(eps_model, None, SHAPE, plan, SEEDS, sampler=SamplerSpec(name), device="cuda")
    assert torch.equal(runs[1][0], plain[0]) and not torch.allclose(runs[1][1:], plain[1:])


@pytest.mark.parametrize("name", ["heun", "unipc"])
def test_cguide_sample_takes_sampler_by_name(name, tiny_ckpts, tmp_path):
    """`cguide.sample sampler=<name>` picks conf/sampler/<name>.yaml and draws guided samples with that sampler:
    the npz records it, and the samples are not DDIM's (same seeds, same steps)."""
    import json

    import numpy as np

    from cguide.sample import run_sample
    from helpers.config import compose_cfg

    def run(sampler, out):
        cfg = compose_cfg("sample", [f"eps_ckpt={tiny_ckpts['eps_model']}",
                                     f"classifier_ckpt={tiny_ckpts['noisy_classifier']}", f"sampler={sampler}",
                                     "sampler.steps=3", "progress=false", "classes=[1]", "n_per_class=2",
                                     "guidance.scale=2"], out)
        with np.load(run_sample(cfg), allow_pickle=False) as z:
            return json.loads(z["settings"].item())["sampler"], z["samples"]

    settings, x = run(name, tmp_path / name)
    _, ddim = run("ddim", tmp_path / "ddim")
    assert settings["name"] == name and settings["steps"] == 3 and np.isfinite(x).all()
    assert not np.allclose(x, ddim)
