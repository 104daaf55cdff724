"""Sample-quality metrics: torch-fidelity FID/KID/IS/PRC on judge or Inception features, plus
judge accuracy, guide confidence, class-wise FID and the non-finite share (see suite.py)."""

from .extractors import (EXTRACTOR_NAMES, INCEPTION_CONFIG_KEY, INCEPTION_WEIGHTS_FILE, JUDGE_EXTRACTOR,
                         JudgeFeatureExtractor, build_extractor, inception_weights_path, to_uint8_rgb)
from .feature_metrics import (feature_stats, frechet_distance, inception_score, kernel_inception_distance,
                              precision_recall)
from .real_stats import RealStats, load_or_compute
from .settings import METRIC_NAMES, MetricSettings
from .suite import classwise_fid, compute_metrics

__all__ = [
    "EXTRACTOR_NAMES", "INCEPTION_CONFIG_KEY", "INCEPTION_WEIGHTS_FILE", "JUDGE_EXTRACTOR", "METRIC_NAMES",
    "JudgeFeatureExtractor", "MetricSettings", "RealStats", "build_extractor", "classwise_fid", "compute_metrics",
    "feature_stats", "frechet_distance", "inception_score", "inception_weights_path",
    "kernel_inception_distance", "load_or_compute", "precision_recall", "to_uint8_rgb",
]
