"""hparams_search=: Optuna (hydra-optuna-sweeper) over guidance settings, each trial one sweep point, and the
objective it optimises (cguide/grid/objective.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import yaml
from helpers.config import CONF, compose_cfg
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf


@pytest.fixture(autouse=True)
def no_hydra_left():
    """An in-process multirun leaves its (Optuna) hydra config set: other tests must not see it."""
    HydraConfig.instance().cfg = None
    yield
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


def _search_space(name: str) -> dict:
    """The sweeper's params of conf/hparams_search/<name>.yaml, parsed as the sweeper parses them."""
    params = OmegaConf.load(Path(CONF) / "hparams_search" / f"{name}.yaml").hydra.sweeper.params
    parser = OverridesParser.create()
    return {k: parser.parse_override(f"{k}={v}").value() for k, v in params.items()}


def _in_space(row: dict, space: dict) -> bool:
    scale, variant, interval = space["guidance.scale"], space["guidance.variant"], space["guidance.interval"]
    return (scale.start <= row["scale"] <= scale.end and row["variant"] in variant.list
            and [row["t_lo"], row["t_hi"]] in [yaml.safe_load(s) for s in interval.list])


def _row_of(params: dict, rows: list[dict]) -> dict:
    """The row of a trial's params (the interval param is the string the override parsed as a list)."""
    match = [r for r in rows if r["scale"] == params["guidance.scale"] and r["variant"] == params["guidance.variant"]
             and [r["t_lo"], r["t_hi"]] == yaml.safe_load(params["guidance.interval"])]
    assert len(match) == 1, (params, rows)
    return match[0]


def _search(tiny_ckpts, tmp_path, monkeypatch, name: str, *extra: str) -> tuple[list[dict], dict]:
    from cguide.grid.results import ResultsFolder
    from cguide.sweep import main

    out, ms = tmp_path / "out", tmp_path / "ms"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [
        "cguide.sweep", "-m", f"hparams_search={name}", "hydra.sweeper.n_trials=3",
        f"eps_ckpt={tiny_ckpts['eps_model']}", f"classifier_ckpt={tiny_ckpts['noisy_classifier']}",
        f"judge_ckpt={tiny_ckpts['judge']}", "data.image_size=8", "sampler.steps=2", "sweep.n_per_point=10",
        "metrics.names=[fid,accuracy]", "progress=false", "logger=none", "num_threads=1", f"out_dir={out}",
        f"hydra.sweep.dir={ms}", *extra])
    main()
    return ResultsFolder(out).rows(), OmegaConf.to_container(OmegaConf.load(ms / "optimization_results.yaml"))


def test_guidance_fid_search_finds_best_fid_at_min_accuracy(tiny_ckpts, tmp_path, monkeypatch):
    from cguide.config import ObjectiveConfig

    rows, res = _search(tiny_ckpts, tmp_path, monkeypatch, "guidance_fid")
    space = _search_space("guidance_fid")
    assert len(rows) == 3 and len({r["point"] for r in rows}) == 3, rows
    assert all(_in_space(r, space) for r in rows), rows

    penalty = ObjectiveConfig().penalty
    cfg = OmegaConf.load(Path(CONF) / "hparams_search" / "guidance_fid.yaml")
    bound = cfg.objective.min_accuracy

    def value(r):
        return r["fid_judge"] + penalty * max(0.0, bound - r["accuracy"])

    best = _row_of(res["best_params"], rows)
    assert res["best_value"] == pytest.approx(value(best), rel=1e-12)
    assert res["best_value"] == pytest.approx(min(value(r) for r in rows), rel=1e-12)


def test_guidance_pareto_search_writes_the_front(tiny_ckpts, tmp_path, monkeypatch):
    rows, res = _search(tiny_ckpts, tmp_path, monkeypatch, "guidance_pareto")
    space = _search_space("guidance_pareto")
    assert len(rows) == 3 and len({r["point"] for r in rows}) == 3, rows
    assert all(_in_space(r, space) for r in rows), rows
    front = res["solutions"]  # hydra-optuna-sweeper's key for the Pareto-optimal trials
    assert front
    for sol in front:
        r = _row_of(sol["params"], rows)
        assert sol["values"] == [r["fid_judge"], r["accuracy"]]
        # no row is at least as good in both and better in one (fid minimised, accuracy maximised)
        assert not any(o["fid_judge"] <= r["fid_judge"] and o["accuracy"] >= r["accuracy"]
                       and (o["fid_judge"], o["accuracy"]) != (r["fid_judge"], r["accuracy"]) for o in rows)


def test_objective_not_measured_stops_the_search_before_drawing(tiny_ckpts, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        _search(tiny_ckpts, tmp_path, monkeypatch, "guidance_fid", "metrics.names=[accuracy]")
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == ["error: the objective needs ['fid'] but metrics.names does not measure them; "
                   "add them, e.g. metrics.names=[accuracy,fid]"]
    assert not (tmp_path / "out" / "results.jsonl").exists()


# objective() on hand-written results folders

def _cfg(tmp_path, *overrides):
    return compose_cfg("sweep", ["logger=none", f"out_dir={tmp_path}", *overrides], tmp_path)


def _objective_of(tmp_path, row: dict, *overrides):
    """objective() of a one-point job whose row in a fresh folder has the given metrics."""
    from cguide.grid.objective import objective
    from cguide.grid.points import build_grid
    from cguide.grid.results import ResultsFolder

    cfg = _cfg(tmp_path, *overrides)
    out = tmp_path / f"r{len(list(tmp_path.glob('r*')))}"
    (point,) = build_grid(cfg.sweep, cfg.sampler, cfg.guidance)
    ResultsFolder(out).append({**point.settings(), "n": 10, **row})
    return objective(cfg, out)


def test_objective_values_in_metric_order(tmp_path):
    row = {"fid": 3.5, "accuracy": 0.8, "kid_mean": 0.01}
    assert _objective_of(tmp_path, row) == 3.5
    got = _objective_of(tmp_path, row, "objective.metrics=[fid,accuracy,kid_mean]")
    assert got == (3.5, 0.8, 0.01) and all(isinstance(v, float) for v in got)


def test_penalty_is_zero_at_the_bound_and_grows_with_the_shortfall(tmp_path):
    bound = ["objective.min_accuracy=0.9", "objective.penalty=50"]
    values = [_objective_of(tmp_path, {"fid": 2.0, "accuracy": a}, *bound) for a in (1.0, 0.95, 0.9, 0.85, 0.7, 0.0)]
    assert values[:3] == [2.0, 2.0, 2.0]
    assert all(a < b for a, b in zip(values[2:], values[3:])), values
    assert values[4] == pytest.approx(2.0 + 50 * 0.2)  # the configured weight, not a constant


def test_null_metric_fails_the_trial(tmp_path):
    # NaN (written as null) -> None: hydra-optuna-sweeper crashes the whole sweep on a NaN value
    assert _objective_of(tmp_path, {"fid": math.nan, "accuracy": 0.9}) is None
    assert _objective_of(tmp_path, {"fid": 1.0, "accuracy": math.nan}, "objective.min_accuracy=0.5") is None
    assert _objective_of(tmp_path, {"fid": 1.0, "accuracy": math.nan}, "objective.metrics=[fid,accuracy]") is None


def test_grid_job_is_not_a_trial(tmp_path):
    from cguide.grid.objective import objective
    from cguide.grid.points import build_grid
    from cguide.grid.results import ResultsFolder

    cfg = _cfg(tmp_path, "sweep.scales=[0,1]")
    for p in build_grid(cfg.sweep, cfg.sampler, cfg.guidance):
        ResultsFolder(tmp_path).append({**p.settings(), "fid": 1.0, "accuracy": 1.0})
    assert objective(cfg, tmp_path) is None


@pytest.mark.parametrize("overrides, match", [
    (["objective.metrics=[fidd]"], r"^unknown metric\(s\) \['fidd'\] in objective.metrics; known: accuracy, classwise_fid, fid, "),
    (["objective.metrics=[]"], r"^objective.metrics is empty; .* e.g. objective.metrics=\[fid\]$"),
    (["objective.min_accuracy=1.5"], r"^objective.min_accuracy must be in \[0, 1\] .*got 1.5; e.g. objective.min_acc"),
    (["objective.min_accuracy=-0.1"], r"^objective.min_accuracy must be in \[0, 1\] .*got -0.1;"),
    (["objective.min_accuracy=0.9", "objective.metrics=[fid,accuracy]"],
     r"^objective.min_accuracy bounds a single fid objective.*objective.min_accuracy=null"),
    (["objective.min_accuracy=0.9", "objective.penalty=-1"], r"^objective.penalty must be a finite number >= 0"),
])
def test_bad_objective_settings_fail_first_in_one_line(tmp_path, overrides, match):
    from cguide.grid.objective import check_objective
    from cguide.sweep import run

    cfg = _cfg(tmp_path, *overrides)
    with pytest.raises(ValueError, match=match) as e:
        check_objective(cfg)
    assert "\n" not in str(e.value)
    # run() checks it before anything else: before even the missing checkpoints
    with pytest.raises(ValueError, match=match):
        run(cfg)
    assert not any(tmp_path.iterdir())
