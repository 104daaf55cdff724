"""W&B logging of a sweep: one run per job, all runs of a sweep in one group. Offline by default
(runs land in <out_dir>/wandb; upload later with `wandb sync`); logger=none turns it off."""

from __future__ import annotations

import math
from pathlib import Path

from ..io.loggers import init_timeout, start_wandb
from ..metrics.intervals import find_key
from .plots import num, series

LINE_METRICS = ("fid", "fid_inf", "kid", "accuracy", "accuracy_judge2", "judge_agreement", "is", "precision",
                "recall")  # found under their row names


def start_run(logger_cfg, out_dir: Path, group: str, name: str, config: dict, tags: list[str] = ()):
    """A W&B run, or None when the logger is not wandb (or its mode is 'disabled')."""
    if logger_cfg.name != "wandb" or logger_cfg.mode == "disabled":
        return None
    import wandb

    out_dir.mkdir(parents=True, exist_ok=True)
    return start_wandb(lambda mode: wandb.init(
        project=logger_cfg.project, group=logger_cfg.group or group, name=name, job_type="sweep",
        tags=[*tags, *logger_cfg.tags], dir=str(out_dir), mode=mode, config=config, reinit="finish_previous",
        settings=wandb.Settings(init_timeout=init_timeout())), logger_cfg.mode)


def log_point(run, row: dict, grid: Path | None, step: int) -> None:
    if run is None:
        return
    import wandb

    metrics = {f"point/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    image = {"point/grid": wandb.Image(str(grid), caption=row["point"])} if grid is not None else {}
    run.log({**metrics, **image}, step=step)


def log_summary(run, rows: list[dict], plots: dict[str, Path]) -> None:
    """The whole results table (every job's rows so far), line plots per metric and the PNG plots."""
    if run is None or not rows:
        return
    import wandb

    columns = list(dict.fromkeys(k for r in rows for k in r))
    table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
    payload = {"results": table, **{f"plots/{k}": wandb.Image(str(p)) for k, p in plots.items()}}
    lines = series(rows)
    for key in filter(None, (find_key(rows, base) for base in LINE_METRICS)):
        if any(key in r for r in rows):
            ys = [[num(r.get(key)) if not math.isnan(num(r.get(key))) else None for r in rs] for rs in lines.values()]
            payload[f"lines/{key}_vs_scale"] = wandb.plot.line_series(
                xs=[[num(r["scale"]) for r in rs] for rs in lines.values()], ys=ys, keys=list(lines),
                title=f"{key} vs guidance scale", xname="scale")
    run.log(payload)
