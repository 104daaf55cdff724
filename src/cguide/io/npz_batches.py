"""Image batches in guided-diffusion's evaluation format (its evaluations/evaluator.py reads them):
an .npz whose arr_0 holds uint8 images [N, H, W, 3] (NHWC, 0..255) and, in labelled batches and in
its sample scripts' output, arr_1 the class labels [N]. Its reference batches also hold the FID
statistics of the whole dataset (mu, sigma: Inception pool_3, 2048-d), which its FID uses."""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write

EVALUATIONS_URL = "https://github.com/openai/guided-diffusion/tree/main/evaluations"


@dataclass
class ReferenceBatch:
    images: torch.Tensor  # uint8 [N, C, H, W] (a view of arr_0; C = 3 in guided-diffusion's batches)
    labels: torch.Tensor | None  # int64 [N] from arr_1, when the batch has labels
    fid_stats: dict | None  # {'mu': [D], 'sigma': [D, D]} float64, when the batch holds them


def _bad(path, what: str, key: str) -> ValueError:
    return ValueError(f"reference batch {path}: {what}; expected guided-diffusion's format (arr_0 = uint8 images "
                      f"[N, H, W, 3]); fix {key}")


def read_reference_batch(path: str | os.PathLike, key: str = "metrics.reference_npz") -> ReferenceBatch:
    """The batch at ``path``, checked: one clear line for a missing, unreadable or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference batch not found: {path}; download it from guided-diffusion's "
                                f"evaluations README ({EVALUATIONS_URL}), or fix {key}")
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)  # truncated, not numpy, pickles
    try:
        z = np.load(path, allow_pickle=False)
    except unreadable as e:
        raise _bad(path, f"not a readable .npz ({type(e).__name__})", key) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise _bad(path, f"a single array {z.dtype} {list(z.shape)} (.npy), not an .npz", key)
    try:
        with z:
            arrays = {k: z[k] for k in z.files if k in ("arr_0", "arr_1", "mu", "sigma")}
            names = list(z.files)
    except unreadable as e:
        raise _bad(path, f"not a readable .npz ({type(e).__name__})", key) from None
    if "arr_0" not in arrays:
        raise _bad(path, f"no arr_0 in it (it holds {', '.join(names) or 'nothing'})", key)
    x = arrays["arr_0"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) == 0:
        raise _bad(path, f"arr_0 is {x.dtype} {list(x.shape)}", key)
    labels = arrays.get("arr_1")
    if labels is not None and (labels.shape != (len(x),) or not np.issubdtype(labels.dtype, np.integer)):
        raise _bad(path, f"arr_1 (labels) is {labels.dtype} {list(labels.shape)}, not {len(x)} integer labels", key)
    stats = None
    if "mu" in arrays and "sigma" in arrays:
        mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise _bad(path, f"mu {list(mu.shape)} and sigma {list(sigma.shape)} are not FID statistics", key)
        stats = {"mu": mu, "sigma": sigma}
    images = torch.from_numpy(x).permute(0, 3, 1, 2)
    return ReferenceBatch(images, None if labels is None else torch.from_numpy(labels.astype(np.int64)), stats)


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float [N, C, H, W] -> uint8 [N, H, W, 3] as guided-diffusion's sample scripts quantise:
    ((x + 1) * 127.5).clamp(0, 255) cast to uint8 (truncation; this project's metrics round). Grey -> RGB."""
    u8 = ((x.detach().float().cpu() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    if u8.shape[1] == 1:
        u8 = u8.expand(-1, 3, -1, -1)
    return u8.permute(0, 2, 3, 1).contiguous().numpy()


def write_sample_batch(path: str | os.PathLike, x: torch.Tensor, labels: torch.Tensor) -> Path:
    """Samples [N, C, H, W] in [-1, 1] and their target labels as guided-diffusion's sample batch
    (arr_0 uint8 NHWC, arr_1 int64), written atomically: its evaluator.py scores the file as it is."""
    images, y = to_uint8_nhwc(x), labels.detach().cpu().long().numpy()

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a temp path
            np.savez(f, images, y)
    return atomic_write(path, write)
