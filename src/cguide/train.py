"""Hydra entry point: train the eps-model, the noisy classifier, the judge or the clean guide.

    python -m cguide.train task=diffusion model=small data=mnist5k
    python -m cguide.train task=classifier classifier=small
    python -m cguide.train task=judge resume=true      # continue from checkpoints/last.ckpt
    python -m cguide.train task=guide                  # the clean guide of x0-space guidance (guide/)
    python -m cguide.train task=judge2                 # the second judge (judge2/: another architecture and seed)
    python -m cguide.train debug=default               # a few steps on CPU, no logger
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from .cli import (CONF_DIR, apply_num_threads, check_int64, check_num_threads, check_output_args, print_config_tree,
                  run_or_exit)
from .config import net_precision, plain, register_configs
from .data import as_data_config, build_datamodule
from .io.atomic import atomic_write, remove_stale_temps
from .io.checkpoints import KINDS, read_checkpoint
from .io.folders import check_writable, move_aside
from .io.locks import FolderLock
from .io.loggers import build_logger, finish_wandb
from .modules.callbacks import FinalCheckpoint
from .modules.checkpoint_io import AtomicCheckpointIO
from .modules.factory import TASKS, build_module, check_resumable, check_task, check_training
from .io.signals import Stopped, stop_requested
from .modules.interrupt import SaveOnStop, stop_at_step_end


@dataclass
class TrainResult:
    """What a training run produced: the final checkpoint (None after fast_dev_run, which writes none),
    the optimizer steps taken and the last logged metrics."""
    checkpoint: Path | None
    steps: int
    metrics: dict = field(default_factory=dict)


def resume_path(cfg: DictConfig, ckpt_dir: Path, module: L.LightningModule) -> tuple[str | None, int]:
    """The checkpoint to continue from (cfg.ckpt_path, or last.ckpt with resume=true) and its step, checked
    first so a damaged, foreign or differently-configured file is one clear line rather than a traceback."""
    path = cfg.ckpt_path
    if path is None and cfg.resume and (ckpt_dir / "last.ckpt").is_file():
        path = ckpt_dir / "last.ckpt"
    if path is None:
        return None, 0
    ckpt = read_checkpoint(path)
    kind = (ckpt.get("cguide") or {}).get("kind")
    if kind != TASKS[cfg.task][1]:
        what = KINDS[kind][2] if kind in KINDS else "no 'cguide' metadata (not written by this project)"
        raise ValueError(f"cannot resume task={cfg.task} from {path}: it holds {what}; "
                         f"point ckpt_path to a checkpoint of task={cfg.task}, or drop resume/ckpt_path")
    check_resumable(path, ckpt, module.cguide_meta())
    print(f"resuming task={cfg.task} from {path} at step {ckpt.get('global_step')}")
    return str(path), int(ckpt.get("global_step") or 0)


def clear_killed_writes(ckpt_dir: Path, task: str, step: int) -> list[Path]:
    """Before training from ``step`` (0, or the step of the checkpoint resumed from) into ckpt_dir: what a
    killed run left there. Temp files of checkpoint writes it did not finish, and top-k checkpoints
    (<task>-step=N.ckpt) it saved after that step: a kill between ModelCheckpoint's top-k write and its
    last.ckpt write leaves one, and this run would save its own beside it as <task>-step=N-v1.ckpt, so two
    would stay. Returns what was removed."""
    later = [p for p in ckpt_dir.glob(f"{task}-step=*.ckpt")
             if (m := TOP_K.fullmatch(p.name[len(task):])) and int(m[1]) > step]
    removed = remove_stale_temps([ckpt_dir])
    for p in later:
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:  # another rank of the same run removed it first
            pass
    if removed:
        print(f"removed what a killed run left in {ckpt_dir}: {', '.join(sorted(p.name for p in removed))}")
    return removed


TOP_K = re.compile(r"-step=(\d+)(-v\d+)?\.ckpt")


RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def _first_process() -> bool:
    """Not a process that a multi-process launcher (Lightning's ddp script launcher, torchrun, SLURM tasks) started
    beside the first: those train the same run, whose first process holds the folder's lock."""
    return all(os.environ.get(k, "0") in ("", "0") for k in RANK_VARS)


def prepare_folder(cfg: DictConfig, out: Path, ckpt_dir: Path, lock_wait_s: float = 0.0) -> FolderLock | None:
    """The run folder must be writable, a finished or started run in it is never silently replaced, and no
    other live run writes there: returns the folder's lock, held (None for fast_dev_run, which writes no
    checkpoint); the caller releases it when the run ends."""
    check_writable(out, "paths.output_dir")
    if not cfg.trainer.fast_dev_run:
        check_writable(ckpt_dir, "paths.ckpt_dir")
    held = [p.name for p in (ckpt_dir / f"{cfg.task}.ckpt", ckpt_dir / "last.ckpt") if p.is_file()]
    if held and not (cfg.resume or cfg.ckpt_path or cfg.trainer.fast_dev_run or cfg.overwrite):
        raise ValueError(f"{ckpt_dir} already holds a run ({', '.join(held)}); continue it with resume=true, "
                         "train into a new folder (paths.output_dir=...), or pass overwrite=true to move it aside")
    if cfg.trainer.fast_dev_run or not _first_process():
        return None
    lock = FolderLock(out, "paths.output_dir", wait_s=lock_wait_s)
    lock.acquire()
    try:
        if held and cfg.overwrite and not (cfg.resume or cfg.ckpt_path):
            print(f"overwrite=true: previous run kept in {move_aside(ckpt_dir)}")
    except BaseException:
        lock.release()
        raise
    return lock


def check_train(cfg: DictConfig) -> None:
    """Every setting of a training run that can be checked without data or networks."""
    check_int64(cfg)
    check_task(cfg.task)
    check_num_threads(cfg.num_threads)
    check_training(cfg.task, plain(cfg[TASKS[cfg.task][0]]), plain(cfg.trainer))
    check_lightning(cfg)


# The nets keep float32 parts (the timestep embedding), so Lightning's "-true" half and double precisions fail
# at the first step; the mixed ones autocast.
PRECISIONS = ("32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16")


def precision_key(cfg: DictConfig) -> tuple[str, str]:
    """(the key that sets it, the precision) of the trained net."""
    section = TASKS[cfg.task][0]
    key = f"{section}.precision" if cfg[section].get("precision") is not None else "trainer.precision"
    return key, net_precision(cfg[section], cfg.trainer)


@contextmanager
def _lightning_quiet():
    """Lightning's info lines (GPU available, ...) once per run, not again for the trial build."""
    log = logging.getLogger("lightning.pytorch")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def check_lightning(cfg: DictConfig) -> None:
    """The trainer and callback settings only Lightning reads, before any work: values it takes but fails on
    later, then the trainer and the checkpoint callback built once (Lightning's refusal as one line)."""
    tr, grid = cfg.trainer, cfg.callbacks.sample_grid
    key, precision = precision_key(cfg)
    if str(precision) not in PRECISIONS:
        raise ValueError(f"{key}={precision} is not supported (the nets keep float32 parts); "
                         f"use one of {', '.join(PRECISIONS)}")
    if tr.check_val_every_n_epoch is not None and tr.check_val_every_n_epoch < 1:
        raise ValueError(f"trainer.check_val_every_n_epoch must be >= 1 or null, got {tr.check_val_every_n_epoch}")
    if cfg.task == "diffusion" and grid.n > 0 and grid.steps < 1:
        raise ValueError(f"callbacks.sample_grid.steps must be >= 1 (DDIM steps of the sample grid), got {grid.steps}; "
                         "or set callbacks.sample_grid.n=0 for no grid")
    builds = {"trainer": lambda: instantiate(tr, max_steps=1, logger=False, enable_checkpointing=False,
                                             precision=precision)}
    if not tr.fast_dev_run:
        builds["callbacks.model_checkpoint"] = lambda: instantiate(cfg.callbacks.model_checkpoint, filename="x-{step}")
    for key, build in builds.items():
        try:
            with _lightning_quiet():
                build()
        except InstantiationException as e:
            why = " ".join(str(e.__cause__ or e).split()).rstrip(".")
            raise ValueError(f"Lightning refuses the {key} settings: {why}; fix {key}") from None


def build_callbacks(cfg: DictConfig, out: Path, ckpt_dir: Path, final: Path) -> list[L.Callback]:
    cb = cfg.callbacks
    callbacks: list[L.Callback] = [FinalCheckpoint(str(final))]  # saved in the training processes (ddp_spawn)
    if not cfg.trainer.fast_dev_run:  # Lightning's on_train_end writes last.ckpt even then: resume would take it
        callbacks.insert(0, instantiate(cb.model_checkpoint, dirpath=str(ckpt_dir), filename=f"{cfg.task}-{{step}}"))
    if cfg.task == "diffusion":
        callbacks.append(instantiate(cb.sample_grid, dirpath=str(out / "samples")))
    return callbacks


def train(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = (), lock_wait_s: float = 0.0) -> TrainResult:
    """Fit (and for the judge and the guide, test) one network into ckpt_dir/<task>.ckpt, holding the run
    folder's lock (cguide.io.locks; lock_wait_s: how long to wait for another holder before refusing)."""
    check_train(cfg)
    apply_num_threads(cfg.num_threads)
    net_cfg = plain(cfg[TASKS[cfg.task][0]])
    # the net's own offset: the guide (judge architecture) never starts from the judge's draws
    L.seed_everything(cfg.seed + net_cfg.get("seed_offset", 0), workers=True, verbose=False)
    data = plain(cfg.data)
    if net_cfg["batch_size"]:
        data["batch_size"] = net_cfg["batch_size"]
    dm = build_datamodule(as_data_config(data))
    module = build_module(cfg.task, net_cfg, plain(cfg.diffusion), dm)
    out, ckpt_dir = Path(cfg.paths.output_dir), Path(cfg.paths.ckpt_dir)
    ckpt_path, resumed_step = resume_path(cfg, ckpt_dir, module)
    lock = prepare_folder(cfg, out, ckpt_dir, lock_wait_s)
    try:
        return _train_in(cfg, module, dm, out, ckpt_dir, (ckpt_path, resumed_step), extra_callbacks)
    finally:
        if lock is not None:
            lock.release()


def _train_in(cfg: DictConfig, module, dm, out: Path, ckpt_dir: Path, resume: tuple[str | None, int],
              extra_callbacks: Sequence[L.Callback]) -> TrainResult:
    """train()'s part in the locked run folder."""
    ckpt_path, resumed_step = resume
    net_cfg = plain(cfg[TASKS[cfg.task][0]])
    if not cfg.trainer.fast_dev_run:
        clear_killed_writes(ckpt_dir, cfg.task, resumed_step)
    logger = build_logger(cfg.logger, str(out), name=f"{cfg.task}-{out.name}", config=plain(cfg),
                          tags=list(cfg.tags))
    final = ckpt_dir / f"{cfg.task}.ckpt"
    on_stop = SaveOnStop(ckpt_dir / "last.ckpt")
    trainer = instantiate(cfg.trainer, max_steps=net_cfg["max_steps"], logger=logger, precision=precision_key(cfg)[1],
                          callbacks=[*build_callbacks(cfg, out, ckpt_dir, final), *extra_callbacks, on_stop],
                          default_root_dir=str(out),
                          plugins=[AtomicCheckpointIO()])
    try:
        with stop_at_step_end(trainer):
            metrics = _fit_and_test(cfg, trainer, module, dm, resume, final, on_stop)
    finally:
        finish_wandb()
    return TrainResult(None if trainer.fast_dev_run else final, trainer.global_step, metrics)


def _fit_and_test(cfg, trainer, module, dm, resume: tuple[str | None, int], final: Path,
                  on_stop: SaveOnStop) -> dict:
    """Fit (and test the judge and the guide); returns the last logged metrics. A SIGINT / SIGTERM stops at the
    end of a step, with last.ckpt saved there, as Stopped (Lightning's SIGTERMException would exit 0, as if
    training had finished)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    net_cfg = plain(cfg[TASKS[cfg.task][0]])
    ckpt_path, resumed_step = resume
    try:
        trainer.fit(module, dm, ckpt_path=ckpt_path)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if ckpt_path and 0 < net_cfg["max_steps"] <= resumed_step and trainer.is_global_zero:
            # Lightning skips a fit loop that is done on arrival, on_train_end included: the checkpoint
            # resumed from is the final state
            atomic_write(final, lambda tmp: shutil.copyfile(ckpt_path, tmp))
        if cfg.task in ("judge", "guide", "judge2"):
            trainer.test(module, dm, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        return metrics
    except SIGTERMException:
        signum = stop_requested() or signal.SIGTERM
        saved = f"saved {on_stop.last} at step {on_stop.saved_at}" if on_stop.saved_at is not None else \
            f"step {trainer.global_step}"
        raise Stopped(signum, f"training stopped at the end of a step: {saved}; run the same command again with "
                      "resume=true to continue from there") from None


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    print_config_tree(cfg, first=("task", "data", TASKS.get(cfg.task, ("model",))[0], "trainer"))
    result = run_or_exit(train, cfg)
    if result.checkpoint is None:
        print(f"fast_dev_run: {result.steps} step(s) ran as a smoke test; no checkpoint written")
    else:
        print(f"checkpoint: {result.checkpoint}")


def main():
    """Output folders checked before Hydra makes its run folder (cguide.cli.check_output_args)."""
    check_output_args(sys.argv[1:], "hydra.run.dir")
    return hydra_main()


if __name__ == "__main__":
    main()
