"""pipeline workers=2: the eps-model trains beside a process that trains the other nets, the sweep is drawn by
two processes into one folder; the checks before any work, and the thread hand-over callback."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from helpers.config import PIPELINE_FAST
from helpers.processes import running


def _rows(sweep_dir):
    return sorted((json.loads(line) for line in (sweep_dir / "results.jsonl").read_text().splitlines()),
                  key=lambda r: r["point"])


def test_two_workers_train_and_draw_what_one_process_does(cfg_pipeline, tmp_path, capsys):
    from cguide.pipeline import run_pipeline
    # one thread in all: the split changes no thread count, so the results must be the same to the last bit
    extra = [*PIPELINE_FAST, "num_threads=1", "device=cpu", "trainer.accelerator=cpu", "sweep.points_per_call=1",
             "sweep.scales=[0,1,2]"]
    par = run_pipeline(cfg_pipeline(*extra, "workers=2"))
    out = capsys.readouterr().out
    assert "[workers] classifier, judge, judge2 train in a second process (1 thread(s)) beside diffusion (1 thread(s) " \
        "for 45% of the steps, then 1)" in out
    assert "[workers] the sweep is drawn by 2 processes of 1 thread(s)" in out
    one = run_pipeline(cfg_pipeline(*extra, "workers=1", f"out_dir={tmp_path / 'one'}"))
    for stage in ("diffusion", "classifier", "judge", "judge2"):
        a = torch.load(par.parents[1] / stage / "checkpoints" / f"{stage}.ckpt", weights_only=False)["state_dict"]
        b = torch.load(one.parents[1] / stage / "checkpoints" / f"{stage}.ckpt", weights_only=False)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    drop = ("wall_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in _rows(par)] == \
        [{k: v for k, v in r.items() if k not in drop} for r in _rows(one)]
    assert len(_rows(par)) == 3 and (par / "plots").is_dir()
    capsys.readouterr()
    again = run_pipeline(cfg_pipeline(*extra, "workers=2"))  # a rerun: every stage and point done already
    assert again == par and "[workers]" not in capsys.readouterr().out  # so no helper process is started
    more = run_pipeline(cfg_pipeline(*extra, "workers=2", "sweep.scales=[0,1,2,4]"))  # nets done, points to draw
    out = capsys.readouterr().out
    assert "train in a second process" not in out and "[workers] the sweep is drawn by 2 processes" in out
    assert len(_rows(more)) == 4


def test_a_failure_in_the_helper_stops_the_run_with_its_name_and_leaves_no_process(cfg_pipeline, tmp_path):
    import multiprocessing as mp

    from cguide.pipeline import run_pipeline
    in_the_way = tmp_path / "pipeline" / "judge" / "checkpoints"
    in_the_way.parent.mkdir(parents=True)
    in_the_way.write_text("a file")  # the helper's judge stage fails on it; this process's eps-model does not
    with pytest.raises(RuntimeError, match=r"^the process training classifier, judge, judge2 stopped with exit code 2 "
                       r"\(its error is above\); run the same command again: finished stages are reused$"):
        run_pipeline(cfg_pipeline(*PIPELINE_FAST, "num_threads=2", "device=cpu", "trainer.accelerator=cpu", "workers=2",
                                  "sweep.points_per_call=1"))
    # it stopped the eps-model at its hand-over step, half-way, not at its end
    assert not (tmp_path / "pipeline" / "diffusion" / "checkpoints" / "diffusion.ckpt").exists()
    assert mp.active_children() == []


def test_a_killed_helper_is_noticed_instead_of_waited_for(cfg_pipeline):
    """A helper that dies without a word (killed, out of memory) never sets its done event: the eps-model's wait
    for it must end with the error, not hang."""
    import multiprocessing as mp
    import os

    from cguide.pipeline.workers import Helpers
    helpers = Helpers(cfg_pipeline("workers=1"), None)
    ctx = mp.get_context("spawn")
    helpers.done, helpers.ok, helpers.side = ctx.Event(), ctx.Event(), ["classifier", "judge"]
    helpers.procs = [ctx.Process(target=os._exit, args=(9,))]
    helpers.procs[0].start()
    with pytest.raises(RuntimeError, match=r"^the process training classifier, judge stopped with exit code 9 "):
        helpers.side_stages_done()


MAIN = """
import multiprocessing as mp, sys, time

def helper(jobs, out):
    from cguide.pipeline.workers import _helper
    _helper(None, [], out, None, jobs)  # no stages: it waits for a sweep job

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    jobs = ctx.Queue()  # referenced here: start() drops the process's own reference before the child reads it
    p = ctx.Process(target=helper, args=(jobs, sys.argv[1]))
    p.start()
    print(p.pid, flush=True)
    time.sleep(600)
"""


def test_a_waiting_helper_ends_when_its_main_process_is_killed(tmp_path):
    """The main process killed without a word (SIGKILL, out of memory) never sends the sweep job: a helper
    waiting for it must end on its own instead of idling forever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "main.py"
    script.write_text(MAIN)
    main = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(main.stdout.readline())
        time.sleep(2)
        assert running(pid)  # waiting for a job
    finally:
        main.send_signal(signal.SIGKILL)
        main.wait()
    deadline = time.monotonic() + 60  # its start (imports) may still be under way
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = running(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the helper outlived its killed main process"


@pytest.mark.parametrize("overrides,message", [
    (["workers=0"], r"^workers must be >= 1 \(1: everything in this process\), got 0$"),
    (["workers=2", "device=cpu", "trainer.accelerator=auto"],
     r"^workers=2 splits the CPU's cores between processes, but trainer.accelerator=auto and device=cpu; set both "
     r"to cpu, or workers=1 on a GPU$"),
    (["workers=2", "device=cpu", "trainer.accelerator=cpu", "sweep.points_per_call=null"],
     r"^workers=2 splits the sweep by calls, but sweep.points_per_call is null \(the whole sweep is one call\); set "
     r"sweep.points_per_call \(e.g. 2\), or workers=1$"),
])
def test_bad_worker_settings_stop_before_any_stage(cfg_pipeline, tmp_path, overrides, message):
    from cguide.pipeline import run_pipeline
    with pytest.raises(ValueError, match=message):
        run_pipeline(cfg_pipeline(*overrides))
    assert not (tmp_path / "pipeline" / "diffusion").exists()


def test_the_threads_go_up_at_the_fixed_step_once_the_other_process_is_done(capsys):
    from types import SimpleNamespace

    from cguide.modules.callbacks import TakeThreadsAtStep
    before = torch.get_num_threads()
    event = threading.Event()
    cb = TakeThreadsAtStep(before + 1, 3, event.wait)
    try:
        event.set()  # done early: still the fixed step, so every run rounds alike
        cb.on_train_batch_start(SimpleNamespace(global_step=2), None, None, 2)
        assert torch.get_num_threads() == before and not cb.taken
        event.clear()  # not done yet at the step: it waits for the event
        threading.Timer(0.2, event.set).start()
        cb.on_train_batch_start(SimpleNamespace(global_step=3), None, None, 3)
        assert event.is_set() and torch.get_num_threads() == before + 1 and cb.taken
        assert "[workers] step 3: %d thread(s) from here (waited 0." % (before + 1) in capsys.readouterr().out
        # the other process long done: the log says for how long (its core idled; a smaller share would use it)
        TakeThreadsAtStep(before, 0, lambda: 12.3).on_train_batch_start(SimpleNamespace(global_step=0), None, None, 0)
        assert "step 0: %d thread(s) from here (the other process had been done for 12 s)" % before \
            in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_two_thread_runs_hand_over_at_the_same_step_so_their_weights_agree(cfg_pipeline, tmp_path):
    """With 2 threads the eps-model trains on 1 thread, then on 2 from a fixed step: two runs (whose side process
    finishes at different moments) must give the same eps-model bit for bit."""
    from cguide.pipeline import run_pipeline
    extra = [*PIPELINE_FAST, "model.max_steps=12", "num_threads=2", "device=cpu", "trainer.accelerator=cpu",
             "workers=2", "sweep.points_per_call=1"]
    runs = [run_pipeline(cfg_pipeline(*extra, f"out_dir={tmp_path / name}")) for name in ("a", "b")]
    a, b = (torch.load(r.parents[1] / "diffusion/checkpoints/diffusion.ckpt", weights_only=False)["state_dict"]
            for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [{k: v for k, v in r.items() if k != "wall_s"} for r in _rows(runs[0])] == \
        [{k: v for k, v in r.items() if k != "wall_s"} for r in _rows(runs[1])]


def test_the_logging_process_puts_every_row_in_its_wandb_run_once(cfg_sweep, monkeypatch):
    """A helper draws some points with W&B off; the sweep run with log_others logs those, its own and any that
    land while it draws, each once, at W&B steps 0, 1, 2, ..."""
    from cguide.grid import wandb_log
    from cguide.grid.runner import run_sweep
    run_sweep(cfg_sweep("sweep.scales=[0,2]"))  # the helper's share, logged nowhere
    logged = []
    monkeypatch.setattr(wandb_log, "start_run", lambda *a, **k: object())
    monkeypatch.setattr(wandb_log, "log_point", lambda run, row, grid, step: logged.append((row["point"], step)))
    monkeypatch.setattr(wandb_log, "log_summary", lambda *a: None)
    out = run_sweep(cfg_sweep("sweep.scales=[0,1,2]"), log_others=True)
    rows = [r["point"] for r in _rows(out)]
    assert sorted(p for p, _ in logged) == rows and [s for _, s in logged] == list(range(len(rows)))


def test_rows_other_processes_write_reach_wandb_as_they_land(cfg_sweep, monkeypatch):
    """A point another process is drawing (its claim held) is logged right after the logging process's next call
    once its row lands, not only when the sweep ends: the dashboard follows the drawing."""
    from cguide.grid import runner, wandb_log
    from cguide.grid.claims import PointClaims
    from cguide.grid.results import ResultsFolder
    out = runner.run_sweep(cfg_sweep("sweep.scales=[0,2]", "sweep.points_per_call=1"))
    folder = ResultsFolder(out)
    s2 = next(r for r in folder.rows() if r["scale"] == 2)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in folder.rows() if r["scale"] != 2))
    other = PointClaims(out, folder.done)
    assert other.take([s2["point"]]) == ([s2["point"]], [])  # "another process" is drawing s = 2

    draw = runner._run_call

    def call_then_the_other_lands(cfg, call, *args, **kwargs):
        yield from draw(cfg, call, *args, **kwargs)
        if [p.guidance.scale for p in call] == [1]:
            folder.append(s2)  # the other process finishes s = 2 while this one drew s = 1
            other.release()

    logged = []
    monkeypatch.setattr(runner, "_run_call", call_then_the_other_lands)
    monkeypatch.setattr(wandb_log, "start_run", lambda *a, **k: object())
    monkeypatch.setattr(wandb_log, "log_point", lambda run, row, grid, step: logged.append((row["scale"], step)))
    monkeypatch.setattr(wandb_log, "log_summary", lambda *a: None)
    runner.run_sweep(cfg_sweep("sweep.scales=[0,1,2,4]", "sweep.points_per_call=1"), log_others=True)
    assert logged == [(0, 0), (1, 1), (2, 2), (4, 3)]  # s = 2 before this process's s = 4, not after it
