"""Hydra entry point: the whole experiment in one command -- train the eps-model, the noisy classifier,
the judge and the second judge (and the clean guide when a point guides in x0 space), then sweep guidance
settings and report.

    python -m cguide.pipeline experiment=mnist5k_quick   # = make run: mnist5k, 2 CPU cores
    python -m cguide.pipeline experiment=mnist5k_full    # one GPU, bigger models, 2,000 samples per point
    python -m cguide.pipeline debug=default              # tiny nets, a few steps: under a minute

Each stage reuses its checkpoint when the settings that define it are unchanged, resumes an
interrupted run, and retrains (keeping the old folder aside) when they changed; one line says which.

The package is the entry point with its two parts below it: ``cguide.pipeline.stages`` (which networks an
experiment needs, the settings that define each, training one) and ``cguide.pipeline.workers`` (the work split
over processes on a CPU; its helpers are started with spawn and import ``cguide.pipeline.workers``).
``python -m cguide.pipeline`` runs ``main`` (``__main__.py``). The function that lists an experiment's stages is
``cguide.pipeline.stages.stages``: here ``stages`` is the submodule."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ..cli import CONF_DIR, check_output_args, print_config_tree, run_or_exit
from ..config import SweepConfig, plain, register_configs
from ..io.atomic import atomic_write_text
from ..io.folders import check_writable
from ..io.locks import FolderLock
from ..io.memory import check_samples_fit
from .stages import STAGES, check_stages, run_stage, stage_key  # noqa: F401  (the stage API, here too)
from .workers import Helpers, check_workers, draw_sweep, train_stages

TIMES = "pipeline_times.json"  # the last run's stage times, in out_dir

# (metric, title); feature metrics are found under their row name (fid -> fid_judge) and titled with it
TABLE = [("method", "method"), ("scale", "scale"), ("variant", "variant"), ("fid", "FID"), ("fid_inf", "FID_inf"),
         ("kid", "KID"), ("is", "IS"), ("accuracy", "accuracy"), ("accuracy_judge2", "acc_judge2"),
         ("judge_agreement", "agreement"), ("guide_confidence", "guide_conf"), ("precision", "precision"),
         ("recall", "recall")]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def sweep_config(cfg: DictConfig, ckpts: dict[str, Path], out: Path) -> DictConfig:
    parts = {k: plain(cfg[k]) for k in ("device", "num_threads", "progress", "tags", "data", "sampler", "guidance",
                                        "sweep", "metrics", "speed", "logger")}
    from ..grid.runner import file_identity

    ids = {k: str(p) for k, p in ckpts.items()}
    # A folder per (checkpoint contents, grid, sampler): retrained stages get a fresh sweep, never a mixed one.
    grid = dict(parts["sweep"])
    if grid["methods"] == ["classifier"] and not grid["method_scales"]:  # as before methods: old digests hold
        del grid["methods"], grid["method_scales"]
    if not grid.get("settings", True):  # likewise before named option sets
        del grid["settings"]
    if not grid.get("sampler_steps", True):  # likewise before per-sampler steps
        del grid["sampler_steps"]
    defines = {"ckpts": {k: file_identity(p) for k, p in ckpts.items()}, "sweep": grid, "sampler": parts["sampler"],
               # what rows hold (names, intervals) since #26: a rerun after the upgrade draws a fresh folder
               "metrics": {k: parts["metrics"].get(k) for k in ("names", "extractor", "interval_resamples",
                                                                 "interval_level", "interval_resample_reals")}}
    if parts["speed"]["bf16"] or parts["speed"].get("fp16"):  # they define results (cguide.grid.runner.manifest);
        defines["speed"] = {k: True for k in ("bf16", "fp16") if parts["speed"].get(k)}  # only when on: old digests
    sweep_dir = out / "sweep" / _digest(defines)
    if cfg.get("extend_sweep"):
        sweep_dir = extended_sweep(cfg.extend_sweep)
    parts.update(eps_ckpt=ids.get("diffusion"), cond_ckpt=ids.get("cond_diffusion"), classifier_ckpt=ids["classifier"],
                 judge_ckpt=ids["judge"], guide_ckpt=ids.get("guide"), judge2_ckpt=ids.get("judge2"),
                 out_dir=str(sweep_dir), paths={"output_dir": str(sweep_dir)})
    parts["metrics"]["real_stats_cache"] = str(out / "real_stats")
    parts["logger"]["group"] = parts["logger"]["group"] or f"pipeline-{cfg.name}"
    return OmegaConf.merge(OmegaConf.structured(SweepConfig), parts)


def extended_sweep(path: str) -> Path:
    """extend_sweep's folder: a sweep folder already (its sweep.json then refuses other settings, as on resume)."""
    folder = Path(path)
    if not (folder / "sweep.json").is_file():
        raise ValueError(f"extend_sweep={path} is not a sweep folder (no sweep.json); pass a finished sweep's folder, "
                         "e.g. extend_sweep=outputs/pipeline/<name>/sweep/<id> as its run printed it")
    return folder


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _cell(r: dict, key: str) -> str:
    """A value with its interval when the row has one: '3.150 [2.81, 3.52]'."""
    v, lo, hi = r.get(key), r.get(f"{key}_lo"), r.get(f"{key}_hi")
    if isinstance(v, float) and isinstance(lo, float) and isinstance(hi, float):
        return f"{v:.3f} [{lo:.3g}, {hi:.3g}]"
    return _fmt(v)


KEYS = ("method", "scale", "variant", "sampler", "steps", "options")  # the columns that say which point a row is


def _plain_table(title: str, header: list[str], cells: list[list[str]]) -> list[str]:
    """The table as plain text lines, each column as wide as its widest cell (nothing cut)."""
    widths = [max(len(c) for c in col) for col in zip(header, *cells)]
    line = lambda row: "  ".join(c.rjust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return [title, line(header), "  ".join("-" * w for w in widths), *map(line, cells)]


def _column_groups(header: list[str], cells: list[list[str]], n_keys: int, width: int) -> list[list[int]] | None:
    """Column indices split into tables that each fit `width` in rich's boxed layout (a column takes its
    widest cell + 2 of padding + 1 border, a table 1 more), each table led by the n_keys key columns; None
    when the key columns and one value column alone are wider than `width`."""
    need = [max(len(c) for c in col) + 3 for col in zip(header, *cells)]
    base = 1 + sum(need[:n_keys])
    groups, used = [], width + 1  # the first value column opens the first table
    for j in range(n_keys, len(header)):
        if used + need[j] > width:
            if base + need[j] > width:
                return None
            groups.append(list(range(n_keys)))
            used = base
        groups[-1].append(j)
        used += need[j]
    return groups or [list(range(n_keys))]


def print_report(sweep_dir: Path) -> None:
    """The sweep's table and where its files are. Every number is printed whole at any width: on a terminal
    too narrow for one table the value columns are split over several tables (each led by method, scale,
    variant); when stdout is not a terminal (a log file, a pipe) or even the key columns do not fit, it is
    a plain text table as wide as its cells."""
    from rich.console import Console
    from rich.table import Table

    from ..grid.results import ResultsFolder, options_label
    from ..metrics.intervals import base_name, find_key

    rows = sorted(ResultsFolder(sweep_dir).rows(),
                  key=lambda r: (r.get("method", "classifier"), r["variant"], str(r.get("sampler")),
                                 int(r.get("steps") or 0), options_label(r), float(r["scale"])))
    columns = [(k, t) if k in KEYS else (find_key(rows, k), t) for k, t in TABLE]
    columns = [(k, t if k == base_name(k) else f"{t}_{k.rsplit('_', 1)[-1]}") for k, t in columns if k]
    if any(options_label(r) != "-" for r in rows):  # option sets: say which row is which
        columns.insert(3, ("options", "options"))
    for key in ("steps", "sampler"):  # a solvers sweep: which sampler and how many steps
        if len({str(r.get(key)) for r in rows}) > 1:
            columns.insert(3, (key, key))
    header = [title for _, title in columns]
    cells = [[options_label(r) if k == "options" else _cell(r, k) for k, _ in columns] for r in rows]
    level = next((r["interval_level"] for r in rows if r.get("interval_level")), None)
    title = f"guidance sweep ({len(rows)} points" + (f"; [{100 * level:g} % intervals])" if level else ")")
    console = Console()
    groups = _column_groups(header, cells, sum(k in KEYS for k, _ in columns), console.width) \
        if console.is_terminal else None
    if groups is None:
        for line in _plain_table(title, header, cells):
            console.out(line, highlight=False)
    for i, group in enumerate(groups or []):
        table = Table(title=title if i == 0 else None)
        for j in group:
            table.add_column(header[j], justify="right", no_wrap=True)
        for row in cells:
            table.add_row(*[row[j] for j in group])
        console.print(table)
    # paths whole on one line each, as a log file or a terminal's own wrapping shows them
    console.out(f"results: {sweep_dir / 'results.csv'}  {sweep_dir / 'results.jsonl'}", highlight=False)
    console.out(f"plots:   {sweep_dir / 'plots'}", highlight=False)
    if (sweep_dir / "evidence.md").is_file():  # metrics at matched accuracy, paired differences
        console.out(f"evidence: {sweep_dir / 'evidence.md'}", highlight=False)
    console.out(f"grids:   {sweep_dir / 'grids'}", highlight=False)
    runs = sorted(sweep_dir.glob("wandb/offline-run-*"))
    if runs:
        console.out(f"W&B (offline): {runs[-1]}\n  upload with: wandb sync {runs[-1]}", highlight=False)


def check_sweep_settings(cfg: DictConfig) -> None:
    """What the sweep would refuse that is known before any stage trains: its numbers, the metric settings (Inception
    weights present and safe), the samples held in memory."""
    from ..grid.checks import check_sweep_numbers
    from ..metrics import MetricSettings

    check_sweep_numbers(cfg.sweep)
    if cfg.get("extend_sweep"):
        extended_sweep(cfg.extend_sweep)
    MetricSettings.from_config(cfg.metrics, names=list(dict.fromkeys([*cfg.metrics.names, "nonfinite"])))
    check_samples_fit(cfg.sweep.n_per_point, cfg.data.get("image_size"), "sweep.n_per_point")


def run_pipeline(cfg: DictConfig) -> Path:
    out = check_writable(cfg.out_dir, "out_dir")
    check_workers(cfg)
    check_stages(cfg, out)
    check_sweep_settings(cfg)
    t0 = time.perf_counter()
    # one pipeline per out_dir (its helpers work for it); each stage's training also locks its own folder
    with FolderLock(out, "out_dir"), Helpers(cfg, out) as helpers:  # helpers: from here to the sweep's end
        ckpts = train_stages(cfg, out, helpers)
        t1 = time.perf_counter()
        sweep_dir = draw_sweep(cfg, sweep_config(cfg, ckpts, out), helpers)
        print_report(sweep_dir)
        # per stage, so a benchmark on a drifting machine compares the stage a change touched, not whole runs
        times = {"stages_s": round(t1 - t0, 1), "sweep_s": round(time.perf_counter() - t1, 1),
                 "wall_s": round(time.perf_counter() - t0, 1), "sweep_dir": str(sweep_dir)}
        atomic_write_text(out / TIMES, json.dumps(times, indent=1) + "\n")
    print(f"pipeline finished in {times['wall_s']:.0f} s (networks {times['stages_s']:.0f} s, sweep "
          f"{times['sweep_s']:.0f} s; {out / TIMES})")
    return sweep_dir


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="pipeline")
def hydra_main(cfg: DictConfig) -> None:
    print_config_tree(cfg, first=("name", "data", "model", "classifier", "judge", "sweep", "guidance", "sampler"))
    run_or_exit(run_pipeline, cfg)


def main():
    """Output folders checked before Hydra makes its run folder in out_dir (cguide.cli.check_output_args)."""
    check_output_args(sys.argv[1:], "out_dir")
    return hydra_main()
