"""The pipeline: three trained stages then a sweep, reusing what is done and retraining what changed."""

import json

from conftest import compose_cfg

TINY_PIPE = ["data.image_size=8", "data.batch_size=32", "model=tiny", "classifier=tiny", "judge=tiny", "logger=none",
             "trainer.enable_progress_bar=false", "trainer.limit_val_batches=2", "callbacks.sample_n=0",
             "diffusion.T=100", "model.max_steps=4", "classifier.max_steps=4", "judge.max_steps=4",
             "sweep.scales=[0,2]", "sweep.variants=[score]", "sweep.n_per_point=20", "sweep.steps=[4]",
             "sweep.batch_size=64", "progress=false", "num_threads=1"]


def _run(tmp_path, extra=()):
    from cguide.pipeline import run_pipeline

    cfg = compose_cfg("pipeline", [f"out_dir={tmp_path}", *TINY_PIPE, *extra], tmp_path / "hydra")
    return run_pipeline(cfg)


def test_pipeline_trains_sweeps_then_reuses(tmp_path, capsys):
    sweep_dir = _run(tmp_path)
    out = capsys.readouterr().out
    assert out.count("no checkpoint yet: training") == 3
    rows = [json.loads(line) for line in (sweep_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["scale"] for r in rows) == [0.0, 2.0]
    assert "guidance sweep (2 points)" in out and "FID" in out
    csv_before = (sweep_dir / "results.csv").read_bytes()

    assert _run(tmp_path) == sweep_dir
    out = capsys.readouterr().out
    assert out.count("settings unchanged: reusing") == 3
    assert "2 done already, 0 to run" in out
    assert (sweep_dir / "results.csv").read_bytes() == csv_before


def test_changed_stage_settings_retrain_and_keep_the_old_run(tmp_path, capsys):
    _run(tmp_path)
    capsys.readouterr()
    _run(tmp_path, ["judge.max_steps=5"])
    out = capsys.readouterr().out
    assert "[judge] settings changed (net): retraining; previous run kept in" in out
    assert out.count("settings unchanged: reusing") == 2
    assert len(list(tmp_path.glob("judge.replaced-*/checkpoints/judge.ckpt"))) == 1


def test_full_profile_composes_for_one_gpu_with_the_fast_fp32_step(tmp_path):
    from cguide.pipeline import sweep_config

    cfg = compose_cfg("pipeline", [f"out_dir={tmp_path}", "profile=full"], tmp_path / "hydra")
    assert cfg.trainer.accelerator == "gpu" and cfg.model.size == "bench32" and cfg.data.image_size == 32
    ckpts = {k: tmp_path / f"{k}.ckpt" for k in ("diffusion", "classifier", "judge")}
    for p in ckpts.values():
        p.write_bytes(b"x")
    speed = sweep_config(cfg, ckpts, tmp_path).speed
    assert (speed.compile, speed.cuda_graph, speed.channels_last, speed.bf16) == (True, True, True, False)
    quick = compose_cfg("pipeline", [f"out_dir={tmp_path}", "speed.bf16=true"], tmp_path / "hydra")
    bf16 = sweep_config(quick, ckpts, tmp_path)
    assert bf16.speed.bf16 is True  # a pipeline override reaches the sweep
    # bf16 changes the samples: its sweep gets its own folder rather than a settings clash with the fp32 one
    fp32 = sweep_config(compose_cfg("pipeline", [f"out_dir={tmp_path}"], tmp_path / "hydra"), ckpts, tmp_path)
    assert bf16.out_dir != fp32.out_dir
