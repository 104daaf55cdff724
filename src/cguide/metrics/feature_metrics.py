"""FID / IS / KID / precision-recall on feature tensors: thin wrappers over torch-fidelity's routines.

These are the exact functions ``torch_fidelity.calculate_metrics`` runs once features are extracted;
the wrappers only add small-N guards (NaN instead of a crash) and clamp sizes to what N allows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

NAN = float("nan")


def feature_stats(features: torch.Tensor) -> dict[str, np.ndarray] | None:
    """FID statistics {'mu', 'sigma'} in float64; None when fewer than 2 rows (no covariance)."""
    if features.shape[0] < 2:
        return None
    return fid_features_to_statistics(features.detach().cpu().double())


def frechet_distance(stats1: dict | None, stats2: dict | None) -> float:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) via torch-fidelity (eigenvalues of S1 S2); NaN if a side is None."""
    if stats1 is None or stats2 is None:
        return NAN
    return float(fid_statistics_to_metric(stats1, stats2, verbose=False)[KEY_METRIC_FID])


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """(mean, std) of exp E[KL(p(y|x) || p(y))] over `splits` shuffled chunks (splits capped at N)."""
    n = logits.shape[0]
    if n == 0:
        return NAN, NAN
    out = isc_features_to_metric(logits.detach().cpu(), splits=min(splits, n), shuffle=True, rng_seed=seed)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def kernel_inception_distance(f_gen: torch.Tensor, f_real: torch.Tensor, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 2020) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 (cubic polynomial kernel) over random subsets.

    The subset size is capped at min(N_gen, N_real): the estimator is unbiased at any size >= 2, so
    small runs still get a KID; at the cap every subset holds all generated samples and the std only
    reflects the real-side resampling.
    """
    size = min(subset_size, f_gen.shape[0], f_real.shape[0])
    if size < 2:
        return NAN, NAN
    out = kid_features_to_metric(f_gen.detach().cpu(), f_real.detach().cpu(), kid_subsets=subsets,
                                 kid_subset_size=size, rng_seed=seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def precision_recall(f_gen: torch.Tensor, f_real: torch.Tensor, neighborhood: int = 3,
                     batch_size: int = 1000) -> tuple[float, float]:
    """Kynkaanniemi et al. precision (gen inside real manifold) and recall (real inside gen manifold).

    Manifold radii are distances to the k-th neighbour, k = `neighborhood` capped at N-1 per side.
    """
    k = min(neighborhood, f_gen.shape[0] - 1, f_real.shape[0] - 1)
    if k < 1:
        return NAN, NAN
    # save_cpu_ram: torch-fidelity's batched variant, never an M x M distance matrix for a large real split.
    out = prc_features_to_metric(f_gen.detach().cpu().float(), f_real.detach().cpu().float(),
                                 prc_neighborhood=k, prc_batch_size=batch_size, save_cpu_ram=True, verbose=False)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]
