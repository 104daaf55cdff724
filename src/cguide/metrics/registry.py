"""The metric registry: a metric is one registered entry, and everything else reads it from here.

A `Metric` says what `metrics.names` calls it, which keys its point function puts in compute_metrics' dict and
which of them become result rows (under what base name), what it needs (the extractor's features or logits, the
real side, its labels, the judge, the second judge), its point function, its bootstrap replicate function (or
None: no interval from replicates), whether its rows are proportions (Wilson intervals) or not (the basic
bootstrap interval of the replicates) or it brings its own interval, their bounds and whether lower is better.

Adding a metric: one function decorated with `@register_metric(...)` (its replicate function, if any, given as
`replicate=`), plus its test; `conf/metrics/*.yaml` lists the names a run measures. The built-in metrics are
registered in definitions.py (imported by cguide.metrics, so they are there before any name is checked). The
registry's order is the order of compute_metrics' keys and of the row columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

PointFn = Callable[[Any], dict[str, float]]  # suite.Measure -> {key: value}
ReplicateFn = Callable[[Any], dict[str, Any]]  # bootstrap.Draws -> {row base name: [B] replicate values}


@dataclass(frozen=True)
class Metric:
    name: str  # as listed in metrics.names
    keys: tuple[str, ...]  # the keys its point function returns
    point: PointFn
    rows: dict[str, str] = field(default_factory=dict)  # key -> row base name (keys not listed stay out of rows)
    replicate: ReplicateFn | None = None
    # its own interval in place of the bootstrap's: (value, PointSamples, RealSet or None, MetricSettings) -> (lo, hi)
    interval: Callable[..., tuple[float, float]] | None = None
    features: bool = False  # reads the extractor's features of the samples (row names carry the feature space)
    logits: bool = False  # reads the extractor's logits too (IS)
    real: bool = False  # reads the real side's features
    real_labels: bool = False  # needs the real images' labels
    judge: bool = False  # needs the judge (its absence is an error)
    second_judge: bool = False  # measured whenever the second judge is there, never listed in metrics.names
    needs_judge_too: bool = False  # (second-judge metrics) measured only when the judge is there as well
    proportion: bool = False  # a share of samples: Wilson interval
    share_of_all: bool = False  # (proportions) of all samples, not of the finite ones
    lower_is_better: bool = False
    bounds: tuple[float, float] = (-math.inf, math.inf)  # where its values lie (reflected replicates may cross)
    titles: dict[str, str] = field(default_factory=dict)  # row base name -> title of its plot against the scale


METRICS: dict[str, Metric] = {}


def register_metric(name: str, keys: tuple[str, ...] | None = None, **options) -> Callable[[PointFn], PointFn]:
    """Decorator: register `fn(measure) -> {key: value}` as metric `name` (keys default to (name,), rows to
    {name: name}); the other Metric fields as keywords."""
    def add(fn: PointFn) -> PointFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        keys_ = tuple(keys or (name,))
        rows = options.pop("rows", None)
        METRICS[name] = Metric(name, keys_, fn, rows={name: name} if rows is None and name in keys_ else rows or {},
                               **options)
        return fn
    return add


def listed_names() -> tuple[str, ...]:
    """The names metrics.names may list."""
    return tuple(m.name for m in METRICS.values() if not m.second_judge)


def selected(names, judge: bool, judge2: bool) -> list[Metric]:
    """The metrics a call measures, in registry order: those named, and the second judge's when it is given."""
    return [m for m in METRICS.values() if m.name in names or (
        m.second_judge and judge2 and (judge or not m.needs_judge_too))]


def row_metric(base: str) -> Metric | None:
    """The metric whose rows include `base`."""
    return next((m for m in METRICS.values() if base in m.rows.values()), None)


def suite_to_row() -> dict[str, str]:
    """compute_metrics key -> row base name, for every key that becomes a row."""
    return {k: row for m in METRICS.values() for k, row in m.rows.items()}


def feature_rows() -> tuple[str, ...]:
    """Row base names that carry their feature space (fid -> fid_judge)."""
    return tuple(row for m in METRICS.values() if m.features for row in m.rows.values())


def objective_names() -> dict[str, str]:
    """Row base name -> the metrics.names entry that measures it, for every row a sweeper may optimise."""
    return {row: m.name for m in METRICS.values() if not m.second_judge for row in m.rows.values()}


def scale_plots() -> dict[str, str]:
    """Row base name -> plot title, for every row that gets its own plot against the guidance scale."""
    return {row: title for m in METRICS.values() for row, title in m.titles.items()}


def value_bounds(base: str) -> tuple[float, float]:
    """Where a row's values lie: [0, 1] for a proportion, else the metric's bounds (unbounded if unregistered)."""
    m = row_metric(base)
    if m is None:
        return -math.inf, math.inf
    return (0.0, 1.0) if m.proportion else m.bounds


def lower_is_better(base: str) -> bool:
    m = row_metric(base)
    return m is not None and m.lower_is_better
