"""What the three LightningModules share: AdamW with linear warmup, per-t-quartile logging,
and the plain ``cguide`` metadata every checkpoint carries (see cguide.checkpoints)."""

from __future__ import annotations

import math

import lightning as L
import torch


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


def quartile_means(values: torch.Tensor, t: torch.Tensor, T: int) -> dict[int, tuple[torch.Tensor, int]]:
    """Mean of per-sample values in each quarter of [0, T) (q1 = least noise), with the count."""
    q = (t * 4 // T).clamp(max=3)
    return {i + 1: (values[q == i].mean(), int((q == i).sum())) for i in range(4) if bool((q == i).any())}


class CheckpointMeta(L.LightningModule):
    """Adds the ``cguide`` metadata dict to every checkpoint the module writes."""

    kind: str
    weights_prefix: str

    def cguide_meta(self) -> dict:
        raise NotImplementedError

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cguide"] = self.cguide_meta()
