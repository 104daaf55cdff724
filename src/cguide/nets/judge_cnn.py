"""The second judge: a plain VGG-style CNN, an independent check on the first judge (issue #26 item 6).

Deliberately unlike the judge (nets/judge.py, a ResNet with BatchNorm) and the noisy classifier (the UNet's
down half): conv-GroupNorm-SiLU pairs, max-pool downsampling, no residual connections and no BatchNorm, so a
sample that fools one network's features is not thereby accepted by the other. Same interface as JudgeNet:
forward(x) -> logits [B, num_classes], features(x) -> penultimate features [B, feature_dim]; x in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import FeatureClassifier, StagedClassifierConfig, check_input, normalization


@dataclass
class JudgeCNNConfig(StagedClassifierConfig):
    """Stage s has width * stage_mult[s] channels and convs_per_stage 3x3 conv-GroupNorm-SiLU layers; every stage
    after the first starts with a 2x2 max pool (so image_size must be divisible by 2**(len(stage_mult) - 1)).
    Feature dim = width * stage_mult[-1] (global average pool of the last stage)."""

    convs_per_stage: int = 2

    def __post_init__(self):
        super().__post_init__()
        if not self.stage_mult or self.convs_per_stage < 1 or self.width < 1 or min(self.stage_mult) < 1:
            raise ValueError("JudgeCNNConfig: need at least one stage, one conv per stage and positive widths")
        factor = 2 ** (len(self.stage_mult) - 1)
        if self.image_size % factor:
            raise ValueError(f"JudgeCNNConfig: image_size={self.image_size} is not divisible by the downsampling "
                             f"factor {factor} (2**(len(stage_mult)-1), stage_mult={list(self.stage_mult)}); use an "
                             f"image_size that is a multiple of {factor} or fewer stages")


class JudgeCNN(FeatureClassifier):
    """forward(x) -> logits [B, num_classes]; features(x) -> penultimate features [B, feature_dim]."""

    def __init__(self, cfg: JudgeCNNConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        ch = cfg.in_channels
        for s, mult in enumerate(cfg.stage_mult):
            if s > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(cfg.convs_per_stage):
                out = cfg.width * mult
                layers += [nn.Conv2d(ch, out, 3, 1, 1), normalization(out), nn.SiLU()]
                ch = out
        self.body = nn.Sequential(*layers)
        self.add_head(ch, cfg)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        check_input("JudgeCNN", x, self.cfg.image_size, self.cfg.in_channels)
        return self.body(x).mean(dim=(2, 3))
