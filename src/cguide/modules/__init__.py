"""LightningModules: the eps-model, the noisy classifier, the judge and the clean guide (Lightning lives here, not
in the core)."""

from .callbacks import SampleGrid
from .classifier import GuideModule, JudgeModule, NoisyClassifierModule
from .diffusion import DiffusionModule

__all__ = ["DiffusionModule", "NoisyClassifierModule", "JudgeModule", "GuideModule", "SampleGrid"]
