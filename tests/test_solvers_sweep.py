"""sweep.sampler_steps (each sampler its own step counts) and the solvers experiment (#27 item 6): the grid's
(sampler, steps) pairs and their keys, bad input refused with one line, the pipeline's sweep folder names kept
for configs without it, the FID-vs-evaluations plot, and a tiny sweep end to end."""

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers.config import compose_cfg

SOLVERS = {"ddim": [10, 25, 50], "euler": [25], "heun": [10, 25], "dpmpp_2m": [10, 15, 20], "unipc": [10]}


def _nodes(**sweep):
    from cguide.config import GuidanceConfig

    sampler = OmegaConf.create(dict(name="ddim", steps=50, spacing="uniform", eta=0.0, var_type="fixed_small",
                                    clip_x0=True))
    grid = OmegaConf.create(dict(dict(methods=["classifier"], scales=[0, 2], variants=["score"], samplers=["ddim"],
                                      steps=[50], intervals=[[0, 1]]), **sweep))
    return grid, sampler, OmegaConf.structured(GuidanceConfig)


def test_sampler_steps_are_the_grids_sampler_axis_with_the_old_keys():
    """Fails with sampler_steps ignored (the grid is then ddim-50 only)."""
    from cguide.grid.points import build_grid

    pts = build_grid(*_nodes(sampler_steps=SOLVERS))
    pairs = [(smp, k) for smp, ks in SOLVERS.items() for k in ks]
    assert list(dict.fromkeys((p.sampler.name, p.sampler.steps) for p in pts)) == pairs
    assert len(pts) == len(pairs) * 2 and {p.guidance.scale for p in pts} == {0.0, 2.0}
    assert "ddim-50-t0_1-score-s2" in {p.key for p in pts} and "heun-10-t0_1-score-s0" in {p.key for p in pts}
    # empty (the default): sweep.samplers x sweep.steps, the same points as without the field
    old = build_grid(*_nodes(samplers=["ddim", "heun"], steps=[4, 8]))
    assert build_grid(*_nodes(samplers=["ddim", "heun"], steps=[4, 8], sampler_steps={})) == old
    assert {(p.sampler.name, p.sampler.steps) for p in old} == {(s, k) for s in ("ddim", "heun") for k in (4, 8)}


@pytest.mark.parametrize("bad, match", [
    ({"ddim": [10], "eulr": [25]}, r"^unknown sampler 'eulr' in sweep.sampler_steps; registered: ddim, ddpm, "),
    ({"heun": [0, 10]}, r"^sweep.sampler_steps.heun must be a non-empty list of step counts >= 1 \(or null for all "
                        r"T\), got \[0, 10\]; fix it or drop heun from sweep.sampler_steps$"),
    ({"ddim": []}, r"^sweep.sampler_steps.ddim must be a non-empty list .*got \[\]"),
    ({"ddim": 10}, r"^sweep.sampler_steps.ddim must be a non-empty list .*got 10;"),
    ({"ddim": [2.5]}, r"^sweep.sampler_steps.ddim must be a non-empty list .*got \[2.5\]"),
    ({"heun": [1]}, r"^sampler heun is a solver of order 2: it needs at least 2 steps, got 1; raise "
                    r"sweep.sampler_steps.heun \(or use ddim\)$"),
])
def test_bad_sampler_steps_is_one_line(bad, match):
    """Fails with the checks in sampler_pairs removed (then 0 and 2.5 reach the spec with a line naming
    sweep.steps, [] and 10 give no line at all)."""
    from cguide.grid.points import build_grid

    with pytest.raises(ValueError, match=match) as e:
        build_grid(*_nodes(sampler_steps=bad))
    assert "\n" not in str(e.value)


def _fake_ckpts(root: Path) -> dict:
    ckpts = {k: root / f"{k}.ckpt" for k in ("diffusion", "classifier", "judge")}
    for p in ckpts.values():
        p.write_bytes(b"x")
    return ckpts


def test_pipeline_sweep_folder_keeps_its_name_without_sampler_steps(tmp_path):
    """The digest of a default config is the one it had before the field existed (composed here by deleting the
    field from the tree); fails with the digest's `del grid["sampler_steps"]` line removed."""
    from cguide.pipeline import sweep_config

    ckpts = _fake_ckpts(tmp_path)
    cfg = compose_cfg("pipeline", [f"out_dir={tmp_path}"], tmp_path / "hydra")
    before_field = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # not structured: keys can go
    del before_field.sweep["sampler_steps"]
    assert "sampler_steps" in cfg.sweep and "sampler_steps" not in before_field.sweep
    assert sweep_config(cfg, ckpts, tmp_path).out_dir == sweep_config(before_field, ckpts, tmp_path).out_dir
    # given, it defines the grid: a folder of its own
    solvers = compose_cfg("pipeline", [f"out_dir={tmp_path}", "+sweep.sampler_steps={ddim:[10]}"], tmp_path / "h2")
    assert sweep_config(solvers, ckpts, tmp_path).out_dir != sweep_config(cfg, ckpts, tmp_path).out_dir


def test_solvers_experiment_composes_on_the_quick_profiles_stages(tmp_path):
    from cguide.grid.points import build_grid
    from cguide.pipeline import sweep_config

    cfg = compose_cfg("pipeline", ["experiment=mnist5k_solvers"], tmp_path / "hydra")
    quick = compose_cfg("pipeline", ["experiment=mnist5k_quick"], tmp_path / "hydra")
    assert cfg.out_dir == quick.out_dir == "outputs/pipeline/mnist5k_quick"
    for part in ("data", "model", "classifier", "judge", "diffusion"):  # the trained stages' settings: reused
        assert OmegaConf.to_container(cfg[part], resolve=True) == OmegaConf.to_container(quick[part], resolve=True)
    assert cfg.sweep.n_per_point == quick.sweep.n_per_point == 250
    assert OmegaConf.to_container(cfg.sweep.sampler_steps) == SOLVERS
    pts = build_grid(cfg.sweep, cfg.sampler, cfg.guidance)
    assert {p.guidance.scale for p in pts} == {0.0, 2.0, 4.0, 8.0, 16.0} and {p.guidance.variant for p in pts} == {
        "score"}
    assert len(pts) == 5 * 10
    ckpts = _fake_ckpts(tmp_path)
    assert sweep_config(cfg, ckpts, tmp_path).out_dir != sweep_config(quick, ckpts, tmp_path).out_dir


def _row(sampler: str, steps: int, scale: float, fid: float, **extra) -> dict:
    evals = 2 * steps - 1 if sampler == "heun" else steps
    return {"point": f"{sampler}-{steps}-t0_1-score-s{scale:g}", "method": "classifier", "variant": "score",
            "sampler": sampler, "steps": steps, "scale": scale, "eps_evals": evals,
            "clf_grads": evals if scale else 0, "accuracy": 0.5 + scale / 40, "fid_judge": fid,
            "fid_judge_lo": fid - 0.3, "fid_judge_hi": fid + 0.4, "interval_level": 0.95, **extra}


def test_fid_vs_evals_plot_only_where_samplers_or_steps_vary(tmp_path):
    """Fails with the plot left out of write_plots; and with its condition dropped (then the single-sampler
    sweep gets it too)."""
    from cguide.grid.plots import write_plots

    rows = [_row(smp, k, s, 10.0 / math.sqrt(k) + s)
            for smp, ks in (("ddim", [10, 25, 50]), ("heun", [10, 25]), ("dpmpp_2m", [10, 20]))
            for k in ks for s in (0.0, 2.0, 8.0)]
    paths = write_plots(rows, tmp_path / "many")
    png = tmp_path / "many" / "fid_vs_evals.png"
    assert paths["fid_vs_evals"] == png and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one_steps = [r for r in rows if r["sampler"] == "ddim"]  # one sampler, several step counts: still made
    assert "fid_vs_evals" in write_plots(one_steps, tmp_path / "steps")
    single = [r for r in rows if r["sampler"] == "ddim" and r["steps"] == 50]  # one sampler, one steps value
    assert "fid_vs_scale" in write_plots(single, tmp_path / "single")
    assert not (tmp_path / "single" / "fid_vs_evals.png").exists()


def test_fid_vs_evals_plot_draws_each_points_interval(tmp_path, monkeypatch):
    """A line per sampler in each scale's panel, x = eps_evals, with each point's FID interval as its bar;
    fails with the bars dropped or the x axis the step count."""
    from cguide.grid import plots

    drawn = []
    real = plots.plt.Axes.errorbar

    def spy(ax, x, y, yerr=None, **kw):
        drawn.append((ax, kw["label"], list(x), list(y), yerr))
        return real(ax, x, y, yerr=yerr, **kw)

    monkeypatch.setattr(plots.plt.Axes, "errorbar", spy)
    rows = [_row("heun", k, s, float(k + s)) for k in (10, 25) for s in (0.0, 4.0)] + [
        _row("ddim", 50, s, 1.0 + s) for s in (0.0, 4.0)]
    plots.plot_fid_vs_evals(rows, "fid_judge", tmp_path / "p.png")
    drawn = [(ax.get_title(), *rest) for ax, *rest in drawn]  # the panel's title, set after its lines
    heun4 = next(d for d in drawn if d[1] == "heun" and d[0] == "s = 4")
    assert heun4[2] == [19, 49] and heun4[3] == [14.0, 29.0]
    assert heun4[4] == [[pytest.approx(0.3)] * 2, [pytest.approx(0.4)] * 2]
    assert {(d[0], d[1]) for d in drawn} == {("s = 0", "heun"), ("s = 0", "ddim"), ("s = 4", "heun"),
                                             ("s = 4", "ddim")}


def test_sweep_with_sampler_steps_end_to_end(tiny_ckpts, tmp_path):
    """Tiny checkpoints, {ddim: [2, 3], heun: [2, 3]}: exactly those (sampler, steps) pairs at each scale, each
    row's evaluations its sampler's (heun 2K - 1, classifier gradients at every guided one), and the plot.
    Fails with sampler_steps ignored (ddim-2 only)."""
    from cguide.grid.runner import run_sweep

    torch.set_num_threads(1)
    out = tmp_path / "out"
    run_sweep(compose_cfg("sweep", [
        f"eps_ckpt={tiny_ckpts['eps_model']}", f"classifier_ckpt={tiny_ckpts['noisy_classifier']}",
        f"judge_ckpt={tiny_ckpts['judge']}", "data.image_size=8", "sampler.steps=2", "sweep.n_per_point=20",
        "sweep.batch_size=40", "progress=false", "logger=none", "sweep.scales=[0,2]",
        "+sweep.sampler_steps={ddim:[2,3],heun:[2,3]}", "metrics.names=[fid,accuracy]",
        "metrics.interval_resamples=20"], out))
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["sampler"], r["steps"], r["scale"]) for r in rows) == sorted(
        (smp, k, s) for smp in ("ddim", "heun") for k in (2, 3) for s in (0.0, 2.0))
    for r in rows:
        evals = 2 * r["steps"] - 1 if r["sampler"] == "heun" else r["steps"]
        assert r["eps_evals"] == evals and r["clf_grads"] == (evals if r["scale"] else 0), r
        assert r["point"].startswith(f"{r['sampler']}-{r['steps']}-")
    assert (out / "plots" / "fid_vs_evals.png").read_bytes()[:4] == b"\x89PNG"
