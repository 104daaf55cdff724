"""Structured config of the pipeline (conf/pipeline.yaml): the training parts and the sweep parts of
one experiment in a single tree, so one command goes from data to a guidance report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .config import TrainingParts
from .sweep.config import GridConfig, GuidanceConfig, MetricsConfig, SamplerConfig, SpeedConfig


@dataclass
class PipelineConfig(TrainingParts):
    profile: str = "quick"
    out_dir: str = "outputs/pipeline/${profile}"
    device: str = "auto"
    num_threads: Optional[int] = None
    progress: bool = True
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    sweep: GridConfig = field(default_factory=GridConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
