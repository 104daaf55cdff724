"""The eps-model's LightningModule: L_simple = E_{t,x_0,eps} ||eps - eps_theta(x_t, t[, y])||^2, t uniform;
class-conditional with label dropout when ``cond`` (Ho & Salimans 2022)."""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from ..diffusion import make_schedule, q_sample
from ..io.checkpoints import checkpoint_meta
from ..nets import UNet, UNetConfig
from .common import CheckpointMeta, QuartileMeans, adamw_with_warmup, decay_steps


def ema_lerp_(ema: list[torch.Tensor], net: list[torch.Tensor], n_averaged: torch.Tensor, decay: float) -> None:
    """EMA step with ADM's warm-up ("num_updates" trick), so early samples are usable: the n-th
    update (n = global_step) moves the average by 1 - min(decay, (1 + n) / (10 + n))."""
    n = int(n_averaged)
    d = min(decay, (1 + n) / (10 + n))
    torch._foreach_lerp_(ema, net, 1 - d)


def drop_labels(y: torch.Tensor, p: float, null: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Label dropout: each label independently becomes ``null`` with probability p (mask drawn on y's device)."""
    mask = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(mask, torch.full_like(y, null), y)


class DiffusionModule(CheckpointMeta):
    """Trains ``net``; ``ema`` (an AveragedModel, weights in ``ema.module``) holds the exponential moving
    average used for sampling and validation.

    cond=True: ``net`` has a label embedding with a null label (UNetConfig null_class) and each training
    label becomes the null label with probability p_uncond, so the one net is conditional (y),
    unconditional (null label) and CFG-ready; validation uses the real labels. cond=False draws no
    extra random numbers: unconditional training is unchanged.

    All init arguments are plain containers, so checkpoints load with torch's weights_only."""

    kind = "eps_model"
    weights_prefix = "ema.module."

    def __init__(self, net: dict, schedule: dict, image_shape: list, num_classes: int, lr: float = 2e-4,
                 weight_decay: float = 0.0, warmup_steps: int = 200, ema_decay: float = 0.999,
                 data: Optional[dict] = None, cond: bool = False, p_uncond: float = 0.0, lr_decay: str = "constant"):
        super().__init__()
        self.save_hyperparameters()
        self.net = UNet(UNetConfig.from_dict(dict(net)))
        if (self.net.null_label is None) if cond else (self.net.label_emb is not None):
            need = "num_classes and null_class=True" if cond else "num_classes=None"
            raise ValueError(f"DiffusionModule: cond={cond} needs a net with {need}; set model.cond, "
                             "not model.overrides.num_classes / null_class")
        self.ema = AveragedModel(self.net, multi_avg_fn=partial(ema_lerp_, decay=ema_decay)).requires_grad_(False)
        # The initial copy counts as the first average: no overwrite on the first update, and n == global_step.
        self.ema.n_averaged.fill_(1)
        self.schedule = make_schedule(**schedule)
        self.T = self.schedule.T
        self.loss_q = QuartileMeans("loss", self.T)

    def loss_per_sample(self, net, x0: torch.Tensor, generator: Optional[torch.Generator] = None,
                        y: Optional[torch.Tensor] = None):
        B = x0.shape[0]
        t = torch.randint(0, self.T, (B,), generator=generator, device="cpu").to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, device="cpu").to(x0)
        x_t = q_sample(self.schedule, x0, t, eps)
        return F.mse_loss(net(x_t, t, y), eps, reduction="none").flatten(1).mean(1), t

    def _log_losses(self, split: str, losses: torch.Tensor, t: torch.Tensor):
        self.log(f"{split}/loss", losses.mean(), prog_bar=True, on_step=split == "train", on_epoch=True)
        self.loss_q.log(self, split, losses.detach(), t)

    def training_step(self, batch, batch_idx):
        y = drop_labels(batch[1], self.hparams.p_uncond, self.net.null_label) if self.hparams.cond else None
        losses, t = self.loss_per_sample(self.net, batch[0], y=y)
        self._log_losses("train", losses, t)
        return losses.mean()

    def validation_step(self, batch, batch_idx):
        # Fixed t and noise per batch, so validation curves compare across epochs.
        y = batch[1] if self.hparams.cond else None
        losses, t = self.loss_per_sample(self.ema.module, batch[0], torch.Generator().manual_seed(batch_idx), y)
        self._log_losses("val", losses, t)

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.ema.update_parameters(self.net)  # buffers are copied, as before

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        sd = checkpoint["state_dict"]
        if "ema.n_averaged" not in sd:  # written when the EMA was a plain copy of the net under 'ema.'
            for k in [k for k in sd if k.startswith("ema.")]:
                sd["ema.module." + k[len("ema."):]] = sd.pop(k)
            sd["ema.n_averaged"] = torch.tensor(int(checkpoint.get("global_step", 0)) + 1)

    def configure_optimizers(self):
        h = self.hparams
        return adamw_with_warmup(self.net.parameters(), h.lr, h.weight_decay, h.warmup_steps,
                                 decay_steps(self.trainer, h.get("lr_decay", "constant")))

    def cguide_meta(self) -> dict:
        h = self.hparams
        return checkpoint_meta(self.kind, self.weights_prefix, h.net, h.image_shape, h.num_classes,
                               h.schedule, self.schedule.fingerprint(),
                               extra={"cond": bool(h.cond), "p_uncond": float(h.p_uncond)})
