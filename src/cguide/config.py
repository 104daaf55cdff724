"""Structured configs of the four entry points (Hydra edge): typed dataclasses registered in Hydra's
ConfigStore, so YAML groups and command-line overrides are type-checked and unknown keys are refused
with Hydra's error. Values are checked where they are turned into objects (GuidanceSetting,
SamplerSpec, MetricSettings, ...), once."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .data import DataConfig
from .diffusion import SamplerSpec
from .guidance import GuidanceSetting


def plain(node) -> Any:
    """A resolved plain container from a config node (anything else is returned as is)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def net_precision(net, trainer) -> str:
    """The precision a net trains under: its section's own, else trainer.precision."""
    own = net.get("precision")
    return own if own is not None else trainer.precision


# ---------------------------------------------------------------- training parts


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
    """One network and how to train it (groups model/ = eps-model UNet, classifier/, judge/, guide/, judge2/)."""
    size: str = "small"
    overrides: Dict[str, Any] = field(default_factory=dict)  # any field of the net's config dataclass
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    max_steps: int = 2000
    ema_decay: float = 0.999  # eps-model only
    lr_decay: str = "constant"  # eps-model and noisy classifier: constant | cosine (to 0 at max_steps); the judge: cosine
    cond: bool = False  # eps-model only: class-conditional, with label dropout (one net for cond/uncond/CFG)
    p_uncond: float = 0.1  # with cond: P(a training label becomes the null label); 1 = unconditional model
    batch_size: Optional[int] = None  # None: data.batch_size
    seed_offset: int = 0  # added to seed for this net's training (guide/: 1, judge2/: 2: neither is the judge's twin)
    precision: Optional[str] = None  # None: trainer.precision; e.g. bf16-mixed for one net, the judge kept 32-true


@dataclass
class TrainerConfig:
    """group trainer/: keyword arguments of lightning.pytorch.Trainer (hydra.utils.instantiate);
    max_steps comes from the trained net's section, logger/callbacks/plugins from cguide.train."""
    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    log_every_n_steps: int = 25
    val_check_interval: Optional[Any] = None
    check_val_every_n_epoch: Optional[int] = 1
    limit_train_batches: Optional[float] = None
    limit_val_batches: float = 1.0
    overfit_batches: float = 0.0
    gradient_clip_val: Optional[float] = 1.0
    enable_progress_bar: bool = True
    fast_dev_run: bool = False
    deterministic: bool = False
    profiler: Optional[str] = None  # simple | advanced | pytorch: Lightning's timing table of the fit (printed at its end)


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | csv | none
    project: str = "cguide"
    mode: str = "offline"  # wandb: offline (sync later with `wandb sync`), online, disabled
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)  # added to the run's top-level `tags`


@dataclass
class ModelCheckpointConfig:
    """lightning's ModelCheckpoint; dirpath and filename come from cguide.train (paths.ckpt_dir, task)."""
    _target_: str = "lightning.pytorch.callbacks.ModelCheckpoint"
    save_last: bool = True
    save_top_k: int = 1
    every_n_train_steps: int = 250


@dataclass
class SampleGridConfig:
    """cguide's SampleGrid (eps-model runs only): a DDIM grid from fixed seeds every N steps."""
    _target_: str = "cguide.modules.callbacks.SampleGrid"
    every_n_steps: int = 500  # 0: only at the end of training
    n: int = 64
    steps: int = 50


@dataclass
class CallbacksConfig:
    model_checkpoint: ModelCheckpointConfig = field(default_factory=ModelCheckpointConfig)
    sample_grid: SampleGridConfig = field(default_factory=SampleGridConfig)


@dataclass
class PathsConfig:
    output_dir: str = "${hydra:runtime.output_dir}"
    ckpt_dir: str = "${paths.output_dir}/checkpoints"
    adm_dir: str = "models"  # guided-diffusion's released files (the experiment=adm* sweeps read them from here)


@dataclass
class RunParts:
    """The sections every run that trains or sweeps has (train, sweep, pipeline)."""
    tags: List[str] = field(default_factory=list)  # W&B tags of every run
    num_threads: Optional[int] = None  # torch intra-op threads on CPU; None: torch's default
    data: DataConfig = field(default_factory=DataConfig)  # a sweep's real held-out set is its test split
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class TrainingParts(RunParts):
    """The sections that define the networks and how they train (shared by train and pipeline)."""
    seed: int = 0
    diffusion: ScheduleConfig = field(default_factory=ScheduleConfig)
    model: NetConfig = field(default_factory=NetConfig)
    classifier: NetConfig = field(default_factory=NetConfig)
    judge: NetConfig = field(default_factory=NetConfig)
    guide: NetConfig = field(default_factory=NetConfig)  # the clean guide of x0-space guidance (judge architecture)
    # the second judge (nets/judge_cnn.py; #26 item 6): conf/judge2/ takes the judge's training settings
    judge2: NetConfig = field(default_factory=NetConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)


@dataclass
class TrainConfig(TrainingParts):
    task: str = "diffusion"  # diffusion | classifier | judge | guide | judge2
    resume: bool = False  # continue from ckpt_dir/last.ckpt when it exists
    ckpt_path: Optional[str] = None  # or from this checkpoint
    overwrite: bool = False  # train afresh into a folder that holds a run (the old one is moved aside, not deleted)


# ---------------------------------------------------------------- sampling parts


def schema_of(spec: type, name: str, doc: str) -> type:
    """A structured config with the fields and defaults of the core's checked ``spec`` dataclass (less its
    ``source``, which names the config section in messages): one definition per concept, so the config schema
    and the spec cannot disagree. Tuples become lists (Hydra's overrides give lists; the spec checks lengths)."""
    hints = typing.get_type_hints(spec)
    out = []
    for f in dataclasses.fields(spec):
        if f.name == "source":
            continue
        typ = _listed(hints[f.name])
        default = f.default
        out.append((f.name, typ, field(default_factory=functools.partial(list, default)) if isinstance(default, tuple)
                    else field(default=default)))
    cls = dataclasses.make_dataclass(name, out)
    cls.__doc__, cls.__module__ = doc, __name__
    return cls


def _listed(typ):
    """tuple[X, ...] -> List[X], tuple | None -> Optional[List[X]]; other types unchanged."""
    args = typing.get_args(typ)
    if typing.get_origin(typ) is tuple:
        return List[args[0]]
    if type(None) in args and any(typing.get_origin(a) is tuple for a in args):
        return Optional[List[next(typing.get_args(a)[0] for a in args if typing.get_origin(a) is tuple)]]
    return typ


# group sampler/ and guidance/: the fields and defaults of SamplerSpec and GuidanceSetting themselves (their
# docstrings say what each field means); conf/sampler/*.yaml and conf/guidance/*.yaml set only what differs
SamplerConfig = schema_of(SamplerSpec, "SamplerConfig",
                          "group sampler/: how x_T becomes x_0; the fields of cguide.diffusion.SamplerSpec.")
GuidanceConfig = schema_of(GuidanceSetting, "GuidanceConfig",
                           "group guidance/: what guides a point; the fields of cguide.guidance.GuidanceSetting.")


@dataclass
class SpeedConfig:
    """speed: options of the guided sampling step (cguide.runtime.speed); all off = eager fp32."""
    bf16: bool = False  # bf16 autocast of both networks (moves samples beyond fp32 rounding; recorded in sweep.json)
    fp16: bool = False  # fp16 autocast, CUDA only (guided-diffusion's use_fp16; recorded in sweep.json)
    channels_last: bool = False  # NHWC convolutions
    compile: bool = False  # torch.compile both networks
    cuda_graph: bool = False  # capture the whole guided step as a CUDA graph (CUDA only)


@dataclass
class DistributedConfig:
    """distributed: sweep sampling over several processes (cguide.runtime.distributed). Under torchrun or a
    multi-task submitit job the ranks come from the environment and devices stays 1."""
    devices: int = 1  # > 1: spawn this many processes here (one GPU each on CUDA, gloo processes on CPU)


@dataclass
class MetricsConfig:
    """group metrics/: what each sweep point is measured with (checked by cguide.metrics.MetricSettings)."""
    # = cguide.metrics.METRIC_NAMES, spelled out so composing a config never imports the metric suite
    names: List[str] = field(default_factory=lambda: ["fid", "fid_inf", "kid", "is", "prc", "accuracy",
                                                      "guide_confidence", "classwise_fid", "nonfinite"])
    extractor: str = "judge"  # judge | inception (local weights only)
    inception_weights: Optional[str] = None  # path; null = torch hub cache
    n_real: Optional[int] = None  # cap on held-out real images; null = the whole test split
    batch_size: int = 256
    kid_subset_size: int = 1000
    seed: int = 2020  # KID subsets, IS splits, PRC subset
    # every metric of every point gets [lo, hi]: a bootstrap over the generated rows (metrics/bootstrap.py)
    interval_resamples: int = 200  # >= 10; 1000 for final tables
    interval_level: float = 0.95
    interval_resample_reals: bool = False  # redraw the real rows too
    match_accuracy: List[float] = field(default_factory=lambda: [0.9, 0.95, 0.975])  # evidence.md's targets
    # the second judge's accuracy_judge2 and judge_agreement (#26 item 6): null = measured whenever judge2_ckpt is
    # given (the pipeline trains one); true = required (no judge2_ckpt is an error); false = off (the pipeline
    # trains none)
    second_judge: Optional[bool] = None
    real_stats_cache: Optional[str] = "${out_dir}/real_stats"  # null = no disk cache
    # guided-diffusion's reference batch (.npz, arr_0 = uint8 NHWC images, arr_1 = labels if present) as the
    # real side of FID/KID/IS/PRC instead of data's test split; null = the test split
    reference_npz: Optional[str] = None


@dataclass
class ModelFiles:
    """The networks a draw may use, by file (sample and sweep take the same keys)."""
    eps_ckpt: Optional[str] = None  # the unconditional eps-model (method classifier)
    cond_ckpt: Optional[str] = None  # the class-conditional eps-model (methods cond, cfg, cfg_w, cond_classifier)
    classifier_ckpt: Optional[str] = None  # needed when a classifier method has scale > 0
    # guided-diffusion (ADM) files: the preset of each (nets/adm.py PRESETS, or its flags as one string); null = a
    # cguide checkpoint. e.g. eps_preset=adm256_uncond cond_preset=adm256_cond classifier_preset=adm256_classifier
    eps_preset: Optional[str] = None
    cond_preset: Optional[str] = None
    classifier_preset: Optional[str] = None
    guide_ckpt: Optional[str] = None  # the clean guide classifier: needed by guidance.grad_space=x0 at scale > 0


@dataclass
class SampleConfig(ModelFiles):
    """conf/sample.yaml: draw n_per_class samples of each chosen class at one guidance setting."""
    classes: Optional[List[int]] = None  # null = every class
    n_per_class: int = 8
    seed: int = 0  # sample i gets seed + i
    batch_size: int = 256
    device: str = "auto"  # auto = cuda when available, else cpu
    num_threads: Optional[int] = None  # torch intra-op threads on CPU (1 is fastest on a busy machine); null: default
    progress: bool = True
    # every sample NaN/inf: false = exit 2 and write nothing; true = write them (a warning gives the share either way)
    allow_nonfinite: bool = False
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
    methods: List[str] = field(default_factory=lambda: ["${guidance.method}"])
    scales: List[float] = field(default_factory=lambda: ["${guidance.scale}"])
    # a method's own scale list (e.g. cfg: [1, 1.5, 3]); methods without one use `scales`
    method_scales: Dict[str, Any] = field(default_factory=dict)  # method -> list of scales
    # named option sets, each crossed with the axes above: name -> {scales: [...] (else method_scales / scales),
    # and any of schedule, sigma_interval, entropy_scale, entropy_cap, grad_at, grad_space (else from guidance)};
    # empty: one set, the guidance node's options
    settings: Dict[str, Any] = field(default_factory=dict)
    variants: List[str] = field(default_factory=lambda: ["${guidance.variant}"])
    samplers: List[str] = field(default_factory=lambda: ["${sampler.name}"])
    steps: List[Optional[int]] = field(default_factory=lambda: ["${sampler.steps}"])
    # each sampler its own step counts (e.g. {ddim: [10, 25, 50], heun: [10, 25]}); when given, these (sampler,
    # steps) pairs are the grid's sampler axis in place of samplers x steps; empty: samplers x steps
    sampler_steps: Dict[str, Any] = field(default_factory=dict)  # sampler -> list of step counts
    intervals: List[List[float]] = field(default_factory=lambda: ["${guidance.interval}"])
    n_per_point: int = 100  # balanced over classes: sample i has class i % num_classes and seed seed + i
    seed: int = 0
    batch_size: int = 500  # samples per network call (CPU: ~500 is fastest per image; far larger is slower)
    # Points drawn together (they share batches; the s = 0 points of all variants are one draw and always
    # share a call); results land when a call's points are drawn, so smaller calls lose less to a crash. null = all.
    points_per_call: Optional[int] = None
    grid_per_class: int = 8  # samples per class (row) in each point's grid
    grid_classes: Optional[int] = None  # rows of each point's grid: the first N classes; null = every class
    save_npz: bool = False  # each point's samples as samples/<point>.npz (guided-diffusion's format: arr_0, arr_1)


@dataclass
class ObjectiveConfig:
    """What `cguide.sweep` returns to a Hydra sweeper (hparams_search=): the job's point's metrics."""
    metrics: List[str] = field(default_factory=lambda: ["fid"])  # one value per name; 'accuracy' is maximised
    min_accuracy: Optional[float] = None  # below it, a single-objective FID is penalised (constraint)
    penalty: float = 1000.0  # FID added per unit of accuracy short of min_accuracy (0.01 short: +10)


@dataclass
class SweepParts:
    """The sections that say how a sweep draws and measures its points (shared by sweep and pipeline)."""
    device: str = "auto"
    progress: bool = True
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    sweep: GridConfig = field(default_factory=GridConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)


@dataclass
class SweepConfig(SweepParts, RunParts, ModelFiles):
    """conf/sweep.yaml: a grid of guidance settings, measured and logged point by point (resumable)."""
    judge_ckpt: Optional[str] = MISSING  # null: no judge (no accuracy; FID/IS/PRC on Inception features)
    judge2_ckpt: Optional[str] = None  # the second judge (task=judge2): accuracy_judge2, judge_agreement; null: none
    out_dir: str = "${paths.output_dir}"
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


@dataclass
class PipelineConfig(SweepParts, TrainingParts):
    """conf/pipeline.yaml: the training parts and the sweep parts of one experiment in a single tree."""
    name: str = "mnist5k_quick"  # the experiment: outputs/pipeline/<name> and the W&B group
    out_dir: str = "outputs/pipeline/${name}"
    # CPU processes the work is split over (cguide.pipeline.workers): 2 trains the eps-model(s) here while a second
    # process trains the other nets, and draws the sweep in 2 processes; each gets num_threads / workers threads
    workers: int = 1
    # workers > 1: the share of the eps-model's steps trained on num_threads / workers threads beside the other
    # nets' process, after which it waits for that process and takes every thread; best where both end together
    workers_handover: float = 0.5
    # a sweep folder of this run to add points to (more scales near a target accuracy) instead of the grid's own
    # folder: its sweep.json must record the same settings (checkpoints, n_per_point, seed, sampler, metrics)
    extend_sweep: Optional[str] = None


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="sample_schema", node=SampleConfig)
    cs.store(name="sweep_schema", node=SweepConfig)
    cs.store(name="pipeline_schema", node=PipelineConfig)
