"""Frechet distance for many weighted versions of one feature set at once (bootstrap replicates, subsets),
and FID_inf (Chong & Forsyth 2020: FID at several sample sizes, extrapolated linearly in 1/n to n -> inf).

    FD = ||mu_g - mu_r||^2 + tr S_g + tr S_r - 2 tr (S_g S_r)^(1/2)

tr (S_g S_r)^(1/2) = tr (R S_g R)^(1/2) with R = S_r^(1/2) (similar matrices), and R S_g R = Y^T Y for
Y = rows sqrt(w_i) (x_i - mu) R / sqrt(n - 1): its square-root trace is the sum of Y's singular values,
found from the smaller of Y^T Y [d, d] and Y Y^T [n, n] (a class of 25 rows in 128-d costs 25 x 25).
Everything is float64; the value equals torch-fidelity's FID of the same rows (tests/test_evidence_stats.py).
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    """Batched eigensolvers on one thread: with two OpenMP threads on a busy 2-core machine, 200 eigvalsh of
    128 x 128 took 51 s instead of 1.1 s (spinning threads); the batch is the parallelism that counts here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix (negative rounding-level eigenvalues clipped to 0)."""
    with one_thread():
        e, v = torch.linalg.eigh(s)
    return (v * e.clamp_min(0).sqrt().unsqueeze(-2)) @ v.transpose(-1, -2)


def real_moments(f: torch.Tensor, w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu [..., d], S^(1/2) [..., d, d], tr S [...]) of rows f [M, d] weighted by counts w ([M] or [B, M])."""
    f = f.double()
    w = torch.ones(f.shape[0], dtype=f.dtype) if w is None else w.double()
    n = w.sum(-1, keepdim=True)
    mu = (w @ f) / n
    s = (f.T * w[..., None, :]) @ f - n[..., None] * mu[..., :, None] * mu[..., None, :]
    s = s / (n[..., None] - 1)
    return mu, psd_sqrt(s), s.diagonal(dim1=-2, dim2=-1).sum(-1)


CHUNK_ELEMENTS = 1 << 24  # float64 elements of one [b, d, N] block (128 MiB): n = 2,000 at d = 2,048 stays bounded


def frechet_weighted(f: torch.Tensor, w: torch.Tensor, mu_r: torch.Tensor, sqrt_r: torch.Tensor,
                     tr_r: torch.Tensor) -> torch.Tensor:
    """FD of rows f [N, d] weighted by counts w [B, N] (a resample, a subset: 0 leaves a row out) against
    real moments (one set, or one per replicate with a leading B). Returns [B]; NaN where fewer than 2 rows."""
    step = max(1, CHUNK_ELEMENTS // max(1, f.shape[0] * f.shape[1]))
    if w.shape[0] > step:  # replicates in blocks: memory bounded whatever B, N and d
        per_rep = mu_r.dim() > 1
        return torch.cat([_frechet_block(f, w[i:i + step], *(x[i:i + step] if per_rep else x
                                                              for x in (mu_r, sqrt_r, tr_r)))
                          for i in range(0, w.shape[0], step)])
    return _frechet_block(f, w, mu_r, sqrt_r, tr_r)


def _frechet_block(f, w, mu_r, sqrt_r, tr_r) -> torch.Tensor:
    f, w = f.double(), w.double()
    n = w.sum(-1)  # [B]
    mu = (w @ f) / n[:, None]
    denom = (n - 1).clamp_min(1)
    if f.shape[1] <= f.shape[0]:  # d x d: weighted covariance from raw moments (float64), then R S R
        s = (f.T[None] * w[:, None, :]) @ f - n[:, None, None] * mu[:, :, None] * mu[:, None, :]
        s = s / denom[:, None, None]
        gram, tr_g = sqrt_r @ s @ sqrt_r, s.diagonal(dim1=-2, dim2=-1).sum(-1)
    else:  # n x n: the centred rows' Gram matrix
        xc = f[None] - mu[:, None, :]  # [B, N, d]
        y = (w.sqrt()[..., None] * xc) @ sqrt_r / denom.sqrt()[:, None, None]
        gram, tr_g = y @ y.transpose(1, 2), (w * (xc ** 2).sum(-1)).sum(-1) / denom
    with one_thread():
        tr_sqrt = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum(-1)
    out = ((mu - mu_r) ** 2).sum(-1) + tr_g + tr_r - 2 * tr_sqrt
    return torch.where(n >= 2, out, torch.full_like(out, float("nan")))


def frechet(f_gen: torch.Tensor, f_real: torch.Tensor) -> float:
    """Plain FD of two row sets (the point estimate)."""
    mu, sq, tr = real_moments(f_real)
    return frechet_weighted(f_gen, torch.ones(1, f_gen.shape[0]), mu, sq, tr).item()


def fid_inf_sizes(n: int, k: int = 4, low: float = 0.5) -> list[int]:
    """k subset sizes from low * n to n, evenly spaced in 1/size (the regression variable)."""
    inv = torch.linspace(1.0 / max(2, round(low * n)), 1.0 / n, k)
    return sorted({max(2, round(1.0 / v)) for v in inv.tolist()})


def extrapolate_inf(sizes: list[int], fids: torch.Tensor) -> torch.Tensor:
    """Least-squares line FID = a + b / size through fids [..., K]; returns a (the 1/size -> 0 intercept)."""
    x = 1.0 / torch.tensor(sizes, dtype=torch.float64)
    xm, ym = x.mean(), fids.mean(-1, keepdim=True)
    b = ((x - xm) * (fids - ym)).sum(-1) / ((x - xm) ** 2).sum()
    return ym.squeeze(-1) - b * xm
