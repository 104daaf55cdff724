"""Structured configs (Hydra edge): typed dataclasses registered in Hydra's ConfigStore, so YAML
groups and command-line overrides are type-checked and unknown keys are refused with Hydra's error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from .data import DataConfig


@dataclass
class ScheduleConfig:
    """The noise schedule shared by the eps-model and the noisy classifier (group diffusion/)."""
    kind: str = "linear"
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    max_beta: float = 0.999


@dataclass
class NetConfig:
    """One network and how to train it (groups model/ = eps-model UNet, classifier/, judge/)."""
    size: str = "small"
    overrides: Dict[str, Any] = field(default_factory=dict)  # any field of the net's config dataclass
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    max_steps: int = 2000
    ema_decay: float = 0.999  # eps-model only
    batch_size: Optional[int] = None  # None: data.batch_size


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    log_every_n_steps: int = 25
    val_check_interval: Optional[Any] = None
    check_val_every_n_epoch: Optional[int] = 1
    limit_val_batches: float = 1.0
    gradient_clip_val: Optional[float] = 1.0
    enable_progress_bar: bool = True
    fast_dev_run: bool = False
    deterministic: bool = False
    num_threads: Optional[int] = None  # torch intra-op threads on CPU; None: torch's default


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | csv | none
    project: str = "cguide"
    mode: str = "offline"  # wandb: offline (sync later with `wandb sync`), online, disabled
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class CallbacksConfig:
    sample_every_n_steps: int = 500
    sample_n: int = 64
    sample_steps: int = 50
    ckpt_every_n_steps: int = 250


@dataclass
class PathsConfig:
    output_dir: str = "${hydra:runtime.output_dir}"
    ckpt_dir: str = "${paths.output_dir}/checkpoints"


@dataclass
class TrainingParts:
    """The sections that define the three networks and how they train (shared by train and pipeline)."""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: ScheduleConfig = field(default_factory=ScheduleConfig)
    model: NetConfig = field(default_factory=NetConfig)
    classifier: NetConfig = field(default_factory=NetConfig)
    judge: NetConfig = field(default_factory=NetConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class TrainConfig(TrainingParts):
    task: str = "diffusion"  # diffusion | classifier | judge
    resume: bool = False  # continue from ckpt_dir/last.ckpt when it exists
    ckpt_path: Optional[str] = None  # or from this checkpoint


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    # Imported here: those modules import this one.
    from .pipeline_config import PipelineConfig
    from .sweep.config import store_schemas

    store_schemas(cs)  # sample_schema, sweep_schema
    cs.store(name="pipeline_schema", node=PipelineConfig)
