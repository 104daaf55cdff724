"""Equal terms (#26, Build 7): the guidance interval (t and sigma) and the scale schedule act on cfg / cfg_w as on
classifier guidance (Kynkaanniemi et al. 2024, arXiv 2404.07724: no guidance outside the interval, which for
CFG is the conditional eps), and on cond_classifier's classifier term exactly as on classifier's.

gamma_t = 1 + (gamma - 1) * w(t) inside a cfg row's intervals, 1 outside (cfg_w: w_t = w * w(t), or 0).

How each test fails with the feature broken (checked by hand on the code before this change, where
GuidanceSetting dropped interval, sigma interval and schedule for cfg and MethodEps used the constant scale):
- the eps-level tests: every cfg row outside its interval gives the plain CFG eps, not eps_c (torch.equal fails),
  and scheduled rows give gamma, not 1 + (gamma - 1) w(t); without the ``w == 1`` pass-through in
  ``GuidanceSpec.base_scale_table`` the bit-exact gamma = 0.1 check fails (1 + (0.1 - 1) != 0.1 in float64);
- the mixed-batch sampling test: the cfg rows with intervals equal plain cfg drawn alone;
- the grid test: cfg points with and without an interval collapse to one key;
- the entry-point tests: the interval rows equal the plain rows (same samples, same FID)."""

import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cguide.diffusion import SamplerSpec, make_plan, make_schedule, sample
from cguide.grid.points import Point, build_grid
from cguide.guidance import (SCHEDULES, ClassifierGuidance, GuidanceSetting, GuidanceSpec, MethodEps,
                             classifier_log_prob_grad, variant_factor)
from cguide.runtime.cuda_graph import sample_static
from helpers.nets import RecordingClassifier, TinyClassifier, eps_model

NULL = 3  # the null label of cond_eps (classes 0, 1, 2)
T = 1000
SCHED = make_schedule("linear", T)
SIGMA = ((1 - SCHED.alphabar) / SCHED.alphabar).sqrt()  # sigma_t of the sigma interval, by hand


def cond_eps(x, t, y):
    """A smooth stand-in conditional eps-model, elementwise per row (so a row's eps is the same in any batch);
    the null label gives its own eps, as label dropout teaches a real model."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    return 0.3 * x + 0.05 * (y.to(x.dtype) + 1).view(shape) * torch.sin(t.to(x.dtype) / 50).view(shape) \
        - 0.02 * (y == NULL).to(x.dtype).view(shape)


def _x(n, seed=0):
    return torch.randn(n, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _inside(setting, t):
    """Does the setting's interval hold original step t (the rule of the docstring, computed here by hand)?"""
    lo, hi = setting.interval
    s_lo, s_hi = setting.sigma_interval or (0.0, math.inf)
    return lo <= t / T <= hi and s_lo <= float(SIGMA[t]) <= s_hi


def _w(name, t):
    u = t / (T - 1)
    return {"constant": 1.0, "linear": 1 - u, "cosine": math.cos(math.pi * u / 2) ** 2,
            "linear_rev": u, "cosine_rev": math.sin(math.pi * u / 2) ** 2}[name]


STEPS = list(range(0, T, 37)) + [T - 1]


def test_a_cfg_row_is_eps_c_outside_its_interval_and_plain_cfg_inside():
    """Per row, in one batch beside rows of other methods: outside its t / sigma interval a cfg (or cfg_w) row is
    the conditional eps bit for bit; inside it is eps_u + gamma (eps_c - eps_u) bit for bit (constant schedule)."""
    rows = [GuidanceSetting(3.0, interval=(0.2, 0.6), method="cfg"),
            GuidanceSetting(2.5, sigma_interval=(0.5, 3.0), method="cfg"),
            GuidanceSetting(1.5, interval=(0.5, 1.0), sigma_interval=(0.0, 5.0), method="cfg_w"),
            GuidanceSetting(0.5, interval=(0.1, 0.9), method="cfg"),  # gamma < 1: towards the null eps inside
            GuidanceSetting(4.0, method="cfg"),  # no interval: plain cfg at every t
            GuidanceSetting(method="cond"), GuidanceSetting(0.0, interval=(0.2, 0.6))]
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    spec = GuidanceSpec.from_settings(rows, y)
    fn = MethodEps(eps_model, cond_eps, spec, null=NULL, schedule=SCHED)
    x = _x(len(rows))
    seen = {i: set() for i in range(5)}
    for t in STEPS:
        tt = torch.full((len(rows),), t)
        got = fn(x, tt)
        c = cond_eps(x, tt, y)
        null = cond_eps(x, tt, torch.full_like(y, NULL))
        for i, g in enumerate(rows[:5]):
            gamma = g.scale + 1 if g.method == "cfg_w" else g.scale
            inside = _inside(g, t)
            seen[i].add(inside)
            want = torch.lerp(null[i], c[i], torch.tensor(gamma, dtype=torch.float64)) if inside else c[i]
            assert torch.equal(got[i], want), (i, t, inside)
        assert torch.equal(got[5], c[5]) and torch.equal(got[6], eps_model(x, tt)[6])
    assert all(seen[i] == {True, False} for i in range(4)) and seen[4] == {True}  # both sides were seen


def test_schedules_scale_cfgs_guidance_strength_as_documented():
    """gamma_t = 1 + (gamma - 1) w(t) for cfg and w_t = w w(t) for cfg_w, w(t) the closed form of each schedule,
    u = t / (T - 1); 1 (eps_c) outside the interval."""
    names = list(SCHEDULES)
    rows = [GuidanceSetting(3.0, interval=(0.1, 0.9), method="cfg", schedule=n) for n in names] + \
           [GuidanceSetting(2.0, interval=(0.1, 0.9), method="cfg_w", schedule=n) for n in names]
    y = torch.arange(len(rows)) % 3
    spec = GuidanceSpec.from_settings(rows, y)
    table = spec.base_scale_table(T, SCHED.alphabar)
    fn = MethodEps(None, cond_eps, spec, null=NULL, schedule=SCHED)
    x = _x(len(rows), 1)
    for t in STEPS:
        tt = torch.full((len(rows),), t)
        got = fn(x, tt)
        c, null = cond_eps(x, tt, y), cond_eps(x, tt, torch.full_like(y, NULL))
        for i, n in enumerate(names):
            inside = 0.1 <= t / T <= 0.9
            w = _w(n, t) if inside else 0.0
            assert table[t, i].item() == pytest.approx(1 + 2 * w, abs=1e-14), (n, t)  # cfg: gamma_t
            assert table[t, len(names) + i].item() == pytest.approx(2 * w, abs=1e-14), (n, t)  # cfg_w: w_t
            want = null[i] + (1 + 2 * w) * (c[i] - null[i])
            torch.testing.assert_close(got[i], want, rtol=1e-12, atol=1e-14)
            j = len(names) + i  # cfg_w at w = 2 is cfg at gamma = 3: the same guidance
            torch.testing.assert_close(got[j], null[j] + (1 + 2 * w) * (c[j] - null[j]), rtol=1e-12, atol=1e-14)
            if not inside:
                assert torch.equal(got[i], c[i]) and torch.equal(got[j], c[j])


def test_the_boundaries_stay_exact():
    """gamma = 1 (and cfg_w's w = 0) is eps_c at every t whatever the interval and schedule; where w(t) = 1
    gamma_t is gamma bit for bit (float64: 1 + (0.1 - 1) != 0.1); rows without these options make no table."""
    rows = [GuidanceSetting(1.0, interval=(0.2, 0.7), method="cfg", schedule="cosine", sigma_interval=(0.3, 9.0)),
            GuidanceSetting(0.0, interval=(0.2, 0.7), method="cfg_w", schedule="linear"),
            GuidanceSetting(0.1, interval=(0.0, 0.5), method="cfg"),
            GuidanceSetting(0.1, method="cfg", schedule="linear")]  # w(0) = 1 at t = 0
    y = torch.tensor([0, 1, 2, 1])
    spec = GuidanceSpec.from_settings(rows, y)
    table = spec.base_scale_table(T, SCHED.alphabar)
    assert (table[:, :2] == torch.tensor([1.0, 0.0], dtype=torch.float64)).all()
    assert (table[:501, 2] == 0.1).all() and (table[501:, 2] == 1.0).all()
    assert table[0, 3] == 0.1 and 1 + (0.1 - 1) * 1.0 != 0.1
    fn = MethodEps(None, cond_eps, spec, null=NULL, schedule=SCHED)
    x = _x(4, 2)
    for t in STEPS:
        tt = torch.full((4,), t)
        assert torch.equal(fn(x, tt)[:2], cond_eps(x, tt, y)[:2]), t
    plain = GuidanceSpec.from_settings([GuidanceSetting(2.0, method="cfg"), GuidanceSetting(method="cond")], y[:2])
    assert not plain.timed_base and spec.timed_base
    MethodEps(None, cond_eps, plain, null=NULL)  # needs no schedule
    with pytest.raises(ValueError, match="cfg / cfg_w rows with a guidance interval, sigma interval or scale "
                                         "schedule need the diffusion schedule"):
        MethodEps(None, cond_eps, spec, null=NULL)


def test_rows_eps_takes_each_rows_gamma_t():
    """MethodEps.rows_eps (the differentiable base eps of x0-space rows) gives a subset of rows their own gamma_t,
    as the whole-batch call does."""
    rows = [GuidanceSetting(3.0, interval=(0.2, 0.6), method="cfg", schedule="cosine"),
            GuidanceSetting(2.0, method="cond_classifier", grad_space="x0"),
            GuidanceSetting(2.0, sigma_interval=(0.5, 3.0), method="cfg_w")]
    y = torch.tensor([0, 1, 2])
    fn = MethodEps(None, cond_eps, GuidanceSpec.from_settings(rows, y), null=NULL, schedule=SCHED)
    x = _x(3, 4)
    for t in [100, 300, 500, 900]:
        tt = torch.tensor([t, t + 7, t + 13])
        whole = fn(x, tt)
        for sub in ([0, 2], [2], [1, 0]):
            r = torch.tensor(sub)
            torch.testing.assert_close(fn.rows_eps(x[r], tt[r], r), whole[r], rtol=1e-12, atol=1e-14)
        r = torch.tensor([0])
        gamma = 1 + 2 * _w("cosine", t) if _inside(rows[0], t) else 1.0  # the closed form of row 0
        c, null = cond_eps(x[r], tt[r], y[r]), cond_eps(x[r], tt[r], torch.tensor([NULL]))
        torch.testing.assert_close(fn.rows_eps(x[r], tt[r], r), null + gamma * (c - null), rtol=1e-12, atol=1e-14)


def test_cond_classifier_honours_the_interval_and_the_schedule_as_classifier_does():
    """ADM-G's classifier term: eps_c - s w(t) c_t g inside the row's t / sigma interval, eps_c bit for bit
    outside; the classifier row beside it with the same options gets the same term on eps_u."""
    plan = make_plan(SCHED, 40)
    clf = TinyClassifier(dim=4)
    opts = [dict(interval=(0.2, 0.7), schedule="linear"), dict(sigma_interval=(0.5, 3.0), variant="unit")]
    rows = [GuidanceSetting(2.0, method="cond_classifier", **opts[0]), GuidanceSetting(3.0, method="cond_classifier",
                                                                                         **opts[1]),
            GuidanceSetting(2.0, method="classifier", **opts[0]), GuidanceSetting(3.0, method="classifier", **opts[1])]
    y = torch.tensor([0, 1, 0, 1])
    spec = GuidanceSpec.from_settings(rows, y)
    base = MethodEps(eps_model, cond_eps, spec, null=NULL, schedule=SCHED)
    eager = ClassifierGuidance(base, clf, plan, spec)
    static = ClassifierGuidance(base, clf, plan, spec, static=True)
    x = _x(4, 3)
    ab, ab_prev = SCHED.alphabar, plan.table(plan.alphabar_prev)
    seen = set()
    for t in plan.timesteps.tolist():
        tt = torch.full((4,), t)
        got = eager(x, tt)
        g, _ = classifier_log_prob_grad(clf, x, tt, y)
        bases = torch.cat([cond_eps(x, tt, y)[:2], eps_model(x, tt)[2:]])
        for i, r in enumerate(rows):
            inside = _inside(r, t)
            seen.add((i, inside))
            if not inside:
                assert torch.equal(got[i], bases[i]), (i, t)
                continue
            c = float(variant_factor(r.variant, ab[t:t + 1], ab_prev[t:t + 1]))
            want = bases[i] - r.scale * _w(r.schedule, t) * c * g[i]
            torch.testing.assert_close(got[i], want, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(static(x, tt), got, rtol=1e-12, atol=1e-14)
    assert seen == {(i, b) for i in range(4) for b in (True, False)}
    rec = RecordingClassifier()  # and the classifier runs only on steps some row's interval holds
    one = GuidanceSpec.of(0, 2.0, method="cond_classifier", interval=(0.2, 0.7), n=2)
    sample(ClassifierGuidance(MethodEps(None, cond_eps, one, null=NULL), rec, plan, one), (1, 2, 2), plan, [0, 1],
           sampler="ddim", dtype=torch.float64, progress=False)
    assert [int(t[0]) for t in rec.seen] == [t for t in plan.timesteps.flip(0).tolist() if 0.2 <= t / T <= 0.7]


@pytest.mark.parametrize("sampler", ["ddim", "heun"])
def test_one_batch_mixes_methods_and_settings_and_the_static_path_agrees(sampler):
    """Rows of every method with their own intervals and schedules in one batch: each row is what it is drawn
    alone, the CUDA-graph step's body (capture=False) samples what eager samples, and a cfg row's interval
    reaches the samples (it differs from plain cfg)."""
    plan = make_plan(SCHED, 10)
    clf = TinyClassifier(dim=4)
    rows = [GuidanceSetting(3.0, interval=(0.0, 0.5), method="cfg", schedule="linear"),
            GuidanceSetting(2.0, sigma_interval=(0.2, 4.0), method="cfg_w"),
            GuidanceSetting(3.0, method="cfg"),
            GuidanceSetting(2.0, interval=(0.3, 1.0), method="cond_classifier", schedule="cosine_rev"),
            GuidanceSetting(2.0, interval=(0.0, 0.6), method="classifier", sigma_interval=(0.1, 50.0)),
            GuidanceSetting(method="cond")]
    y = torch.tensor([0, 1, 0, 2, 1, 2])
    seeds = list(range(11, 11 + len(rows)))

    def draw(spec, seeds, static=False):
        base = MethodEps(eps_model, cond_eps, spec, null=NULL, schedule=SCHED)
        guide = ClassifierGuidance(base, clf, plan, spec, static=static) if spec.guided else None
        if static:
            return sample_static(base, guide, (1, 2, 2), plan, seeds, sampler=sampler, dtype=torch.float64,
                                 capture=False)
        return sample(guide or base, (1, 2, 2), plan, seeds, sampler, dtype=torch.float64, progress=False)

    spec = GuidanceSpec.from_settings(rows, y)
    mixed = draw(spec, seeds)
    torch.testing.assert_close(draw(spec, seeds, static=True), mixed, rtol=1e-12, atol=1e-12)
    for i, r in enumerate(rows):
        alone = draw(GuidanceSpec.from_settings([r], y[i:i + 1]), seeds[i:i + 1])
        torch.testing.assert_close(mixed[i:i + 1], alone, rtol=1e-12, atol=1e-12)
    plain_cfg = draw(GuidanceSpec.from_settings([rows[2]], y[:1]), seeds[:1])
    cond = draw(GuidanceSpec.from_settings([rows[5]], y[:1]), seeds[:1])
    assert (mixed[0] - plain_cfg[0]).abs().max() > 1e-4 and (mixed[0] - cond[0]).abs().max() > 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a CUDA GPU")
def test_captured_cuda_graphs_sample_cfg_intervals_as_eager_does():
    """The captured step (capture=True) gathers gamma_t per row from the table made before capture: the same
    samples as eager on the GPU, rows of cfg with intervals / schedules beside classifier-term rows."""
    dev = torch.device("cuda")
    plan = make_plan(SCHED, 8)
    clf = TinyClassifier(dim=4).to(dev)
    rows = [GuidanceSetting(3.0, interval=(0.0, 0.5), method="cfg", schedule="linear"),
            GuidanceSetting(2.0, sigma_interval=(0.2, 4.0), method="cfg_w"), GuidanceSetting(3.0, method="cfg"),
            GuidanceSetting(2.0, interval=(0.3, 1.0), method="cond_classifier", schedule="cosine_rev"),
            GuidanceSetting(method="cond")]
    spec = GuidanceSpec.from_settings(rows, torch.tensor([0, 1, 0, 2, 1]))
    seeds = list(range(5))
    eager_base = MethodEps(eps_model, cond_eps, spec, null=NULL, schedule=SCHED)
    ref = sample(ClassifierGuidance(eager_base, clf, plan, spec), (1, 2, 2), plan, seeds, "ddim", device=dev,
                 dtype=torch.float64, progress=False)
    base = MethodEps(eps_model, cond_eps, spec, null=NULL, schedule=SCHED)
    got = sample_static(base, ClassifierGuidance(base, clf, plan, spec, static=True), (1, 2, 2), plan, seeds,
                        sampler="ddim", device=dev, dtype=torch.float64, capture=True)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    plain = MethodEps(eps_model, cond_eps, GuidanceSpec.from_settings([rows[2]], spec.y[:1]), null=NULL)
    assert (got[0] - sample(plain, (1, 2, 2), plan, seeds[:1], "ddim", device=dev, dtype=torch.float64,
                            progress=False)[0]).abs().max() > 1e-4


def _grid(*overrides):
    node = OmegaConf.create({"sweep": {"methods": ["cfg"], "scales": [1.0, 3.0], "variants": ["score"],
                                       "samplers": ["ddim"], "steps": [50], "intervals": [[0.0, 1.0]]},
                             "sampler": {"name": "ddim", "steps": 50},
                             "guidance": {"nonfinite": "zero", "schedule": "constant", "entropy_scale": False,
                                          "entropy_cap": 10.0, "grad_at": "x_t", "grad_space": "x_t",
                                          "sigma_interval": None}})
    node.merge_with_dotlist(list(overrides))
    return build_grid(node.sweep, node.sampler, node.guidance)


def test_the_grid_gives_cfg_points_with_an_interval_their_own_keys_and_keeps_the_old_ones():
    points = _grid("sweep.intervals=[[0,1],[0.2,0.8]]", "sweep.methods=[cfg,cfg_w,cond]")
    keys = [p.key for p in points]
    assert keys == ["ddim-50-cfg-gamma1", "ddim-50-cfg-gamma3", "ddim-50-cfg-t0.2_0.8-gamma1",
                    "ddim-50-cfg-t0.2_0.8-gamma3", "ddim-50-cfg_w-w1", "ddim-50-cfg_w-w3", "ddim-50-cfg_w-t0.2_0.8-w1",
                    "ddim-50-cfg_w-t0.2_0.8-w3", "ddim-50-cond"]  # cond has no scale: one point
    by = {p.key: p for p in points}
    assert by["ddim-50-cfg-t0.2_0.8-gamma3"].settings()["t_lo"] == 0.2
    assert by["ddim-50-cfg-t0.2_0.8-gamma3"].draw_key != by["ddim-50-cfg-gamma3"].draw_key
    assert by["ddim-50-cfg-t0.2_0.8-gamma1"].draw_key == by["ddim-50-cfg-gamma1"].draw_key  # eps_c at every t
    # a point key written before #26 stays the same (existing sweep folders resume)
    assert Point(SamplerSpec("ddim", steps=50), GuidanceSetting(3.0, method="cfg")).key == "ddim-50-cfg-gamma3"
    sched = [p.key for p in _grid("guidance.schedule=linear", "guidance.sigma_interval=[0.5,20]")]
    assert sched == ["ddim-50-cfg-gamma1-linear-sig0.5_20", "ddim-50-cfg-gamma3-linear-sig0.5_20"]


def _rows(out):
    return {r["point"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_the_sweep_accepts_cfg_with_an_interval_and_writes_distinct_rows(cfg_sweep, tiny_cond_ckpt):
    """cguide.sweep with sweep.methods=[cfg] and three intervals: DDIM-2 on T = 100 visits t = 99 and t = 0, so
    [0.5, 1] guides the first step (gamma 3 there differs from gamma 1) and [0.995, 1] no step (gamma 3 there is
    the conditional eps at every step: the samples of gamma 1 bit for bit). (The last step's guidance moves x0 by
    sqrt(1 - alphabar_0) (gamma - 1)(eps_c - eps_u), below one uint8 level with these tiny nets, so [0.5, 1] is not
    compared with plain gamma 3 here; test_cguide_sample_applies_cfgs_interval compares the float samples.)"""
    from cguide.metrics.intervals import find_key
    from cguide.sweep import run

    out = run(cfg_sweep(f"cond_ckpt={tiny_cond_ckpt}", "sweep.methods=[cfg]", "sweep.scales=[1,3]",
                        "sweep.intervals=[[0.0,1.0],[0.5,1.0],[0.995,1.0]]", "metrics.names=[fid,accuracy]",
                        "sweep.save_npz=true"))
    rows = _rows(out)
    assert sorted(rows) == ["ddim-2-cfg-gamma1", "ddim-2-cfg-gamma3", "ddim-2-cfg-t0.5_1-gamma1",
                            "ddim-2-cfg-t0.5_1-gamma3", "ddim-2-cfg-t0.995_1-gamma1", "ddim-2-cfg-t0.995_1-gamma3"]
    assert [rows[k]["t_lo"] for k in ("ddim-2-cfg-gamma3", "ddim-2-cfg-t0.5_1-gamma3")] == [0.0, 0.5]
    fid = find_key(list(rows.values()), "fid")

    def samples(key):
        with np.load(out / "samples" / f"{key}.npz") as z:
            return z["arr_0"]
    # rows drawn at other positions of the shared batches: equal up to float rounding on any CPU, so at most one
    # uint8 level apart and FID close (bit for bit on one machine; across CPUs only identical batches are)
    for key in ("ddim-2-cfg-t0.5_1-gamma1", "ddim-2-cfg-t0.995_1-gamma1", "ddim-2-cfg-t0.995_1-gamma3"):
        diff = np.abs(samples(key).astype(int) - samples("ddim-2-cfg-gamma1").astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01, key
        assert rows[key][fid] == pytest.approx(rows["ddim-2-cfg-gamma1"][fid], rel=1e-3), key
    assert rows["ddim-2-cfg-gamma3"][fid] != rows["ddim-2-cfg-gamma1"][fid]
    assert rows["ddim-2-cfg-t0.5_1-gamma3"][fid] != rows["ddim-2-cfg-gamma1"][fid]


def test_cguide_sample_applies_cfgs_interval(tiny_cond_ckpt, tmp_path):
    """cguide.sample (DDIM-2 on T = 100: t = 99, 0): an interval holding no visited step is eps_c at every step,
    the samples of gamma = 1 bit for bit; [0.5, 1] guides t = 99 only."""
    from cguide.sample import run_sample
    from helpers.config import compose_cfg

    def draw(name, *over):
        cfg = compose_cfg("sample", [f"cond_ckpt={tiny_cond_ckpt}", "guidance.method=cfg", "sampler.steps=2",
                                     "progress=false", "n_per_class=2", "classes=[1,4]",
                                     f"out_dir={tmp_path / name}", *over], tmp_path / name)
        with np.load(run_sample(cfg)) as z:
            return z["samples"]
    one, three = draw("g1", "guidance.scale=1"), draw("g3", "guidance.scale=3")
    assert not np.array_equal(one, three)
    assert np.array_equal(draw("none", "guidance.scale=3", "guidance.interval=[0.995,1]"), one)
    first = draw("first", "guidance.scale=3", "guidance.interval=[0.5,1]")
    assert not np.array_equal(first, one) and not np.array_equal(first, three)
    lin = draw("lin", "guidance.scale=3", "guidance.schedule=linear")  # w(99) = 0, w(0) = 1
    assert not np.array_equal(lin, three) and not np.array_equal(lin, one)
