"""A point's metrics as result-row fields: each named for its feature space, each with [lo, hi].

Row names: the feature metrics carry their feature space (`fid_judge`, `fid_inception`, `kid_judge`,
`is_judge`, `precision_judge`, `recall_judge`, `classwise_fid_judge`, `fid_inf_judge`): numbers of two spaces
are not comparable. accuracy (the judge's), accuracy_judge2 (the second judge's), judge_agreement (the share of
finite samples on which both judges' argmax agree), guide_confidence and nonfinite are not feature metrics.
Every value has `<name>_lo` / `<name>_hi`: Wilson for the proportions (accuracy, accuracy_judge2,
judge_agreement, nonfinite), else the basic bootstrap interval of bootstrap.py. `kid_<space>` is the unbiased
MMD^2 of all rows (the statistic its interval is for), not torch-fidelity's mean over subsets.
"""

from __future__ import annotations

import math

import torch

from . import bootstrap as bs
from .settings import MetricSettings

# suite key -> row base name (suite keys not listed are not in rows: kid_std, is_std are superseded by intervals)
SUITE_TO_ROW = {"fid": "fid", "fid_inf": "fid_inf", "kid_mean": "kid", "is_mean": "is", "precision": "precision",
                "recall": "recall", "classwise_fid": "classwise_fid", "accuracy": "accuracy",
                "guide_confidence": "guide_confidence", "nonfinite": "nonfinite",
                "accuracy_judge2": "accuracy_judge2", "judge_agreement": "judge_agreement"}
FEATURE_ROWS = ("fid", "fid_inf", "kid", "is", "precision", "recall", "classwise_fid")
PROPORTIONS = ("accuracy", "nonfinite", "accuracy_judge2", "judge_agreement")
# rows written before the names carried their space: old key -> base name
LEGACY = {"fid": "fid", "kid_mean": "kid", "is_mean": "is", "precision": "precision", "recall": "recall",
          "classwise_fid": "classwise_fid"}
# FID_inf's half-sample interval takes 800 Frechet distances: about 2 s in the judge's 128-d features, minutes
# in Inception's 2048-d ones, which get none
FID_INF_MAX_DIM = 512
BOUNDS = {"fid": (0.0, math.inf), "classwise_fid": (0.0, math.inf), "is": (1.0, math.inf), "precision": (0.0, 1.0),
          "recall": (0.0, 1.0), "guide_confidence": (0.0, 1.0)}
LOWER_IS_BETTER = {"fid", "fid_inf", "kid", "classwise_fid", "nonfinite"}


def row_name(base: str, space: str) -> str:
    """'fid', 'judge' -> 'fid_judge'; names that are no feature metric stay as they are."""
    return f"{base}_{space}" if base in FEATURE_ROWS else base


def base_name(key: str) -> str:
    """'fid_judge' -> 'fid' (and 'fid_inf_inception' -> 'fid_inf'); other keys as they are."""
    for base in sorted(FEATURE_ROWS, key=len, reverse=True):
        for space in ("judge", "inception"):
            if key == f"{base}_{space}":
                return base
    return key


def find_key(rows: list[dict], base: str) -> str | None:
    """The row key that holds metric `base` in these rows (any feature space), or None."""
    names = [base] if base not in FEATURE_ROWS else [f"{base}_judge", f"{base}_inception"]
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


def row_metrics(values: dict[str, float], keep: dict, settings: MetricSettings
                ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """(row fields: value, _lo, _hi per metric under its row name; {row name: [B] replicates} for the
    paired comparisons and matched-accuracy tables, which reuse them instead of redrawing)."""
    space, s = space_of(settings), settings
    per: bs.PointSamples = keep["samples"]
    real: bs.RealSet | None = keep.get("real")
    wanted = set(s.names)
    full: dict = {}
    reps = bs.replicates(per, real, wanted, resamples=s.interval_resamples, seed=s.seed,
                         resample_reals=s.interval_resample_reals, isc_splits=s.isc_splits,
                         prc_neighborhood=s.prc_neighborhood, prc_real_rows=keep.get("prc_real_rows"), points=full)
    points = {SUITE_TO_ROW[k]: v for k, v in values.items() if k in SUITE_TO_ROW}
    points.update(full)  # kid: the all-rows U-statistic, the quantity its replicates scatter around
    n_finite = int(per.finite.sum())
    out: dict[str, float] = {}
    named: dict[str, torch.Tensor] = {}
    for base, value in points.items():
        name = row_name(base, space)
        out[name] = value
        if base in PROPORTIONS:
            n = per.finite.shape[0] if base == "nonfinite" else n_finite  # the judges see the finite samples
            lo, hi = bs.wilson_interval(value * n, n, s.interval_level) if math.isfinite(value) else (math.nan,) * 2
        elif base == "fid_inf" and real is not None and per.features is not None and math.isfinite(value) \
                and per.features.shape[1] <= FID_INF_MAX_DIM:
            # half-samples, not bootstrap replicates (bootstrap.py says why): no paired comparisons for it
            lo, hi = bs.fid_inf_half_interval(per.features, per.finite, per.targets, real, value,
                                              level=s.interval_level, halves=min(50, s.interval_resamples),
                                              seed=s.seed)
        elif base in reps and math.isfinite(value):
            lo, hi = bs.basic_interval(value, reps[base], s.interval_level)
            low, high = BOUNDS.get(base, (-math.inf, math.inf))  # reflected replicates can cross a bound
            lo, hi = min(max(lo, low), high), min(max(hi, low), high)
        else:
            lo, hi = math.nan, math.nan
        out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
        if base in reps:
            named[name] = reps[base].float()
    return out, named
