"""The judge: an independent clean-image classifier for evaluation (accuracy, FID/IS features).

A small ResNet (basic blocks) with BatchNorm and no time input: deliberately a different
architecture from the noisy classifier, so guidance that fools p_phi does not fool it for free.
Input x is in [-1, 1]; it is meant to be used in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import FeatureClassifier, StagedClassifierConfig, check_input


@dataclass
class JudgeConfig(StagedClassifierConfig):
    """Stage s has width * stage_mult[s] channels and blocks_per_stage BasicBlocks; every stage
    after the first halves the resolution. Feature dim = width * stage_mult[-1]."""

    blocks_per_stage: int = 1

    def __post_init__(self):
        super().__post_init__()
        if not self.stage_mult or self.blocks_per_stage < 1:
            raise ValueError("JudgeConfig: need at least one stage and one block per stage")


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN + (projected) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class JudgeNet(FeatureClassifier):
    """forward(x) -> logits [B, num_classes]; features(x) -> penultimate features [B, feature_dim]."""

    def __init__(self, cfg: JudgeConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU())
        blocks, ch = [], w
        for s, mult in enumerate(cfg.stage_mult):
            for b in range(cfg.blocks_per_stage):
                blocks.append(BasicBlock(ch, w * mult, stride=2 if s > 0 and b == 0 else 1))
                ch = w * mult
        self.blocks = nn.Sequential(*blocks)
        self.add_head(ch, cfg)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        check_input("JudgeNet", x, self.cfg.image_size, self.cfg.in_channels)
        return self.blocks(self.stem(x)).mean(dim=(2, 3))
