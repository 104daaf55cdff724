"""The built-in metrics, one registered point function each (with its replicate function where it has one).

Their order here is the order of compute_metrics' keys and of the rows' columns. A point function reads what it
needs from `m` (suite.Measure: the finite samples `x`, their targets `y`, `n` of them, the judges' predictions,
the extractor's features and logits, the real side) and returns its keys; a replicate function reads `d`
(bootstrap.Draws) and returns {row base name: [B] replicate values} ({} when its per-sample values are missing).
Keys by metric: fid -> 'fid'; fid_inf -> 'fid_inf' (FID extrapolated to n -> inf); kid -> 'kid_mean', 'kid_std';
is -> 'is_mean', 'is_std'; prc -> 'precision', 'recall'; accuracy, guide_confidence, classwise_fid, nonfinite ->
their name; with the second judge: 'accuracy_judge2' and, with the judge too, 'judge_agreement'.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from . import bootstrap as bs
from . import feature_metrics as fm
from . import frechet as fr
from .registry import register_metric

NAN = float("nan")
POSITIVE = (0.0, math.inf)
UNIT = (0.0, 1.0)


def _share(m, hits: torch.Tensor) -> float:
    """The share of the finite samples where hits is true (NaN with none)."""
    return hits.double().mean().item() if m.n else NAN


def _per_sample(m, name: str, values: torch.Tensor) -> None:
    """Keep the per-sample values behind a number (for its replicates) when the caller asked for them."""
    if m.per is not None:
        setattr(m.per, name, m.full(values))


# ----------------------------------------------------------------------------- per-sample metrics


def _nonfinite_reps(d) -> dict:
    return {"nonfinite": 1.0 - d.w.sum(-1) / d.n}


@register_metric("nonfinite", replicate=_nonfinite_reps, proportion=True, share_of_all=True, lower_is_better=True)
def nonfinite(m) -> dict[str, float]:
    """The share of samples with any NaN/inf value (left out of every other metric)."""
    return {"nonfinite": 1.0 - m.finite.double().mean().item() if m.finite.shape[0] else NAN}


def _mean_of(row: str, field: str):
    """A replicate function: the replicate means of the per-sample values PointSamples.<field> ({} without them)."""
    def reps(d) -> dict:
        values = getattr(d.ps, field)
        return {} if values is None else {row: d.mean(values)}
    return reps


def _register_verdict(name: str, field: str, verdict, doc: str, **options) -> None:
    """A share of the finite samples on which `verdict(m)` (a judge's, per sample) holds; the verdicts kept as
    PointSamples.<field> (evidence files store them)."""
    def point(m) -> dict[str, float]:
        hits = verdict(m)
        _per_sample(m, field, hits)
        return {name: _share(m, hits)}
    point.__doc__ = doc
    register_metric(name, replicate=_mean_of(name, field), proportion=True, **options)(point)


_register_verdict("accuracy", "correct", lambda m: m.pred == m.y,
                  "The share of samples whose target class the judge predicts.", judge=True,
                  titles={"accuracy": "judge accuracy on target class"})
_register_verdict("accuracy_judge2", "correct_judge2", lambda m: m.pred2 == m.y,
                  "The second judge's accuracy on the targets.", second_judge=True)
_register_verdict("judge_agreement", "agree", lambda m: m.pred2 == m.pred,
                  "The share of finite samples on which both judges' argmax agree, whatever the target.",
                  second_judge=True, needs_judge_too=True,
                  titles={"judge_agreement": "share of samples both judges label alike"})


@register_metric("guide_confidence", replicate=_mean_of("guide_confidence", "guide_conf"), bounds=UNIT)
def guide_confidence(m) -> dict[str, float]:
    """Mean p_phi(y | x_0, t=0) of the guiding classifier (NaN without one)."""
    if m.guide is None or not m.n:
        return {"guide_confidence": NAN}
    conf = F.softmax(m.guide_logits().double(), 1).gather(1, m.y[:, None]).flatten()
    _per_sample(m, "guide_conf", conf)
    return {"guide_confidence": conf.mean().item()}


# ----------------------------------------------------------------------------- feature metrics


def _is_reps(d) -> dict:
    if d.ps.logits is None:
        return {}
    probs = torch.softmax(d.ps.logits.cpu().double(), -1)
    return {"is": bs.inception_score_replicates(probs, d.shuffled, d.ps.finite.cpu(), min(d.isc_splits, d.n))}


@register_metric("is", ("is_mean", "is_std"), rows={"is_mean": "is"}, replicate=_is_reps, features=True,
                 logits=True, bounds=(1.0, math.inf), titles={"is": "Inception score (extractor logits)"})
def inception_score(m) -> dict[str, float]:
    """Inception Score on the extractor's logits."""
    _per_sample(m, "logits", m.logits)
    mean, std = fm.inception_score(m.logits, m.s.isc_splits, m.s.seed)
    return {"is_mean": mean, "is_std": std}


def _fid_inf_reps(d) -> dict:
    if not d.fid_inf_sizes:  # off by default: see bootstrap.py's docstring
        return {}
    sizes = fr.fid_inf_sizes(d.n, d.fid_inf_sizes)  # the largest is n: all positions, FID's own replicate
    return {"fid_inf": bs.fid_inf_replicates(d.f, d.shuffled, d.ps.finite.cpu(), d.mu_r, d.sq_r, d.tr_r, sizes,
                                             d.out.get("fid"))}


# FID_inf's half-sample interval takes 800 Frechet distances: about 2 s in the judge's 128-d features, minutes
# in Inception's 2048-d ones, which get none
FID_INF_MAX_DIM = 512


def _fid_inf_interval(value: float, per, real, s) -> tuple[float, float]:
    """Half-samples, not bootstrap replicates (bootstrap.py says why): no paired comparisons for it."""
    if real is None or per.features is None or not math.isfinite(value) or per.features.shape[1] > FID_INF_MAX_DIM:
        return NAN, NAN
    return bs.fid_inf_half_interval(per.features, per.finite, per.targets, real, value, level=s.interval_level,
                                    halves=min(50, s.interval_resamples), seed=s.seed)


@register_metric("fid_inf", replicate=_fid_inf_reps, interval=_fid_inf_interval, features=True, real=True,
                 lower_is_better=True, titles={"fid_inf": "FID_inf (extrapolated to n -> inf)"})
def fid_inf(m) -> dict[str, float]:
    """FID extrapolated to n -> inf (Chong & Forsyth 2020)."""
    f = m.features
    return {"fid_inf": bs.fid_inf_point(f, torch.ones(f.shape[0], dtype=torch.bool), m.real_set, seed=m.s.seed)}


def _fid_reps(d) -> dict:
    return {"fid": fr.frechet_weighted(d.f, d.w, d.mu_r, d.sq_r, d.tr_r)}


@register_metric("fid", replicate=_fid_reps, features=True, real=True, lower_is_better=True, bounds=POSITIVE,
                 titles={"fid": "FID"})
def fid(m) -> dict[str, float]:
    """Frechet distance of the samples' features to the real side's (or to a reference batch's statistics)."""
    f, stats = m.features, m.fid_stats
    if stats is not None and stats["mu"].shape != (f.shape[1],):
        raise ValueError(f"the real side's FID statistics are {stats['mu'].shape[0]}-d, the extractor's "
                         f"features {f.shape[1]}-d; a reference batch's statistics need metrics.extractor=inception")
    return {"fid": fm.frechet_distance(fm.feature_stats(f), stats or m.real_stats.stats)}


def _kid_reps(d) -> dict:
    ok, f, f_real = d.ps.finite.cpu(), d.f, d.f_real
    kgg = bs.poly_kernel(f, f) * (ok[:, None] & ok[None, :])
    kgr, krr = bs.poly_kernel(f, f_real), bs.poly_kernel(f_real, f_real)
    strata = None if d.v is None else d.real_labels()
    # the all-rows unbiased MMD^2: the quantity its replicates scatter around (the row's value)
    d.points["kid"] = bs.kid_mmd2(kgg, kgr, d.fin[None], bs.real_kid_term(krr))[0].item()
    return {"kid": bs.kid_mmd2(kgg, kgr, d.w, bs.real_kid_term(krr, d.v, strata), d.v, d.ps.targets.cpu())}


@register_metric("kid", ("kid_mean", "kid_std"), rows={"kid_mean": "kid"}, replicate=_kid_reps, features=True,
                 real=True, lower_is_better=True, titles={"kid": "KID (unbiased MMD^2)"})
def kid(m) -> dict[str, float]:
    """Kernel Inception Distance (torch-fidelity's mean and std over subsets)."""
    s = m.s
    mean, std = fm.kernel_inception_distance(m.features, m.real_stats.features, s.kid_subsets, s.kid_subset_size,
                                             s.seed)
    return {"kid_mean": mean, "kid_std": std}


def _prc_reps(d) -> dict:
    rows = d.ps.finite.cpu().nonzero().flatten()
    f_real = d.f_real if d.prc_real_rows is None else d.f_real[d.prc_real_rows]
    in_real, hits = bs.prc_indicators(d.f[rows], f_real, d.prc_neighborhood)
    # recall is a mean over real rows (inside the generated manifold): resampled over the reals. Redrawing the
    # generated rows instead leaves fewer distinct balls and biases every replicate down.
    rl = d.real_labels() if d.prc_real_rows is None else d.real_labels()[d.prc_real_rows]
    vr = bs.counts(bs.resample_order(rl, d.resamples, d.seed + 3), f_real.shape[0])
    return {"precision": bs.weighted_mean(d.w[:, rows], in_real),  # a mean over generated rows: resampled with them
            "recall": bs.weighted_mean(vr, hits.any(1))}


@register_metric("prc", ("precision", "recall"), rows={"precision": "precision", "recall": "recall"},
                 replicate=_prc_reps, features=True, real=True, bounds=UNIT)
def precision_recall(m) -> dict[str, float]:
    """Improved precision and recall (k-NN manifolds); the reals cut to a seeded subset of n when there are more."""
    s, f_gen, f_real = m.s, m.features, m.real_stats.features
    if s.prc_match_sizes and f_real.shape[0] > f_gen.shape[0]:
        pick = torch.randperm(f_real.shape[0], generator=torch.Generator().manual_seed(s.seed))
        f_real = f_real[pick[: f_gen.shape[0]]]
        if m.keep is not None:
            m.keep["prc_real_rows"] = pick[: f_gen.shape[0]]
    precision, recall = fm.precision_recall(f_gen, f_real, s.prc_neighborhood)
    return {"precision": precision, "recall": recall}


def _classwise_reps(d) -> dict:
    if d.real.labels is None:
        return {}
    targets, labels, per_class = d.ps.targets.cpu(), d.real.labels.cpu(), []
    for c in torch.unique(targets).tolist():
        rows, rr = (targets == c).nonzero().flatten(), (labels == c).nonzero().flatten()
        if len(rows) < 2 or len(rr) < 2:
            continue
        mu_c, sq_c, tr_c = fr.real_moments(d.f_real[rr], None if d.v is None else d.v[:, rr])
        per_class.append(fr.frechet_weighted(d.f[rows], d.w[:, rows], mu_c, sq_c, tr_c))
    return {"classwise_fid": torch.stack(per_class).mean(0)} if per_class else {}


@register_metric("classwise_fid", replicate=_classwise_reps, features=True, real=True, real_labels=True,
                 lower_is_better=True, bounds=POSITIVE)
def classwise_fid_metric(m) -> dict[str, float]:
    """FID per target class against that class's real images, averaged."""
    return {"classwise_fid": classwise_fid(m.features, m.y, m.real_stats.features, m.real_stats.labels)}


def classwise_fid(f_gen: torch.Tensor, y_gen: torch.Tensor, f_real: torch.Tensor, y_real: torch.Tensor) -> float:
    """Mean over target classes of FID(class's samples, class's real images).

    A class needs >= 2 samples and >= 2 real images (a covariance); classes short of that are left
    out of the mean with a warning, and the result is NaN when no class qualifies.
    """
    fids, short = [], []
    for c in torch.unique(y_gen).tolist():
        g, r = f_gen[y_gen == c], f_real[y_real == c]
        if g.shape[0] < 2 or r.shape[0] < 2:
            short.append(c)
            continue
        fids.append(fm.frechet_distance(fm.feature_stats(g), fm.feature_stats(r)))
    if short:
        warnings.warn(f"classwise_fid: classes {short} have < 2 samples or < 2 real images; left out of the mean")
    return sum(fids) / len(fids) if fids else NAN
