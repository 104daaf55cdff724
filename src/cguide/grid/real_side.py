"""The real side of a sweep's metrics: the held-out split of ``data``, or a guided-diffusion reference batch
(metrics.reference_npz), read and checked before the results folder is claimed."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from omegaconf import OmegaConf

from ..data import build_datamodule
from ..io.checkpoints import Loaded
from ..io.npz_batches import read_reference_batch
from ..metrics import MetricSettings
from ..metrics.real_stats import content_id
from .checks import check_real, check_same_images


@dataclass
class RealSide:
    images: torch.Tensor  # [M, C, H, W]: float in [-1, 1] (a data split) or uint8 (a reference batch)
    labels: torch.Tensor | None
    metric_kwargs: dict = field(default_factory=dict)  # extra compute_metrics arguments (real_id, real_fid_stats)
    identity: dict | None = None  # a reference batch's content hashes, for the sweep's manifest


def reference_side(path: str, n_real: int | None, settings: MetricSettings, eps: Loaded) -> RealSide:
    """A reference batch as the real side: its images (the first n_real), labels, and - with the Inception
    extractor - its whole-dataset FID statistics, which guided-diffusion's evaluator takes for FID when the
    batch holds them (Inception pool_3 statistics: meaningless for the judge's features)."""
    ref = read_reference_batch(path)
    size = tuple(ref.images.shape[2:])
    if size != tuple(eps.image_shape[1:]):
        raise ValueError(f"reference batch {path} holds {size[0]}x{size[1]} images, the eps-model {eps.path} makes "
                         f"{eps.image_shape[1]}x{eps.image_shape[2]}; use the reference batch of that resolution "
                         f"(e.g. VIRTUAL_imagenet{eps.image_shape[1]}_labeled.npz), or fix metrics.reference_npz")
    if "classwise_fid" in settings.names and ref.labels is None:
        raise ValueError(f"metrics classwise_fid needs the reference batch's labels (arr_1), and {path} has none; "
                         "drop classwise_fid from metrics.names, or use a labelled batch")
    images, labels = ref.images, ref.labels
    if n_real is not None:
        images, labels = images[:n_real], None if labels is None else labels[:n_real]
    # the whole dataset's statistics stand for all its images: not for a subset of them (n_real)
    stats = ref.fid_stats if settings.extractor == "inception" and n_real is None else None
    real_id = f"reference-{content_id(images, labels)}"  # hashed once here, not per point
    fid_id = None if stats is None else content_id(torch.from_numpy(stats["mu"]), torch.from_numpy(stats["sigma"]))
    return RealSide(images, labels, {"real_id": real_id, "real_fid_stats": stats},
                    {"images": real_id, "fid_stats": fid_id})


def real_side(cfg, settings: MetricSettings, eps: Loaded) -> RealSide:
    """metrics.reference_npz when set, else data's test split (checked against the eps-model's images)."""
    path = cfg.metrics.get("reference_npz")
    if path:
        side = reference_side(path, cfg.metrics.n_real, settings, eps)
        check_real(settings, len(side.images), f"reference batch {path}")
        return side
    dm = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    check_same_images(eps, f"data '{cfg.data.name}'", dm.image_shape, dm.num_classes)
    real, real_y = dm.test_images(cfg.metrics.n_real)
    check_real(settings, len(real), cfg.data.name)
    return RealSide(real, real_y)
