"""Sweep: rows, plots, grids and an offline W&B run; resume without duplicates; a Hydra multirun into one
folder and one W&B group; bad inputs refused with one clear line before anything is written."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers.config import compose_cfg

# feature metrics named for their feature space (the judge's here), each value with its interval
VALUES = {"fid_judge", "fid_inf_judge", "kid_judge", "is_judge", "precision_judge", "recall_judge", "accuracy",
          "guide_confidence", "classwise_fid_judge", "nonfinite"}
METRIC_KEYS = VALUES | {f"{k}_{end}" for k in VALUES for end in ("lo", "hi")} | {"grad_nonfinite_share", "wall_s",
                                                                                   "interval_level"}
PLOTS = {"fid_vs_scale", "fid_inf_vs_scale", "kid_vs_scale", "accuracy_vs_scale", "is_vs_scale",
         "precision_recall_vs_scale", "fid_vs_accuracy", "is_vs_fid", "precision_vs_recall", "fid_at_matched_accuracy"}
TINY_SWEEP = ["data.image_size=8", "sampler.steps=5", "sweep.n_per_point=20", "sweep.batch_size=40",
              "progress=false", "sweep.variants=[score,seed_literal]"]


def _ckpts(tiny_ckpts):
    return [f"eps_ckpt={tiny_ckpts['eps_model']}", f"classifier_ckpt={tiny_ckpts['noisy_classifier']}",
            f"judge_ckpt={tiny_ckpts['judge']}"]


def _sweep(tiny_ckpts, out: Path, *overrides):
    from cguide.grid.runner import run_sweep

    return run_sweep(compose_cfg("sweep", [*_ckpts(tiny_ckpts), *TINY_SWEEP, *overrides], out))


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sweep_2x2(tiny_ckpts, tmp_path_factory):
    """scales {0, 2} x variants {score, seed_literal}, run as an interrupted sweep: s = 0 first, then all."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sweep") / "out"
    _sweep(tiny_ckpts, out, "sweep.scales=[0]", "logger=none")
    first = {r["point"]: r for r in _rows(out)}
    _sweep(tiny_ckpts, out, "sweep.scales=[0,2]", "logger=wandb", "logger.mode=offline")
    import wandb
    wandb.teardown()  # the W&B service flushes the finished run's file when it stops (at exit in real use)
    return out, first


def test_sweep_writes_rows_plots_grids_and_wandb_run(sweep_2x2):
    from cguide.grid.runner import sweep_group

    out, _ = sweep_2x2
    rows = _rows(out)
    with open(out / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(rows) == len(csv_rows) == 4
    assert [r["point"] for r in csv_rows] == [r["point"] for r in rows]
    assert {(r["variant"], r["scale"]) for r in rows} == {(v, s) for v in ("score", "seed_literal") for s in (0.0, 2.0)}
    for r in rows:
        assert METRIC_KEYS <= set(r) and r["n"] == 20 and r["sampler"] == "ddim" and r["steps"] == 5
        assert (out / "grids" / f"{r['point']}.png").stat().st_size > 0
    assert {p.stem for p in (out / "plots").glob("*.png")} == PLOTS
    for r in rows:  # each value inside its interval, and the replicates behind it on disk
        assert r["fid_judge_lo"] <= r["fid_judge_hi"] and r["accuracy_lo"] <= r["accuracy"] <= r["accuracy_hi"]
        assert r["fid_inf_judge_lo"] <= r["fid_inf_judge"] <= r["fid_inf_judge_hi"]  # half-samples (bootstrap.py)
        assert (out / "evidence" / f"{r['point']}.pt").is_file()
    report = (out / "evidence.md").read_text()  # tiny nets never reach the default target accuracies
    assert "| score | 0.9 | - | outside its range [" in report
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # the s = 0 part ran with logger=none
    group = sweep_group("default", json.loads((out / "sweep.json").read_text())["defines"])
    assert group.encode() in next(runs[0].glob("run-*.wandb")).read_bytes()


def test_resumed_sweep_kept_finished_points_and_pairs_them(sweep_2x2):
    out, first = sweep_2x2
    rows = {r["point"]: r for r in _rows(out)}
    for key, row in first.items():  # not recomputed: identical, wall time included
        assert rows[key] == row
    s0 = [r for r in rows.values() if r["scale"] == 0]
    s2 = [r for r in rows.values() if r["scale"] == 2]
    # same seeds and targets at every point: s = 0 is one sample set whatever the variant
    assert s0[0]["fid_judge"] == pytest.approx(s0[1]["fid_judge"], rel=1e-9)
    assert all(r["fid_judge"] != s0[0]["fid_judge"] for r in s2)  # guidance changed the samples


def test_lost_row_is_redrawn_once_and_never_duplicated(sweep_2x2, tiny_ckpts, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(sweep_2x2[0], out)
    rows = _rows(out)
    lost = rows.pop(3)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _sweep(tiny_ckpts, out, "sweep.scales=[0,2]", "logger=none")
    again = {r["point"]: r for r in _rows(out)}
    assert len(_rows(out)) == 4 and len(again) == 4
    assert all(again[r["point"]] == r for r in rows)
    redrawn = again[lost["point"]]
    assert redrawn["wall_s"] != lost["wall_s"]
    assert redrawn["fid_judge"] == pytest.approx(lost["fid_judge"], rel=1e-6)  # reproducible from the seeds
    before = (out / "results.csv").read_bytes()
    _sweep(tiny_ckpts, out, "sweep.scales=[0,2]", "logger=none")  # nothing left to do
    assert (out / "results.csv").read_bytes() == before


def test_folder_with_other_settings_is_refused_untouched(sweep_2x2, tiny_ckpts):
    out = sweep_2x2[0]
    before = {p: (out / p).read_bytes() for p in ("results.csv", "results.jsonl", "sweep.json")}
    with pytest.raises(ValueError, match=r"holds a sweep with different settings \(differs in: n_per_point\); "
                                         r"use another out_dir or sweep.name"):
        _sweep(tiny_ckpts, out, "sweep.scales=[0,2]", "sweep.n_per_point=30", "logger=none")
    assert {p: (out / p).read_bytes() for p in before} == before


@pytest.mark.parametrize("override,error,match", [
    ("sweep.scales=[]", ValueError, r"empty grid: sweep.scales is empty"),
    ("sweep.variants=[]", ValueError, r"empty grid: sweep.variants is empty"),
    ("metrics.names=[fid,fidd]", ValueError, r"unknown metric\(s\) \['fidd'\] in metrics.names; known: fid"),
    ("metrics.extractor=clip", ValueError, r"unknown feature extractor 'clip' \(metrics.extractor\); known: judge"),
    ("metrics.extractor=inception", FileNotFoundError, r"Inception-v3 weights not found at /nowhere/w.pth"),
    ("sweep.n_per_point=5", ValueError, r"n_per_point=5 is fewer than the 10 classes; set sweep.n_per_point >= 10"),
    ("sweep.scales=[-1]", ValueError, r"guidance scale must be finite and >= 0"),
    ("sweep.intervals=[[0.9,0.1]]", ValueError, r"guidance interval needs \[t_lo, t_hi\]"),
    ("sweep.steps=[5,500]", ValueError, r"sampling steps must be in \[1, T=100\], got 500"),
    ("sweep.samplers=[ddim,eulr]", ValueError, r"unknown sampler 'eulr' in sweep.samplers; registered: ddim, ddpm, "),
    ("data.image_size=16", ValueError, r"data 'mnist5k' gives 10 classes of images \[1, 16, 16\].*data.image_size"),
])
def test_bad_sweep_inputs_fail_before_writing(tiny_ckpts, tmp_path, override, error, match):
    with pytest.raises(error, match=match):
        _sweep(tiny_ckpts, tmp_path, "metrics.inception_weights=/nowhere/w.pth", "logger=none", override)
    assert not (tmp_path / "sweep.json").exists() and not (tmp_path / "results.csv").exists()


def test_sweep_cli_reports_one_line_and_exit_code_2(tiny_ckpts, tmp_path, monkeypatch, capsys):
    from cguide.sweep import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cguide.sweep", *_ckpts(tiny_ckpts), "sweep.scales=[]", "logger=none",
                                      f"out_dir={tmp_path / 'out'}"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: empty grid: sweep.scales is empty"), err


def test_hydra_multirun_jobs_share_folder_and_wandb_group(tiny_ckpts, tmp_path):
    from cguide.grid.runner import sweep_group

    out = tmp_path / "mr"
    cmd = [sys.executable, "-m", "cguide.sweep", "-m", "guidance.scale=0,1", *_ckpts(tiny_ckpts), f"out_dir={out}",
           "data.image_size=8", "sampler.steps=3", "sweep.n_per_point=10", "metrics.names=[fid,accuracy]",
           "progress=false", "num_threads=1", "logger.mode=offline", "sweep.name=mr"]
    env = {**os.environ, "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out)
    assert sorted(r["scale"] for r in rows) == [0.0, 1.0]
    assert {"fid_judge", "accuracy", "nonfinite"} <= set(rows[0])
    group = sweep_group("mr", json.loads((out / "sweep.json").read_text())["defines"]).encode()
    runs = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2 and all(group in r.read_bytes() for r in runs)
    assert (out / "plots" / "fid_vs_scale.png").is_file() and len(list((out / "hydra").glob("multirun-*/*"))) >= 2


def test_grid_points_and_shared_batches():
    from cguide.config import GuidanceConfig
    from cguide.grid.points import balanced_targets, build_grid, pack

    sweep = dict(methods=["classifier"], scales=[0, 1, 2, 1], variants=["score", "unit"], samplers=["ddim", "ddpm"],
                 steps=[5, None], intervals=[[0, 1], [0.5, 1.0]])
    sampler = OmegaConf.create(dict(name="ddim", steps=50, spacing="uniform", eta=0.0, var_type="fixed_small",
                                    clip_x0=True))
    guidance = OmegaConf.structured(GuidanceConfig)
    pts = build_grid(sweep, sampler, guidance)
    assert len(pts) == 3 * 2 * 2 * 2 * 2 and len({p.key for p in pts}) == len(pts)  # duplicate scale dropped
    calls = pack(pts, 4)
    assert sorted(p.key for c in calls for p in c) == sorted(p.key for p in pts)
    assert all(len(c) <= 4 and len({p.batch_key for p in c}) == 1 for c in calls)
    assert len(calls) == 8 * 2  # 8 loops (sampler x steps x interval) of 6 points each -> 4 + 2
    assert [p.guidance.scale for p in calls[0][:2]] == [0.0, 0.0]  # s = 0 of both variants share the first call
    # one point per call: the s = 0 points of the variants still share theirs (one draw, measured per variant)
    single = pack(pts, 1)
    assert len(single) == 8 * 5 and all(len(c) == 1 or {p.guidance.scale for p in c} == {0.0} for c in single)
    assert all(len({p.draw_key for p in c}) == 1 for c in single) and [len(c) for c in single[:2]] == [2, 1]
    assert balanced_targets(23, 10).bincount().tolist() == [3, 3, 3] + [2] * 7
    # methods: each its own scales; settings without a classifier term drop the variant, cond the interval too
    # (no duplicates); cfg keeps the interval (#26: it acts on gamma)
    methods = build_grid(dict(sweep, methods=["classifier", "cfg", "cond", "cond_classifier"],
                              method_scales={"cfg": [1, 3], "cond": [0]}, samplers=["ddim"], steps=[5]),
                         sampler, guidance)
    keys = [p.key for p in methods]
    assert "ddim-5-cfg-gamma3" in keys and "ddim-5-cond" in keys and "ddim-5-cond_classifier-t0.5_1-unit-s2" in keys
    assert "ddim-5-cfg-t0.5_1-gamma3" in keys
    assert len(methods) == 3 * 2 * 2 + 2 * 2 + 1 + 3 * 2 * 2
    by_draw = {}
    for p in methods:
        by_draw.setdefault(p.draw_key, []).append(p.key)
    assert sorted(by_draw[("c", None, 0.0, "", "")]) == sorted(  # cond = cond_classifier at s = 0: drawn once
        ["ddim-5-cond", "ddim-5-cond_classifier-t0_1-score-s0", "ddim-5-cond_classifier-t0_1-unit-s0",
         "ddim-5-cond_classifier-t0.5_1-score-s0", "ddim-5-cond_classifier-t0.5_1-unit-s0"])
    from cguide.metrics import METRIC_NAMES
    from cguide.config import MetricsConfig
    assert MetricsConfig().names == list(METRIC_NAMES)


def _append_rows(root, start):
    from cguide.grid.results import ResultsFolder

    folder = ResultsFolder(root)
    for i in range(start, start + 10):
        folder.append({"point": f"p{i % 15}", "fid": float("nan") if i == 3 else float(i)})


def test_parallel_appends_keep_one_row_per_point(tmp_path):
    import multiprocessing as mp

    procs = [mp.get_context("fork").Process(target=_append_rows, args=(tmp_path, s)) for s in (0, 5, 10)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = _rows(tmp_path)
    assert sorted(r["point"] for r in rows) == sorted(f"p{i}" for i in range(15))  # 30 appends, 15 points
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 15
    # p3: the first of i = 3 (NaN) and i = 18 to land wins (a race under load); NaN is written as null (strict JSON)
    assert next(r for r in rows if r["point"] == "p3")["fid"] in (None, 18.0)
    _append_rows(tmp_path / "one", 3)
    assert next(r for r in _rows(tmp_path / "one") if r["point"] == "p3")["fid"] is None
