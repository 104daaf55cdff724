"""The LightningModule of a training task, sized from the data module (class count never hard-coded)."""

from __future__ import annotations

from dataclasses import asdict

import lightning as L

from ..nets import encoder_config, judge_config, unet_config
from .classifier import JudgeModule, NoisyClassifierModule
from .diffusion import DiffusionModule

# task -> (its config section, the checkpoint kind it writes)
TASKS = {"diffusion": ("model", "eps_model"), "classifier": ("classifier", "noisy_classifier"),
         "judge": ("judge", "judge")}


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


def build_module(task: str, net_cfg: dict, schedule: dict, dm) -> L.LightningModule:
    """net_cfg: the task's section (size, overrides, lr, ...) as a plain dict; schedule: diffusion's."""
    C, H, _ = dm.image_shape
    over = dict(net_cfg["overrides"])
    common = dict(image_shape=list(dm.image_shape), num_classes=dm.num_classes, lr=net_cfg["lr"],
                  weight_decay=net_cfg["weight_decay"], warmup_steps=net_cfg["warmup_steps"], data=asdict(dm.cfg))
    if task == "diffusion":
        net = unet_config(net_cfg["size"], C, H, **over).to_dict()
        return DiffusionModule(net, schedule, ema_decay=net_cfg["ema_decay"], **common)
    if task == "classifier":
        net = encoder_config(net_cfg["size"], C, H, dm.num_classes, **over).to_dict()
        return NoisyClassifierModule(net, schedule, **common)
    net = judge_config(net_cfg["size"], C, H, dm.num_classes, **over).to_dict()
    return JudgeModule(net, **common)
