"""The metric suite: one call from final samples to a flat dict of floats.

Keys by requested metric:
  fid -> 'fid'; fid_inf -> 'fid_inf' (FID extrapolated to n -> inf); kid -> 'kid_mean', 'kid_std'; is -> 'is_mean', 'is_std'; prc -> 'precision', 'recall';
  accuracy -> 'accuracy'; guide_confidence -> 'guide_confidence'; classwise_fid -> 'classwise_fid';
  nonfinite -> 'nonfinite'.
With a second judge (judge2=, unless settings.second_judge is False): 'accuracy_judge2' (its accuracy on the
targets) and, with the judge too, 'judge_agreement' (the share of finite samples on which both judges' argmax
agree, whatever the target).

Samples with any non-finite value count towards 'nonfinite' and are dropped before every other
metric; with none left those metrics are NaN. Images reach the feature extractor the way
torch-fidelity takes them (uint8 RGB, so values are clamped to [-1, 1] and quantised); accuracy and
guide_confidence see the float samples as they are. Feature extraction and the metric routines are
torch-fidelity's own (see feature_metrics.py); features are extracted once per call and shared by
FID, KID, IS, PRC and class-wise FID.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.utils import get_featuresdict_from_dataset

from . import feature_metrics as fm
from .bootstrap import PointSamples, RealSet, fid_inf_point
from .extractors import build_extractor, eval_mode, extractor_id, module_device, to_uint8_rgb
from .real_stats import content_id, load_or_compute
from .settings import (FEATURE_METRICS, METRIC_NAMES, NO_JUDGE, NO_JUDGE2,  # noqa: F401 (METRIC_NAMES re-exported)
                       MetricSettings)

NAN = float("nan")


class _Uint8Images(Dataset):
    """Tensor-backed Dataset of uint8 RGB images: the input torch-fidelity's extraction loop accepts."""

    def __init__(self, x: torch.Tensor):
        self.x = to_uint8_rgb(x.cpu())

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i]


def _extract(extractor, x: torch.Tensor, layers: list[str], batch_size: int,
             device: torch.device) -> dict[str, torch.Tensor]:
    """Only `layers` of the extractor, e.g. no logits for the real split (a second judge pass)."""
    full = extractor.features_list
    extractor.features_list = [name for name in full if name in layers]  # read by forward and torch-fidelity
    try:
        # save_cpu_ram=True -> num_workers=0: workers only cost start-up time on in-memory tensors.
        return get_featuresdict_from_dataset(_Uint8Images(x), extractor, batch_size, cuda=device.type == "cuda",
                                             save_cpu_ram=True, verbose=False)
    finally:
        extractor.features_list = full


@torch.no_grad()
def _batched_logits(fn, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    return torch.cat([fn(xb.to(device)).float().cpu() for xb in x.split(batch_size)])


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


def compute_metrics(
    samples: torch.Tensor,
    targets: torch.Tensor,
    real: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    *,
    judge: nn.Module | None,
    guide: nn.Module | None = None,
    settings: MetricSettings = MetricSettings(),
    real_labels: torch.Tensor | None = None,
    real_id: str | None = None,
    device: torch.device | str | None = None,
    real_fid_stats: dict | None = None,
    keep: dict | None = None,
    judge2: nn.Module | None = None,
) -> dict[str, float]:
    """Sample-quality metrics of `samples` [N,C,H,W] in [-1,1] with target labels `targets` [N].

    real: held-out real images [M,C,H,W] in [-1,1] (or uint8 [M,3,H,W], as in a reference batch), or
        (images, labels); labels (also `real_labels`) are needed for classwise_fid.
    judge: clean classifier (forward -> logits, features -> [N,D]); accuracy always uses it, and the
        'judge' extractor. None: neither can be asked for.
    real_fid_stats: {'mu', 'sigma'} of the real side for FID instead of the real images' own (a reference
        batch's whole-dataset statistics, as guided-diffusion's evaluator uses them); KID, PRC and
        class-wise FID still use the real images.
    guide: noisy classifier forward(x, t); guide_confidence = mean p(y | x, t=0), NaN without a guide.
    judge2: the second judge (forward -> logits): 'accuracy_judge2', and 'judge_agreement' with the judge; None (or
        settings.second_judge False): neither (settings.second_judge True without it: an error).
    keep: a dict to fill with the per-sample values behind the numbers ('samples': bootstrap.PointSamples,
        'real': bootstrap.RealSet, 'prc_real_rows'), for intervals (intervals.py) without a second extraction.
    settings: which metrics (settings.names) and how; checked when built (settings.py). Its knobs:
      extractor: 'judge' (offline default) or 'inception' (local weights: `inception_weights` or hub cache).
      real_stats_cache: dir for cached real features/statistics (None: no disk cache). The key is
        (real_id, extractor id, layer, M); real_id defaults to a hash of the real images + labels and
        a judge's id is a hash of its weights.
      KID uses subsets of min(kid_subset_size, N, M) (default 1000 as torch-fidelity); PRC uses
        k = prc_neighborhood (3, the paper's value) capped at N-1, and with prc_match_sizes a seeded
        random subset of N real images, since precision/recall are biased when N != M; IS uses
        min(isc_splits, N) splits. FID and KID use all M real images.
    """
    s = settings
    if isinstance(real, (tuple, list)):
        real, real_labels = real
    want = set(s.names)
    if "classwise_fid" in want and real_labels is None:
        raise ValueError("classwise_fid needs the real images' labels: real=(images, labels) or real_labels=")
    if samples.shape[0] != targets.shape[0]:
        raise ValueError(f"samples ({samples.shape[0]}) and targets ({targets.shape[0]}) differ in length")
    if judge is None and s.needs_judge:
        raise ValueError(NO_JUDGE)
    if judge2 is None and s.second_judge:
        raise ValueError(NO_JUDGE2)
    if s.second_judge is False:
        judge2 = None
    device = torch.device(device) if device is not None else module_device(judge) if judge is not None else \
        torch.device("cpu")
    feat_ext = None
    if want & set(FEATURE_METRICS):  # build early: weights gone since settings were checked fail before any work
        feat_ext = build_extractor(s.extractor, judge, s.inception_weights, in_channels=samples.shape[1]).to(device)

    out: dict[str, float] = {}
    finite = torch.isfinite(samples.flatten(1)).all(dim=1).cpu()
    if "nonfinite" in want:
        out["nonfinite"] = 1.0 - finite.double().mean().item() if samples.shape[0] else NAN
    x, y = samples.detach().cpu()[finite], targets.detach().cpu().long()[finite]
    n = x.shape[0]
    per = PointSamples(targets.detach().cpu().long(), finite) if keep is not None else None

    pred = None  # the judge's argmax per finite sample
    if "accuracy" in want or (judge2 is not None and judge is not None):
        with eval_mode(judge):
            pred = _batched_logits(judge, x, s.batch_size, device).argmax(1) if n else torch.zeros(0, dtype=torch.long)
    if "accuracy" in want:
        out["accuracy"] = (pred == y).double().mean().item() if n else NAN
        if per is not None:
            per.correct = _full(finite, pred == y)
    if judge2 is not None:
        with eval_mode(judge2):
            pred2 = _batched_logits(judge2, x, s.batch_size, module_device(judge2)).argmax(1) if n else \
                torch.zeros(0, dtype=torch.long)
        out["accuracy_judge2"] = (pred2 == y).double().mean().item() if n else NAN
        if per is not None:
            per.correct_judge2 = _full(finite, pred2 == y)
        if pred is not None:
            out["judge_agreement"] = (pred2 == pred).double().mean().item() if n else NAN
            if per is not None:
                per.agree = _full(finite, pred2 == pred)
    if "guide_confidence" in want:
        out["guide_confidence"] = NAN
        if guide is not None and n:
            gdev = module_device(guide)
            with eval_mode(guide):
                logits = _batched_logits(lambda xb: guide(xb, torch.zeros(xb.shape[0], dtype=torch.long,
                                                                          device=gdev)), x, s.batch_size, gdev)
            conf = F.softmax(logits.double(), 1).gather(1, y[:, None]).flatten()
            out["guide_confidence"] = conf.mean().item()
            if per is not None:
                per.guide_conf = _full(finite, conf)

    if feat_ext is not None:
        out.update(_feature_metrics(feat_ext, want, x, y, real, real_labels, s, device=device,
                                    dataset_id=real_id, ext_id=extractor_id(s.extractor, judge),
                                    fid_stats=real_fid_stats, keep=keep, per=per, finite=finite))
    if keep is not None:
        keep["samples"] = per
    return {k: float(v) for k, v in out.items()}


def _full(finite: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-sample values of the finite rows, put back at their rows (zeros at non-finite ones)."""
    out = torch.zeros((finite.shape[0], *values.shape[1:]), dtype=values.dtype)
    out[finite] = values.cpu()
    return out


def _feature_metrics(feat_ext, want, x, y, real, real_labels, s: MetricSettings, *, device, dataset_id,
                     ext_id, fid_stats=None, keep=None, per=None, finite=None) -> dict[str, float]:
    keys = {"fid": ["fid"], "kid": ["kid_mean", "kid_std"], "is": ["is_mean", "is_std"],
            "prc": ["precision", "recall"], "classwise_fid": ["classwise_fid"], "fid_inf": ["fid_inf"]}
    if x.shape[0] == 0:
        return {k: NAN for m in FEATURE_METRICS if m in want for k in keys[m]}
    layer = feat_ext.get_default_feature_layer_for_metric("fid")  # the same layer for FID, KID and PRC
    logits_layer = feat_ext.get_default_feature_layer_for_metric("isc")
    gen = _extract(feat_ext, x, [layer, logits_layer] if "is" in want else [layer], s.batch_size, device)
    out: dict[str, float] = {}
    if "is" in want:
        logits = gen[logits_layer]
        out["is_mean"], out["is_std"] = fm.inception_score(logits, s.isc_splits, s.seed)
        if per is not None:
            per.logits = _full(finite, logits)
    if per is not None:
        per.features = _full(finite, gen[layer])
    if not want & {"fid", "kid", "prc", "classwise_fid", "fid_inf"}:
        return out

    rl = None if real_labels is None else real_labels.detach().cpu().long()
    rs = load_or_compute(lambda: _extract(feat_ext, real, [layer], s.batch_size, device)[layer], rl, n=real.shape[0],
                         cache_dir=s.real_stats_cache, dataset_id=dataset_id or content_id(real, rl),
                         extractor_id=ext_id, layer=layer)
    f_gen = gen[layer]
    real_set = RealSet(rs.features, rs.labels, fid_stats)
    if keep is not None:
        keep["real"] = real_set
    if "fid_inf" in want:
        out["fid_inf"] = fid_inf_point(f_gen, torch.ones(f_gen.shape[0], dtype=torch.bool), real_set, seed=s.seed)
    if "fid" in want:
        if fid_stats is not None and fid_stats["mu"].shape != (f_gen.shape[1],):
            raise ValueError(f"the real side's FID statistics are {fid_stats['mu'].shape[0]}-d, the extractor's "
                             f"features {f_gen.shape[1]}-d; a reference batch's statistics need metrics.extractor="
                             "inception")
        out["fid"] = fm.frechet_distance(fm.feature_stats(f_gen), fid_stats or rs.stats)
    if "kid" in want:
        out["kid_mean"], out["kid_std"] = fm.kernel_inception_distance(f_gen, rs.features, s.kid_subsets,
                                                                       s.kid_subset_size, s.seed)
    if "prc" in want:
        f_real = rs.features
        if s.prc_match_sizes and f_real.shape[0] > f_gen.shape[0]:
            pick = torch.randperm(f_real.shape[0], generator=torch.Generator().manual_seed(s.seed))
            f_real = f_real[pick[: f_gen.shape[0]]]
            if keep is not None:
                keep["prc_real_rows"] = pick[: f_gen.shape[0]]
        out["precision"], out["recall"] = fm.precision_recall(f_gen, f_real, s.prc_neighborhood)
    if "classwise_fid" in want:
        out["classwise_fid"] = classwise_fid(f_gen, y, rs.features, rs.labels)
    return out
