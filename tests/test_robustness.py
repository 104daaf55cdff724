"""Nothing lost, nothing confusing: runs killed mid-way resume where they stopped, outputs are replaced
whole or not at all, NaN gradients stay contained, the same seed gives the same samples, and logging never
kills a run. (Bad inputs and their one-line messages: test_errors.py.)"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cguide.io.checkpoints import read_checkpoint
from helpers.config import TINY, compose_cfg
from helpers.nets import nan_classifier

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true",
       "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}


def _start(module: str, args: list[str], cwd: Path, log: Path, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env or ENV,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 240) -> None:
    """SIGKILL proc as soon as ready() holds (a crash, not a clean exit); fail if it ends first."""
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"finished before it could be killed:\n{log.read_text()[-3000:]}"
        assert time.monotonic() - t0 < timeout, "timed out waiting to kill"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    assert proc.wait(timeout) == 0, log.read_text()[-3000:]
    return log.read_text()


def _tiny(*drop: str) -> list[str]:
    return [o for o in TINY if o.split("=")[0] not in drop]


# ------------------------------------------------------------------ crash and resume

@pytest.mark.slow
def test_killed_training_resumes_from_last_checkpoint_to_the_planned_end(tmp_path):
    from cguide.train import train

    out, max_steps = tmp_path / "run", 120
    args = ["task=diffusion", *_tiny("model.max_steps"), f"model.max_steps={max_steps}",
            "callbacks.model_checkpoint.every_n_train_steps=5", "num_threads=1", f"paths.output_dir={out}"]
    last, final = out / "checkpoints" / "last.ckpt", out / "checkpoints" / "diffusion.ckpt"
    proc = _start("cguide.train", args, tmp_path, tmp_path / "first.log")
    _kill_when(proc, last.is_file, tmp_path / "first.log")
    assert not final.exists()
    saved = read_checkpoint(last)  # complete: checkpoints are written whole (temp file + rename)
    n = saved["global_step"]
    assert 0 < n < max_steps

    # Resuming restores the exact state: a resumed fit with nothing left to do writes back what it loaded.
    copy = tmp_path / "copy"
    shutil.copytree(out / "checkpoints", copy / "checkpoints")
    train(compose_cfg("train", [*args[:-1], f"model.max_steps={n}", "resume=true"], copy))
    back = read_checkpoint(copy / "checkpoints" / "diffusion.ckpt")
    assert back["global_step"] == n
    for key, value in saved["state_dict"].items():  # net and EMA weights
        assert torch.equal(back["state_dict"][key], value), key
    assert any(k.startswith("ema.") for k in saved["state_dict"])
    old_opt, new_opt = saved["optimizer_states"][0]["state"], back["optimizer_states"][0]["state"]
    assert old_opt.keys() == new_opt.keys() and len(old_opt) > 0
    for i, state in old_opt.items():  # AdamW step counts and moments
        assert all(torch.equal(v, new_opt[i][k]) for k, v in state.items()), i

    # The same command with resume=true carries on from step n to the planned end.
    proc = _start("cguide.train", [*args, "resume=true"], tmp_path, tmp_path / "second.log")
    log = _finish(proc, tmp_path / "second.log")
    assert f"resuming task=diffusion from {last} at step {n}" in log
    done = read_checkpoint(final)
    assert done["global_step"] == max_steps
    # n optimizer steps before the crash + (max_steps - n) after: the optimizer state was carried over
    assert {int(s["step"]) for s in done["optimizer_states"][0]["state"].values()} == {max_steps}
    assert done["lr_schedulers"][0]["last_epoch"] == max_steps


TINY_PIPE = ["data.image_size=8", "data.batch_size=32", "model=tiny", "classifier=tiny", "judge=tiny", "logger=none",
             "trainer.enable_progress_bar=false", "trainer.limit_val_batches=2", "callbacks.sample_grid.n=0",
             "callbacks.model_checkpoint.every_n_train_steps=5", "diffusion.T=100", "model.max_steps=4", "classifier.max_steps=150",
             "judge.max_steps=4", "num_threads=1", "sweep.scales=[0,1,2,4]", "sweep.variants=[score]",
             "sweep.n_per_point=40", "sweep.steps=[6]", "sweep.points_per_call=1", "metrics.names=[fid,accuracy]",
             "progress=false", "workers=1"]  # one process: the stages run one after another (the quick profile's
# workers=2 trains the classifier beside the eps-model, so "killed while training the classifier" would not mean
# "the eps-model is done"; killing a pipeline with helpers is test_workers.py's)


def _rows(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


@pytest.mark.slow
def test_killed_pipeline_redoes_only_unfinished_stages_and_points(tmp_path):
    out = tmp_path / "pipe"
    args, logs = [f"out_dir={out}", *TINY_PIPE], [tmp_path / f"run{i}.log" for i in range(3)]
    clf_last = out / "classifier" / "checkpoints" / "last.ckpt"

    # 1: killed while training the classifier (the eps-model is done)
    _kill_when(_start("cguide.pipeline", args, tmp_path, logs[0]), clf_last.is_file, logs[0])
    assert (out / "diffusion" / "checkpoints" / "diffusion.ckpt").is_file()
    assert not (out / "classifier" / "checkpoints" / "classifier.ckpt").exists()
    n = read_checkpoint(clf_last)["global_step"]

    # 2: reuses the eps-model, resumes the classifier, trains the judge; killed after the first sweep point
    def a_point_is_done() -> bool:
        return any(_rows(p) for p in out.glob("sweep/*/results.jsonl"))

    _kill_when(_start("cguide.pipeline", args, tmp_path, logs[1]), a_point_is_done, logs[1])
    (results,) = out.glob("sweep/*/results.jsonl")
    log = logs[1].read_text()
    assert "[diffusion] settings unchanged: reusing" in log
    assert "[classifier] unfinished run found: resuming" in log
    assert f"resuming task=classifier from {clf_last} at step {n}" in log
    assert "[judge] no checkpoint yet: training" in log
    assert "4 point(s), 0 done already, 4 to run" in log
    done = _rows(results)
    assert 1 <= len(done) < 4

    # 3: everything trained is reused; only the points not yet in results.jsonl are drawn
    log = _finish(_start("cguide.pipeline", args, tmp_path, logs[2]), logs[2])
    assert log.count("settings unchanged: reusing") == 4  # the second judge too
    assert f"4 point(s), {len(done)} done already, {4 - len(done)} to run" in log
    rows = _rows(results)
    assert len(rows) == 4 and rows[:len(done)] == done
    assert read_checkpoint(out / "classifier" / "checkpoints" / "classifier.ckpt")["global_step"] == 150


# ------------------------------------------------------------------ atomic outputs

STALL = """
import sys, time, torch
from cguide.modules.checkpoint_io import AtomicCheckpointIO
class Stall:  # pickled mid-save: signals, then hangs until killed
    def __reduce__(self):
        open(sys.argv[2], "w").close()
        time.sleep(120)
AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1 << 20), "stall": Stall()}, sys.argv[1])
"""


def test_checkpoint_writer_killed_mid_write_leaves_previous_checkpoint(tmp_path):
    path, flag = tmp_path / "last.ckpt", tmp_path / "writing"
    torch.save({"global_step": 7, "state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", STALL, str(path), str(flag)], env=ENV, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() - t0 < 120
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert path.read_bytes() == before and read_checkpoint(path)["global_step"] == 7


def _half_then_fail(target_arg: int = 1):
    """A stand-in writer: writes a few bytes where it was told to, then fails as a full disk would."""
    def write(*args, **kwargs):
        dst = args[target_arg]
        if hasattr(dst, "write"):
            dst.write(b"partial")
        else:
            Path(dst).write_bytes(b"partial")
        raise OSError(28, "No space left on device")
    return write


def _writers():
    """name -> (write the real thing to path, patch(monkeypatch) that makes the next write fail halfway)."""
    from cguide.io import images
    from cguide.metrics import real_stats
    from cguide.grid.results import ResultsFolder
    from cguide.modules.checkpoint_io import AtomicCheckpointIO

    def results(path):
        ResultsFolder(path.parent).append({"point": f"p{time.perf_counter_ns()}", "fid": 1.0})
    return {
        "checkpoint": ("last.ckpt", lambda p: AtomicCheckpointIO().save_checkpoint({"step": 1}, p),
                       lambda mp: mp.setattr(torch, "save", _half_then_fail())),
        "real_stats": ("real-stats.pt", lambda p: real_stats.atomic_torch_save({"x": torch.ones(2)}, p),
                       lambda mp: mp.setattr(torch, "save", _half_then_fail())),
        "results": ("results.jsonl", results,
                    lambda mp: mp.setattr(Path, "write_text", lambda self, text: _half_then_fail(0)(self))),
        "grid": ("grid.png", lambda p: images.save_grid(torch.zeros(4, 1, 8, 8), p),
                 lambda mp: mp.setattr(images, "save_image", _half_then_fail())),
    }


@pytest.mark.parametrize("writer", ["checkpoint", "real_stats", "results", "grid"])
def test_failed_write_leaves_previous_file_and_no_temp(writer, tmp_path, monkeypatch):
    name, write, break_it = _writers()[writer]
    path = tmp_path / name
    write(path)
    before = path.read_bytes()
    with monkeypatch.context() as mp:
        break_it(mp)
        with pytest.raises(OSError, match="No space left"):
            write(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".sweep.lock"] == []  # no temp


# ------------------------------------------------------------------ NaN containment

SWEEP = ["data.image_size=8", "sampler.steps=4", "sweep.n_per_point=20", "sweep.batch_size=40", "progress=false",
         "logger=none", "metrics.names=[fid,accuracy,nonfinite]"]


def _sweep(ckpts: dict, out: Path, *over: str) -> list[dict]:
    from cguide.grid.runner import run_sweep

    args = [f"eps_ckpt={ckpts['eps_model']}", f"judge_ckpt={ckpts['judge']}",
            f"classifier_ckpt={ckpts['noisy_classifier']}", *SWEEP, *over]
    run_sweep(compose_cfg("sweep", args, out))
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_nan_gradients_are_contained_and_reported_through_a_sweep(tiny_ckpts, tmp_path):
    ckpts = {**tiny_ckpts, "noisy_classifier": nan_classifier(tiny_ckpts["noisy_classifier"], tmp_path / "nan.ckpt")}
    # a call per point, so each point's 20 samples are one batch of their own: the s = 2 batch runs the eps-model
    # on exactly what the s = 0 batch does (same seeds, rows, shape), and its zeroed gradients leave eps bitwise
    # as it is. Two points in one 40-row batch would put the same seed in another row, not bit-exact everywhere.
    rows = {r["scale"]: r for r in _sweep(ckpts, tmp_path / "out", "sweep.scales=[0,2]", "sweep.points_per_call=1")}
    assert rows[0.0]["grad_nonfinite_share"] == 0.0 and rows[2.0]["grad_nonfinite_share"] == 1.0
    for r in rows.values():  # every gradient zeroed: the samples stay finite, and so do the metrics
        assert r["nonfinite"] == 0.0 and math.isfinite(r["fid_judge"]) and math.isfinite(r["accuracy"])
    assert rows[2.0]["fid_judge"] == rows[0.0]["fid_judge"]  # 'zero' mode: NaN steps go unguided


def test_blown_up_samples_are_counted_and_the_sweep_goes_on(tiny_ckpts, tmp_path):
    # s = 1e30 without x_0 clipping overflows every sample to inf; the gradients at the next steps are NaN
    rows = {r["scale"]: r for r in _sweep(tiny_ckpts, tmp_path / "out", "sweep.scales=[0,1e30]",
                                          "sampler.clip_x0=false")}
    huge = rows[1e30]
    assert huge["nonfinite"] == 1.0 and huge["grad_nonfinite_share"] == 1.0  # reported...
    assert huge["fid_judge"] is None and huge["accuracy"] is None and huge["fid_judge_lo"] is None  # ...nothing left to measure: null, not a crash
    assert math.isfinite(rows[0.0]["fid_judge"]) and rows[0.0]["nonfinite"] == 0.0
    assert (tmp_path / "out" / "plots" / "fid_vs_scale.png").is_file()


# ------------------------------------------------------------------ determinism

def test_same_seed_same_samples_bit_for_bit(tiny_ckpts, tmp_path):
    from cguide.sample import run_sample

    def samples(name, seed):
        cfg = compose_cfg("sample", [f"eps_ckpt={tiny_ckpts['eps_model']}",
                                     f"classifier_ckpt={tiny_ckpts['noisy_classifier']}", "sampler.steps=4",
                                     "sampler.name=ddpm", "guidance.scale=2", "n_per_class=2", "progress=false",
                                     f"seed={seed}"], tmp_path / name)
        with np.load(run_sample(cfg)) as z:
            return z["samples"]

    a, b, c = samples("a", 3), samples("b", 3), samples("c", 4)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_every_sweep_point_draws_the_same_seeds_and_reruns_are_identical(tiny_ckpts, tmp_path, monkeypatch):
    from cguide.runtime import draw as sampling

    seeds = []  # the seeds of every sampler call, in order

    def spy(fn, shape, plan, batch_seeds, **kw):
        seeds.extend(batch_seeds)
        return sample(fn, shape, plan, batch_seeds, **kw)

    sample = sampling.sample
    monkeypatch.setattr(sampling, "sample", spy)
    over = ["sweep.scales=[0,1,2]", "sweep.points_per_call=1", "sweep.seed=5"]
    first = _sweep(tiny_ckpts, tmp_path / "a", *over)
    assert seeds == list(range(5, 25)) * 3  # three points, one call each, the same 20 seeds
    again = _sweep(tiny_ckpts, tmp_path / "b", *over)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(again) == strip(first)
    for r in first:
        name = f"grids/{r['point']}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# ------------------------------------------------------------------ logging never kills a run

def test_failed_online_start_warns_once_and_goes_offline():
    from cguide.io.loggers import start_wandb

    modes = []

    def start(mode):
        modes.append(mode)
        if mode == "online":
            raise ConnectionError("server unreachable\nmore detail")
        return mode

    os.environ["WANDB_API_KEY"], saved = "k" * 40, os.environ.get("WANDB_API_KEY")
    try:
        with pytest.warns(UserWarning, match=r"W&B online mode failed \(ConnectionError: server unreachable\); "
                                             "logging offline instead") as w:
            assert start_wandb(start, "online") == "offline"
    finally:
        os.environ.pop("WANDB_API_KEY") if saved is None else os.environ.update(WANDB_API_KEY=saved)
    assert modes == ["online", "offline"] and len(w) == 1


@pytest.mark.slow
def test_training_with_wandb_online_and_no_server_completes(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in ENV.items() if not k.startswith("WANDB_")}
    env.update(WANDB_BASE_URL="http://127.0.0.1:9",  # loopback, closed port: connection refused
               WANDB_API_KEY="0123456789abcdef0123456789abcdef01234567", WANDB_INIT_TIMEOUT="10",
               WANDB_ERROR_REPORTING="false", WANDB_X_DISABLE_STATS="true", WANDB_X_DISABLE_META="true",
               WANDB_X_DISABLE_MACHINE_INFO="true", WANDB_X_STATS_COREWEAVE_METADATA_BASE_URL="http://127.0.0.1:9",
               HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wcfg"), WANDB_CACHE_DIR=str(tmp_path / "wcache"))
    args = ["task=judge", *_tiny("logger", "judge.max_steps"), "judge.max_steps=3", "logger=wandb",
            "logger.mode=online", f"paths.output_dir={out}"]
    t0 = time.monotonic()
    proc = _start("cguide.train", args, tmp_path, tmp_path / "log", env=env)
    log = _finish(proc, tmp_path / "log", timeout=90)
    assert time.monotonic() - t0 < 90
    assert log.count("logging offline instead") == 1, log[-3000:]
    assert (out / "checkpoints" / "judge.ckpt").is_file()
    assert list((out / "wandb").glob("offline-run-*"))
