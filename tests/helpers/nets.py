"""Small stand-in networks and checkpoints for guidance and sampling tests."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


class TinyClassifier(nn.Module):
    """A small smooth time-conditioned classifier on flattened inputs."""

    def __init__(self, dim=8, classes=3, dtype=torch.float64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.num_classes = classes
        self.inp, self.temb = nn.Linear(dim, 16, dtype=dtype), nn.Embedding(1000, 16, dtype=dtype)
        self.out = nn.Linear(16, classes, dtype=dtype)

    def forward(self, x, t):
        return self.out(torch.tanh(self.inp(x.flatten(1)) + self.temb(t)))


def eps_model(x, t):
    """A smooth stand-in eps_theta."""
    return 0.3 * x + 0.01 * torch.sin(t.to(x.dtype)).view(-1, *[1] * (x.ndim - 1))


class RecordingClassifier(nn.Module):
    """Records the timesteps it is called with."""
    num_classes = 2

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.seen = []

    def forward(self, x, t):
        self.seen.append(t.clone())
        return torch.stack([x.flatten(1).sum(1), -x.flatten(1).sum(1)], 1) * self.w


class NaNClassifier(RecordingClassifier):
    """NaN logits (so a NaN gradient) for row 0 of a 2-row batch."""

    def forward(self, x, t):
        out = super().forward(x, t)
        return out * torch.tensor([float("nan"), 1.0]).view(-1, 1)[: len(out)] if len(out) == 2 else out


def randomise(net: nn.Module, seed: int) -> nn.Module:
    """Fresh nets zero-init their output layers (eps = 0): give every parameter a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval()


def tiny_pair():
    """A random tiny eps-model and classifier (8x8x1, 10 classes, T = 100), the same on every call."""
    from cguide.diffusion import make_schedule
    from cguide.io.checkpoints import Loaded
    from cguide.nets import build_encoder, build_unet

    schedule = dict(kind="linear", T=100)
    fp = make_schedule(**schedule).fingerprint()
    eps = Loaded(randomise(build_unet("tiny", 1, 8), 0), "eps_model", Path("eps"), (1, 8, 8), 10, fp, schedule)
    clf = Loaded(randomise(build_encoder("tiny", 1, 8, 10), 1), "noisy_classifier", Path("clf"), (1, 8, 8), 10,
                 fp, schedule)
    return eps, clf


def nan_classifier(src: Path, dst: Path) -> Path:
    """A copy of a classifier checkpoint with NaN weights: its gradient is NaN for every sample, every step."""
    ckpt = torch.load(src, weights_only=True)
    ckpt["state_dict"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, dst)
    return dst
