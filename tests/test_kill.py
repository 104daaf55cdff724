"""kill -9 at the worst moments (issue #12): a sweep killed between its two result-file writes (results.jsonl,
then results.csv) and a training run killed between ModelCheckpoint's top-k write and its last.ckpt write.
Rerunning the same command heals both: results.csv agrees with results.jsonl row for row and the rows are an
uninterrupted run's, a resumed training run ends with one top-k checkpoint, and no temp file is left.

Each case runs once with the kill placed exactly (the process SIGKILLs itself at that moment) and, marked
slow, with kills at random moments of a running process (the approach of test_robustness.py)."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cguide.io.checkpoints import read_checkpoint
from helpers.config import TINY, compose_cfg

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true",
       "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}

# python -c SCRIPT AT MODULE ARGS...: run MODULE's main with ARGS, SIGKILLing itself at the patched moment
SELF_KILL = """
import os, signal, sys
at, module, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
if module == "cguide.sweep":  # results.jsonl holds `at` rows, results.csv is not yet rewritten
    from cguide.grid.results import ResultsFolder as cls
    name = "_sync_csv"
    when = lambda self, rows: len(rows) == at
else:  # ModelCheckpoint wrote this step's top-k checkpoint (and removed the previous one), not last.ckpt
    from lightning.pytorch.callbacks import ModelCheckpoint as cls
    name = "_save_last_checkpoint"
    when = lambda self, trainer, candidates: trainer.global_step == at
real = getattr(cls, name)
def die_first(*a):
    if when(*a):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a)
setattr(cls, name, die_first)
sys.argv = [module, *args]
__import__(module, fromlist=["main"]).main()
"""


def _run(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _self_killed(at: int, module: str, args: list[str], cwd: Path) -> None:
    log = cwd / f"killed-{module}.log"
    code = _run([sys.executable, "-c", SELF_KILL, str(at), module, *args], cwd, log).wait(600)
    assert code == -signal.SIGKILL, f"exit {code}, not killed:\n{log.read_text()[-3000:]}"


def _temps(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp"))


# ------------------------------------------------------------------ sweep: results.jsonl, then results.csv

def _sweep_args(ckpts: dict, out: Path, scales: str) -> list[str]:
    return [f"eps_ckpt={ckpts['eps_model']}", f"classifier_ckpt={ckpts['noisy_classifier']}",
            f"judge_ckpt={ckpts['judge']}", "data.image_size=8", "sampler.steps=2", "sweep.n_per_point=10",
            f"sweep.scales={scales}", "sweep.points_per_call=1", "metrics.names=[accuracy,guide_confidence]",
            "progress=false", "logger=none", "num_threads=1", f"out_dir={out}"]


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _csv(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def _as_csv(row: dict) -> dict:
    return {k: "" if v is None else str(v) for k, v in row.items()}


def _metrics(rows: list[dict]) -> dict:
    return {r["point"]: {k: v for k, v in r.items() if k != "wall_s"} for r in rows}


def _check_healed(out: Path, reference: Path) -> None:
    rows = _jsonl(out)
    assert [_as_csv(r) for r in rows] == _csv(out)  # the CSV is the jsonl, row for row
    assert len({r["point"] for r in rows}) == len(rows)  # no point twice
    assert _metrics(rows) == _metrics(_jsonl(reference))  # and the rows are an uninterrupted run's
    assert _temps(out) == []


@pytest.fixture(scope="module")
def reference(tiny_ckpts, tmp_path_factory):
    """An uninterrupted sweep of six points: what every killed-and-rerun sweep must end with."""
    from cguide.grid.runner import run_sweep

    out = tmp_path_factory.mktemp("reference") / "out"
    run_sweep(compose_cfg("sweep", _sweep_args(tiny_ckpts, out, "[0,1,2,3,4,5]"), out))
    return out


def test_sweep_killed_between_jsonl_and_csv_write_heals_on_rerun(tiny_ckpts, reference, tmp_path):
    from cguide.grid.runner import run_sweep

    out = tmp_path / "out"
    args = _sweep_args(tiny_ckpts, out, "[0,1,2,3,4,5]")
    _self_killed(2, "cguide.sweep", args, tmp_path)
    assert len(_jsonl(out)) == 2 and len(_csv(out)) == 1  # the kill landed between the two writes
    run_sweep(compose_cfg("sweep", args, out))  # the same command again
    _check_healed(out, reference)
    assert len(_jsonl(out)) == 6


@pytest.mark.slow
def test_sweep_killed_at_random_moments_heals_on_rerun(tiny_ckpts, reference, tmp_path):
    """SIGKILL right after results.jsonl grows (a few ms later: before, during or after the CSV write),
    three times, then rerun to the end; every kill leaves whole rows only."""
    out, rng = tmp_path / "out", random.Random(12)
    args = _sweep_args(tiny_ckpts, out, "[0,1,2,3,4,5]")
    jsonl = out / "results.jsonl"
    for i in range(3):
        have = len(_jsonl(out)) if jsonl.is_file() else 0
        log = tmp_path / f"run{i}.log"
        proc = _run([sys.executable, "-m", "cguide.sweep", *args], tmp_path, log)
        t0 = time.monotonic()
        while not (jsonl.is_file() and len(jsonl.read_bytes().splitlines()) > have):
            assert proc.poll() is None, f"finished before it could be killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() - t0 < 300, "timed out waiting for a row"
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.01))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rows = _jsonl(out)  # every line whole
        assert have < len(rows) < 6
    log = tmp_path / "last.log"
    assert _run([sys.executable, "-m", "cguide.sweep", *args], tmp_path, log).wait(600) == 0, log.read_text()[-3000:]
    _check_healed(out, reference)
    assert len(_jsonl(out)) == 6


# ------------------------------------------------------------------ training: top-k, then last.ckpt

def _train_args(out: Path, max_steps: int, every: int) -> list[str]:
    tiny = [o for o in TINY if not o.startswith("model.max_steps=")]
    return ["task=diffusion", *tiny, f"model.max_steps={max_steps}", "num_threads=1",
            f"callbacks.model_checkpoint.every_n_train_steps={every}", f"paths.output_dir={out}"]


def _check_one_top_k(ckpt_dir: Path, max_steps: int) -> None:
    names = sorted(p.name for p in ckpt_dir.iterdir())
    assert names == [f"diffusion-step={max_steps}.ckpt", "diffusion.ckpt", "last.ckpt"], names
    assert read_checkpoint(ckpt_dir / "diffusion.ckpt")["global_step"] == max_steps
    assert read_checkpoint(ckpt_dir / "last.ckpt")["global_step"] == max_steps


def test_training_killed_between_top_k_and_last_write_resumes_to_one_top_k(tmp_path):
    from cguide.train import train

    out = tmp_path / "run"
    ckpt_dir = out / "checkpoints"
    args = _train_args(out, max_steps=8, every=2)
    _self_killed(4, "cguide.train", args, tmp_path)
    # the kill left step 4's top-k checkpoint beside a last.ckpt of step 2
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["diffusion-step=4.ckpt", "last.ckpt"]
    assert read_checkpoint(ckpt_dir / "last.ckpt")["global_step"] == 2
    train(compose_cfg("train", [*args, "resume=true"], out))
    _check_one_top_k(ckpt_dir, 8)  # not diffusion-step=4.ckpt beside diffusion-step=4-v1.ckpt and step=8


def test_training_start_removes_temp_files_and_later_top_k_of_a_killed_run(tmp_path):
    from cguide.io.atomic import _host
    from cguide.train import clear_killed_writes

    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()  # a writer that no longer runs
    killed, live = f".last.ckpt.0badc0de-{gone.pid}@{_host()}.tmp", f".last.ckpt.0badc0de-{os.getpid()}@{_host()}.tmp"
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    names = ["diffusion-step=2.ckpt", "diffusion-step=4.ckpt", "diffusion-step=4-v1.ckpt", "last.ckpt",
             "diffusion-step=4.ckpt.txt", "classifier-step=6.ckpt", killed, live]
    for name in names:
        (ckpt_dir / name).write_text("x")
    removed = clear_killed_writes(ckpt_dir, "diffusion", 2)
    assert sorted(p.name for p in removed) == sorted([killed, "diffusion-step=4-v1.ckpt", "diffusion-step=4.ckpt"])
    assert sorted(p.name for p in ckpt_dir.iterdir()) == sorted([
        "classifier-step=6.ckpt", "diffusion-step=2.ckpt", "diffusion-step=4.ckpt.txt", "last.ckpt", live])


@pytest.mark.slow
def test_training_killed_at_random_moments_resumes_to_one_top_k(tmp_path):
    """SIGKILL right after a new top-k checkpoint appears (a few ms later: before, during or after the
    last.ckpt write), three times, each run resuming the last (resume=true starts afresh while there is no
    last.ckpt yet); the last resume runs to the end."""
    out, rng, max_steps = tmp_path / "run", random.Random(7), 60
    ckpt_dir = out / "checkpoints"
    args = _train_args(out, max_steps=max_steps, every=1)
    for i in range(3):
        log = tmp_path / f"run{i}.log"
        before = {p.name for p in ckpt_dir.glob("diffusion-step=*.ckpt")}
        proc = _run([sys.executable, "-m", "cguide.train", *args, "resume=true"], tmp_path, log)
        t0 = time.monotonic()
        while not {p.name for p in ckpt_dir.glob("diffusion-step=*.ckpt")} - before:  # a new top-k checkpoint
            assert proc.poll() is None, f"finished before it could be killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() - t0 < 300, "timed out waiting for a checkpoint"
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.01))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (ckpt_dir / "diffusion.ckpt").exists()
    log = tmp_path / "last.log"
    proc = _run([sys.executable, "-m", "cguide.train", *args, "resume=true"], tmp_path, log)
    assert proc.wait(600) == 0, log.read_text()[-3000:]
    _check_one_top_k(ckpt_dir, max_steps)
    assert _temps(out) == []
