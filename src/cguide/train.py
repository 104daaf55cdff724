"""Hydra entry point: train the eps-model, the noisy classifier or the judge.

    python -m cguide.train task=diffusion model=small data=mnist5k
    python -m cguide.train task=classifier classifier=small
    python -m cguide.train task=judge resume=true      # continue from checkpoints/last.ckpt
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from .checkpoints import KINDS, atomic_write, read_checkpoint
from .cli import CONF_DIR, run_or_exit
from .config import register_configs
from .data import as_data_config, build_datamodule
from .logging_utils import build_logger, finish_wandb
from .modules import DiffusionModule, JudgeModule, NoisyClassifierModule, SampleGrid
from .modules.callbacks import FinalCheckpoint
from .nets import encoder_config, judge_config, unet_config

TASKS = {"diffusion": "model", "classifier": "classifier", "judge": "judge"}
TASK_KINDS = {"diffusion": "eps_model", "classifier": "noisy_classifier", "judge": "judge"}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint the Trainer writes (last.ckpt, top-k, the final one) goes to a temp file beside
    its target and is renamed over it: a crash mid-write leaves the previous checkpoint intact.
    (Lightning's own save stages in the system temp dir and may fall back to a non-atomic copy.)"""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def build_module(cfg: DictConfig, dm) -> L.LightningModule:
    """The LightningModule of cfg.task, sized from the data module (class count never hard-coded)."""
    net_cfg = cfg[TASKS[cfg.task]]
    C, H, _ = dm.image_shape
    over = _plain(net_cfg.overrides)
    common = dict(image_shape=list(dm.image_shape), num_classes=dm.num_classes, lr=net_cfg.lr,
                  weight_decay=net_cfg.weight_decay, warmup_steps=net_cfg.warmup_steps, data=asdict(dm.cfg))
    if cfg.task == "diffusion":
        net = unet_config(net_cfg.size, C, H, **over).to_dict()
        return DiffusionModule(net, _plain(cfg.diffusion), ema_decay=net_cfg.ema_decay, **common)
    if cfg.task == "classifier":
        net = encoder_config(net_cfg.size, C, H, dm.num_classes, **over).to_dict()
        return NoisyClassifierModule(net, _plain(cfg.diffusion), **common)
    net = judge_config(net_cfg.size, C, H, dm.num_classes, **over).to_dict()
    return JudgeModule(net, **common)


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


def resume_path(cfg: DictConfig, ckpt_dir: Path) -> tuple[str | None, int]:
    """The checkpoint to continue from (cfg.ckpt_path, or last.ckpt with resume=true) and its step, checked
    first so a damaged or foreign file is one clear line rather than Lightning's traceback."""
    path = cfg.ckpt_path
    if path is None and cfg.resume and (ckpt_dir / "last.ckpt").is_file():
        path = ckpt_dir / "last.ckpt"
    if path is None:
        return None, 0
    ckpt = read_checkpoint(path)
    kind = (ckpt.get("cguide") or {}).get("kind")
    if kind != TASK_KINDS[cfg.task]:
        what = KINDS[kind][2] if kind in KINDS else "no 'cguide' metadata (not written by this project)"
        raise ValueError(f"cannot resume task={cfg.task} from {path}: it holds {what}; "
                         f"point ckpt_path to a checkpoint of task={cfg.task}, or drop resume/ckpt_path")
    print(f"resuming task={cfg.task} from {path} at step {ckpt.get('global_step')}")
    return str(path), int(ckpt.get("global_step") or 0)


def train(cfg: DictConfig) -> Path:
    """Fit (and for the judge, test) one network; returns the final checkpoint, ckpt_dir/<task>.ckpt."""
    check_task(cfg.task)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    net_cfg = cfg[TASKS[cfg.task]]
    data = _plain(cfg.data)
    if net_cfg.batch_size:
        data["batch_size"] = net_cfg.batch_size
    dm = build_datamodule(as_data_config(data))
    module = build_module(cfg, dm)
    out, ckpt_dir = Path(cfg.paths.output_dir), Path(cfg.paths.ckpt_dir)
    ckpt_path, resumed_step = resume_path(cfg, ckpt_dir)
    logger = build_logger(cfg.logger, str(out), name=f"{cfg.task}-{out.name}",
                          config=OmegaConf.to_container(cfg, resolve=True))
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, filename=f"{cfg.task}-{{step}}", save_last=True, save_top_k=1,
                                 every_n_train_steps=cfg.callbacks.ckpt_every_n_steps)]
    final = ckpt_dir / f"{cfg.task}.ckpt"
    callbacks.append(FinalCheckpoint(str(final)))  # saved in the training processes (ddp_spawn: see there)
    if cfg.task == "diffusion":
        callbacks.append(SampleGrid(cfg.callbacks.sample_every_n_steps, cfg.callbacks.sample_n,
                                    cfg.callbacks.sample_steps, str(out / "samples")))
    t = cfg.trainer
    trainer = L.Trainer(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
                        precision=t.precision, max_steps=net_cfg.max_steps, log_every_n_steps=t.log_every_n_steps,
                        val_check_interval=t.val_check_interval, check_val_every_n_epoch=t.check_val_every_n_epoch,
                        limit_val_batches=t.limit_val_batches, gradient_clip_val=t.gradient_clip_val,
                        enable_progress_bar=t.enable_progress_bar, fast_dev_run=t.fast_dev_run,
                        deterministic=t.deterministic, logger=logger, callbacks=callbacks, default_root_dir=str(out),
                        plugins=[AtomicCheckpointIO()])
    try:
        trainer.fit(module, dm, ckpt_path=ckpt_path)
        if ckpt_path and 0 < net_cfg.max_steps <= resumed_step and trainer.is_global_zero:
            # Lightning skips a fit loop that is done on arrival, on_train_end included: the checkpoint
            # resumed from is the final state
            atomic_write(final, lambda tmp: shutil.copyfile(ckpt_path, tmp))
        if cfg.task == "judge":
            trainer.test(module, dm, verbose=False)
    finally:
        finish_wandb()
    return final


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    print(f"checkpoint: {run_or_exit(train, cfg)}")


if __name__ == "__main__":
    main()
