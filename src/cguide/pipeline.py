"""Hydra entry point: the whole experiment in one command -- train the eps-model, the noisy classifier
and the judge (and the clean guide when a point guides in x0 space), then sweep guidance settings and report.

    python -m cguide.pipeline experiment=mnist5k_quick   # = make run: mnist5k, 2 CPU cores
    python -m cguide.pipeline experiment=mnist5k_full    # one GPU, bigger models, 2,000 samples per point
    python -m cguide.pipeline debug=default              # tiny nets, a few steps: under a minute

Each stage reuses its checkpoint when the settings that define it are unchanged, resumes an
interrupted run, and retrains (keeping the old folder aside) when they changed; one line says which."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .cli import CONF_DIR, print_config_tree, run_or_exit
from .config import SweepConfig, TrainConfig, plain, register_configs
from .grid.points import build_grid
from .guidance import METHODS, check_method
from .io.atomic import atomic_write_text
from .io.folders import check_writable, move_aside

# stage -> (training task, its config section, trained on the schedule); cond_diffusion is the class-conditional
# eps-model (model.cond=true: same size and step budget as the unconditional one), trained when a method needs it;
# guide is the clean guide classifier, trained when a sweep point guides in x0 space (guidance.grad_space=x0)
STAGES = {"diffusion": ("diffusion", "model", True), "cond_diffusion": ("diffusion", "model", True),
          "classifier": ("classifier", "classifier", True), "judge": ("judge", "judge", False),
          "guide": ("guide", "guide", False)}
TABLE = [("method", "method"), ("scale", "scale"), ("variant", "variant"), ("fid", "FID"), ("kid_mean", "KID"), ("is_mean", "IS"),
         ("accuracy", "accuracy"), ("guide_confidence", "guide_conf"), ("precision", "precision"),
         ("recall", "recall")]


def stages(cfg: DictConfig) -> list[str]:
    """The stages the sweep's methods need (the classifier always: it also measures guide_confidence), and the
    guide when a point of the grid guides in x0 space."""
    needs = set().union(*(METHODS[check_method(m).name].needs for m in cfg.sweep.methods))
    x0 = any(p.guidance.grad_space == "x0" and p.guidance.scale > 0 and p.method.classifier
             for p in build_grid(cfg.sweep, cfg.sampler, cfg.guidance))
    return [s for s in STAGES if (s != "diffusion" or "u" in needs)
            and (s != "cond_diffusion" or needs & {"c", "null"}) and (s != "guide" or x0)]


def _net(cfg: DictConfig, stage: str) -> dict:
    """The stage's net section; conditioning only where it defines the net (so unconditional stages keep
    the keys they had before conditional models existed)."""
    net = plain(cfg[STAGES[stage][1]])
    if stage == "cond_diffusion":
        return {**net, "cond": True}
    # seed_offset only where set (the guide), so the other stages keep the keys they had before it existed
    # likewise lr_decay only when not constant
    return {k: v for k, v in net.items() if k not in ("cond", "p_uncond") and not (k == "seed_offset" and v == 0)
            and not (k == "lr_decay" and v == "constant")}


def stage_key(cfg: DictConfig, stage: str) -> dict:
    """The settings that define a stage's checkpoint; anything else (logging, progress) may change freely."""
    task, _, uses_schedule = STAGES[stage]
    key = {"task": task, "seed": cfg.seed, "data": plain(cfg.data), "net": _net(cfg, stage),
           "precision": cfg.trainer.precision}
    if uses_schedule:
        key["diffusion"] = plain(cfg.diffusion)
    return key


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def stage_config(cfg: DictConfig, stage: str, folder: Path) -> DictConfig:
    parts = {k: plain(cfg[k]) for k in ("seed", "tags", "num_threads", "data", "diffusion", "model", "classifier",
                                        "judge", "guide", "trainer", "logger", "callbacks")}
    parts["model"]["cond"] = stage == "cond_diffusion"
    parts.update(task=STAGES[stage][0], resume=True,
                 paths={"output_dir": str(folder), "ckpt_dir": str(folder / "checkpoints")})
    parts["logger"]["group"] = parts["logger"]["group"] or f"pipeline-{cfg.name}"
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), parts)


def check_stages(cfg: DictConfig, out: Path) -> None:
    """Every stage's settings, before any stage trains: a bad value never leaves a half-made stage."""
    from .train import check_train

    if cfg.trainer.fast_dev_run:
        raise ValueError("trainer.fast_dev_run=true trains one batch and writes no checkpoint, so the pipeline "
                         "cannot go on; for a quick whole run use debug=default (or cguide.train for a smoke test)")
    for stage in stages(cfg):
        check_train(stage_config(cfg, stage, out / stage))


def run_stage(cfg: DictConfig, stage: str, out: Path) -> Path:
    """Train one network unless a finished checkpoint with the same defining settings exists."""
    from .train import train

    folder = out / stage
    final, marker = folder / "checkpoints" / f"{STAGES[stage][0]}.ckpt", folder / "stage.json"
    key = stage_key(cfg, stage)
    old = json.loads(marker.read_text()) if marker.is_file() else None
    if old is not None and old != key:
        changed = sorted(k for k in set(key) | set(old) if key.get(k) != old.get(k))
        print(f"[{stage}] settings changed ({', '.join(changed)}): retraining; previous run kept in "
              f"{move_aside(folder)}")
    elif old is not None and final.is_file():
        print(f"[{stage}] settings unchanged: reusing {final}")
        return final
    elif old is not None:
        print(f"[{stage}] unfinished run found: resuming from {folder / 'checkpoints' / 'last.ckpt'}")
    else:
        print(f"[{stage}] no checkpoint yet: training")
    atomic_write_text(marker, json.dumps(key, indent=1, sort_keys=True))
    t0 = time.perf_counter()
    path = train(stage_config(cfg, stage, folder)).checkpoint
    print(f"[{stage}] trained in {time.perf_counter() - t0:.0f} s: {path}")
    return path


def sweep_config(cfg: DictConfig, ckpts: dict[str, Path], out: Path) -> DictConfig:
    parts = {k: plain(cfg[k]) for k in ("device", "num_threads", "progress", "tags", "data", "sampler", "guidance",
                                        "sweep", "metrics", "speed", "logger")}
    from .grid.runner import file_identity

    ids = {k: str(p) for k, p in ckpts.items()}
    # A folder per (checkpoint contents, grid, sampler): retrained stages get a fresh sweep, never a mixed one.
    grid = dict(parts["sweep"])
    if grid["methods"] == ["classifier"] and not grid["method_scales"]:  # as before methods: old digests hold
        del grid["methods"], grid["method_scales"]
    if not grid.get("settings", True):  # likewise before named option sets
        del grid["settings"]
    defines = {"ckpts": {k: file_identity(p) for k, p in ckpts.items()}, "sweep": grid, "sampler": parts["sampler"]}
    if parts["speed"]["bf16"] or parts["speed"].get("fp16"):  # they define results (cguide.grid.runner.manifest);
        defines["speed"] = {k: True for k in ("bf16", "fp16") if parts["speed"].get(k)}  # only when on: old digests
    sweep_dir = out / "sweep" / _digest(defines)
    parts.update(eps_ckpt=ids.get("diffusion"), cond_ckpt=ids.get("cond_diffusion"), classifier_ckpt=ids["classifier"],
                 judge_ckpt=ids["judge"], guide_ckpt=ids.get("guide"),
                 out_dir=str(sweep_dir), paths={"output_dir": str(sweep_dir)})
    parts["metrics"]["real_stats_cache"] = str(out / "real_stats")
    parts["logger"]["group"] = parts["logger"]["group"] or f"pipeline-{cfg.name}"
    return OmegaConf.merge(OmegaConf.structured(SweepConfig), parts)


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def print_report(sweep_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from .grid.results import ResultsFolder, options_label

    rows = sorted(ResultsFolder(sweep_dir).rows(),
                  key=lambda r: (r.get("method", "classifier"), r["variant"], options_label(r), float(r["scale"])))
    columns = list(TABLE)
    if any(options_label(r) != "-" for r in rows):  # option sets: say which row is which
        columns.insert(3, ("options", "options"))
    table = Table(title=f"guidance sweep ({len(rows)} points)")
    for _, title in columns:
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(*[options_label(r) if k == "options" else _fmt(r.get(k)) for k, _ in columns])
    console = Console()
    console.print(table)
    console.print(f"results: {sweep_dir / 'results.csv'}  {sweep_dir / 'results.jsonl'}")
    console.print(f"plots:   {sweep_dir / 'plots'}")
    console.print(f"grids:   {sweep_dir / 'grids'}")
    runs = sorted(sweep_dir.glob("wandb/offline-run-*"))
    if runs:
        console.print(f"W&B (offline): {runs[-1]}\n  upload with: wandb sync {runs[-1]}")


def run_pipeline(cfg: DictConfig) -> Path:
    out = check_writable(cfg.out_dir, "out_dir")
    check_stages(cfg, out)
    t0 = time.perf_counter()
    ckpts = {stage: run_stage(cfg, stage, out) for stage in stages(cfg)}
    from .grid.runner import run_sweep

    sweep_dir = run_sweep(sweep_config(cfg, ckpts, out))
    print_report(sweep_dir)
    print(f"pipeline finished in {time.perf_counter() - t0:.0f} s")
    return sweep_dir


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="pipeline")
def main(cfg: DictConfig) -> None:
    print_config_tree(cfg, first=("name", "data", "model", "classifier", "judge", "sweep", "guidance", "sampler"))
    run_or_exit(run_pipeline, cfg)


if __name__ == "__main__":
    main()
