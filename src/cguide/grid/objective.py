"""The value a Hydra sweeper (hparams_search=) optimises: the metrics of the job's single point, read back
from the results folder (so a point already measured by an earlier trial is not drawn again).

A metric that came out NaN (written as null) returns None, not NaN: hydra-optuna-sweeper 1.3 passes a NaN
on to optuna 2.x's tell() and the whole sweep crashes, while None marks just that trial failed."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from omegaconf import ListConfig

from ..metrics.intervals import find_key
from ..metrics.registry import objective_names
from .points import build_grid
from .results import ResultsFolder

log = logging.getLogger(__name__)

# Names before #26 -> the row they read (rows now hold kid and is; the registry names every other row)
ROW_BASE = {"kid_mean": "kid", "is_mean": "is"}


def objective_metrics() -> dict[str, str]:
    """Objective name (a row's base name) -> the metrics.names entry that measures it."""
    names = objective_names()
    return names | {old: names[row] for old, row in ROW_BASE.items()}


def row_value(row: dict, name: str):
    key = find_key([row], ROW_BASE.get(name, name))
    return row.get(key) if key else None


def _sweeper_directions(cfg) -> list | None:
    """The running sweeper's directions (Optuna's hydra.sweeper.direction); None without an optimising sweeper."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    d = HydraConfig.get().sweeper.get("direction")
    if d is None:
        return None
    return list(d) if isinstance(d, (list, tuple, ListConfig)) else [d]  # one: a string or optuna's Direction


def check_objective(cfg) -> None:
    """Bad objective settings as one-line ValueErrors, before anything is drawn."""
    ob = cfg.objective
    names = list(ob.metrics)
    if not names:
        raise ValueError("objective.metrics is empty; name the row metric(s) to optimise, e.g. objective.metrics=[fid]")
    known = objective_metrics()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown} in objective.metrics; known: {', '.join(sorted(known))}")
    m = ob.min_accuracy
    if m is not None:
        if not 0.0 <= m <= 1.0:  # NaN fails too
            raise ValueError(f"objective.min_accuracy must be in [0, 1] (the judge's accuracy), got {m}; "
                             "e.g. objective.min_accuracy=0.9, or null for no bound")
        if names != ["fid"]:
            raise ValueError(f"objective.min_accuracy bounds a single fid objective, but objective.metrics is {names}; "
                             "set objective.metrics=[fid], or objective.min_accuracy=null (e.g. for a Pareto search)")
        if not (math.isfinite(ob.penalty) and ob.penalty >= 0):
            raise ValueError(f"objective.penalty must be a finite number >= 0, got {ob.penalty}; e.g. objective.penalty=1000")
    directions = _sweeper_directions(cfg)
    if directions is None:  # a plain run or grid multirun: the return value is not used, so need not be measured
        return
    if len(directions) != len(names):
        raise ValueError(f"hydra.sweeper.direction has {len(directions)} direction(s) but objective.metrics names "
                         f"{len(names)} ({names}); give one direction per metric")
    measured = {*cfg.metrics.names, "nonfinite"}  # the sweep always measures the non-finite share
    needed = {known[n] for n in names} | ({"accuracy"} if m is not None else set())
    missing = sorted(needed - measured)
    if missing:
        raise ValueError(f"the objective needs {missing} but metrics.names does not measure them; "
                         f"add them, e.g. metrics.names=[{','.join(sorted(needed))}]")


def objective(cfg, out: str | Path) -> float | tuple[float, ...] | None:
    """The objective(s) cfg.objective.metrics of this job's point: one name -> a float, several -> a tuple in
    that order. None for a grid job (more than one point: not a trial) and when any value needed is null
    (NaN; None makes the Optuna sweeper mark the trial failed, see the module docstring).

    With objective.min_accuracy (single fid objective): FID + objective.penalty * (min_accuracy - accuracy)
    when accuracy is below the bound, plain FID at or above it; a soft constraint, so Optuna can still rank
    points that miss it (further below the bound -> worse)."""
    check_objective(cfg)
    points = build_grid(cfg.sweep, cfg.sampler, cfg.guidance)
    if len(points) != 1:
        return None
    key = points[0].key
    row = next((r for r in ResultsFolder(out).rows() if r["point"] == key), None)
    if row is None:
        raise RuntimeError(f"no row for point {key} in {out}/results.jsonl")
    ob = cfg.objective
    names = list(ob.metrics) + (["accuracy"] if ob.min_accuracy is not None else [])
    values = {n: row_value(row, n) for n in names}
    if any(find_key([row], ROW_BASE.get(n, n)) is None for n in names):  # not measured: a plain run
        return None
    nulls = [n for n, v in values.items() if v is None or not math.isfinite(v)]
    if nulls:
        log.warning(f"objective: {nulls} of point {key} is null (NaN); no value, so the sweeper fails this trial")
        return None
    if ob.min_accuracy is not None:
        return values["fid"] + ob.penalty * max(0.0, ob.min_accuracy - values["accuracy"])
    result = tuple(float(values[n]) for n in ob.metrics)
    return result[0] if len(result) == 1 else result
