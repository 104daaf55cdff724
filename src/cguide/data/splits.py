"""Seeded, stratified train/val/test index split."""

from __future__ import annotations

import torch


def stratified_split(
    labels: torch.Tensor, val_fraction: float, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split indices per class: round(n_c * fraction) go to val and test, the rest to train.

    Deterministic for a given (labels, seed). Each returned index tensor is in a seeded random
    order (not grouped by class), so any prefix of it is roughly class-balanced.
    """
    labels = torch.as_tensor(labels)
    g = torch.Generator().manual_seed(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in torch.unique(labels).tolist():  # sorted classes: order fixed for the generator
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val, n_test = round(len(idx) * val_fraction), round(len(idx) * test_fraction)
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val : n_val + n_test])
        parts[0].append(idx[n_val + n_test :])
    out = []
    for p in parts:
        cat = torch.cat(p) if p else torch.empty(0, dtype=torch.long)
        out.append(cat[torch.randperm(len(cat), generator=g)])
    return out[0], out[1], out[2]
