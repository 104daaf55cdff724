"""pipeline workers=2: the eps-model trains beside a process that trains the other nets, the sweep is drawn by
two processes into one folder; the checks before any work, and the thread hand-over callback."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from test_pipeline import FAST


def _rows(sweep_dir):
    return sorted((json.loads(line) for line in (sweep_dir / "results.jsonl").read_text().splitlines()),
                  key=lambda r: r["point"])


def test_two_workers_train_and_draw_what_one_process_does(cfg_pipeline, tmp_path, capsys):
    from cguide.pipeline import run_pipeline
    # one thread in all: the split changes no thread count, so the results must be the same to the last bit
    extra = [*FAST, "num_threads=1", "device=cpu", "trainer.accelerator=cpu", "sweep.points_per_call=1",
             "sweep.scales=[0,1,2]"]
    par = run_pipeline(cfg_pipeline(*extra, "workers=2"))
    out = capsys.readouterr().out
    assert "[workers] classifier, judge train in a second process (1 thread(s)) beside diffusion" in out
    assert "[workers] the sweep is drawn by 2 processes of 1 thread(s)" in out
    one = run_pipeline(cfg_pipeline(*extra, "workers=1", f"out_dir={tmp_path / 'one'}"))
    for stage in ("diffusion", "classifier", "judge"):
        a = torch.load(par.parents[1] / stage / "checkpoints" / f"{stage}.ckpt", weights_only=False)["state_dict"]
        b = torch.load(one.parents[1] / stage / "checkpoints" / f"{stage}.ckpt", weights_only=False)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    drop = ("wall_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in _rows(par)] == \
        [{k: v for k, v in r.items() if k not in drop} for r in _rows(one)]
    assert len(_rows(par)) == 3 and (par / "plots").is_dir()


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


def test_the_threads_go_up_at_the_first_step_after_the_event():
    from cguide.modules.callbacks import TakeThreadsWhenSet
    before = torch.get_num_threads()
    event = threading.Event()
    cb = TakeThreadsWhenSet(before + 1, event)
    try:
        cb.on_train_batch_start(None, None, None, 0)
        assert torch.get_num_threads() == before and not cb.taken
        event.set()
        cb.on_train_batch_start(None, None, None, 1)
        assert torch.get_num_threads() == before + 1 and cb.taken
    finally:
        torch.set_num_threads(before)
