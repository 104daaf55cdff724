"""Intervals for every metric of a point: a bootstrap over the generated rows, with features computed once.

Each replicate redraws the rows with replacement within each target class (the targets are fixed by design,
so a replicate keeps their balance) and recomputes every metric from the stored per-sample values. The draw
depends only on (seed, targets), so every point of a sweep gets the same replicates: two points' replicate b
hold the same seeds, and their difference is a paired bootstrap (paired_difference). Optionally the real rows
are redrawn too (within their labels).

The interval reported is the basic one (2 t - q_hi, 2 t - q_lo): FID's replicates carry the resampling's own
upward bias, and reflecting them about t corrects FID's small-n bias to first order. With 250 samples in 128-d
(this codebase's case) plain FID sat 17.6 above a true distance of 2.1, and the basic interval covered the truth
where the percentile interval did not (tests/test_evidence_stats.py). FID_inf's interval is not a bootstrap one:
the 1/n fit of a replicate drawn with replacement is distorted by its duplicates (its reflected interval excluded
the point itself in that test), so `fid_inf_sizes` is 0 unless asked for. It comes from half-samples instead
(fid_inf_half_interval): FID_inf of random halves drawn without replacement (half of each class), whose spread
is, for a mean-like statistic, that of the whole sample's value (s^2 (1/(n/2) - 1/n) = s^2 / n). It is an
interval for what FID_inf estimates: at d = 8, n = 2,000 that is the true distance (covered in 93 of 100
repeats); at d = 128, n = 250 FID_inf itself undershot a true distance of 18.0 by about 6 (the 1/n line does
not hold when n is near d) and its interval there was about 1.5x its spread over repeats (conservative).

Per metric (replicate values; each metric's replicate function is in definitions.py, reading one `Draws`):
  fid, classwise_fid: Frechet distances of the weighted rows (frechet.py);
  kid: the unbiased MMD^2 (cubic kernel), pairs of distinct rows weighted by their counts;
  is: exp E[KL(p(y|x) || p(y))] over `isc_splits` chunks of the replicate, as the point estimate;
  precision: share of replicate rows inside the real manifold (k-NN radii of the reals);
  recall: share of real rows inside the generated manifold, the real rows redrawn (its sampling unit);
  accuracy, accuracy_judge2, judge_agreement, guide_confidence, nonfinite: weighted means; the reported intervals
  of the proportions among them are Wilson's (closed form).
"""

from __future__ import annotations

import hashlib
import math
from statistics import NormalDist
from dataclasses import dataclass, field

import torch

from . import frechet as fr


@dataclass
class PointSamples:
    """Per-sample values of one point (row i of every point of a sweep holds the same seed and target)."""

    targets: torch.Tensor  # [N] long
    finite: torch.Tensor  # [N] bool: rows left out of every metric but nonfinite
    correct: torch.Tensor | None = None  # [N] bool: judge predicts the target
    correct_judge2: torch.Tensor | None = None  # [N] bool: the second judge predicts the target
    agree: torch.Tensor | None = None  # [N] bool: both judges predict the same class
    guide_conf: torch.Tensor | None = None  # [N] p_phi(y | x_0, t=0)
    features: torch.Tensor | None = None  # [N, D] extractor features (non-finite rows: zeros)
    logits: torch.Tensor | None = None  # [N, K] extractor logits (IS)
    values: dict = field(default_factory=dict)  # other registered metrics' per-sample values, by name (Measure.keep)


@dataclass
class RealSet:
    features: torch.Tensor  # [M, D]
    labels: torch.Tensor | None = None
    fid_stats: dict | None = None  # {'mu', 'sigma'} of a reference batch: FID's real side instead of `features`


def check_interval_settings(resamples: int, level: float) -> None:
    if not isinstance(resamples, int) or isinstance(resamples, bool) or resamples < 10:
        raise ValueError(f"metrics.interval_resamples={resamples!r} is too few bootstrap resamples for an interval; "
                         "set metrics.interval_resamples >= 10 (200 is the default; 1000 for final tables)")
    if not isinstance(level, (int, float)) or isinstance(level, bool) or not 0.0 < float(level) < 1.0:
        shown = f"{level:g}" if isinstance(level, (int, float)) and not isinstance(level, bool) else repr(level)
        raise ValueError(f"metrics.interval_level={shown} must lie in (0, 1), e.g. 0.95 for 95 % intervals")


def resample_order(targets: torch.Tensor, resamples: int, seed: int) -> torch.Tensor:
    """[B, N] row indices: position i of replicate b holds a draw from the rows of target class targets[i]."""
    targets = targets.cpu()
    g = torch.Generator().manual_seed(seed)
    order = torch.empty(resamples, targets.shape[0], dtype=torch.long)
    for c in torch.unique(targets).tolist():
        rows = torch.nonzero(targets == c).flatten()
        order[:, rows] = rows[torch.randint(len(rows), (resamples, len(rows)), generator=g)]
    return order


def resample_id(targets: torch.Tensor, resamples: int, seed: int) -> str:
    """Identity of a set of replicates: points with equal ids can be compared pair by pair."""
    h = hashlib.sha1(f"{resamples}:{seed}:".encode())
    h.update(targets.cpu().long().numpy().tobytes())
    return h.hexdigest()[:12]


def counts(order: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(order.shape[0], n, dtype=torch.float64).scatter_add_(
        1, order, torch.ones(order.shape, dtype=torch.float64))


def weighted_mean(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    n = w.sum(-1)
    out = (w @ v.double()) / n
    return torch.where(n > 0, out, torch.full_like(out, float("nan")))


def poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() @ b.double().T / a.shape[1] + 1.0) ** 3


def _pairs_mean(k: torch.Tensor, w: torch.Tensor, strata: torch.Tensor | None = None) -> torch.Tensor:
    """Mean kernel over pairs of DISTINCT rows, pair (i, j) weighted w_i w_j / E[w_i w_j]: a replicate's duplicates
    never pair with themselves (k(x, x) would bias the U-statistic up), and within a stratum of n_c rows drawn
    n_c times E[w_i w_j] = 1 - 1/n_c against 1 across strata, so same-stratum pairs are scaled back up (without
    it KID's replicates fell well below its value: same-class pairs are the similar ones). w: [N] or [B, N]."""
    if strata is not None:
        same = strata[:, None] == strata[None, :]
        size = torch.bincount(strata)[strata].double()
        k = k * torch.where(same, (size / (size - 1).clamp_min(1))[:, None], torch.ones_like(k))
        norm = torch.where(same, (size / (size - 1).clamp_min(1))[:, None], torch.ones_like(k))
    else:
        norm = torch.ones_like(k)
    num = ((w @ k) * w).sum(-1) - (w * w) @ k.diagonal()
    den = ((w @ norm) * w).sum(-1) - (w * w) @ norm.diagonal()
    return num / den


def kid_mmd2(kgg, kgr, w, real_term, v=None, strata=None) -> torch.Tensor:
    """Unbiased MMD^2 of each replicate (w [B, N] counts drawn within `strata`; v [B, M] real counts or None)."""
    n = w.sum(-1)
    if v is None:
        m, cross = kgr.shape[1], (w @ kgr).sum(-1)
    else:
        m, cross = v.sum(-1), ((w @ kgr) * v).sum(-1)
    return _pairs_mean(kgg, w, strata) + real_term - 2 * cross / (n * m)


def real_kid_term(krr, v=None, strata=None):
    return _pairs_mean(krr, torch.ones(krr.shape[0], dtype=krr.dtype) if v is None else v, strata)


def inception_score_replicates(probs: torch.Tensor, order: torch.Tensor, finite: torch.Tensor,
                               splits: int) -> torch.Tensor:
    """IS per replicate: `splits` chunks of each replicate's positions, as torch-fidelity splits its rows."""
    out = []
    logp = probs.clamp_min(1e-30).log()
    for part in order.split(16):  # [b, N, K] at a time: Inception's 1008 classes at n = 2000 stay small
        p, lp, fin = probs[part], logp[part], finite[part].double()
        scores = []
        for idx in torch.arange(part.shape[1]).tensor_split(splits):
            pc, lc, fc = p[:, idx], lp[:, idx], fin[:, idx]
            pm = (pc * fc[..., None]).sum(1) / fc.sum(1, keepdim=True)
            kl = (pc * (lc - pm.clamp_min(1e-30).log()[:, None])).sum(-1)
            scores.append(((kl * fc).sum(1) / fc.sum(1)).exp())
        out.append(torch.stack(scores, -1).mean(-1))
    return torch.cat(out)


ROWS = 2048  # rows of a distance block: a [2048, 50,000] float64 block is 0.8 GB, never N x N at once


def _knn_radius(f: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (torch-fidelity's manifold radius)."""
    return torch.cat([torch.cdist(part, f).kthvalue(k + 1, dim=1).values  # +1: the row itself at distance 0
                      for part in f.split(ROWS)])


def prc_indicators(f_gen: torch.Tensor, f_real: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(in_real [N]: gen row inside some real ball, hits [M, N] bool: real j inside gen row i's ball)."""
    f_gen, f_real = f_gen.double(), f_real.double()
    k = min(k, f_gen.shape[0] - 1, f_real.shape[0] - 1)
    r_real, r_gen = _knn_radius(f_real, k), _knn_radius(f_gen, k)
    in_real, hits = [], []
    for start in range(0, f_gen.shape[0], ROWS):
        d = torch.cdist(f_real, f_gen[start:start + ROWS])  # [M, rows]
        in_real.append((d <= r_real[:, None]).any(0))
        hits.append(d <= r_gen[None, start:start + ROWS])
    return torch.cat(in_real), torch.cat(hits, 1)


class Draws:
    """One point's bootstrap draw, shared by every metric's replicate function (definitions.py): B replicates of
    the rows drawn within their target classes (`order` [B, N], `w` [B, N] counts of the finite rows), each
    replicate's positions shuffled (`shuffled`: IS splits and FID_inf subsets draw mixed classes, as
    torch-fidelity's shuffled splits do; positions in target order would give class-balanced splits), and, when
    the point has features and a real side, those features (`f`, `f_real`), the real rows' counts (`v`, None
    unless resample_reals) and the real side's moments (`mu_r`, `sq_r`, `tr_r`). `out` holds the replicates
    computed so far; `points` the all-rows values of statistics whose estimator differs from the suite's."""

    def __init__(self, ps: PointSamples, real: RealSet | None, *, resamples: int, seed: int,
                 resample_reals: bool = False, isc_splits: int = 10, prc_neighborhood: int = 3,
                 prc_real_rows: torch.Tensor | None = None, fid_inf_sizes: int = 0, points: dict | None = None):
        self.ps, self.real, self.resamples, self.seed = ps, real, resamples, seed
        self.isc_splits, self.prc_neighborhood, self.prc_real_rows = isc_splits, prc_neighborhood, prc_real_rows
        self.fid_inf_sizes = fid_inf_sizes
        self.points = points if points is not None else {}
        self.out: dict[str, torch.Tensor] = {}
        self.n = n = ps.targets.shape[0]
        self.order = order = resample_order(ps.targets, resamples, seed)
        self.fin = ps.finite.cpu().double()
        self.w = counts(order, n) * self.fin
        g = torch.Generator().manual_seed(seed + 2)
        self.shuffled = torch.gather(order, 1, torch.argsort(torch.rand(order.shape, generator=g), dim=1))
        self.has_features = ps.features is not None and real is not None
        if not self.has_features:
            return
        self.f = ps.features.cpu().double()
        self.f_real = fr_ = real.features.cpu().double()
        self.v = None
        if resample_reals:
            self.v = counts(resample_order(self.real_labels(), resamples, seed + 1), fr_.shape[0])
        if real.fid_stats is not None:
            sigma_r = torch.as_tensor(real.fid_stats["sigma"], dtype=torch.float64)
            self.mu_r = torch.as_tensor(real.fid_stats["mu"], dtype=torch.float64)
            self.sq_r, self.tr_r = fr.psd_sqrt(sigma_r), sigma_r.diagonal().sum()
        else:
            self.mu_r, self.sq_r, self.tr_r = fr.real_moments(fr_, self.v)

    def real_labels(self) -> torch.Tensor:
        """The real rows' labels (all 0 without labels: one stratum)."""
        rl = self.real.labels
        return rl.cpu() if rl is not None else torch.zeros(self.real.features.shape[0], dtype=torch.long)

    def values(self, name: str) -> torch.Tensor | None:
        """A registered metric's per-sample values (Measure.keep_values), or None."""
        return self.ps.values.get(name)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """[B] replicate means of a per-sample value over the finite rows."""
        return weighted_mean(self.w, values.cpu())


def fid_inf_replicates(f, order, finite, mu_r, sq_r, tr_r, sizes: list[int],
                       at_all: torch.Tensor | None = None) -> torch.Tensor:
    """FID_inf of each replicate: FID of its first `size` positions (order [B, N], shuffled), fitted in 1/size.
    at_all: the FIDs at size N (all positions) when already computed."""
    fids = []
    for m in sizes:
        if m == order.shape[1] and at_all is not None:
            fids.append(at_all)
            continue
        w = counts(order[:, :m], f.shape[0]) * finite.double()
        fids.append(fr.frechet_weighted(f, w, mu_r, sq_r, tr_r))
    return fr.extrapolate_inf(sizes, torch.stack(fids, -1))


def fid_inf_point(f: torch.Tensor, finite: torch.Tensor, real: RealSet, *, seed: int, draws: int = 20,
                  sizes: int = 4) -> float:
    """FID_inf of all rows: FID of `draws` random subsets (without replacement) at each size, then the fit."""
    rows = finite.cpu().nonzero().flatten()
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([rows[torch.randperm(len(rows), generator=g)] for _ in range(draws)])
    return fid_inf_replicates(f.double(), order, finite.cpu(), *_real_side(real),
                              fr.fid_inf_sizes(len(rows), sizes)).mean().item()


def fid_inf_half_interval(f: torch.Tensor, finite: torch.Tensor, targets: torch.Tensor, real: RealSet,
                          point: float, *, level: float, halves: int = 50, draws: int = 4, seed: int = 0,
                          sizes: int = 4) -> tuple[float, float]:
    """Normal interval point +- z sd of FID_inf over `halves` class-stratified half-samples without replacement
    (each fitted over `draws` random subset orders, whose own noise is taken out). Given the sample, a half's
    spread is the finite-population one, s^2 (1/(n/2) - 1/n) = s^2 / n: that of the whole sample's value.
    Cost: halves x draws x sizes FDs."""
    rows = finite.cpu().nonzero().flatten()
    y = targets.cpu()[rows]
    g = torch.Generator().manual_seed(seed + 4)
    by_class = [rows[y == c] for c in torch.unique(y)]
    orders = []  # every half has the same size (half of each class): one batched fit for all
    for _ in range(halves):
        half = torch.cat([r[torch.randperm(len(r), generator=g)[: len(r) // 2]] for r in by_class])
        orders += [half[torch.randperm(len(half), generator=g)] for _ in range(draws)]
    m = len(orders[0]) if orders else 0
    if m < 4 or halves < 2:
        return math.nan, math.nan
    fits = fid_inf_replicates(f.double(), torch.stack(orders), finite.cpu(), *_real_side(real),
                              fr.fid_inf_sizes(m, sizes))
    half = NormalDist().inv_cdf(0.5 + level / 2) * math.sqrt(half_sample_variance(fits.view(halves, draws)))
    return point - half, point + half


def half_sample_variance(fits: torch.Tensor) -> float:
    """The spread of half-samples' FID_inf from fits [halves, draws]. The subset orders add their own noise to each
    half's value: its share is removed (one-way random effects). Where that leaves nothing (the orders' noise as
    large as the halves' spread: the estimate is then noise, and truncating it at 0 gave zero-width intervals),
    the spread of the halves' means is kept whole: an upper bound, wider rather than falsely exact."""
    between = fits.mean(1).var().item()
    draws = fits.shape[1]
    var = between - (fits.var(1).mean().item() / draws if draws > 1 else 0.0)
    return var if var > 0 else between


def _real_side(real: RealSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu, sqrt(sigma), tr(sigma)) of the real side: a reference batch's statistics or the real features'."""
    if real.fid_stats is not None:
        sigma = torch.as_tensor(real.fid_stats["sigma"], dtype=torch.float64)
        return torch.as_tensor(real.fid_stats["mu"], dtype=torch.float64), fr.psd_sqrt(sigma), sigma.diagonal().sum()
    return fr.real_moments(real.features)


def percentile_interval(values: torch.Tensor, level: float) -> tuple[float, float]:
    v = values[torch.isfinite(values)].double()
    if v.numel() == 0:
        return math.nan, math.nan
    a = (1.0 - level) / 2
    lo, hi = torch.quantile(v, torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()
    return lo, hi


def basic_interval(point: float, values: torch.Tensor, level: float) -> tuple[float, float]:
    """The basic (reverse percentile) bootstrap interval [2 t - q_hi, 2 t - q_lo]: replicates of a biased
    statistic (FID) sit further from the truth than t does, so the plain percentile interval is shifted by
    about twice the bias; reflecting it about t takes that shift out (Davison & Hinkley 1997, eq. 5.6)."""
    q_lo, q_hi = percentile_interval(values, level)
    return 2 * point - q_hi, 2 * point - q_lo


def wilson_interval(successes: float, n: int, level: float) -> tuple[float, float]:
    """Wilson score interval of a proportion (exact-ish at small n and near 0 or 1, unlike the normal one)."""
    if n <= 0:
        return math.nan, math.nan
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2, dtype=torch.float64)).item()
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Difference:
    a: str
    b: str
    metric: str
    value: float  # point estimate of a - b
    lo: float
    hi: float
    level: float

    @property
    def separated(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def verdict(self, lower_is_better: bool = True) -> str:
        pct = f"{100 * self.level:g} %"
        span = f"{pct} interval of the difference [{self.lo:.3g}, {self.hi:.3g}]"
        if not self.separated:
            return f"{self.a} and {self.b} not separated on {self.metric} ({span})"
        word = "lower" if self.hi < 0 else "higher"
        return f"{self.a} {word} {self.metric} than {self.b}: {span}"


def paired_difference(a: str, b: str, metric: str, value_a: float, value_b: float, reps_a: torch.Tensor,
                      reps_b: torch.Tensor, level: float) -> Difference:
    """a - b with the basic bootstrap interval of the replicate differences (same replicate index: same rows)."""
    if reps_a.shape != reps_b.shape:
        raise ValueError(f"points {a} and {b} hold different bootstrap replicates ({reps_a.shape[0]} vs "
                         f"{reps_b.shape[0]}); measure both with the same metrics.interval_resamples")
    lo, hi = basic_interval(value_a - value_b, reps_a - reps_b, level)
    return Difference(a, b, metric, value_a - value_b, lo, hi, level)
