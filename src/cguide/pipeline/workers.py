"""pipeline workers=N on CPU: the work split over N processes of num_threads / N threads each.

Why: on a small CPU a bf16 network step scales worse over intra-op threads than over processes (on the
2-core development machine bf16 work runs about 1.3x faster as two 1-thread processes than as one 2-thread
process; benchmarks/README.md). So with workers=2 the eps-model(s) train in this process while a helper process
trains the other networks (noisy classifier, judge, guide); at a fixed share of its steps (workers_handover) the
eps-model waits for the helper to finish them and takes every thread (a fixed step, so each run rounds the same
way). The sweep is then drawn by this process and the helper(s) (the per-point claims of cguide.grid.claims split
its calls between them), and this process writes the plots and the W&B run. Helpers start only when they have
work, and live until the sweep ends.
Each network is trained by the same code with the same seeds; only the thread count differs, which moves
float32 results by rounding."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..grid.points import build_grid
from ..grid.results import ResultsFolder
from ..grid.runner import run_sweep
from ..io.folders import write_error_line
from ..io.signals import stop_on_signals, stop_requested
from ..runtime.distributed import ERRORS
from ..modules.callbacks import TakeThreadsAtStep
from .stages import STAGES, run_stage, stage_done, stages


class HelperStopped(ValueError, RuntimeError):
    """A helper process stopped before its stages were done; its own error line is above. A ValueError, so the
    entry point reports this as one line too."""


def check_workers(cfg: DictConfig) -> None:
    """workers is a CPU split: >= 1, and > 1 only when training and sampling both run on the CPU."""
    n = cfg.workers
    if n < 1:
        raise ValueError(f"workers must be >= 1 (1: everything in this process), got {n}")
    if not 0 <= cfg.workers_handover <= 1:
        raise ValueError(f"workers_handover is the share of the eps-model's steps trained beside the other process, "
                         f"in [0, 1], got {cfg.workers_handover}; e.g. 0.5 (half the steps)")
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


def _die_with_parent() -> None:
    """SIGTERM this process when its main process ends, however it ends (SIGKILL, a crash: then no one stops the
    helper, which would train or draw on beside a rerun). Linux's PR_SET_PDEATHSIG; elsewhere a helper only notices
    while it waits for the sweep job."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    parent = mp.parent_process()
    if parent is not None and not parent.is_alive():  # it ended before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def _helper(container: dict | None, names: list[str], out: str, signals, jobs) -> None:
    """A helper process: train ``names`` (helper 0 only; signals = its (done, ok, finished) to the main process),
    then draw the sweep calls it claims when a sweep config arrives (None: the run ends without one). SIGTERM (from
    the main process stopping it, or the main process's end) and SIGINT end it quietly: training at the end of its
    step with last.ckpt saved, drawing at once (finished rows kept)."""
    try:
        with stop_on_signals():
            _die_with_parent()
            _helper_work(container, names, out, signals, jobs)
    except KeyboardInterrupt as e:  # Stopped too: the main process says why the run ended
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))
    except ERRORS as e:  # bad input met here (a file in the way, a damaged checkpoint): its one line, as the CLI
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a write that failed (disk full, ...): one line
        line = write_error_line(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)


def _helper_work(container: dict | None, names: list[str], out: str, signals, jobs) -> None:
    if signals is not None:
        done, ok, finished = signals
        try:
            t0 = time.perf_counter()
            cfg = OmegaConf.create(container)
            for name in names:
                run_stage(cfg, name, Path(out))
            print(f"[workers] {', '.join(names)} trained in {time.perf_counter() - t0:.0f} s")
            finished.value = time.time()  # wall clock: comparable across processes
            ok.set()
        finally:
            done.set()  # the eps-model's process takes every thread, whether these finished or failed
    parent = mp.parent_process()
    while True:
        try:
            job = jobs.get(timeout=1.0)
            break
        except queue.Empty:
            if parent is not None and not parent.is_alive():  # the main process was killed: nothing will come
                return
    if job is not None:
        run_sweep(OmegaConf.create(job), report=False)


class Helpers:
    """workers - 1 processes of num_threads / workers threads, started once when there is work for them and kept
    to the sweep's end (each start imports torch and Lightning, ~8 s of a core): the first trains the networks
    other than the eps-model(s) while this process trains those; then all of them and this process draw the
    sweep's calls into one folder. A context manager: leaving it (an error, an interrupt) stops any helper still
    running."""

    def __init__(self, cfg: DictConfig, out: Path):
        self.cfg, self.out, self.procs, self.jobs, self.side, self.sent = cfg, out, [], [], [], False
        self.total, self.per = thread_split(cfg)

    def __enter__(self) -> "Helpers":
        """Start the helpers now when the eps-model(s) and the other nets both have training to do (otherwise
        every stage trains here with all threads, and draw_sweep starts them if the sweep has points to draw)."""
        if self.cfg.workers < 2:
            return self
        todo = stages(self.cfg)
        side = [s for s in todo if STAGES[s][0] != "diffusion"]
        here = [s for s in todo if s not in side]

        def pending(names: list[str]) -> bool:
            return any(not stage_done(self.cfg, s, self.out) for s in names)

        if side and here and pending(side) and pending(here):
            self.side = side
            self.start()
        return self

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self.done, self.ok, self.finished = ctx.Event(), ctx.Event(), ctx.Value("d", 0.0)
        self.jobs = [ctx.Queue() for _ in range(self.cfg.workers - 1)]
        side_cfg = OmegaConf.to_container(_with(self.cfg, num_threads=self.per,
                                                **{"trainer.enable_progress_bar": False}))
        for i, jobs in enumerate(self.jobs):
            trains = i == 0 and bool(self.side)
            self.procs.append(ctx.Process(target=_helper, name=f"cguide-helper-{i}", args=(
                side_cfg if trains else None, self.side if trains else [], str(self.out),
                (self.done, self.ok, self.finished) if trains else None, jobs)))
            self.procs[-1].start()

    def __exit__(self, *exc) -> None:
        if exc[0] is None and not self.sent:
            for jobs in self.jobs:
                jobs.put(None)  # no sweep for them: they end
        _join(self.procs, wait=exc[0] is None)

    def side_stages_done(self) -> float:
        """Wait for helper 0's stages; their error, if any, stops this run here (at the eps-model's hand-over
        step, or after it when the eps-model was reused). Returns how long ago they finished (s)."""
        while not self.done.wait(timeout=1.0) and self.procs[0].is_alive():
            if stop_requested() is not None:  # SIGINT / SIGTERM here: the eps-model stops at this step's end
                return 0.0
        # (a helper killed, e.g. out of memory, never sets done)
        if not self.ok.is_set():
            self.procs[0].join()
            raise HelperStopped(f"the process training {', '.join(self.side)} stopped with exit code "
                               f"{self.procs[0].exitcode} (its error is above); run the same command again: "
                               "finished stages are reused")
        return max(0.0, time.time() - self.finished.value)


def train_stages(cfg: DictConfig, out: Path, helpers: Helpers | None = None) -> dict[str, Path]:
    """Train (or reuse) every stage the experiment needs; with helpers the eps-model(s) beside the rest."""
    todo = stages(cfg)
    if helpers is None or not helpers.side:
        return {s: run_stage(cfg, s, out) for s in todo}
    here = [s for s in todo if s not in helpers.side]
    total, per = helpers.total, helpers.per
    print(f"[workers] {', '.join(helpers.side)} train in a second process ({per} thread(s)) beside "
          f"{', '.join(here)} ({per} thread(s) for {cfg.workers_handover:.0%} of the steps, then {total})")
    ckpts = {s: run_stage(_with(cfg, num_threads=per), s, out, [TakeThreadsAtStep(
        total, int(cfg.workers_handover * cfg[STAGES[s][1]].max_steps), helpers.side_stages_done)]) for s in here}
    helpers.side_stages_done()
    torch.set_num_threads(total)
    return {**ckpts, **{s: run_stage(cfg, s, out) for s in helpers.side}}  # finished there: reused here


def _points_left(sweep_cfg: DictConfig) -> bool:
    keys = {p.key for p in build_grid(sweep_cfg.sweep, sweep_cfg.sampler, sweep_cfg.guidance)}
    return not keys <= ResultsFolder(sweep_cfg.out_dir).done()


def draw_sweep(cfg: DictConfig, sweep_cfg: DictConfig, helpers: Helpers | None = None) -> Path:
    """The sweep; with helpers drawn by them and this process into one folder, and measured into plots and one
    W&B run here (with the helpers' rows)."""
    if helpers is None or cfg.workers < 2 or not (helpers.procs or _points_left(sweep_cfg)):
        return run_sweep(sweep_cfg)  # one process, or nothing left to draw (a rerun): no helper to start
    if not helpers.procs:
        helpers.start()
    total, per = helpers.total, helpers.per
    print(f"[workers] the sweep is drawn by {cfg.workers} processes of {per} thread(s)")
    share = _with(sweep_cfg, num_threads=per)
    for jobs in helpers.jobs:
        jobs.put(OmegaConf.to_container(_with(share, progress=False, **{"logger.mode": "disabled"})))
    helpers.sent = True
    try:  # returns once every point's row is in (a point of a helper that stopped is drawn here)
        out = run_sweep(share, log_others=True)
    finally:
        torch.set_num_threads(total)
    _join(helpers.procs)
    for p in helpers.procs:
        if p.exitcode != 0:
            print(f"[workers] {p.name} stopped with exit code {p.exitcode} (its error is above); this process drew "
                  "the points it left")
    return out
