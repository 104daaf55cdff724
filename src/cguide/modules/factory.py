"""The LightningModule of a training task, sized from the data module (class count never hard-coded)."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, fields

import lightning as L
import torch

from ..io.checkpoints import KINDS
from ..nets import encoder_config, judge_cnn_config, judge_config, unet_config
from .classifier import GuideModule, JudgeModule, NoisyClassifierModule, SecondJudgeModule
from .diffusion import DiffusionModule

# task -> (its config section, the checkpoint kind it writes)
TASKS = {"diffusion": ("model", "eps_model"), "classifier": ("classifier", "noisy_classifier"),
         "judge": ("judge", "judge"), "guide": ("guide", "guide_classifier"), "judge2": ("judge2", "judge2")}


LR_DECAYS = ("constant", "cosine")


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
        # p_uncond = 1 never shows a label: that is the unconditional model, built without a label embedding
        cond = bool(net_cfg.get("cond")) and net_cfg.get("p_uncond", 0.1) < 1
        labels = dict(num_classes=dm.num_classes, null_class=True) if cond else {}
        net = unet_config(net_cfg["size"], C, H, **{**labels, **over}).to_dict()
        return DiffusionModule(net, schedule, ema_decay=net_cfg["ema_decay"], cond=cond,
                               p_uncond=float(net_cfg["p_uncond"]) if cond else 0.0,
                               lr_decay=net_cfg.get("lr_decay", "constant"), **common)
    if task == "classifier":
        net = encoder_config(net_cfg["size"], C, H, dm.num_classes, **over).to_dict()
        return NoisyClassifierModule(net, schedule, lr_decay=net_cfg.get("lr_decay", "constant"), **common)
    if task == "judge2":  # the second judge: another architecture, trained as the judge is
        return SecondJudgeModule(judge_cnn_config(net_cfg["size"], C, H, dm.num_classes, **over).to_dict(), **common)
    net = judge_config(net_cfg["size"], C, H, dm.num_classes, **over).to_dict()  # judge and guide: one architecture
    return (GuideModule if task == "guide" else JudgeModule)(net, **common)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_training(task: str, net_cfg: dict, trainer: dict) -> None:
    """Every training value the math needs, checked before any network runs (NaN/inf included).
    net_cfg: the task's section (its config key is TASKS[task][0]); trainer: the trainer section."""
    key = TASKS[task][0]
    if not isinstance(net_cfg["max_steps"], int) or net_cfg["max_steps"] < 1:
        raise ValueError(f"{key}.max_steps must be >= 1 (nothing would be trained), got {net_cfg['max_steps']}; "
                         f"for a smoke test use trainer.fast_dev_run=true or debug=default")
    if not (_finite(net_cfg["lr"]) and net_cfg["lr"] > 0):
        raise ValueError(f"{key}.lr must be a finite number > 0, got {net_cfg['lr']}")
    if not (_finite(net_cfg["weight_decay"]) and net_cfg["weight_decay"] >= 0):
        raise ValueError(f"{key}.weight_decay must be a finite number >= 0, got {net_cfg['weight_decay']}")
    if net_cfg["warmup_steps"] < 0:
        raise ValueError(f"{key}.warmup_steps must be >= 0, got {net_cfg['warmup_steps']}")
    if net_cfg.get("lr_decay", "constant") not in LR_DECAYS:
        raise ValueError(f"unknown {key}.lr_decay {net_cfg['lr_decay']!r}; known: {', '.join(LR_DECAYS)}")
    if task == "diffusion" and not (_finite(net_cfg["ema_decay"]) and 0 <= net_cfg["ema_decay"] < 1):
        raise ValueError(f"{key}.ema_decay must be in [0, 1), got {net_cfg['ema_decay']}")
    p = net_cfg.get("p_uncond", 0.1)
    if task == "diffusion" and not (_finite(p) and 0 <= p <= 1):
        raise ValueError(f"{key}.p_uncond (label dropout) must be a finite number in [0, 1], got {p}")
    if net_cfg["batch_size"] is not None and net_cfg["batch_size"] < 1:
        raise ValueError(f"{key}.batch_size must be >= 1 or null (data.batch_size), got {net_cfg['batch_size']}")
    clip = trainer["gradient_clip_val"]
    if clip is not None and not (_finite(clip) and clip >= 0):
        raise ValueError(f"trainer.gradient_clip_val must be a finite number >= 0 or null, got {clip}")
    if trainer["accelerator"] in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={trainer['accelerator']} but this machine has no CUDA GPU; "
                         "use trainer=cpu (or trainer.accelerator=auto)")


def check_resumable(path, ckpt: dict, meta: dict) -> None:
    """A resume must continue the same network on the same schedule and data: compare the settings
    that define it (saved in the checkpoint) with the current ones, listing every difference."""
    saved, meta = _json(ckpt.get("cguide") or {}), _json(meta)  # tuples and lists alike
    for d in (saved, meta):  # a net field added since the file was written takes its default
        d["net_config"] = {**_defaults(d.get("kind")), **(d.get("net_config") or {})}
    diffs = [f"{k}.{f}: {a!r} -> {b!r}" for k in ("net_config", "fingerprint")
             for f, a, b in _differing(saved.get(k) or {}, meta.get(k) or {})]
    diffs += [f"{k}: {saved.get(k)!r} -> {meta.get(k)!r}" for k in ("image_shape", "num_classes")
              if saved.get(k) != meta.get(k)]
    if diffs:
        raise ValueError(f"cannot resume from {path}: it was trained with other settings ({'; '.join(diffs)}); "
                         "resume with the settings it was trained with, or train into a new folder "
                         "(paths.output_dir=...)")


def _defaults(kind) -> dict:
    if kind not in KINDS:
        return {}
    return {f.name: f.default for f in fields(KINDS[kind][1]) if f.default is not MISSING}


def _json(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def _differing(a: dict, b: dict):
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            yield k, a.get(k), b.get(k)
