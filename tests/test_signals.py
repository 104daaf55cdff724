"""Signals and writers (issue #28): SIGINT and SIGTERM stop a run with one line and a non-zero exit, training after
saving last.ckpt at the step it stopped (a rerun resumes there); the pipeline's helper processes end with their
main process however it ends; one run writes into a run folder or a pipeline's out_dir at a time (a lock file
naming its holder, never stuck on a dead one).

Every run here is a real entry point in a subprocess (tiny nets, 8x8 digits), signalled from outside."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cguide.io.checkpoints import read_checkpoint
from helpers.config import TINY, compose_cfg
from helpers.processes import running

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true",
       "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}


def _default_sigint() -> None:
    """In the child before exec: SIGINT at its default. A shell without job control starts background commands with
    SIGINT ignored, the child inherits that, and Python then never raises KeyboardInterrupt (a run started with
    `nohup ... &` rightly ignores it); these tests are about the run's own handling, wherever pytest was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(module: str, args: list[str], cwd: Path, name: str) -> tuple[subprocess.Popen, Path, Path]:
    out, err = cwd / f"{name}.out", cwd / f"{name}.err"
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=ENV, stdout=open(out, "w"),
                            stderr=open(err, "w"), preexec_fn=_default_sigint)
    return proc, out, err


def _wait_for(proc: subprocess.Popen, ready, log: Path, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"ended (exit {proc.returncode}) before it was ready:\n{log.read_text()[-3000:]}"
        assert time.monotonic() - t0 < timeout, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def _last_line(err: Path) -> str:
    text = err.read_text()
    assert "Traceback" not in text, text[-3000:]
    return text.strip().splitlines()[-1]


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _helper_pids(pid: int) -> list[int]:
    """The pipeline's helper processes (multiprocessing spawn children, not its resource tracker)."""
    return [k for k in _children(pid)
            if "spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes().decode(errors="replace")]


# ------------------------------------------------------------------ training: SIGINT / SIGTERM

def _train_args(out: Path, max_steps: int = 100000) -> list[str]:
    tiny = [o for o in TINY if not o.startswith("model.max_steps=")]
    return ["task=diffusion", *tiny, f"model.max_steps={max_steps}", "num_threads=1",
            "callbacks.model_checkpoint.every_n_train_steps=3", f"paths.output_dir={out}",
            f"hydra.run.dir={out.parent / 'hydra'}"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_training_at_a_step_saved_in_last_ckpt_with_a_nonzero_exit(sig, tmp_path):
    """SIGTERM exited 0 (as if training had finished) with no checkpoint of the step it stopped at; SIGINT exited 1
    after Lightning's 'Detected KeyboardInterrupt', also without one. Both now: exit 128 + signal, one line naming
    the checkpoint saved at that step, and resume=true continues from it."""
    from cguide.train import train

    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    proc, log, err = _start("cguide.train", _train_args(out), tmp_path, "train")
    _wait_for(proc, last.is_file, log)  # step 3 saved: training runs
    proc.send_signal(sig)
    assert proc.wait(120) == 128 + sig, err.read_text()[-3000:]
    line = _last_line(err)
    m = re.fullmatch(rf"interrupted by {sig.name}: training stopped at the end of a step: saved {re.escape(str(last))} "
                     r"at step (\d+); run the same command again with resume=true to continue from there", line)
    assert m, line
    n = int(m[1])
    assert read_checkpoint(last)["global_step"] == n >= 3
    assert not (out / "checkpoints" / "diffusion.ckpt").exists()  # not mistaken for a finished run
    result = train(compose_cfg("train", [*_train_args(out, n + 2), "resume=true"], out))
    assert read_checkpoint(result.checkpoint)["global_step"] == n + 2


# ------------------------------------------------------------------ sweep: SIGINT / SIGTERM

def _sweep_args(ckpts: dict, out: Path, n_points: int) -> list[str]:
    return [f"eps_ckpt={ckpts['eps_model']}", f"classifier_ckpt={ckpts['noisy_classifier']}",
            f"judge_ckpt={ckpts['judge']}", "data.image_size=8", "sampler.steps=3", "sweep.n_per_point=20",
            f"sweep.scales=[{','.join(str(s) for s in range(n_points))}]", "sweep.points_per_call=1",
            "metrics.names=[accuracy,guide_confidence]", "progress=false", "logger=none", "num_threads=1",
            f"out_dir={out}"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_a_sweep_with_one_line_keeping_its_rows(sig, tiny_ckpts, tmp_path):
    """SIGINT printed a KeyboardInterrupt traceback; SIGTERM ended the process without its finally blocks (exit -15).
    Now: one line, exit 128 + signal, every finished row kept whole, and a rerun draws only the rest."""
    out = tmp_path / "sweep"
    rows = out / "results.jsonl"
    proc, log, err = _start("cguide.sweep", _sweep_args(tiny_ckpts, out, 12), tmp_path, "sweep")
    _wait_for(proc, lambda: rows.is_file() and rows.read_text().count("\n") >= 1, log)
    proc.send_signal(sig)
    assert proc.wait(120) == 128 + sig, err.read_text()[-3000:]
    assert _last_line(err) == (f"interrupted by {sig.name}: what was finished is kept (every file is written whole); "
                               "run the same command again to go on from there")
    kept = [json.loads(line) for line in rows.read_text().splitlines()]  # every line whole
    assert 1 <= len(kept) < 12
    assert not list(out.rglob(".*.tmp"))


# ------------------------------------------------------------------ pipeline helpers end with their main process

PIPE = ["debug=default", "progress=false", "num_threads=2", "device=cpu", "trainer.accelerator=cpu", "workers=2",
        "sweep.points_per_call=1", "callbacks.model_checkpoint.every_n_train_steps=2"]


def test_a_helper_training_ends_when_its_main_process_is_killed(tmp_path):
    """SIGKILL of the main process while the helper trains the classifier: the helper trained on beside a rerun
    (classifier-step=…-v1.ckpt, last-v1.ckpt). Now it stops within its step, saving last.ckpt."""
    out = tmp_path / "pipe"
    clf_last = out / "classifier" / "checkpoints" / "last.ckpt"
    proc, log, _ = _start("cguide.pipeline", [*PIPE, "classifier.max_steps=100000", "judge.max_steps=100000",
                                              "model.max_steps=100000", f"out_dir={out}"], tmp_path, "pipe")
    helpers = []
    try:
        _wait_for(proc, clf_last.is_file, log)
        helpers = _helper_pids(proc.pid)
        assert len(helpers) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 60
        while running(helpers[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(helpers[0]), "the helper trains on after its main process was killed"
    finally:
        for pid in helpers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    names = sorted(p.name for p in clf_last.parent.iterdir())
    assert not [n for n in names if "-v" in n], names
    assert read_checkpoint(clf_last)["global_step"] > 0


def test_sigterm_to_the_main_process_while_sweeping_ends_its_helper_with_it(tmp_path):
    """SIGTERM to the main process while both draw the sweep: the helper (and the resource tracker) drew on for
    ~35 s. Now the main process stops the helper before it exits (143), and the finished rows are kept."""
    out = tmp_path / "pipe"
    proc, log, err = _start("cguide.pipeline", [*PIPE, "model.max_steps=4", "classifier.max_steps=4",
                                                "judge.max_steps=4", "sweep.scales=[0,1,2,3,4,5,6,7,8,9,10,11]",
                                                "sweep.n_per_point=40", f"out_dir={out}"], tmp_path, "pipe")
    helpers = []
    try:
        _wait_for(proc, lambda: any(p.read_text().count("\n") >= 1 for p in out.glob("sweep/*/results.jsonl")), log)
        helpers = _helper_pids(proc.pid)
        assert len(helpers) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 128 + signal.SIGTERM, err.read_text()[-3000:]
        time.sleep(1)
        assert not running(helpers[0]), "the helper draws on after its main process ended"
    finally:
        for pid in helpers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    assert _last_line(err).startswith("interrupted by SIGTERM: ")


# ------------------------------------------------------------------ one writer per folder

def test_a_second_training_run_into_a_folder_in_use_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    from cguide.train import train

    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    proc, log, _ = _start("cguide.train", _train_args(out), tmp_path, "first")
    try:
        _wait_for(proc, last.is_file, log)
        with pytest.raises(ValueError, match=rf"^{re.escape(str(out))} is in use by another run \(process {proc.pid} "
                           r"on .+, since .+; lock file .+\.writer\.lock\): one run writes into a folder at a time; "
                           r"wait for that run to end \(or stop it\), or choose another paths.output_dir$"):
            train(compose_cfg("train", [*_train_args(out, 30), "resume=true"], out))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    n = read_checkpoint(last)["global_step"]  # the killed holder's lock is gone with it: this run resumes
    result = train(compose_cfg("train", [*_train_args(out, n + 1), "resume=true"], out))
    assert read_checkpoint(result.checkpoint)["global_step"] == n + 1


def test_a_second_pipeline_on_an_out_dir_in_use_is_refused_before_it_writes(tmp_path, capsys):
    """Two pipelines started on one fresh out_dir both ran, the second resuming from the first's unfinished
    last.ckpt."""
    from cguide.pipeline import run_pipeline

    out = tmp_path / "pipe"
    last = out / "diffusion" / "checkpoints" / "last.ckpt"
    args = ["debug=default", "progress=false", "model.max_steps=100000", f"out_dir={out}"]
    proc, log, _ = _start("cguide.pipeline", args, tmp_path, "first")
    try:
        _wait_for(proc, last.is_file, log)
        before = read_checkpoint(last)["global_step"]
        with pytest.raises(ValueError, match=rf"^{re.escape(str(out))} is in use by another run \(process {proc.pid} "
                           r"on .+\): one run writes into a folder at a time; wait for that run to end \(or stop it\), "
                           r"or choose another out_dir$"):
            run_pipeline(compose_cfg("pipeline", args, out))
        assert proc.poll() is None  # the first runs on, undisturbed
        assert "resuming" not in capsys.readouterr().out
        assert read_checkpoint(last)["global_step"] >= before
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_a_bad_input_met_by_the_helper_is_its_line_and_one_line_of_the_main_process(tmp_path):
    """A helper's bad input (here a file where the judge's checkpoints go) printed the helper's traceback and then the
    main process's RuntimeError traceback. Now each process says it in one line, and the exit code is 2."""
    out = tmp_path / "pipe"
    (out / "judge").mkdir(parents=True)
    (out / "judge" / "checkpoints").write_text("a file")
    proc, log, err = _start("cguide.pipeline", [*PIPE, "model.max_steps=8", "classifier.max_steps=4",
                                                "judge.max_steps=4", f"out_dir={out}"], tmp_path, "pipe")
    assert proc.wait(600) == 2, err.read_text()[-3000:]
    assert "Traceback" not in err.read_text(), err.read_text()[-3000:]
    lines = [line for line in err.read_text().splitlines() if line.startswith("error: ")]
    assert lines == [f"error: output folder {out / 'judge' / 'checkpoints'} is a file, not a folder; choose another "
                     "paths.ckpt_dir",
                     "error: the process training classifier, judge, judge2 stopped with exit code 2 (its error is "
                     "above); run the same command again: finished stages are reused"], err.read_text()[-3000:]
