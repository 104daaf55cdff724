"""Structured configs of the sampling entry points (``cguide.sample``, ``cguide.sweep``), registered in
Hydra's ConfigStore so unknown keys and wrong types are refused at composition, as for training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from ..config import LoggerConfig, PathsConfig
from ..data import DataConfig


@dataclass
class SamplerConfig:
    """group sampler/: how x_T becomes x_0."""
    name: str = "ddim"  # ddim | ddpm
    steps: Optional[int] = 50  # respaced steps; null = all T training steps
    eta: float = 0.0  # DDIM noise (0 = deterministic); ignored by DDPM
    var_type: str = "fixed_small"  # DDPM variance: fixed_small | fixed_large; ignored by DDIM
    clip_x0: bool = True  # clamp the predicted x_0 to [-1, 1] at each step (guided-diffusion's default)
    spacing: str = "uniform"  # uniform | leading


@dataclass
class GuidanceConfig:
    """group guidance/: eps_hat = eps - s * c_t * grad log p(y | x_t, t)."""
    scale: float = 1.0  # s >= 0; 0 = unguided
    variant: str = "score"  # the c_t factor; see cguide.guidance.VARIANTS
    interval: List[float] = field(default_factory=lambda: [0.0, 1.0])  # [t_lo, t_hi] as fractions of T
    nonfinite: str = "zero"  # zero | clamp | raise: what to do with a NaN/inf classifier gradient


@dataclass
class SpeedConfig:
    """speed: options of the guided sampling step (cguide.speed); all off = eager fp32."""
    bf16: bool = False  # bf16 autocast of both networks (moves samples beyond fp32 rounding; recorded in sweep.json)
    channels_last: bool = False  # NHWC convolutions
    compile: bool = False  # torch.compile both networks
    cuda_graph: bool = False  # capture the whole guided step as a CUDA graph (CUDA only)


@dataclass
class DistributedConfig:
    """distributed: sweep sampling over several processes (cguide.distributed). Under torchrun or a
    multi-task submitit job the ranks come from the environment and devices stays 1."""
    devices: int = 1  # > 1: spawn this many processes here (one GPU each on CUDA, gloo processes on CPU)


@dataclass
class MetricsConfig:
    """group metrics/: what each sweep point is measured with (see cguide.metrics.suite)."""
    # = cguide.metrics.METRIC_NAMES, spelled out so composing a config never imports the metric suite
    names: List[str] = field(default_factory=lambda: ["fid", "kid", "is", "prc", "accuracy", "guide_confidence",
                                                      "classwise_fid", "nonfinite"])
    extractor: str = "judge"  # judge | inception (local weights only)
    inception_weights: Optional[str] = None  # path; null = torch hub cache
    n_real: Optional[int] = None  # cap on held-out real images; null = the whole test split
    batch_size: int = 256
    kid_subset_size: int = 1000
    seed: int = 2020  # KID subsets, IS splits, PRC subset
    real_stats_cache: Optional[str] = "${out_dir}/real_stats"  # null = no disk cache


@dataclass
class SampleConfig:
    """conf/sample.yaml: draw n_per_class samples of each chosen class at one guidance setting."""
    eps_ckpt: str = MISSING
    classifier_ckpt: Optional[str] = None  # needed when guidance.scale > 0
    classes: Optional[List[int]] = None  # null = every class
    n_per_class: int = 8
    seed: int = 0  # sample i gets seed + i
    batch_size: int = 256
    device: str = "auto"  # auto = cuda when available, else cpu
    num_threads: Optional[int] = None  # torch intra-op threads on CPU (1 is fastest on a busy machine); null: default
    progress: bool = True
    out_dir: str = "${paths.output_dir}"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class GridConfig:
    """The sweep's axes. Each defaults to the one-element list of its single-point key (guidance.scale,
    guidance.variant, sampler.name, sampler.steps, guidance.interval): a Hydra multirun
    (`-m guidance.scale=0,1`) then runs one point per job, while `sweep.scales=[0,1,2]` runs a grid in one job."""
    name: str = "default"  # the results folder outputs/sweeps/<name> and the W&B group
    scales: List[float] = field(default_factory=lambda: ["${guidance.scale}"])
    variants: List[str] = field(default_factory=lambda: ["${guidance.variant}"])
    samplers: List[str] = field(default_factory=lambda: ["${sampler.name}"])
    steps: List[Optional[int]] = field(default_factory=lambda: ["${sampler.steps}"])
    intervals: List[List[float]] = field(default_factory=lambda: ["${guidance.interval}"])
    n_per_point: int = 100  # balanced over classes: sample i has class i % num_classes and seed seed + i
    seed: int = 0
    batch_size: int = 500  # samples per network call (CPU: ~500 is fastest per image; far larger is slower)
    # Points drawn together (they share batches, and s = 0 points are drawn once for all variants);
    # results land when a call's points are drawn, so smaller calls lose less to a crash. null = all.
    points_per_call: Optional[int] = None
    grid_per_class: int = 8  # samples per class (row) in each point's grid


@dataclass
class SweepConfig:
    """conf/sweep.yaml: a grid of guidance settings, measured and logged point by point (resumable)."""
    eps_ckpt: str = MISSING
    classifier_ckpt: Optional[str] = None  # needed when any scale > 0
    judge_ckpt: str = MISSING
    out_dir: str = "${paths.output_dir}"
    device: str = "auto"
    num_threads: Optional[int] = None  # torch intra-op threads on CPU; null: torch's default
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)  # its test split is the real held-out set
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    sweep: GridConfig = field(default_factory=GridConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def require(cfg, *keys: str) -> None:
    """One line naming each unset mandatory key (OmegaConf's own error is a multi-line traceback)."""
    missing = [k for k in keys if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise ValueError(f"missing setting(s): {', '.join(missing)}; pass them, e.g. "
                         + " ".join(f"{k}=<path>" for k in missing))


def store_schemas(cs: ConfigStore) -> None:
    cs.store(name="sample_schema", node=SampleConfig)
    cs.store(name="sweep_schema", node=SweepConfig)
