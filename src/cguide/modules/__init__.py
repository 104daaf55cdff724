"""LightningModules: the eps-model, the noisy classifier and the judge (Lightning lives here, not in the core)."""

from .callbacks import SampleGrid
from .classifier import JudgeModule, NoisyClassifierModule
from .diffusion import DiffusionModule

__all__ = ["DiffusionModule", "NoisyClassifierModule", "JudgeModule", "SampleGrid"]
