"""Run a sweep: check everything, claim the results folder, then draw and measure the points not yet
done, appending one row per point as it finishes (so an interrupted sweep resumes where it stopped)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..data import as_data_config
from ..diffusion import make_schedule
from ..guidance import GuidanceSpec, network_evals
from ..io.checkpoints import Loaded, load_net
from ..io.images import save_grid
from ..io.npz_batches import write_sample_batch
from ..io.loggers import finish_wandb
from ..metrics import MetricSettings, compute_metrics
from ..metrics.intervals import row_metrics
from ..metrics.settings import NO_JUDGE, NO_JUDGE2
from ..io.atomic import remove_stale_temps
from ..io.folders import check_writable
from ..runtime.distributed import is_main, main_then_share
from ..runtime.draw import Models, RunOptions, check_device, check_speed, draw_sharded, load_models
from ..runtime.learned_sigma import check_learned_variance
from ..runtime.speed import apply_num_threads
from . import wandb_log
from .checks import check_same_images, check_sampling, check_sweep_numbers
from .claims import PointClaims, claimed_calls
from .plots import write_plots
from .points import Point, balanced_targets, build_grid
from .real_side import RealSide, real_side
from .evidence import write_report
from .evidence_store import EVIDENCE, write_evidence
from .results import ResultsFolder


def file_identity(path: str | Path | None) -> dict | None:
    """Content hash + size: a checkpoint moved or copied is the same; retrained or edited is not."""
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"sha256": h.hexdigest()[:16], "size": Path(path).stat().st_size}


def manifest(cfg: DictConfig, models: Models, judge: Loaded | None, names: tuple[str, ...],
             real: RealSide | None = None, judge2: Loaded | None = None) -> dict:
    """Everything a row's numbers depend on except the grid axes (those are in the row itself)."""
    data = {k: v for k, v in vars(as_data_config(OmegaConf.to_container(cfg.data, resolve=True))).items()
            if k not in ("root", "batch_size", "num_workers", "download")}
    m, smp = cfg.metrics, cfg.sampler
    # bf16 moves samples beyond fp32 rounding, so it defines results (the other speed options are fp32 rounding only);
    # recorded only when on, so folders written before the option existed still resume
    halves = {k: True for k in ("bf16", "fp16") if cfg.speed.get(k)}  # fp16 alike
    speed = {"speed": halves} if halves else {}
    # a reference batch replaces the data's test split, and ADM presets name the nets: only when used
    reference = {"reference": real.identity} if real is not None and real.identity else {}
    presets = {f"{k}_preset": cfg.get(f"{k}_preset") for k in ("eps", "cond", "classifier") if cfg.get(f"{k}_preset")}
    # the conditional model only when used, for the same reason
    cond = {"cond_ckpt": file_identity(models.cond.path)} if models.cond else {}
    guide = {"guide_ckpt": file_identity(models.guide.path)} if models.guide else {}  # x0-space guidance only
    second = {"judge2_ckpt": file_identity(judge2.path)} if judge2 else {}  # the second judge only when measured
    eps, clf = models.eps, models.classifier
    return {**speed, **cond, **guide, **second, **reference, **presets,
        "eps_ckpt": file_identity(eps.path if eps else None),
        "classifier_ckpt": file_identity(clf.path if clf else None),
        "judge_ckpt": file_identity(judge.path if judge else None), "n_per_point": cfg.sweep.n_per_point,
        "seed": cfg.sweep.seed,
        "sampler": {"eta": smp.eta, "var_type": smp.var_type, "clip_x0": smp.clip_x0, "spacing": smp.spacing,
                    # only when set, so folders written before the option existed still resume
                    **({"dynamic_threshold": smp.dynamic_threshold} if smp.dynamic_threshold is not None else {}),
                    "clip_order": smp.clip_order},
        "nonfinite": cfg.guidance.nonfinite, **({} if reference else {"data": data}),
        "metrics": {"names": sorted(names), "extractor": m.extractor, "n_real": m.n_real,
                    "inception_weights": file_identity(m.inception_weights) if m.extractor == "inception"
                    and m.inception_weights else None, "kid_subset_size": m.kid_subset_size, "seed": m.seed,
                    "intervals": {"resamples": m.get("interval_resamples", 200), "level": m.get("interval_level", 0.95),
                                  "resample_reals": m.get("interval_resample_reals", False)}},
    }


def sweep_group(name: str, defines: dict) -> str:
    """The W&B group: the same for every job of one sweep (same name and results-defining settings)."""
    return f"{name}-{hashlib.sha1(json.dumps(defines, sort_keys=True).encode()).hexdigest()[:8]}"


def class_grid(x: torch.Tensor, y: torch.Tensor, per_class: int, path: Path, classes: int | None = None) -> Path:
    """One row per class (the first ``classes`` of them; None: all): the first per_class samples of each."""
    rows = [x[y == c][:per_class] for c in torch.unique(y).tolist()[:classes]]
    k = min(len(r) for r in rows)
    return save_grid(torch.cat([r[:k] for r in rows]), path, nrow=k)


@dataclass
class Setup:
    """A sweep checked and loaded, before its folder is claimed: its points, metric settings, drawing options,
    networks, judges (the judge, the second judge; each Loaded or None), targets and real side."""
    points: list[Point]
    settings: MetricSettings
    run: RunOptions
    device: torch.device
    models: Models
    judges: tuple[Loaded | None, Loaded | None]
    y: torch.Tensor
    real: RealSide


def run_sweep(cfg: DictConfig, log_others: bool = False, report: bool = True) -> Path:
    """Run (or resume) the sweep described by cfg into cfg.out_dir; returns the folder. Every check comes
    before the folder is claimed, so a bad input leaves it as it was and the corrected command runs.
    log_others: the W&B run also gets the rows other processes wrote (found done at the start, or landed while
    this one drew): the pipeline's helper processes log nothing. report=False: draw only, no plots or summary
    (a helper: the process that logs writes them)."""
    setup = prepare(cfg)
    out, folder = Path(cfg.out_dir), ResultsFolder(cfg.out_dir)
    defines = manifest(cfg, setup.models, setup.judges[0], setup.settings.names, setup.real, setup.judges[1])
    todo = claim_folder(cfg, setup, folder, defines)
    for j in setup.judges:
        if j is not None:
            j.net.to(setup.device)
    rows = LoggedRows(start_wandb(cfg, defines), folder, log_others)
    claims = PointClaims(out, folder.done)
    try:
        draw_points(cfg, setup, todo, claims, folder, rows)
        if is_main() and report:  # other ranks (and helpers) only drew their shares
            write_summary(out, folder, setup.settings, rows)
    finally:
        claims.release()
        finish_wandb()  # multirun jobs must never log into one run
    return out


def prepare(cfg: DictConfig) -> Setup:
    """Every check, and the networks and real side loaded."""
    sw = cfg.sweep
    check_sweep_numbers(sw)
    points = build_grid(sw, cfg.sampler, cfg.guidance)
    # the non-finite share is in every row
    settings = MetricSettings.from_config(cfg.metrics, names=list(dict.fromkeys([*cfg.metrics.names, "nonfinite"])))
    run = RunOptions(sw.batch_size, cfg.device, cfg.progress, cfg.speed)
    device = check_device(cfg.device)
    run.speed.check(device)
    apply_num_threads(cfg.num_threads)
    spec = GuidanceSpec.from_settings([p.guidance for p in points], torch.zeros(len(points), dtype=torch.long))
    check_speed(spec, run.speed)
    if settings.needs_judge and not cfg.judge_ckpt:
        raise ValueError(NO_JUDGE)
    if settings.second_judge and not cfg.get("judge2_ckpt"):
        raise ValueError(NO_JUDGE2)
    presets = {k: cfg.get(f"{k}_preset") for k in ("eps", "cond", "classifier")}
    models = load_models(cfg.eps_ckpt, cfg.cond_ckpt, cfg.classifier_ckpt, spec, presets=presets,
                         guide_ckpt=cfg.get("guide_ckpt"))
    judges = load_judges(cfg, settings, models.base)
    check_sampling(models.base, points)
    for var_type in {p.sampler.var_type for p in points}:
        check_learned_variance((models.eps, models.cond), var_type)
    y = balanced_targets(sw.n_per_point, models.base.num_classes)
    return Setup(points, settings, run, device, models, judges, y, real_side(cfg, settings, models.base))


def load_judges(cfg: DictConfig, settings: MetricSettings, eps: Loaded) -> tuple[Loaded | None, Loaded | None]:
    """The judge and (#26 item 6: accuracy_judge2, judge_agreement, unless metrics.second_judge=false) the second
    judge, each checked against the eps-model's images and classes."""
    judge = load_net(cfg.judge_ckpt, "judge") if cfg.judge_ckpt else None
    if judge is not None:
        check_same_images(eps, f"judge {judge.path}", judge.image_shape, judge.num_classes)
    judge2 = load_net(cfg.judge2_ckpt, "judge2") if cfg.get("judge2_ckpt") and settings.second_judge is not False \
        else None
    if judge2 is not None:
        check_same_images(eps, f"second judge {judge2.path} (judge2_ckpt)", judge2.image_shape, judge2.num_classes)
    return judge, judge2


def claim_folder(cfg: DictConfig, setup: Setup, folder: ResultsFolder, defines: dict) -> list[Point]:
    """Claim the results folder for these settings; the points not done yet."""
    out, (judge, judge2), guide = Path(cfg.out_dir), setup.judges, setup.models.guide

    def claim() -> set:
        check_writable(out, "out_dir")
        remove_stale_temps([out, out / "grids", out / "plots", out / "samples", out / EVIDENCE])
        folder.claim(defines, {"eps_ckpt": cfg.eps_ckpt, "cond_ckpt": cfg.cond_ckpt,
                               "classifier_ckpt": cfg.classifier_ckpt,
                               "judge_ckpt": str(judge.path) if judge else None,
                               **({"judge2_ckpt": str(judge2.path)} if judge2 else {}),
                               **({"guide_ckpt": str(guide.path)} if guide else {})})
        return folder.done()

    done = main_then_share(claim)  # distributed: rank 0 claims and reads, every rank gets the same to-do list
    todo = [p for p in setup.points if p.key not in done]
    if is_main():
        print(f"sweep {out}: {len(setup.points)} point(s), {len(setup.points) - len(todo)} done already, "
              f"{len(todo)} to run")
    return todo


def start_wandb(cfg: DictConfig, defines: dict):
    """The sweep's W&B run (rank 0 only; None elsewhere), in the sweep's group."""
    if not is_main():
        return None
    group = sweep_group(cfg.sweep.name, defines)
    return wandb_log.start_run(cfg.logger, Path(cfg.out_dir), group, name=f"{group}-{time.strftime('%H%M%S')}",
                               config=OmegaConf.to_container(cfg, resolve=True), tags=list(cfg.tags))


class LoggedRows:
    """The rows in the W&B run, in logging order (their W&B steps); with others=True also the rows other
    processes wrote, as they land."""

    def __init__(self, wb, folder: ResultsFolder, others: bool):
        self.wb, self.folder, self.with_others, self.logged = wb, folder, others, []

    def log(self, row: dict, grid: Path | None) -> None:
        wandb_log.log_point(self.wb, row, grid, len(self.logged))
        self.logged.append(row["point"])

    def others(self) -> None:
        for row in self.folder.rows() if self.with_others and self.wb is not None else ():
            if row["point"] not in self.logged:
                grid = self.folder.root / "grids" / f"{row['point']}.png"
                self.log(row, grid if grid.is_file() else None)


def draw_points(cfg: DictConfig, setup: Setup, todo: list[Point], claims: PointClaims, folder: ResultsFolder,
                rows: LoggedRows) -> None:
    """Draw and measure the points to do, a claimed call at a time; returns once every row has landed."""
    sw, out, s = cfg.sweep, Path(cfg.out_dir), setup
    seeds = (sw.seed + torch.arange(sw.n_per_point)).tolist()
    rows.others()
    for call in claimed_calls(todo, sw.points_per_call, claims, out, on_wait=rows.others):
        for point, row, grid in _run_call(cfg, call, s.run, s.models, s.judges, s.y, seeds, s.real, s.settings, out,
                                          s.device):
            if folder.append(row):  # False: a parallel job finished this point first
                rows.log(row, grid)
        claims.release(p.key for p in call)
        rows.others()  # rows other processes wrote meanwhile: the dashboard follows the drawing


def write_summary(out: Path, folder: ResultsFolder, settings: MetricSettings, rows: LoggedRows) -> None:
    """Plots, evidence.md (metrics at matched accuracy, paired differences) and the W&B summary of every row."""
    rows.others()
    all_rows = folder.rows()
    plots = write_plots(all_rows, out / "plots")
    write_report(out, settings.match_accuracy)
    wandb_log.log_summary(rows.wb, all_rows, plots)


def _run_call(cfg, call: list[Point], run: RunOptions, models: Models, judges, y, seeds, real: RealSide,
              settings: MetricSettings, out, device=None):
    """Draw the points of one call in shared batches, then measure them one by one (yields per point).
    Points at s = 0 are the same unguided samples whatever their variant: drawn once, measured per point.
    judges: (the judge, the second judge), each Loaded or None."""
    n = len(seeds)
    t0 = time.perf_counter()
    draws = list(dict.fromkeys(p.draw_key for p in call))
    first = {p.draw_key: p.guidance for p in reversed(call)}  # a setting per draw (its first point's)
    guidance = GuidanceSpec.from_settings([first[k] for k in draws for _ in range(n)], y.repeat(len(draws)))
    x, nonfinite = draw_sharded(models, guidance, call[0].sampler, seeds * len(draws), run)
    if not is_main():  # rank 0 measures the gathered samples
        return
    draw_s = (time.perf_counter() - t0) / len(call)  # shared batches: each point gets an equal share
    plan = call[0].sampler.plan(make_schedule(**models.base.schedule))
    for point in call:
        j = draws.index(point.draw_key)
        t1 = time.perf_counter()
        xs, bad = x[j * n:(j + 1) * n], nonfinite[j * n:(j + 1) * n]
        row, grid = _measure(cfg, point, xs, y, models, judges, real, settings, out, device)
        # network evaluations per sample with the point's sampler (Heun: 2K - 1; x0-space backward passes included)
        cost = network_evals(GuidanceSpec.from_settings([point.guidance], [0]), plan, point.sampler)
        row = {**point.settings(), "n": n, **row, "interval_level": settings.interval_level,
               "grad_nonfinite_share": (bad > 0).double().mean().item(),
               **{k: int(v[0]) for k, v in cost.items()}, "wall_s": draw_s + time.perf_counter() - t1}
        yield point, row, grid


def _measure(cfg, point: Point, xs, y, models: Models, judges, real: RealSide, settings: MetricSettings, out,
             device) -> tuple[dict, Path]:
    """One point's metrics with their intervals, its evidence, samples (save_npz) and grid."""
    (judge, judge2), clf = judges, models.classifier
    keep: dict = {}
    values = compute_metrics(xs, y, (real.images, real.labels), judge=judge.net if judge else None,
                             guide=clf.net if clf else None, settings=settings, device=device,
                             keep=keep, judge2=judge2.net if judge2 else None, **real.metric_kwargs)
    metrics, reps = row_metrics(values, keep, settings)  # named for their feature space, with [lo, hi]
    write_evidence(out, point.key, reps, y, settings, keep["samples"])  # before its row, as the samples
    if cfg.sweep.get("save_npz"):  # before its row: a point in results.jsonl has its file
        write_sample_batch(out / "samples" / f"{point.key}.npz", xs, y)
    grid = class_grid(xs, y, cfg.sweep.grid_per_class, out / "grids" / f"{point.key}.png",
                      cfg.sweep.get("grid_classes"))
    return metrics, grid
