"""pipeline workers=N on CPU: the work split over N processes of num_threads / N threads each.

Why: on a small CPU a bf16 network step scales worse over intra-op threads than over processes (on the
2-core development machine bf16 work runs about 1.3x faster as two 1-thread processes than as one 2-thread
process; benchmarks/README.md). So with workers=2 the eps-model(s) train in this process while a second process
trains the other networks (noisy classifier, judge, guide); at half its steps the eps-model waits for that process
to end and takes every thread (a fixed step, so each run rounds the same way). The sweep is then drawn by N
processes into one folder (the per-point claims of cguide.grid.claims split its calls between them), and this
process writes the plots and the W&B run.
Each network is trained by the same code with the same seeds; only the thread count differs, which moves
float32 results by rounding."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .grid.runner import run_sweep
from .modules.callbacks import TakeThreadsAtStep
from .stages import STAGES, run_stage, stages


def check_workers(cfg: DictConfig) -> None:
    """workers is a CPU split: >= 1, and > 1 only when training and sampling both run on the CPU."""
    n = cfg.workers
    if n < 1:
        raise ValueError(f"workers must be >= 1 (1: everything in this process), got {n}")
    if n == 1:
        return
    if cfg.trainer.accelerator != "cpu" or cfg.device != "cpu":
        raise ValueError(f"workers={n} splits the CPU's cores between processes, but trainer.accelerator="
                         f"{cfg.trainer.accelerator} and device={cfg.device}; set both to cpu, or workers=1 on a GPU")
    if not cfg.sweep.points_per_call:
        raise ValueError(f"workers={n} splits the sweep by calls, but sweep.points_per_call is null (the whole sweep "
                         "is one call); set sweep.points_per_call (e.g. 2), or workers=1")


def thread_split(cfg: DictConfig) -> tuple[int, int]:
    """(threads of the whole run, threads per worker)."""
    total = cfg.num_threads or torch.get_num_threads()
    return total, max(1, total // cfg.workers)


def _with(cfg: DictConfig, **updates) -> DictConfig:
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key, value in updates.items():
        OmegaConf.update(out, key, value, merge=False)
    return out


def _join(procs: list, wait: bool = True) -> None:
    """Wait for the processes (wait=False: for none); any still running is stopped, so an error or an interrupt
    here never leaves one working on."""
    try:
        for p in procs if wait else ():
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()


def _side_stages(container: dict, names: list[str], out: str, done) -> None:
    try:
        cfg = OmegaConf.create(container)
        for name in names:
            run_stage(cfg, name, Path(out))
    finally:
        done.set()  # the eps-model's process takes every thread, whether these finished or failed


def train_stages(cfg: DictConfig, out: Path) -> dict[str, Path]:
    """Train (or reuse) every stage the experiment needs; with workers > 1 the eps-model(s) beside the rest."""
    todo = stages(cfg)
    side = [s for s in todo if STAGES[s][0] != "diffusion"]
    here = [s for s in todo if s not in side]
    if cfg.workers < 2 or not side or not here:
        return {s: run_stage(cfg, s, out) for s in todo}
    total, per = thread_split(cfg)
    print(f"[workers] {', '.join(side)} train in a second process ({per} thread(s)) beside {', '.join(here)} "
          f"({per} thread(s) for the first half of the steps, then {total})")
    ctx = mp.get_context("spawn")
    done = ctx.Event()
    side_cfg = _with(cfg, num_threads=per, **{"trainer.enable_progress_bar": False})
    proc = ctx.Process(target=_side_stages, args=(OmegaConf.to_container(side_cfg), side, str(out), done),
                       name="cguide-side-stages")
    proc.start()
    try:  # half the steps: on 2 cores the other nets take about as long as half the eps-model's steps on one thread
        ckpts = {s: run_stage(_with(cfg, num_threads=per), s, out,
                              [TakeThreadsAtStep(total, cfg[STAGES[s][1]].max_steps // 2, done)]) for s in here}
    except BaseException:
        _join([proc], wait=False)
        raise
    _join([proc])
    torch.set_num_threads(total)
    if proc.exitcode != 0:
        raise RuntimeError(f"the process training {', '.join(side)} stopped with exit code {proc.exitcode} (its "
                           "error is above); run the same command again: finished stages are reused")
    return {**ckpts, **{s: run_stage(cfg, s, out) for s in side}}  # finished there: reused here


def _sweep_worker(container: dict) -> None:
    run_sweep(OmegaConf.create(container))


def draw_sweep(cfg: DictConfig, sweep_cfg: DictConfig) -> Path:
    """The sweep; with workers > 1 drawn by that many processes into one folder, then measured into plots and
    one W&B run here."""
    if cfg.workers < 2:
        return run_sweep(sweep_cfg)
    total, per = thread_split(cfg)
    print(f"[workers] the sweep is drawn by {cfg.workers} processes of {per} thread(s)")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_sweep_worker, name=f"cguide-sweep-{i}", args=(OmegaConf.to_container(
        _with(sweep_cfg, num_threads=per, progress=bool(sweep_cfg.progress and i == 0),
              **{"logger.mode": "disabled"})),)) for i in range(cfg.workers)]
    for p in procs:
        p.start()
    _join(procs)
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"sweep process(es) {', '.join(failed)} stopped with an error (above); run the same "
                           "command again: finished points are kept")
    return run_sweep(sweep_cfg, log_done_points=True)
