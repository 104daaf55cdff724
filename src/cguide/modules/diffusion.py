"""The eps-model's LightningModule: L_simple = E_{t,x_0,eps} ||eps - eps_theta(x_t, t)||^2, t uniform."""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F

from ..diffusion import make_schedule, q_sample
from ..nets import UNet, UNetConfig
from .common import CheckpointMeta, adamw_with_warmup, quartile_means


class DiffusionModule(CheckpointMeta):
    """Trains ``net``; ``ema`` holds the exponential moving average used for sampling and validation.

    All init arguments are plain containers, so checkpoints load with torch's weights_only."""

    kind = "eps_model"
    weights_prefix = "ema."

    def __init__(self, net: dict, schedule: dict, image_shape: list, num_classes: int, lr: float = 2e-4,
                 weight_decay: float = 0.0, warmup_steps: int = 200, ema_decay: float = 0.999,
                 data: Optional[dict] = None):
        super().__init__()
        self.save_hyperparameters()
        self.net = UNet(UNetConfig.from_dict(dict(net)))
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.schedule = make_schedule(**schedule)
        self.T = self.schedule.T

    def loss_per_sample(self, net, x0: torch.Tensor, generator: Optional[torch.Generator] = None):
        B = x0.shape[0]
        t = torch.randint(0, self.T, (B,), generator=generator, device="cpu").to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, device="cpu").to(x0)
        x_t = q_sample(self.schedule, x0, t, eps)
        return F.mse_loss(net(x_t, t), eps, reduction="none").flatten(1).mean(1), t

    def _log_losses(self, split: str, losses: torch.Tensor, t: torch.Tensor):
        self.log(f"{split}/loss", losses.mean(), prog_bar=True, on_step=split == "train", on_epoch=True)
        for q, (v, n) in quartile_means(losses.detach(), t, self.T).items():
            self.log(f"{split}/loss_q{q}", v, on_step=False, on_epoch=True, batch_size=n)

    def training_step(self, batch, batch_idx):
        losses, t = self.loss_per_sample(self.net, batch[0])
        self._log_losses("train", losses, t)
        return losses.mean()

    def validation_step(self, batch, batch_idx):
        # Fixed t and noise per batch, so validation curves compare across epochs.
        losses, t = self.loss_per_sample(self.ema, batch[0], torch.Generator().manual_seed(batch_idx))
        self._log_losses("val", losses, t)

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx):
        decay = self.hparams.ema_decay
        # Warm-up of the average (as in ADM's EMA "num_updates" trick) so early samples are usable.
        d = min(decay, (1 + self.global_step) / (10 + self.global_step))
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.net.parameters()), 1 - d)
        for b_ema, b in zip(self.ema.buffers(), self.net.buffers()):
            b_ema.copy_(b)

    def configure_optimizers(self):
        h = self.hparams
        return adamw_with_warmup(self.net.parameters(), h.lr, h.weight_decay, h.warmup_steps)

    def cguide_meta(self) -> dict:
        h = self.hparams
        return {"kind": self.kind, "weights_prefix": self.weights_prefix, "net_config": dict(h.net),
                "image_shape": list(h.image_shape), "num_classes": int(h.num_classes),
                "schedule": dict(h.schedule), "fingerprint": self.schedule.fingerprint(), "extra": {}}
