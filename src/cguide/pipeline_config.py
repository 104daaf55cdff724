"""Structured config of the pipeline (conf/pipeline.yaml): the training parts and the sweep parts of
one experiment in a single tree, so one command goes from data to a guidance report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .config import CallbacksConfig, LoggerConfig, NetConfig, PathsConfig, ScheduleConfig, TrainerConfig
from .data import DataConfig
from .sweep.config import GridConfig, GuidanceConfig, MetricsConfig, SamplerConfig


@dataclass
class PipelineConfig:
    profile: str = "quick"
    seed: int = 0
    out_dir: str = "outputs/pipeline/${profile}"
    device: str = "auto"
    num_threads: Optional[int] = None
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: ScheduleConfig = field(default_factory=ScheduleConfig)
    model: NetConfig = field(default_factory=NetConfig)
    classifier: NetConfig = field(default_factory=NetConfig)
    judge: NetConfig = field(default_factory=NetConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    sweep: GridConfig = field(default_factory=GridConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
