"""Real-split features + FID statistics, computed once per (dataset, extractor, layer, N) and cached on disk.

One .pt file per key under the cache dir, written atomically (temp file in the same dir + os.replace)
so parallel jobs never read a half-written file. Contents are plain tensors (loads with weights_only).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from ..io.atomic import atomic_torch_save
from .feature_metrics import feature_stats

CACHE_FORMAT = 1


@dataclass
class RealStats:
    features: torch.Tensor          # [M, D] extractor features of the real split
    stats: dict | None              # torch-fidelity FID statistics {'mu', 'sigma'} (float64 numpy)
    labels: torch.Tensor | None     # [M] class labels, for class-wise FID


def content_id(images: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    """Hash of the real split itself: the default dataset id, so a changed split never hits a stale cache."""
    h = hashlib.sha1()
    for t in (images, labels):
        if t is not None:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def cache_path(cache_dir: str, dataset_id: str, extractor_id: str, layer: str, n: int) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset_id}__{extractor_id}__{layer}__n{n}")
    return os.path.join(cache_dir, f"real-stats__{name}.pt")


def _pack(rs: RealStats) -> dict:
    stats = None if rs.stats is None else {k: torch.from_numpy(v) for k, v in rs.stats.items()}
    return {"format": CACHE_FORMAT, "features": rs.features, "stats": stats, "labels": rs.labels}


def _unpack(d: dict) -> RealStats:
    stats = None if d["stats"] is None else {k: v.numpy() for k, v in d["stats"].items()}
    return RealStats(d["features"], stats, d["labels"])


def _read_cache(path: str) -> RealStats | None:
    """The cached stats, or None when absent; a damaged file (killed disk, edited by hand) is recomputed."""
    if not os.path.exists(path):
        return None
    try:
        return _unpack(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # cache only: never worth failing a sweep over
        warnings.warn(f"real-stats cache {path} is unreadable ({type(e).__name__}); recomputing it")
        return None


def load_or_compute(extract: Callable[[], torch.Tensor], labels: torch.Tensor | None, *, n: int,
                    cache_dir: str | None, dataset_id: str, extractor_id: str, layer: str) -> RealStats:
    """Cached RealStats; `extract()` (-> [n, D] features) only runs on a miss or without a cache dir."""
    labels = None if labels is None else labels.detach().cpu().long()
    path = None
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)
        path = cache_path(cache_dir, dataset_id, extractor_id, layer, n)
        rs = _read_cache(path)
        if rs is not None:
            # Same id but other labels means a reused dataset id: recompute rather than trust it.
            same_labels = labels is None or (rs.labels is not None and torch.equal(rs.labels, labels))
            if rs.features.shape[0] == n and same_labels:
                return rs
            warnings.warn(f"real-stats cache {path} does not match the given real split; recomputing")
    features = extract().detach().cpu()
    rs = RealStats(features, feature_stats(features), labels)
    if path is not None:
        atomic_torch_save(_pack(rs), path)
    return rs
