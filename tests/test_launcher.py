"""Cluster launchers (hydra-submitit-launcher): the SLURM config composes with one task per GPU, and a
2-job sweep runs through the local submitit launcher into one results folder."""

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from helpers.config import CONF


def _launcher(config: str, *overrides: str):
    from cguide.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config, overrides=list(overrides), return_hydra_config=True)
    return cfg.hydra.launcher


def test_slurm_launcher_config_has_one_task_per_gpu():
    la = _launcher("train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4")
    assert la._target_.endswith("SlurmLauncher")
    assert (la.partition, la.gpus_per_node, la.tasks_per_node, la.timeout_min) == ("gpu", 4, 4, 240)
    local = _launcher("sweep", "hydra/launcher=local")
    assert local._target_.endswith("LocalLauncher") and local.tasks_per_node == 1


def _multirun(tiny_ckpts, out, *extra):
    cmd = [sys.executable, "-m", "cguide.sweep", "-m", "hydra/launcher=local", "guidance.scale=0,1",
           f"eps_ckpt={tiny_ckpts['eps_model']}", f"classifier_ckpt={tiny_ckpts['noisy_classifier']}",
           f"judge_ckpt={tiny_ckpts['judge']}", f"out_dir={out}", "data.image_size=8", "sampler.steps=3",
           "sweep.n_per_point=10", "metrics.names=[fid,accuracy]", "progress=false", "num_threads=1", "logger=none",
           "sweep.name=submitit", *extra]
    # a stale, unusable MASTER_PORT from the launching shell (Lightning's ddp_spawn leaves one) must be ignored
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "1"}
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["point"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_two_job_sweep_with_local_submitit_launcher(tiny_ckpts, tmp_path):
    out = tmp_path / "mr"
    rows = _multirun(tiny_ckpts, out)
    assert sorted(r["scale"] for r in rows.values()) == [0.0, 1.0]
    logs = list(out.glob("hydra/multirun-*/.submitit/*/*_0_log.out"))
    assert len(logs) == 2  # each job ran as its own submitit process


@pytest.mark.slow
def test_two_task_submitit_jobs_form_one_process_group(tiny_ckpts, tmp_path):
    """tasks_per_node=2 (as on SLURM): the two tasks of a job are ranks 0 and 1 of one sweep."""
    one = _multirun(tiny_ckpts, tmp_path / "one")
    two = _multirun(tiny_ckpts, tmp_path / "two", "hydra.launcher.tasks_per_node=2")
    assert set(one) == set(two) and len(two) == 2
    for key in one:
        for metric in ("fid_judge", "accuracy"):
            assert two[key][metric] == pytest.approx(one[key][metric], rel=1e-6, abs=1e-9), (key, metric)
    logs = sorted((tmp_path / "two").glob("hydra/multirun-*/.submitit/*/*_log.out"))
    texts = [p.read_text() for p in logs]
    assert len(logs) == 4 and sum("1 to run" in t for t in texts) == 2  # rank 0 of each job reports
    assert sum("results:" in t for t in texts) == 2


def test_a_multirun_goes_on_past_a_bad_job_and_lists_it_at_the_end(tiny_ckpts, tmp_path):
    """guidance.scale=0,-1,2: the bad job (-1) stopped the whole multirun, so scale 2 never ran. Now every good
    job runs, the bad one has its error line, and the end names it (exit 2)."""
    out = tmp_path / "mr"
    cmd = [sys.executable, "-m", "cguide.sweep", "-m", "guidance.scale=0,-1,2",
           f"eps_ckpt={tiny_ckpts['eps_model']}", f"classifier_ckpt={tiny_ckpts['noisy_classifier']}",
           f"judge_ckpt={tiny_ckpts['judge']}", f"out_dir={out}", "data.image_size=8", "sampler.steps=2",
           "sweep.n_per_point=10", "metrics.names=[accuracy]", "progress=false", "num_threads=1", "logger=none"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert "error: guidance scale must be finite and >= 0 (s = 0 is unguided), got -1.0; fix sweep.scales" in lines
    assert lines[-1] == "error: 1 multirun job(s) stopped with an error (its line above), the others ran: " \
        "#1 (guidance.scale=-1)", lines[-1]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["scale"] for r in rows) == [0.0, 2.0]
