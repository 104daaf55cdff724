"""The pipeline: four trained stages (eps-model, classifier, judge, second judge) then a sweep, reusing what is done
and retraining what changed."""

import json

import pytest

from omegaconf import OmegaConf

from helpers.config import PIPELINE_FAST, compose_cfg


def _run(cfg_pipeline, extra=()):
    from cguide.pipeline import run_pipeline

    return run_pipeline(cfg_pipeline(*PIPELINE_FAST, *extra))


def test_pipeline_trains_sweeps_then_reuses(cfg_pipeline, capsys):
    sweep_dir = _run(cfg_pipeline)
    out = capsys.readouterr().out
    assert out.count("no checkpoint yet: training") == 4 and "[judge2] trained in" in out
    rows = [json.loads(line) for line in (sweep_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["scale"] for r in rows) == [0.0, 2.0]
    assert "guidance sweep (2 points; [95 % intervals])" in out and "FID_judge" in out
    assert f"evidence: {sweep_dir / 'evidence.md'}" in out
    # the second judge (#26 item 6): its accuracy and the judges' agreement, each with its interval, in every row
    header = (sweep_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert {f"{m}{s}" for m in ("accuracy_judge2", "judge_agreement") for s in ("", "_lo", "_hi")} <= set(header)
    assert all(r["accuracy_judge2_lo"] <= r["accuracy_judge2"] <= r["accuracy_judge2_hi"] for r in rows)
    assert "acc_judge2" in out and "agreement" in out
    assert "## Both judges, per point" in (sweep_dir / "evidence.md").read_text()
    # stage times for benchmarks (networks until the sweep starts, then the sweep): they add up to the wall
    times = json.loads((sweep_dir.parents[1] / "pipeline_times.json").read_text())
    assert times["sweep_dir"] == str(sweep_dir) and times["stages_s"] > 0 and times["sweep_s"] > 0
    assert times["stages_s"] + times["sweep_s"] == pytest.approx(times["wall_s"], abs=0.2)
    assert f"(networks {times['stages_s']:.0f} s, sweep {times['sweep_s']:.0f} s;" in out
    csv_before = (sweep_dir / "results.csv").read_bytes()

    assert _run(cfg_pipeline) == sweep_dir
    out = capsys.readouterr().out
    assert out.count("settings unchanged: reusing") == 4
    assert "2 done already, 0 to run" in out
    assert (sweep_dir / "results.csv").read_bytes() == csv_before


def test_extend_sweep_adds_points_to_a_finished_sweep(cfg_pipeline, tmp_path, capsys):
    """More scales near a target accuracy go into the finished sweep's folder (its points kept, only the new one
    drawn), not a fresh folder per grid that would draw every point again; other settings are refused there."""
    sweep_dir = _run(cfg_pipeline)
    capsys.readouterr()
    more = ["sweep.scales=[0,1,2]", f"extend_sweep={sweep_dir}"]
    assert _run(cfg_pipeline, more) == sweep_dir
    assert "2 done already, 1 to run" in capsys.readouterr().out
    rows = [json.loads(line) for line in (sweep_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["scale"] for r in rows) == [0.0, 1.0, 2.0]
    before = (sweep_dir / "results.jsonl").read_bytes()
    with pytest.raises(ValueError, match="holds a sweep with different settings .differs in: n_per_point"):
        _run(cfg_pipeline, [*more, "sweep.n_per_point=24"])
    with pytest.raises(ValueError, match=r"extend_sweep=.* is not a sweep folder \(no sweep.json\)"):
        _run(cfg_pipeline, [f"extend_sweep={tmp_path / 'nowhere'}"])
    assert (sweep_dir / "results.jsonl").read_bytes() == before


def test_changed_stage_settings_retrain_and_keep_the_old_run(cfg_pipeline, tmp_path, capsys):
    _run(cfg_pipeline)
    capsys.readouterr()
    _run(cfg_pipeline, ["judge.max_steps=5"])
    out = capsys.readouterr().out
    assert "[judge] settings changed (net): retraining; previous run kept in" in out
    assert "[judge2] settings changed (net): retraining" in out  # trained like the judge: its steps follow
    assert out.count("settings unchanged: reusing") == 2
    assert len(list((tmp_path / "pipeline").glob("judge.replaced-*/checkpoints/judge.ckpt"))) == 1


def test_full_profile_composes_for_one_gpu_with_the_fast_fp32_step(tmp_path):
    from cguide.pipeline import sweep_config

    cfg = compose_cfg("pipeline", [f"out_dir={tmp_path}", "experiment=mnist5k_full"], tmp_path / "hydra")
    assert cfg.trainer.accelerator == "gpu" and cfg.model.size == "bench32" and cfg.data.image_size == 32
    ckpts = {k: tmp_path / f"{k}.ckpt" for k in ("diffusion", "classifier", "judge")}
    for p in ckpts.values():
        p.write_bytes(b"x")
    speed = sweep_config(cfg, ckpts, tmp_path).speed
    assert (speed.compile, speed.cuda_graph, speed.channels_last, speed.bf16) == (True, True, True, False)
    quick = compose_cfg("pipeline", [f"out_dir={tmp_path}"], tmp_path / "hydra")
    bf16 = sweep_config(quick, ckpts, tmp_path)
    assert bf16.speed.bf16 is True  # the quick profile samples under bf16 autocast (issue #17)
    # bf16 changes the samples: its sweep gets its own folder rather than a settings clash with the fp32 one
    fp32 = sweep_config(compose_cfg("pipeline", [f"out_dir={tmp_path}", "speed.bf16=false"], tmp_path / "hydra"),
                        ckpts, tmp_path)
    assert fp32.speed.bf16 is False  # a pipeline override reaches the sweep
    assert bf16.out_dir != fp32.out_dir


def test_the_quick_experiment_is_the_default_run(tmp_path):
    """make run (`cguide.pipeline experiment=mnist5k_quick`) is the pipeline's default composition."""
    plain = OmegaConf.to_container(compose_cfg("pipeline", [], tmp_path), resolve=True)
    quick = OmegaConf.to_container(compose_cfg("pipeline", ["experiment=mnist5k_quick"], tmp_path), resolve=True)
    assert plain == quick and plain["name"] == "mnist5k_quick" and plain["model"]["max_steps"] == 700


def test_debug_groups_compose_for_train_and_pipeline(tmp_path):
    for name in ("default", "overfit", "limit"):
        train = compose_cfg("train", [f"debug={name}"], tmp_path)
        assert train.logger.name == "none" and train.trainer.accelerator == "cpu" and train.model.size == "tiny"
        pipe = compose_cfg("pipeline", [f"debug={name}"], tmp_path)
        assert pipe.sweep.n_per_point == 40 and pipe.model.size == "tiny"  # the pipeline's sweep is cut too
        assert pipe.name == f"debug_{name}" and pipe.out_dir == f"outputs/pipeline/debug_{name}"  # not the real run's
    assert compose_cfg("train", ["debug=overfit"], tmp_path).trainer.overfit_batches == 1
    assert compose_cfg("train", ["debug=limit"], tmp_path).trainer.limit_train_batches == 3


def test_a_pipeline_that_could_train_nothing_stops_before_any_stage(cfg_pipeline, tmp_path):
    from cguide.pipeline import run_pipeline

    with pytest.raises(ValueError, match="trainer.fast_dev_run=true trains one batch and writes no checkpoint"):
        run_pipeline(cfg_pipeline("trainer.fast_dev_run=true"))
    with pytest.raises(ValueError, match="judge.max_steps must be >= 1"):
        run_pipeline(cfg_pipeline("judge.max_steps=0"))
    assert not list((tmp_path / "pipeline").rglob("stage.json"))  # no stage claims a run it never started
