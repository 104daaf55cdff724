"""Sample-quality metrics: torch-fidelity FID/KID/IS/PRC on judge or Inception features, plus
judge accuracy, guide confidence, class-wise FID and the non-finite share (see suite.py). Each metric is one entry
of the registry (registry.py); the built-in ones are registered by importing definitions.py, first of all."""

from . import definitions  # noqa: F401  (registers the built-in metrics before any name is checked)
from .extractors import (EXTRACTOR_NAMES, INCEPTION_CONFIG_KEY, INCEPTION_WEIGHTS_FILE, JUDGE_EXTRACTOR,
                         JudgeFeatureExtractor, build_extractor, inception_weights_path, to_uint8_rgb)
from .feature_metrics import (feature_stats, frechet_distance, inception_score, kernel_inception_distance,
                              precision_recall)
from .real_stats import RealStats, load_or_compute
from .settings import METRIC_NAMES, MetricSettings
from .definitions import classwise_fid
from .registry import METRICS, Metric, register_metric
from .suite import compute_metrics

__all__ = [
    "EXTRACTOR_NAMES", "INCEPTION_CONFIG_KEY", "INCEPTION_WEIGHTS_FILE", "JUDGE_EXTRACTOR", "METRIC_NAMES",
    "JudgeFeatureExtractor", "METRICS", "Metric", "MetricSettings", "RealStats", "build_extractor", "classwise_fid",
    "compute_metrics", "feature_stats", "frechet_distance", "inception_score", "inception_weights_path",
    "kernel_inception_distance", "load_or_compute", "precision_recall", "register_metric", "to_uint8_rgb",
]
