"""MetricSettings: every knob of compute_metrics, checked once when built, so bad settings fail before any
sampling or feature extraction. Messages name the config key (metrics.<key>) the user would fix."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from .bootstrap import check_interval_settings
from .matched import check_targets
from .extractors import EXTRACTOR_NAMES, check_inception_weights
from .registry import METRICS, listed_names

# what a run measures unless metrics.names says otherwise (conf/metrics/default.yaml lists the same); which names
# exist, and what each needs, is the registry's (registry.py)
METRIC_NAMES = ("fid", "fid_inf", "kid", "is", "prc", "accuracy", "guide_confidence", "classwise_fid", "nonfinite")
_POSITIVE = ("batch_size", "kid_subset_size", "isc_splits", "prc_neighborhood")
_NOT_METRIC_KNOBS = ("n_real", "reference_npz")  # config keys that belong to the real split, not the suite
NO_JUDGE = ("metrics accuracy and the judge extractor need a judge classifier: set judge_ckpt=<path> (train one "
            "with cguide.train task=judge), or drop accuracy from metrics.names and use metrics.extractor=inception")
NO_JUDGE2 = ("metrics.second_judge=true needs a second judge: set judge2_ckpt=<path> (train one with cguide.train "
             "task=judge2), or metrics.second_judge=null to measure it only when one is given")


@dataclass(frozen=True)
class MetricSettings:
    """What compute_metrics measures and how.

    names are taken as given: callers that always want the non-finite share add 'nonfinite' themselves.
    extractor: 'judge' (offline default) or 'inception' (local weights: `inception_weights` or hub cache).
    real_stats_cache: dir for cached real features/statistics (None: no disk cache). The key is
      (real_id, extractor id, layer, M); real_id defaults to a hash of the real images + labels and
      a judge's id is a hash of its weights.
    KID uses subsets of min(kid_subset_size, N, M) (default 1000 as torch-fidelity); PRC uses
      k = prc_neighborhood (3, the paper's value) capped at N-1, and with prc_match_sizes a seeded
      random subset of N real images, since precision/recall are biased when N != M; IS uses
      min(isc_splits, N) splits. FID and KID use all M real images.
    """
    names: tuple[str, ...] = METRIC_NAMES
    extractor: str = "judge"  # judge | inception
    inception_weights: str | None = None  # None: torch hub cache
    real_stats_cache: str | None = None  # None: no disk cache
    batch_size: int = 256
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    prc_neighborhood: int = 3
    prc_match_sizes: bool = True
    isc_splits: int = 10
    seed: int = 2020
    interval_resamples: int = 200  # bootstrap replicates per point (intervals.py)
    interval_level: float = 0.95
    interval_resample_reals: bool = False  # redraw the real rows too (within their labels)
    match_accuracy: tuple[float, ...] = (0.9, 0.95, 0.975)  # judge accuracies for the matched tables (grid/evidence)
    # the second judge's accuracy_judge2 / judge_agreement: None = whenever one is given, True = required, False = off
    second_judge: bool | None = None

    def __post_init__(self):
        if isinstance(self.names, str):  # tuple("fid") would report 'f', 'i', 'd' as unknown
            raise ValueError(f"metrics.names must be a list of metric names, got {self.names!r}; e.g. [{self.names}]")
        object.__setattr__(self, "names", tuple(self.names))  # lists / ListConfig: keep it hashable and frozen
        known = listed_names()
        unknown = [m for m in self.names if m not in known]
        if unknown:  # the registered names, the default ones first
            known = dict.fromkeys([*(m for m in METRIC_NAMES if m in known), *known])
            raise ValueError(f"unknown metric(s) {unknown} in metrics.names; known: {', '.join(known)}")
        if self.extractor not in EXTRACTOR_NAMES:
            raise ValueError(f"unknown feature extractor {self.extractor!r} (metrics.extractor); known: "
                             f"{', '.join(EXTRACTOR_NAMES)}")
        if self.extractor == "inception" and self.feature_metrics_wanted:
            check_inception_weights(self.inception_weights)  # missing (where to put it) or unsafe: one line
        check_interval_settings(self.interval_resamples, self.interval_level)
        object.__setattr__(self, "match_accuracy", tuple(check_targets(self.match_accuracy)))
        if self.second_judge not in (None, True, False):
            raise ValueError(f"metrics.second_judge must be true, false or null (measured when judge2_ckpt is given), "
                             f"got {self.second_judge!r}")
        for key in _POSITIVE:
            value = getattr(self, key)
            if value < 1:
                raise ValueError(f"metrics.{key} must be >= 1, got {value}; set metrics.{key} to a positive integer")

    @property
    def needs_judge(self) -> bool:
        """Whether these metrics need the judge: accuracy, or features from the judge extractor."""
        return any(METRICS[m].judge for m in self.names) or (self.extractor == "judge" and self.feature_metrics_wanted)

    @property
    def feature_metrics_wanted(self) -> bool:
        """Whether any requested metric needs the feature extractor (and, for Inception, its weights)."""
        return any(METRICS[m].features for m in self.names)

    @classmethod
    def from_config(cls, node: Mapping[str, Any], names=None) -> "MetricSettings":
        """From a metrics config node (DictConfig or dict); missing keys keep the defaults, `names` overrides
        node.names. Unknown keys are refused rather than silently ignored (a typo would change nothing)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        keys = list(node.keys())
        extra = [k for k in keys if k not in fields and k not in _NOT_METRIC_KNOBS]
        if extra:
            raise ValueError(f"unknown key(s) {extra} in metrics; known: {', '.join(sorted(fields))}, "
                             f"{', '.join(_NOT_METRIC_KNOBS)}")
        if "n_real" in keys:
            check_n_real(node["n_real"])
        kw = {k: node[k] for k in keys if k in fields}  # node[k]: resolves DictConfig interpolations
        if names is not None:
            kw["names"] = names
        return cls(**kw)


def check_n_real(n_real: int | None) -> None:
    """metrics.n_real caps the real split; FID/KID/PRC need a covariance, so at least 2 images (null: all)."""
    if n_real is not None and n_real < 2:
        raise ValueError(f"metrics.n_real={n_real} is too few real images: FID, KID and precision/recall need at "
                         "least 2; set metrics.n_real >= 2, or null for the whole test split")
