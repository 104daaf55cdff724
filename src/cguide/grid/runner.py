"""Run a sweep: check everything, claim the results folder, then draw and measure the points not yet
done, appending one row per point as it finishes (so an interrupted sweep resumes where it stopped)."""

from __future__ import annotations

import hashlib
import json
import time
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


def run_sweep(cfg: DictConfig, log_others: bool = False, report: bool = True) -> Path:
    """Run (or resume) the sweep described by cfg into cfg.out_dir; returns the folder. Every check comes
    before the folder is claimed, so a bad input leaves it as it was and the corrected command runs.
    log_others: the W&B run also gets the rows other processes wrote (found done at the start, or landed while
    this one drew): the pipeline's helper processes log nothing. report=False: draw only, no plots or summary
    (a helper: the process that logs writes them)."""
    sw = cfg.sweep
    check_sweep_numbers(sw)
    points = build_grid(sw, cfg.sampler, cfg.guidance)
    # the non-finite share is in every row
    settings = MetricSettings.from_config(cfg.metrics, names=list(dict.fromkeys([*cfg.metrics.names, "nonfinite"])))
    names = settings.names
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
    eps = models.base
    judge = load_net(cfg.judge_ckpt, "judge") if cfg.judge_ckpt else None
    if judge is not None:
        check_same_images(eps, f"judge {judge.path}", judge.image_shape, judge.num_classes)
    # the second judge (#26 item 6): accuracy_judge2 and judge_agreement, unless metrics.second_judge=false
    judge2 = load_net(cfg.judge2_ckpt, "judge2") if cfg.get("judge2_ckpt") and settings.second_judge is not False \
        else None
    if judge2 is not None:
        check_same_images(eps, f"second judge {judge2.path} (judge2_ckpt)", judge2.image_shape, judge2.num_classes)
    check_sampling(eps, points)
    for var_type in {p.sampler.var_type for p in points}:
        check_learned_variance((models.eps, models.cond), var_type)
    y = balanced_targets(sw.n_per_point, eps.num_classes)
    real = real_side(cfg, settings, eps)

    out = Path(cfg.out_dir)
    folder = ResultsFolder(out)
    defines = manifest(cfg, models, judge, names, real, judge2)

    def claim() -> set:
        check_writable(out, "out_dir")
        remove_stale_temps([out, out / "grids", out / "plots", out / "samples", out / EVIDENCE])
        folder.claim(defines, {"eps_ckpt": cfg.eps_ckpt, "cond_ckpt": cfg.cond_ckpt,
                               "classifier_ckpt": cfg.classifier_ckpt,
                               "judge_ckpt": str(judge.path) if judge else None,
                               **({"judge2_ckpt": str(judge2.path)} if judge2 else {}),
                               **({"guide_ckpt": str(models.guide.path)} if models.guide else {})})
        return folder.done()

    done = main_then_share(claim)  # distributed: rank 0 claims and reads, every rank gets the same to-do list
    todo = [p for p in points if p.key not in done]
    if is_main():
        print(f"sweep {out}: {len(points)} point(s), {len(points) - len(todo)} done already, {len(todo)} to run")

    for j in (judge, judge2):
        if j is not None:
            j.net.to(device)
    seeds = (sw.seed + torch.arange(sw.n_per_point)).tolist()
    group = sweep_group(sw.name, defines)
    wb = wandb_log.start_run(cfg.logger, out, group, name=f"{group}-{time.strftime('%H%M%S')}",
                             config=OmegaConf.to_container(cfg, resolve=True), tags=list(cfg.tags)) if is_main() else None
    claims = PointClaims(out, folder.done)
    logged: list[str] = []  # points in the W&B run, in logging order (their W&B steps)

    def log_others_rows() -> None:
        for row in folder.rows() if log_others and wb is not None else ():
            if row["point"] not in logged:
                grid = out / "grids" / f"{row['point']}.png"
                wandb_log.log_point(wb, row, grid if grid.is_file() else None, len(logged))
                logged.append(row["point"])

    try:
        log_others_rows()
        for call in claimed_calls(todo, sw.points_per_call, claims, out, on_wait=log_others_rows):
            for point, row, grid in _run_call(cfg, call, run, models, (judge, judge2), y, seeds, real, settings, out,
                                              device):
                if folder.append(row):  # False: a parallel job finished this point first
                    wandb_log.log_point(wb, row, grid, len(logged))
                    logged.append(row["point"])
            claims.release(p.key for p in call)
            log_others_rows()  # rows other processes wrote meanwhile: the dashboard follows the drawing
        if not is_main() or not report:  # other ranks (and helpers) only drew their shares
            return out
        log_others_rows()  # claimed_calls returns once every row has landed
        rows = folder.rows()
        plots = write_plots(rows, out / "plots")
        write_report(out, settings.match_accuracy)  # evidence.md: metrics at matched accuracy, paired differences
        wandb_log.log_summary(wb, rows, plots)
    finally:
        claims.release()
        finish_wandb()  # multirun jobs must never log into one run
    return out


def _run_call(cfg, call: list[Point], run: RunOptions, models: Models, judges, y, seeds, real: RealSide,
              settings: MetricSettings, out, device=None):
    """Draw the points of one call in shared batches, then measure them one by one (yields per point).
    Points at s = 0 are the same unguided samples whatever their variant: drawn once, measured per point.
    judges: (the judge, the second judge), each Loaded or None."""
    judge, judge2 = judges
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
        clf = models.classifier
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
        # network evaluations per sample with the point's sampler (Heun: 2K - 1; x0-space backward passes included)
        cost = network_evals(GuidanceSpec.from_settings([point.guidance], [0]), plan, point.sampler)
        row = {**point.settings(), "n": n, **metrics, "interval_level": settings.interval_level,
               "grad_nonfinite_share": (bad > 0).double().mean().item(),
               **{k: int(v[0]) for k, v in cost.items()}, "wall_s": draw_s + time.perf_counter() - t1}
        yield point, row, grid
