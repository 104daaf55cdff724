"""Guidance methods through the entry points: one sweep with a method axis (each method its own scales),
sampling with a conditional model, the pipeline's conditional stage, and the checkpoint checks."""

import json

import numpy as np
import pytest


def _rows(out):
    return {r["point"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_a_sweep_compares_methods_on_shared_seeds(cfg_sweep, tiny_cond_ckpt, tmp_path):
    from cguide.sweep import run

    cfg = cfg_sweep(f"cond_ckpt={tiny_cond_ckpt}", "sweep.methods=[classifier,cfg,cond,cond_classifier]",
                    "sweep.scales=[0,2]", "+sweep.method_scales={cfg:[1,3],cond:[0],cond_classifier:[0,2]}",
                    "metrics.names=[fid,is,prc,accuracy]")
    out = run(cfg)
    rows = _rows(out)
    assert sorted(rows) == sorted(["ddim-2-t0_1-score-s0", "ddim-2-t0_1-score-s2", "ddim-2-cfg-gamma1",
                                   "ddim-2-cfg-gamma3", "ddim-2-cond", "ddim-2-cond_classifier-t0_1-score-s0",
                                   "ddim-2-cond_classifier-t0_1-score-s2"])
    assert {r["method"] for r in rows.values()} == {"classifier", "cfg", "cond", "cond_classifier"}
    cond, adm0 = rows["ddim-2-cond"], rows["ddim-2-cond_classifier-t0_1-score-s0"]
    assert cond["fid_judge"] == adm0["fid_judge"] and cond["accuracy"] == adm0["accuracy"]  # the same samples
    assert rows["ddim-2-cfg-gamma3"]["fid_judge"] != rows["ddim-2-cfg-gamma1"]["fid_judge"]
    for plot in ("fid_vs_accuracy", "is_vs_fid", "precision_vs_recall"):
        assert (out / "plots" / f"{plot}.png").is_file()
    defines = json.loads((out / "sweep.json").read_text())["defines"]
    assert defines["cond_ckpt"]["size"] == tiny_cond_ckpt.stat().st_size


def test_sampling_with_cfg_and_a_conditional_checkpoint(tiny_cond_ckpt, tmp_path):
    from cguide.sample import run_sample
    from helpers.config import compose_cfg

    cfg = compose_cfg("sample", [f"cond_ckpt={tiny_cond_ckpt}", "guidance.method=cfg", "guidance.scale=2",
                                 "sampler.steps=3", "progress=false", "n_per_class=2", "classes=[1,4]",
                                 f"out_dir={tmp_path}"], tmp_path)
    with np.load(run_sample(cfg)) as z:
        assert z["samples"].shape == (4, 1, 8, 8) and np.isfinite(z["samples"]).all()
        assert json.loads(z["settings"].item())["cond_ckpt"] == str(tiny_cond_ckpt)


@pytest.mark.parametrize("over,message", [
    (["guidance.method=cfg"], r"method cfg needs|methods cond, cfg and cond_classifier need a class-conditional "
                              r"eps-model: set cond_ckpt=<path>"),
    (["guidance.method=cond", "cond_ckpt={eps}"], r"holds an unconditional eps-model, but a class-conditional one"),
    (["eps_ckpt={cond}"], r"holds a class-conditional eps-model \(model.cond=true\), but an unconditional one"),
])
def test_conditioning_mismatches_are_one_line(tiny_ckpts, tiny_cond_ckpt, tmp_path, over, message):
    from cguide.sample import run_sample
    from helpers.config import compose_cfg

    fill = {"eps": tiny_ckpts["eps_model"], "cond": tiny_cond_ckpt}
    args = [f"eps_ckpt={tiny_ckpts['eps_model']}", "sampler.steps=2", "progress=false", "n_per_class=1",
            "guidance.scale=0", f"out_dir={tmp_path}"] + [o.format(**fill) for o in over]
    with pytest.raises(ValueError, match=message) as e:
        run_sample(compose_cfg("sample", args, tmp_path))
    assert "\n" not in str(e.value)


def test_the_pipeline_trains_the_conditional_model_when_a_method_needs_it(cfg_pipeline, tmp_path, capsys):
    from cguide.pipeline import run_pipeline

    fast = ["model.max_steps=4", "classifier.max_steps=4", "judge.max_steps=4", "sweep.n_per_point=20",
            "sweep.steps=[4]", "sweep.methods=[cfg,cond]", "+sweep.method_scales={cfg:[2],cond:[0]}"]
    sweep_dir = run_pipeline(cfg_pipeline(*fast))
    out = capsys.readouterr().out
    assert "[cond_diffusion] no checkpoint yet: training" in out
    assert "[diffusion]" not in out  # no method here needs the unconditional model
    assert sorted(_rows(sweep_dir)) == ["ddim-4-cfg-gamma2", "ddim-4-cond"]


def test_a_sweep_runs_the_classifier_term_options_each_under_its_own_key(cfg_sweep):
    """schedules, sigma intervals, entropy scaling, the posterior-mean gradient and dynamic thresholding reach
    the points (own keys, own rows); at s = 0 they are all the unguided draw."""
    from cguide.sweep import run

    base = ["sweep.scales=[0,2]", "metrics.names=[fid,accuracy]", "sampler.name=ddpm"]
    rows = {}
    for over in (["guidance.schedule=linear"], ["guidance.sigma_interval=[0.5,20]"], ["guidance.entropy_scale=true"],
                 ["guidance.grad_at=posterior_mean"], []):
        rows.update(_rows(run(cfg_sweep(*base, *over))))
    guided = sorted(k for k in rows if "-s2" in k)
    assert guided == sorted(["ddpm-2-t0_1-score-s2-linear", "ddpm-2-t0_1-score-s2-sig0.5_20",
                             "ddpm-2-t0_1-score-s2-ent10", "ddpm-2-t0_1-score-s2-posterior_mean",
                             "ddpm-2-t0_1-score-s2"])
    unguided = [rows[k]["fid_judge"] for k in rows if "-s0" in k]
    assert len(unguided) == 5 and len(set(unguided)) == 1  # at s = 0 every option is the same unguided draw
    assert rows["ddpm-2-t0_1-score-s2-linear"]["schedule"] == "linear"
    assert rows["ddpm-2-t0_1-score-s2-sig0.5_20"]["sigma_lo"] == 0.5
    plain = rows["ddpm-2-t0_1-score-s2"]["fid_judge"]  # (with 2 steps of tiny nets the entropy factor and the
    for key in ("linear", "posterior_mean"):  # sigma interval may change nothing; their math is in test_guidance_options)
        assert rows[f"ddpm-2-t0_1-score-s2-{key}"]["fid_judge"] != plain, key


def test_dynamic_thresholding_is_part_of_what_defines_a_sweep_folder(cfg_sweep):
    from cguide.sweep import run

    out = run(cfg_sweep("sweep.scales=[0]", "metrics.names=[accuracy]"))
    with pytest.raises(ValueError, match=r"differs in: sampler"):
        run(cfg_sweep("sweep.scales=[0]", "metrics.names=[accuracy]", "sampler.dynamic_threshold=0.9"))
    assert (out / "sweep.json").is_file()
