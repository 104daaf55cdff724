"""Classifier LightningModules: the noisy classifier p_phi(y | x_t, t), trained on x_t from the SAME
schedule as the eps-model; the judge, an independent classifier of clean images; the second judge, another
architecture trained as the judge is; and the clean guide p_psi(y | x0), trained as the judge is but apart
from it, for x0-space guidance."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ..diffusion import make_schedule, q_sample
from ..io.checkpoints import checkpoint_meta
from ..nets import EncoderClassifier, EncoderConfig, JudgeCNN, JudgeCNNConfig, JudgeConfig, JudgeNet
from .common import CheckpointMeta, QuartileMeans, adamw_with_warmup, decay_steps


class _ClassifierModule(CheckpointMeta):
    weights_prefix = "net."

    def _init_metrics(self, num_classes: int, splits: tuple[str, ...], T: Optional[int] = None) -> None:
        # Submodules outside ``net``, so checkpoint weights (read by the 'net.' prefix) never hold them.
        # Keyed '{split}_acc': a bare 'train' key would clash with nn.Module.train.
        self.acc = nn.ModuleDict({f"{s}_acc": MulticlassAccuracy(num_classes, average="micro") for s in splits})
        self.acc_q = QuartileMeans("acc", T) if T is not None else None

    def configure_optimizers(self):
        h = self.hparams
        return adamw_with_warmup(self.net.parameters(), h.lr, h.weight_decay, h.warmup_steps,
                                 decay_steps(self.trainer, h.get("lr_decay", "constant")))

    def _log(self, split: str, logits: torch.Tensor, y: torch.Tensor, t: Optional[torch.Tensor] = None):
        loss = F.cross_entropy(logits, y, reduction="none").mean()
        on_step = split == "train"
        self.log(f"{split}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True)
        acc = self.acc[f"{split}_acc"]
        acc(logits.detach(), y)  # forward, not update: its batch value is what on_step logs
        self.log(f"{split}/acc", acc, prog_bar=True, on_step=on_step, on_epoch=True)
        if t is not None:
            self.acc_q.log(self, split, (logits.detach().argmax(-1) == y).float(), t)
        return loss


class NoisyClassifierModule(_ClassifierModule):
    """Cross-entropy on x_t = q_sample(x_0, t, eps), t uniform over all T steps. Accuracy is logged
    per t-quartile (q1 = least noise), so one sees how it decays towards pure noise."""

    kind = "noisy_classifier"

    def __init__(self, net: dict, schedule: dict, image_shape: list, num_classes: int, lr: float = 3e-4,
                 weight_decay: float = 0.05, warmup_steps: int = 100, data: Optional[dict] = None,
                 lr_decay: str = "constant"):
        super().__init__()
        self.save_hyperparameters()
        self.net = EncoderClassifier(EncoderConfig.from_dict(dict(net)))
        self.schedule = make_schedule(**schedule)
        self.T = self.schedule.T
        self._init_metrics(num_classes, ("train", "val"), self.T)

    def _noisy(self, x0, generator=None):
        t = torch.randint(0, self.T, (x0.shape[0],), generator=generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0)
        return q_sample(self.schedule, x0, t, eps), t

    def training_step(self, batch, batch_idx):
        x_t, t = self._noisy(batch[0])
        return self._log("train", self.net(x_t, t), batch[1], t)

    def validation_step(self, batch, batch_idx):
        x_t, t = self._noisy(batch[0], torch.Generator().manual_seed(batch_idx))
        self._log("val", self.net(x_t, t), batch[1], t)

    def cguide_meta(self) -> dict:
        h = self.hparams
        return checkpoint_meta(self.kind, self.weights_prefix, h.net, h.image_shape, h.num_classes,
                               h.schedule, self.schedule.fingerprint())


class JudgeModule(_ClassifierModule):
    """Clean-image classifier used only for evaluation; light random shifts as augmentation and a
    cosine learning-rate decay over the run. Its held-out test accuracy is stored in the checkpoint
    (extra.test_acc)."""

    kind = "judge"
    net_classes = (JudgeNet, JudgeConfig)  # (net, its config dataclass)

    def __init__(self, net: dict, image_shape: list, num_classes: int, lr: float = 1e-3,
                 weight_decay: float = 5e-4, warmup_steps: int = 50, shift: int = 1, data: Optional[dict] = None):
        super().__init__()
        self.save_hyperparameters()
        net_cls, cfg_cls = self.net_classes
        self.net = net_cls(cfg_cls.from_dict(dict(net)))
        self.test_acc: Optional[float] = None
        self._init_metrics(num_classes, ("train", "val", "test"))

    def configure_optimizers(self):
        h = self.hparams
        return adamw_with_warmup(self.net.parameters(), h.lr, h.weight_decay, h.warmup_steps,
                                 decay_steps(self.trainer, "cosine"))

    def _shift(self, x):
        s = self.hparams.shift
        if s <= 0:
            return x
        dx, dy = (int(v) for v in torch.randint(-s, s + 1, (2,)))
        return torch.roll(x, shifts=(dy, dx), dims=(2, 3))

    def training_step(self, batch, batch_idx):
        return self._log("train", self.net(self._shift(batch[0])), batch[1])

    def validation_step(self, batch, batch_idx):
        self._log("val", self.net(batch[0]), batch[1])

    def test_step(self, batch, batch_idx):
        self._log("test", self.net(batch[0]), batch[1])

    def on_test_epoch_end(self):
        # The whole split, synced over DDP ranks by torchmetrics (DistributedSampler pads it by a few repeats).
        acc = self.acc["test_acc"]
        self.test_acc = float(acc.compute()) if acc.update_count else None

    def cguide_meta(self) -> dict:
        h = self.hparams
        return checkpoint_meta(self.kind, self.weights_prefix, h.net, h.image_shape, h.num_classes,
                               extra={"test_acc": self.test_acc})


class GuideModule(JudgeModule):
    """The clean guide classifier p_psi(y | x0) of x0-space guidance (guidance.grad_space=x0): the judge's
    architecture and training, its own config section (guide/) and seed offset, its own checkpoint kind, so
    the judge never guides and the guide never judges."""

    kind = "guide_classifier"


class SecondJudgeModule(JudgeModule):
    """The second judge (#26 item 6): another architecture (nets/judge_cnn.py, a plain CNN without BatchNorm or
    residual connections) and its own seed offset (judge2/), trained exactly as the judge is; it measures
    accuracy_judge2 and judge_agreement, so a sweep shows whether a method fools the one judge network."""

    kind = "judge2"
    net_classes = (JudgeCNN, JudgeCNNConfig)
