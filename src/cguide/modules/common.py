"""What the three LightningModules share: AdamW with linear warmup, per-t-quartile metrics,
and the plain ``cguide`` metadata every checkpoint carries (see cguide.io.checkpoints)."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric


def decay_steps(trainer, lr_decay: str) -> int | None:
    """The total_steps of ``adamw_with_warmup``: max_steps under cosine decay (when bounded), else None."""
    return trainer.max_steps if lr_decay == "cosine" and trainer.max_steps and trainer.max_steps > 0 else None


def adamw_with_warmup(params, lr: float, weight_decay: float, warmup_steps: int, total_steps: int | None = None):
    """Linear warm-up, then constant lr, or cosine decay to 0 at total_steps when given."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(int(warmup_steps), 1)

    def factor(step: int) -> float:
        if step < warm or not total_steps or total_steps <= warm:
            return min(1.0, (step + 1) / warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / (total_steps - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class QuartileMeans(nn.Module):
    """Epoch means of a per-sample value in each quarter of [0, T) (q1 = least noise), one MeanMetric
    per split and quarter, logged as ``{split}/{name}_q{1..4}``."""

    def __init__(self, name: str, T: int, splits: tuple[str, ...] = ("train", "val")):
        super().__init__()
        self.name, self.T = name, T
        self.means = nn.ModuleDict({f"{s}_q{q}": MeanMetric() for s in splits for q in range(1, 5)})

    def log(self, module: L.LightningModule, split: str, values: torch.Tensor, t: torch.Tensor) -> None:
        q = (t * 4 // self.T).clamp(max=3)
        for i in range(4):
            sel = q == i
            if bool(sel.any()):  # a quarter no sample fell in this epoch is not logged, as before
                metric = self.means[f"{split}_q{i + 1}"]
                metric.update(values[sel])
                module.log(f"{split}/{self.name}_q{i + 1}", metric, on_step=False, on_epoch=True)


class CheckpointMeta(L.LightningModule):
    """Adds the ``cguide`` metadata dict to every checkpoint the module writes."""

    kind: str
    weights_prefix: str

    def cguide_meta(self) -> dict:
        raise NotImplementedError

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cguide"] = self.cguide_meta()
