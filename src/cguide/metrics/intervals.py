"""A point's metrics as result-row fields: each named for its feature space, each with [lo, hi].

Row names: the feature metrics carry their feature space (`fid_judge`, `fid_inception`, `kid_judge`,
`is_judge`, `precision_judge`, `recall_judge`, `classwise_fid_judge`, `fid_inf_judge`): numbers of two spaces
are not comparable. accuracy (the judge's), accuracy_judge2 (the second judge's), judge_agreement (the share of
finite samples on which both judges' argmax agree), guide_confidence and nonfinite are not feature metrics.
Every value has `<name>_lo` / `<name>_hi`: Wilson for the proportions (accuracy, accuracy_judge2,
judge_agreement, nonfinite), for fid_inf its half-sample interval (bootstrap.fid_inf_half_interval), else the
basic bootstrap interval of bootstrap.py (each metric's kind is in its registry entry). `kid_<space>` is the unbiased
MMD^2 of all rows (the statistic its interval is for), not torch-fidelity's mean over subsets.
"""

from __future__ import annotations

import math

import torch

from . import bootstrap as bs
from .registry import METRICS, feature_rows, row_metric, suite_to_row
from .settings import MetricSettings

# rows written before the names carried their space: old key -> base name
LEGACY = {"fid": "fid", "kid_mean": "kid", "is_mean": "is", "precision": "precision", "recall": "recall",
          "classwise_fid": "classwise_fid"}


def row_name(base: str, space: str) -> str:
    """'fid', 'judge' -> 'fid_judge'; names that are no feature metric stay as they are."""
    return f"{base}_{space}" if base in feature_rows() else base


def base_name(key: str) -> str:
    """'fid_judge' -> 'fid' (and 'fid_inf_inception' -> 'fid_inf'); other keys as they are."""
    for base in sorted(feature_rows(), key=len, reverse=True):
        for space in ("judge", "inception"):
            if key == f"{base}_{space}":
                return base
    return key


def find_key(rows: list[dict], base: str) -> str | None:
    """The row key that holds metric `base` in these rows (any feature space), or None."""
    names = [base] if base not in feature_rows() else [f"{base}_judge", f"{base}_inception"]
    return next((k for k in names if any(k in r for r in rows)), None)


def upgrade_row(row: dict, space: str) -> dict:
    """A row written before metric names carried their feature space, under today's names."""
    out = dict(row)
    for old, base in LEGACY.items():
        if old in out and row_name(base, space) not in out:
            out[row_name(base, space)] = out.pop(old)
    for old in ("kid_std", "is_std"):
        out.pop(old, None)
    return out


def space_of(settings: MetricSettings) -> str:
    return settings.extractor


def replicates(ps: bs.PointSamples, real: bs.RealSet | None, names, *, resamples: int, seed: int,
               **options) -> dict[str, torch.Tensor]:
    """{row base name: [B] replicate values} of the named metrics (and of the second judge's whenever measured),
    from one bootstrap draw (bootstrap.Draws, options as its keywords); a feature metric needs features and a
    real side. options['points'] gets the all-rows values of statistics whose estimator differs from the
    suite's ('kid')."""
    d = bs.Draws(ps, real, resamples=resamples, seed=seed, **options)
    for m in METRICS.values():
        if m.replicate is not None and (m.name in names or m.second_judge) and (d.has_features or not m.features):
            d.out.update(m.replicate(d))
    return d.out


def row_metrics(values: dict[str, float], keep: dict, settings: MetricSettings
                ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """(row fields: value, _lo, _hi per metric under its row name; {row name: [B] replicates} for the
    paired comparisons and matched-accuracy tables, which reuse them instead of redrawing)."""
    space, s = space_of(settings), settings
    per: bs.PointSamples = keep["samples"]
    full: dict = {}
    reps = replicates(per, keep.get("real"), set(s.names), resamples=s.interval_resamples, seed=s.seed,
                      resample_reals=s.interval_resample_reals, isc_splits=s.isc_splits,
                      prc_neighborhood=s.prc_neighborhood, prc_real_rows=keep.get("prc_real_rows"), points=full)
    to_row = suite_to_row()
    points = {to_row[k]: v for k, v in values.items() if k in to_row}
    points.update(full)  # kid: the all-rows U-statistic, the quantity its replicates scatter around
    out: dict[str, float] = {}
    named: dict[str, torch.Tensor] = {}
    for base, value in points.items():
        name = row_name(base, space)
        out[name] = value
        out[f"{name}_lo"], out[f"{name}_hi"] = _interval(row_metric(base), value, reps.get(base), per,
                                                         keep.get("real"), s)
        if base in reps:
            named[name] = reps[base].float()
    return out, named


def _interval(metric, value: float, reps: torch.Tensor | None, per: bs.PointSamples, real: bs.RealSet | None,
              s: MetricSettings) -> tuple[float, float]:
    """The metric's own interval when it has one (fid_inf: half-samples), Wilson's for a proportion (of the finite
    samples, or of all), else the basic bootstrap interval of the replicates, clamped to the metric's bounds;
    NaN without replicates."""
    if metric.interval is not None:
        return metric.interval(value, per, real, s)
    if metric.proportion:
        n = per.finite.shape[0] if metric.share_of_all else int(per.finite.sum())  # judges see the finite samples
        return bs.wilson_interval(value * n, n, s.interval_level) if math.isfinite(value) else (math.nan, math.nan)
    if reps is None or not math.isfinite(value):
        return math.nan, math.nan
    lo, hi = bs.basic_interval(value, reps, s.interval_level)
    low, high = metric.bounds  # reflected replicates can cross a bound
    return min(max(lo, low), high), min(max(hi, low), high)
